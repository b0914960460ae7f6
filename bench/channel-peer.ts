/**
 * The far end of bench/channel.ts, run as its own process (like a real guest): accepts one vrio
 * connection, counts what arrives, echoes messages flagged for ping-pong, reports its CPU time.
 * A message reassembled from several frames is given back to the transport's pool once counted, as
 * the daemons' disk and NIC paths do (a consumer that drops them makes every 1 MiB message a fresh
 * allocation, and the bench then measures the collector: 3–4 instead of 35–45 Gbit/s here).
 *   node dist/bench/channel-peer.js IFNAME NETNS IPV4 vnet|plain sealed|plaintext
 */
import { PACKET_SOCKET_BUFFER } from '../src/daemon/runtime.ts'
import { LinkDriver } from '../src/io/link-driver.ts'
import { PacketSocket } from '../src/io/packet-socket.ts'
import { Delivery } from '../src/transport/config.ts'
import { messageBuffers } from '../src/transport/message-buffers.ts'
import { parseIPv4, parseMac } from '../src/wire/address.ts'

const [ifname, netns, address, mode, channel] = process.argv.slice(2)
const vnetHdr = mode === 'vnet'
/** The bench's channel key (both ends; see BENCH_KEY in channel.ts). */
const BENCH_KEY = Buffer.alloc(32, 0x42)
const socket = PacketSocket.open({
  ifname,
  netns,
  vnetHdr,
  ignoreOutgoing: true,
  rcvBuf: PACKET_SOCKET_BUFFER,
  sndBuf: PACKET_SOCKET_BUFFER,
})
let bytes = 0
const cpu0 = process.cpuUsage()
new LinkDriver({
  channel: socket,
  mac: parseMac(socket.mac)!,
  ip: parseIPv4(address)!,
  listenPort: 7860,
  vnetHdr,
  key: BENCH_KEY,
  options: { insecurePlaintext: channel === 'plaintext' },
  accept: (_r, c) => ({
    message: (m, delivery, owned) => {
      bytes += m.length
      if (delivery === Delivery.Ordered) c.send(Uint8Array.from(m), Delivery.Ordered) // ping-pong
      if (owned) messageBuffers.giveBack(m)
    },
  }),
})
process.stdout.write(`${JSON.stringify({ ready: true, mac: socket.mac })}\n`)
process.stdin.on('data', () => {
  const cpu = process.cpuUsage(cpu0)
  process.stdout.write(`${JSON.stringify({ bytes, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`)
})
process.stdin.on('end', () => process.exit(0))
