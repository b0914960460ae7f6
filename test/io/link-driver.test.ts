import assert from 'node:assert/strict'
import { after, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { Worker } from 'node:worker_threads'
import { LinkDriver } from '../../src/io/link-driver.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { parseMac } from '../../src/wire/address.ts'
import { VRIO_TEST_PORT } from '../support/harness.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink } from '../support/topology.ts'
import { TEST_KEY } from '../support/simulation.ts'

after(() => cleanupNetns())

/** Keeps this thread's event loop from running for `ms`, as a long GC pause or batch would. */
function stall(ms: number): void {
  const until = performance.now() + ms
  while (performance.now() < until) {}
}

it('a retransmission timer that fires after a stalled event loop first reads the ACKs that arrived meanwhile', async () => {
  requireRoot()
  const t = directLink()
  const peer = new Worker(new URL('../support/link-peer.js', import.meta.url), {
    workerData: { ifname: t.b.ifname, netns: t.b.ns.path, ip: t.b.ip },
  })
  const ready = await new Promise<{ mac: string }>((resolve, reject) => {
    peer.once('message', resolve)
    peer.once('error', reject)
  })
  const socket = PacketSocket.open({ ifname: t.a.ifname, netns: t.a.ns.path, ignoreOutgoing: true })
  const driver = new LinkDriver({
    channel: socket,
    mac: parseMac(socket.mac)!,
    ip: t.a.ip,
    peerPort: VRIO_TEST_PORT,
    key: TEST_KEY,
  })
  try {
    const c: Connection = driver.connect(
      { mac: parseMac(ready.mac)!, ip: t.b.ip, port: VRIO_TEST_PORT },
      { message() {} },
    )
    const deadline = Date.now() + 5000
    while (c.state !== 'established' && Date.now() < deadline) await sleep(5)
    assert.equal(c.state, 'established')
    // Round trips settle the RTT estimate: the timeout is then its 20 ms floor.
    for (let i = 0; i < 30; i++) {
      c.send(new Uint8Array(64), Delivery.Reliable)
      await sleep(2)
    }
    const before = { ...c.stats }
    for (let round = 0; round < 5; round++) {
      c.send(new Uint8Array(1000), Delivery.Reliable)
      // Let the send leave (it goes out in a microtask) and the timer be armed, then stall: the
      // peer's ACK arrives within a fraction of a millisecond and waits in the socket.
      await Promise.resolve()
      await Promise.resolve()
      stall(120)
      await sleep(50)
    }
    assert.equal(c.stats.rtoFirings - before.rtoFirings, 0, 'no retransmission timeout fired')
    assert.equal(c.stats.retransmits - before.retransmits, 0, 'nothing was sent twice')
  } finally {
    driver.stop({ silent: true })
    socket.close()
    peer.postMessage('stop')
    await peer.terminate()
  }
})
