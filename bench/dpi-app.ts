import dnsPacket from 'dns-packet'
import { createDpi } from '../src/services/dpi/index.ts'
import type { NetContext } from '../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../src/wire/packet.ts'
import { TCP_ACK, TCP_PSH } from '../src/wire/tcp.ts'
import { seededRandom } from '../test/support/random.ts'
import { etOpenText } from './support/dpi-rules.ts'
import { pages, requestBytes, responseBytes } from './support/http-text.ts'

const seconds = Number(process.argv[2] ?? 2)
const random = seededRandom(0xa99)
const ALNUM = 'abcdefghijklmnopqrstuvwxyz0123456789'
const token = (n: number) =>
  Array.from({ length: n }, () => ALNUM[Math.floor(random() * ALNUM.length)]).join('')
const WORDS = ['index', 'html', 'script', 'image', 'search', 'result', 'page', 'account', 'user', 'data']
const pick = <T>(a: readonly T[]): T => a[Math.floor(random() * a.length)]

interface Segment {
  frame: Buffer
  conn: number
  fromClient: boolean
  length: number
  tcp: boolean
  /** The last segment of a request/response pair (counted as one request). */
  last?: boolean
}

function frame(conn: number, fromClient: boolean, payload: Buffer, tcp: boolean): Buffer {
  const l4 = tcp ? 20 : 8
  const f = Buffer.alloc(34 + l4 + payload.length)
  f.writeUIntBE(0x020000000001, 0, 6)
  f.writeUIntBE(0x020000000002, 6, 6)
  f.writeUInt16BE(0x0800, 12)
  f[14] = 0x45
  f.writeUInt16BE(20 + l4 + payload.length, 16)
  f[22] = 64
  f[23] = tcp ? 6 : 17
  const client = [10, 0, (conn >> 8) & 0xff, conn & 0xff]
  const server = [93, 184, 216, 34]
  f.set(fromClient ? client : server, 26)
  f.set(fromClient ? server : client, 30)
  const port = tcp ? 80 : 53
  f.writeUInt16BE(fromClient ? 40000 + conn : port, 34)
  f.writeUInt16BE(fromClient ? port : 40000 + conn, 36)
  if (tcp) {
    f[46] = 5 << 4
    f[47] = TCP_ACK | TCP_PSH
  } else {
    f.writeUInt16BE(8 + payload.length, 38)
  }
  payload.copy(f, 34 + l4)
  return f
}

function httpTraffic(totalBytes: number): Segment[] {
  const out: Segment[] = []
  let bytes = 0
  for (let round = 0; bytes < totalBytes; round++) {
    for (let conn = 0; conn < 64 && bytes < totalBytes; conn++) {
      const req = Buffer.from(
        `GET /${pick(WORDS)}/${pick(WORDS)}.php?id=${Math.floor(random() * 1e6)} HTTP/1.1\r\nHost: www.${pick(WORDS)}.example\r\n` +
          `User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/${round % 7}\r\nAccept: text/html\r\nCookie: s=${token(16)}\r\n\r\n`,
        'latin1',
      )
      out.push({ frame: frame(conn, true, req, true), conn, fromClient: true, length: req.length, tcp: true })
      const size = 1460 * (1 + (round % 4)) - 80
      let body = '<html><body>'
      while (body.length < size) body += `${pick(WORDS)} `
      const resp = Buffer.from(
        `HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: ${size}\r\n\r\n${body.slice(0, size)}`,
        'latin1',
      )
      for (let at = 0; at < resp.length; at += 1460) {
        const part = resp.subarray(at, at + 1460)
        out.push({
          frame: frame(conn, false, part, true),
          conn,
          fromClient: false,
          length: part.length,
          tcp: true,
        })
        bytes += part.length + 54
      }
      bytes += req.length + 54
    }
  }
  return out
}

/**
 * nic-services case 6's traffic (bench/support/http-text.ts, as http-peer's Node client and server
 * send it): keep-alive requests with browser-like headers (a form POST every 8th), text/html
 * responses of 1–16 KiB, on 8 connections, cut into segments of `mss` bytes.
 */
function httpPeerTraffic(requests: number, mss: number): Segment[] {
  const out: Segment[] = []
  const rnd = seededRandom(0x4378)
  const bodies = pages(seededRandom(0x4877))
  for (let n = 0; n < requests; n++) {
    const conn = n % 8
    const push = (data: Buffer, fromClient: boolean, last: boolean) => {
      for (let at = 0; at < data.length; at += mss) {
        const part = data.subarray(at, at + mss)
        out.push({
          frame: frame(conn, fromClient, part, true),
          conn,
          fromClient,
          length: part.length,
          tcp: true,
          last: last && at + mss >= data.length,
        })
      }
    }
    push(requestBytes(rnd, n), true, false)
    push(responseBytes(bodies[n % bodies.length]), false, true)
  }
  return out
}

function dnsTraffic(count: number): Segment[] {
  const out: Segment[] = []
  for (let k = 0; k < count; k++) {
    const q = dnsPacket.encode({
      type: 'query',
      id: k & 0xffff,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: 'A', name: `${token(8)}.${pick(WORDS)}.example` }],
    })
    out.push({
      frame: frame(k % 64, true, q, false),
      conn: k % 64,
      fromClient: true,
      length: q.length,
      tcp: false,
    })
  }
  return out
}

function httpRules(count: number): string {
  const lines: string[] = []
  const kinds = [
    (t: string) => `http.uri; content:"/${t}"`,
    (t: string) => `http.host; content:"${t}.example"`,
    (t: string) => `http.user_agent; content:"${t}"; nocase`,
    (t: string) => `flow:to_client; file_data; content:"${t}"`,
    (t: string) => `http.method; content:"GET"; http.uri; content:"${t}.php"; pcre:"/${t}\\.php\\?id=\\d+/U"`,
  ]
  for (let i = 0; i < count; i++)
    lines.push(
      `alert http any any -> any any (msg:"a${i}"; ${kinds[i % kinds.length](token(7))}; sid:${3_000_000 + i};)`,
    )
  return lines.join('\n')
}

function dnsRules(count: number): string {
  const lines: string[] = []
  for (let i = 0; i < count; i++)
    lines.push(
      `alert dns any any -> any any (msg:"d${i}"; dns.query; content:"${token(8)}"; nocase; sid:${4_000_000 + i};)`,
    )
  return lines.join('\n')
}

function run(
  rules: string,
  segments: Segment[],
): { fps: number; mbps: number; nsPerFrame: number; usPerRequest: number; buildMs: number } {
  const t0 = performance.now()
  const dpi = createDpi(rules, 'bench.rules', { strict: false, vars: { HOME_NET: '10.0.0.0/8' } })
  const buildMs = performance.now() - t0
  const ctx: NetContext = { now: 0, reply: () => {}, event: () => {} }
  const p = newPacket()
  const seq = new Uint32Array(64 * 2)
  let bytes = 0
  let frames = 0
  let requests = 0
  const cpu0 = process.cpuUsage()
  const end = performance.now() + seconds * 1000
  while (performance.now() < end) {
    for (const s of segments) {
      if (s.tcp) {
        const k = s.conn * 2 + (s.fromClient ? 0 : 1)
        s.frame.writeUInt32BE(seq[k], 38)
        seq[k] = (seq[k] + s.length) >>> 0
      }
      dissectPacket(s.frame, p)
      dpi.inspect(s.frame, p, s.fromClient ? 'from-guest' : 'to-guest', ctx)
      bytes += s.frame.length
      frames++
      if (s.last) requests++
    }
  }
  const cpu = process.cpuUsage(cpu0)
  const cpuSeconds = (cpu.user + cpu.system) / 1e6
  return {
    fps: frames / cpuSeconds,
    mbps: bytes / 1e6 / cpuSeconds,
    nsPerFrame: (cpuSeconds * 1e9) / frames,
    usPerRequest: (cpuSeconds * 1e6) / requests,
    buildMs,
  }
}

const results: Record<string, unknown>[] = []
console.log(
  'traffic             rules                frames/cpu-s  MB/cpu-s  ns/frame  µs/req  ratio  build ms',
)
const cases: Array<[string, Segment[], Array<[string, string]>]> = [
  [
    'HTTP, MSS frames',
    httpTraffic(8 * 1024 * 1024),
    [
      ['0', ''],
      ['1 app rule', httpRules(1)],
      ['1000 http rules', httpRules(1000)],
      ['10000 http rules', httpRules(10_000)],
      ['ET Open (loadable)', etOpenText()],
    ],
  ],
  [
    'HTTP, http-peer',
    httpPeerTraffic(2000, Number(process.env.BENCH_DPI_MSS ?? 1448)),
    [
      ['0', ''],
      ['ET Open (loadable)', etOpenText()],
    ],
  ],
  [
    'DNS queries, UDP',
    dnsTraffic(20_000),
    [
      ['0', ''],
      ['1 app rule', dnsRules(1)],
      ['1000 dns rules', dnsRules(1000)],
      ['10000 dns rules', dnsRules(10_000)],
    ],
  ],
]
const onlyRules = process.env.BENCH_DPI_RULES?.split(',')
const onlyTraffic = process.env.BENCH_DPI_TRAFFIC?.split(',').map(Number)
for (const [t, [traffic, segments, variants]] of cases.entries()) {
  if (onlyTraffic && !onlyTraffic.includes(t + 1)) continue
  let baseline = 0
  for (const [label, rules] of variants) {
    if (onlyRules && !onlyRules.includes(label.split(' ')[0].toLowerCase())) continue
    global.gc?.()
    const r = run(rules, segments)
    if (label === '0') baseline = r.fps
    const ratio = r.fps / baseline
    console.log(
      `${traffic.padEnd(19)} ${label.padEnd(20)} ${r.fps.toFixed(0).padStart(12)} ${r.mbps.toFixed(0).padStart(9)}` +
        ` ${r.nsPerFrame.toFixed(0).padStart(9)} ${(Number.isFinite(r.usPerRequest) ? r.usPerRequest.toFixed(1) : '-').padStart(7)} ${ratio.toFixed(2).padStart(6)} ${r.buildMs.toFixed(0).padStart(9)}`,
    )
    results.push({
      traffic,
      rules: label,
      framesPerSec: Math.round(r.fps),
      nsPerFrame: Math.round(r.nsPerFrame),
      ...(Number.isFinite(r.usPerRequest) && { usPerRequest: Number(r.usPerRequest.toFixed(1)) }),
      ratio: Number(ratio.toFixed(3)),
    })
  }
}
console.log(JSON.stringify({ bench: 'dpi-app', results }))
