/**
 * A vrio endpoint on its own event loop (a worker thread): accepts connections on port 7860 over
 * a packet socket in a namespace and ACKs what arrives. For tests that stall the main thread's
 * event loop while the peer keeps answering, as a peer process would; with `report`, it posts
 * each message it receives as { got: length, sha256, delivery }; with `nonces` (opener's, listener's),
 * it installs the traffic keys (epoch 1) at once, as a session would after its handshake.
 *   new Worker(url, { workerData: { ifname, netns, ip, report?, nonces? } }); it posts 'ready' once listening.
 */
import { createHash } from 'node:crypto'
import { parentPort, workerData } from 'node:worker_threads'
import { LinkDriver } from '../../src/io/link-driver.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { parseMac } from '../../src/wire/address.ts'
import { VRIO_TEST_PORT } from './harness.ts'
import { TEST_KEY } from './simulation.ts'

const { ifname, netns, ip, report, nonces } = workerData as {
  ifname: string
  netns: string
  ip: number
  report?: boolean
  nonces?: [Uint8Array, Uint8Array]
}
const socket = PacketSocket.open({ ifname, netns, ignoreOutgoing: true })
const driver = new LinkDriver({
  channel: socket,
  mac: parseMac(socket.mac)!,
  ip,
  listenPort: VRIO_TEST_PORT,
  key: TEST_KEY,
  accept: (_remote, c) => ({
    established() {
      if (nonces) c.installTrafficKeys(nonces[0], nonces[1])
    },
    message(data, delivery) {
      if (report)
        parentPort!.postMessage({
          got: data.length,
          sha256: createHash('sha256').update(data).digest('hex'),
          delivery,
        })
    },
  }),
})
parentPort!.on('message', (m) => {
  if (m === 'stop') {
    driver.stop({ silent: true })
    socket.close()
    parentPort!.close()
  }
})
parentPort!.postMessage({ ready: true, mac: socket.mac })
