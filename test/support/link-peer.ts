/**
 * A vrio endpoint on its own event loop (a worker thread): accepts connections on port 7860 over
 * a packet socket in a namespace and ACKs what arrives. For tests that stall the main thread's
 * event loop while the peer keeps answering, as a peer process would.
 *   new Worker(url, { workerData: { ifname, netns, ip } }); it posts 'ready' once listening.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { LinkDriver } from '../../src/io/link-driver.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { parseMac } from '../../src/wire/address.ts'
import { VRIO_TEST_PORT } from './harness.ts'
import { TEST_KEY } from './simulation.ts'

const { ifname, netns, ip } = workerData as { ifname: string; netns: string; ip: number }
const socket = PacketSocket.open({ ifname, netns, ignoreOutgoing: true })
const driver = new LinkDriver({
  channel: socket,
  mac: parseMac(socket.mac)!,
  ip,
  listenPort: VRIO_TEST_PORT,
  key: TEST_KEY,
  accept: () => ({ message() {} }),
})
parentPort!.on('message', (m) => {
  if (m === 'stop') {
    driver.stop({ silent: true })
    socket.close()
    parentPort!.close()
  }
})
parentPort!.postMessage({ ready: true, mac: socket.mac })
