/**
 * Firewall benchmark (not a test): frames per second through the firewall service on one core,
 * frames already dissected once per frame (as the chain does). 1500-byte TCP segments of 1024
 * established flows, the guest sending; the firewall decides on each.
 *
 *   dissect only       the dissector alone (the chain pays this with or without a firewall)
 *   empty chain        no rules, policy accept: the conntrack lookup and update
 *   100 rules, miss    100 rules that the frames fall through (ports, prefixes, sets, flags), then the policy
 *   100 rules, ct      the usual shape: `ct state established,related accept` first, then 100 rules
 *
 *   npm run bench -- firewall            (or: node --expose-gc dist/bench/firewall.js)
 *
 * Measured on the shared 2-core development VM (Node 20), 3 runs, frames/s (ns/frame), no
 * allocation per frame: dissect only 9.6–19.8 M (50–104 ns); empty chain 3.0–6.0 M (167–333 ns);
 * 100 rules, miss 0.77–2.4 M (419–1304 ns); 100 rules, ct 3.2–4.6 M (217–317 ns). The spread is
 * the machine (other jobs ran alongside), not the code.
 */
import { createFirewall, type Firewall } from '../src/services/firewall/index.ts'
import type { NetContext } from '../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../src/wire/packet.ts'
import { hundredFirewallRules } from './support/firewall-rules.ts'

const gc = (globalThis as { gc?: () => void }).gc
const FLOWS = 1024

function tcpFrame(flow: number, flags: number, toGuest: boolean): Buffer {
  const f = Buffer.alloc(1514)
  Buffer.from('020000000002020000000001', 'hex').copy(f, 0)
  f.writeUInt16BE(0x0800, 12)
  const ip = 14
  f[ip] = 0x45
  f.writeUInt16BE(1500, ip + 2)
  f.writeUInt16BE(0x4000, ip + 6)
  f[ip + 8] = 64
  f[ip + 9] = 6
  const guest = Buffer.from([10, 0, flow >> 8, flow & 0xff])
  const world = Buffer.from([198, 51, 100, 7])
  ;(toGuest ? world : guest).copy(f, ip + 12)
  ;(toGuest ? guest : world).copy(f, ip + 16)
  const t = ip + 20
  f.writeUInt16BE(toGuest ? 443 : 30000 + flow, t)
  f.writeUInt16BE(toGuest ? 30000 + flow : 443, t + 2)
  f.writeUInt32BE(1, t + 4)
  f[t + 12] = 5 << 4
  f[t + 13] = flags
  return f
}

const ctx: NetContext = { now: 0, reply() {}, event() {} }

/** Opens every flow (SYN out, SYN-ACK in), so that the measured segments are established. */
function warm(fw: Firewall): void {
  const p = newPacket()
  for (let i = 0; i < FLOWS; i++) {
    const syn = tcpFrame(i, 0x02, false)
    dissectPacket(syn, p)
    fw.inspect(syn, p, 'from-guest', ctx)
    const synAck = tcpFrame(i, 0x12, true)
    dissectPacket(synAck, p)
    fw.inspect(synAck, p, 'to-guest', ctx)
  }
}

function measure(name: string, fw: Firewall | undefined, n: number) {
  const frames = Array.from({ length: FLOWS }, (_, i) => tcpFrame(i, 0x10, false))
  const p = newPacket()
  if (fw) warm(fw)
  // Warm up the JIT, then measure.
  for (let i = 0; i < 200_000; i++) {
    const f = frames[i & (FLOWS - 1)]
    dissectPacket(f, p)
    if (fw) fw.inspect(f, p, 'from-guest', ctx)
  }
  gc?.()
  const m0 = process.memoryUsage().heapUsed
  const t0 = performance.now()
  let passed = 0
  for (let i = 0; i < n; i++) {
    const f = frames[i & (FLOWS - 1)]
    ctx.now = i >> 10
    dissectPacket(f, p)
    if (!fw || fw.inspect(f, p, 'from-guest', ctx)) passed++
  }
  const seconds = (performance.now() - t0) / 1000
  const allocated = process.memoryUsage().heapUsed - m0
  if (passed !== n) throw new Error(`${name}: ${n - passed} frames dropped`)
  return {
    case: name,
    frames: n,
    framesPerSecond: Math.round(n / seconds),
    nsPerFrame: Math.round((seconds * 1e9) / n),
    bytesAllocatedPerFrame: Math.max(0, Math.round(allocated / n)),
  }
}

const n = Number(process.argv[2] ?? 3_000_000)
const rows = [
  measure('dissect only', undefined, n),
  measure('empty chain', createFirewall(''), n),
  measure('100 rules, miss', createFirewall(hundredFirewallRules()), n),
  measure(
    '100 rules, ct',
    createFirewall(`from-guest ct state established,related accept\n${hundredFirewallRules()}`),
    n,
  ),
]
console.table(rows)
