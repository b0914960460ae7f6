/**
 * The attacker process (see attacker.ts): `node attacker-main.js CONFIG_JSON`, run inside the
 * attacker's namespace. Sniffs and injects on one packet socket; prints its report as one JSON line.
 */
import { PACKET_SOCKET_BUFFER } from '../../src/daemon/runtime.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { type AttackConfig, Attacker } from './attacker.ts'

const config = JSON.parse(process.argv[2] ?? '') as AttackConfig
const socket = PacketSocket.open({
  ifname: config.ifname,
  ignoreOutgoing: true, // our own injections are not news
  rcvBuf: PACKET_SOCKET_BUFFER,
  sndBuf: PACKET_SOCKET_BUFFER,
})
let refused = 0
const attacker = new Attacker(config, (frames) => {
  refused += frames.length - socket.send(frames)
})
socket.onBatch((batch) => {
  for (let i = 0; i < batch.count; i++) attacker.observe(batch.frame(i))
  attacker.batchDone()
})
try {
  const report = await attacker.run()
  if (refused > 0) throw new Error(`the kernel refused ${refused} injected frames`)
  process.stdout.write(`${JSON.stringify(report)}\n`)
} finally {
  socket.close()
}
