import { createDpi, type DpiService, RuleParser } from '../src/services/dpi/index.ts'
import type { NetContext } from '../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../src/wire/packet.ts'
import { TCP_ACK, TCP_PSH } from '../src/wire/tcp.ts'
import { seededRandom } from '../test/support/random.ts'
import { dpiContentRules, etOpenFiles } from './support/dpi-rules.ts'

const seconds = Number(process.argv[2] ?? 2)
const random = seededRandom(0x5eed)
const pick = <T>(a: readonly T[]): T => a[Math.floor(random() * a.length)]

const WORDS = [
  'the',
  'quick',
  'brown',
  'fox',
  'jumps',
  'over',
  'lazy',
  'dog',
  'content',
  'server',
  'client',
  'request',
  'response',
  'session',
  'cookie',
  'index',
  'html',
  'script',
  'style',
  'image',
  'value',
  'data',
  'user',
  'account',
  'page',
  'search',
  'result',
  'network',
  'packet',
  'stream',
  'buffer',
]
const HEADERS = [
  'Accept: text/html',
  'Accept-Language: en-US',
  'Connection: keep-alive',
  'Cache-Control: no-cache',
]

function httpText(request: boolean, size: number): Buffer {
  let s = request
    ? `GET /${WORDS.slice(0, 3)
        .map(() => pick(WORDS))
        .join(
          '/',
        )}?id=${Math.floor(random() * 1e6)} HTTP/1.1\r\nHost: www.${pick(WORDS)}.example\r\n${HEADERS.join('\r\n')}\r\n\r\n`
    : `HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: ${size}\r\n\r\n<html><body>`
  while (s.length < size) s += `${pick(WORDS)} ${random() < 0.1 ? '<p>' : ''}`
  return Buffer.from(s.slice(0, size), 'latin1')
}

interface Segment {
  frame: Buffer
  conn: number
  fromClient: boolean
  length: number
}

/** One IPv4/TCP frame with room for `payload` (sequence numbers are rewritten per pass). */
function frame(conn: number, fromClient: boolean, payload: Buffer): Buffer {
  const f = Buffer.alloc(54 + payload.length)
  f.writeUIntBE(0x020000000001, 0, 6)
  f.writeUIntBE(0x020000000002, 6, 6)
  f.writeUInt16BE(0x0800, 12)
  f[14] = 0x45
  f.writeUInt16BE(40 + payload.length, 16)
  f[22] = 64
  f[23] = 6
  const client = [10, 0, (conn >> 8) & 0xff, conn & 0xff]
  const server = [93, 184, 216, 34]
  f.set(fromClient ? client : server, 26)
  f.set(fromClient ? server : client, 30)
  f.writeUInt16BE(fromClient ? 40000 + conn : 80, 34)
  f.writeUInt16BE(fromClient ? 80 : 40000 + conn, 36)
  f[46] = 5 << 4
  f[47] = TCP_ACK | TCP_PSH
  payload.copy(f, 54)
  return f
}

/** Bytes that look like no pattern (compressed or encrypted data, iperf3's payload). */
function binary(size: number): Buffer {
  const b = Buffer.alloc(size)
  for (let i = 0; i < size; i++) b[i] = Math.floor(random() * 256)
  return b
}

function makeTraffic(
  segmentSize: number,
  totalBytes: number,
  payload: 'http' | 'binary' = 'http',
): Segment[] {
  const segments: Segment[] = []
  let bytes = 0
  for (let round = 0; bytes < totalBytes; round++) {
    for (let conn = 0; conn < 64 && bytes < totalBytes; conn++) {
      const request = payload === 'http' ? httpText(true, 400) : binary(400)
      segments.push({ frame: frame(conn, true, request), conn, fromClient: true, length: request.length })
      // A response of a few segments.
      const size = segmentSize * (1 + (round % 4))
      const response = payload === 'http' ? httpText(false, size) : binary(size)
      for (let at = 0; at < response.length; at += segmentSize) {
        const part = response.subarray(at, at + segmentSize)
        segments.push({ frame: frame(conn, false, part), conn, fromClient: false, length: part.length })
        bytes += part.length + 54
      }
      bytes += request.length + 54
    }
  }
  return segments
}

const VARS = { HOME_NET: '10.0.0.0/8' }

/** The service for `rules` (a count of generated rules, or 'et'), timed, with its heap growth. */
function build(rules: number | 'et'): { dpi: DpiService; buildMs: number; heapMB: number; heap0: number } {
  global.gc?.()
  const heap0 = process.memoryUsage().heapUsed
  const t0 = performance.now()
  let dpi: DpiService
  if (rules === 'et') {
    const parser = new RuleParser({ vars: VARS })
    for (const [name, text] of Object.entries(etOpenFiles())) parser.parse(text, name)
    dpi = createDpi('', 'et-open', { vars: VARS })
    dpi.replaceParsed({ rules: parser.result().rules, errors: [] })
  } else {
    dpi = createDpi(dpiContentRules(rules), 'bench.rules', { vars: VARS })
  }
  const buildMs = performance.now() - t0
  global.gc?.()
  const heapMB = (process.memoryUsage().heapUsed - heap0) / 1e6
  return { dpi, buildMs, heapMB, heap0 }
}

function run(
  rules: number | 'et',
  segments: Segment[],
): {
  mbps: number
  buildMs: number
  heapMB: number
  heapAfterMB: number
  compiledMB: number
  loaded: number
  states: number
  alerts: number
} {
  const { dpi, buildMs, heapMB, heap0 } = build(rules)
  const ctx: NetContext = { now: 0, reply: () => {}, event: () => {} }
  const p = newPacket()
  const seq = new Uint32Array(64 * 2)
  let bytes = 0
  const cpu0 = process.cpuUsage()
  const start = performance.now()
  const end = start + seconds * 1000
  let now = start
  while (now < end) {
    for (const s of segments) {
      const k = s.conn * 2 + (s.fromClient ? 0 : 1)
      s.frame.writeUInt32BE(seq[k], 38)
      seq[k] = (seq[k] + s.length) >>> 0
      dissectPacket(s.frame, p)
      dpi.inspect(s.frame, p, s.fromClient ? 'from-guest' : 'to-guest', ctx)
      bytes += s.frame.length
    }
    now = performance.now()
    ctx.now = now - start
  }
  const c = dpi.counters()
  // Per CPU-second of this process (the machine may be shared): what one core sustains.
  const cpu = process.cpuUsage(cpu0)
  const cpuSeconds = (cpu.user + cpu.system) / 1e6
  global.gc?.()
  return {
    mbps: bytes / 1e6 / cpuSeconds,
    buildMs,
    heapMB,
    heapAfterMB: (process.memoryUsage().heapUsed - heap0) / 1e6,
    compiledMB: dpi.compiledBytes() / 1e6,
    loaded: c.rules,
    states: c.automatonStates,
    alerts: c.alerts,
  }
}

const cases: Array<[string, number, 'http' | 'binary']> = [
  ['MSS frames (1514 B)', 1460, 'http'],
  ['GSO super-frames (64 KiB)', 65_000, 'http'],
  ['binary, GSO (64 KiB)', 65_000, 'binary'],
]
const results: Record<string, unknown>[] = []
console.log(
  'traffic                      rules  MB/cpu-s Gbit/s   ratio   build ms   AC states   alerts  heap MB  compiled MB  heap after',
)
const onlyRules = process.env.BENCH_DPI_RULES?.split(',')
const onlyTraffic = process.env.BENCH_DPI_TRAFFIC?.split(',').map(Number)
for (const [t, [name, size, payload]] of cases.entries()) {
  if (onlyTraffic && !onlyTraffic.includes(t + 1)) continue
  const segments = makeTraffic(size, 16 * 1024 * 1024, payload)
  let baseline = 0
  for (const rules of [0, 1000, 10_000, 'et'] as const) {
    if (onlyRules && !onlyRules.includes(String(rules))) continue
    global.gc?.()
    const r = run(rules, segments)
    if (rules === 0) baseline = r.mbps
    const ratio = r.mbps / baseline
    console.log(
      `${name.padEnd(28)} ${String(rules).padStart(5)} ${r.mbps.toFixed(0).padStart(7)} ${((r.mbps * 8) / 1000).toFixed(2).padStart(8)}` +
        ` ${ratio.toFixed(2).padStart(7)} ${r.buildMs.toFixed(0).padStart(10)} ${String(r.states).padStart(11)} ${String(r.alerts).padStart(8)}` +
        ` ${r.heapMB.toFixed(1).padStart(8)} ${r.compiledMB.toFixed(1).padStart(12)} ${r.heapAfterMB.toFixed(1).padStart(10)}` +
        (rules === 'et' ? `  (ET Open: ${r.loaded} rules loaded)` : ''),
    )
    results.push({
      traffic: name,
      rules,
      mbPerSec: Math.round(r.mbps),
      ratio: Number(ratio.toFixed(3)),
      buildMs: Math.round(r.buildMs),
      heapMB: Number(r.heapMB.toFixed(1)),
      heapAfterMB: Number(r.heapAfterMB.toFixed(1)),
      compiledMB: Number(r.compiledMB.toFixed(1)),
      loaded: r.loaded,
    })
  }
}
console.log(JSON.stringify({ bench: 'dpi', results }))
