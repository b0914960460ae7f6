import assert from 'node:assert/strict'
import { after, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { driverAndPeer } from '../support/link-peer-host.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink } from '../support/topology.ts'

after(() => cleanupNetns())

/** Keeps this thread's event loop from running for `ms`, as a long GC pause or batch would. */
function stall(ms: number): void {
  const until = performance.now() + ms
  while (performance.now() < until) {}
}

it('a retransmission timer that fires after a stalled event loop first reads the ACKs that arrived meanwhile', async () => {
  requireRoot()
  const t = directLink()
  const { driver, peer, stop } = await driverAndPeer(t)
  try {
    const c: Connection = driver.connect(peer, { message() {} })
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
    await stop()
  }
})
