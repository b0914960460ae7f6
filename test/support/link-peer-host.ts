import { Worker } from 'node:worker_threads'
import { LinkDriver } from '../../src/io/link-driver.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import type { Address } from '../../src/transport/connection.ts'
import { parseMac } from '../../src/wire/address.ts'
import { VRIO_TEST_PORT } from './harness.ts'
import { TEST_KEY } from './simulation.ts'
import type { Topology } from './topology.ts'

/** What the link-peer worker posts for each message it receives (with `report`). */
export interface PeerGot {
  got: number
  sha256: string
  delivery: number
}

/**
 * A LinkDriver on `t`'s side a, and a link-peer worker (its own event loop) listening on side b:
 * `peer` is the address to connect to; `got` fills with what the peer reports (`options.report`).
 * `stop` ends both.
 */
export async function driverAndPeer(
  t: Topology,
  options: { report?: boolean; nonces?: Uint8Array[] } = {},
): Promise<{ driver: LinkDriver; peer: Address; got: PeerGot[]; stop(): Promise<void> }> {
  const worker = new Worker(new URL('./link-peer.js', import.meta.url), {
    workerData: { ifname: t.b.ifname, netns: t.b.ns.path, ip: t.b.ip, ...options },
  })
  const got: PeerGot[] = []
  const ready = await new Promise<{ mac: string }>((resolve, reject) => {
    worker.on('message', (m: { mac?: string } & Partial<PeerGot>) => {
      if (m.mac) resolve(m as { mac: string })
      else got.push(m as PeerGot)
    })
    worker.once('error', reject)
  })
  const socket = PacketSocket.open({ ifname: t.a.ifname, netns: t.a.ns.path, ignoreOutgoing: true })
  const driver = new LinkDriver({
    channel: socket,
    mac: parseMac(socket.mac)!,
    ip: t.a.ip,
    peerPort: VRIO_TEST_PORT,
    key: TEST_KEY,
  })
  return {
    driver,
    peer: { mac: parseMac(ready.mac)!, ip: t.b.ip, port: VRIO_TEST_PORT },
    got,
    async stop() {
      driver.stop({ silent: true })
      socket.close()
      worker.postMessage('stop')
      await worker.terminate()
    },
  }
}
