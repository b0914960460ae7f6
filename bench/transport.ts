/**
 * Transport benchmark (not a test): what the wire codecs and the connection state machine cost on
 * one core, with no link in the way. Target (issue 2): ≥ 1 M frames/s of 1500 bytes, so that the
 * transport is never the bottleneck of a link the packet layer moves at 0.5–0.7 M frames/s.
 *
 *   npm run bench -- transport            (or: node --expose-gc dist/bench/transport.js)
 */
import { type ConnectionOptions, Delivery } from '../src/transport/config.ts'
import type { Connection } from '../src/transport/connection.ts'
import { Endpoint } from '../src/transport/endpoint.ts'
import { decodeTcpFrame, encodeTcpFrame, newTcpFrame, tcpFrameHeaderLength } from '../src/wire/frame.ts'
import { TCP_ACK } from '../src/wire/tcp.ts'

const gc = (globalThis as { gc?: () => void }).gc

interface Row {
  case: string
  frames: number
  seconds: number
  cpuSeconds: number
  framesPerSecond: number
  megabytesPerSecond: number
  nsPerFrame: number
  bytesAllocatedPerFrame: number
  /** For transfers: the share of the time spent receiving (B: decode, reassemble, deliver, ACK). */
  receiverNsPerFrame?: number
  senderNsPerFrame?: number
  /** For request/answer exchanges: frames (both ways) and bytes allocated per exchange. */
  framesPerExchange?: number
  bytesAllocatedPerExchange?: number
}

function measure(
  name: string,
  work: () => { frames: number; bytes: number; receiverMs?: number; exchanges?: number },
): Row {
  gc?.()
  const m0 = process.memoryUsage()
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  const { frames, bytes, receiverMs, exchanges } = work()
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(c0)
  const m1 = process.memoryUsage()
  const allocated = m1.heapUsed - m0.heapUsed + (m1.arrayBuffers - m0.arrayBuffers)
  return {
    case: name,
    frames,
    seconds: round(seconds, 3),
    cpuSeconds: round((cpu.user + cpu.system) / 1e6, 3),
    framesPerSecond: Math.round(frames / seconds),
    megabytesPerSecond: round(bytes / seconds / 1e6, 1),
    nsPerFrame: Math.round((seconds * 1e9) / frames),
    bytesAllocatedPerFrame: Math.max(0, Math.round(allocated / frames)),
    ...(receiverMs === undefined
      ? {}
      : {
          receiverNsPerFrame: Math.round((receiverMs * 1e6) / frames),
          senderNsPerFrame: Math.round(((seconds * 1000 - receiverMs) * 1e6) / frames),
        }),
    ...(exchanges === undefined
      ? {}
      : {
          framesPerExchange: round(frames / exchanges, 2),
          bytesAllocatedPerExchange: Math.max(0, Math.round(allocated / exchanges)),
        }),
  }
}

function round(v: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(v * f) / f
}

function codec(partial: boolean, n: number): { frames: number; bytes: number } {
  const tx = newTcpFrame()
  tx.ip.source = 0x0a00_0001
  tx.ip.destination = 0x0a00_0002
  tx.tcp.flags = TCP_ACK
  const o = tx.tcp.options
  Object.assign(o.vrio, { present: true, flags: 1, messageStart: 1, messageLength: 1_000_000 })
  o.hasTimestamp = true
  const header = tcpFrameHeaderLength(o)
  const payload = 1500 - 20 - (header - 14 - 20)
  const frame = Buffer.alloc(header + payload, 0xa5)
  const rx = newTcpFrame()
  let ok = 0
  for (let i = 0; i < n; i++) {
    tx.tcp.seq = i
    encodeTcpFrame(frame, tx, payload, partial)
    if (decodeTcpFrame(frame, rx, !partial) === undefined) ok++
  }
  if (ok !== n) throw new Error('decode failed')
  return { frames: n, bytes: n * frame.length }
}

/**
 * Two endpoints joined by a direct in-process hand-off (sealed, the default), A connected to B:
 * `exchange` hands each side what the other sent, one batch each way, and counts the frames.
 */
class DirectPair {
  readonly a: Endpoint
  readonly b: Endpoint
  readonly client: Connection
  /** Frames A sent to B, and B to A, handed over so far. */
  framesToB = 0
  framesToA = 0
  /** Time spent in B (receiving, and whatever its handlers did). */
  receiverMs = 0
  private readonly toB: Uint8Array[] = []
  private readonly toA: Uint8Array[] = []
  /** Frame memory of each side, reused once the other side has read its frames (as a link's arena). */
  private readonly arenaA = new Arena()
  private readonly arenaB = new Arena()
  /** Checksums taken as verified (offload). */
  private readonly verified: boolean

  constructor(
    options: Partial<ConnectionOptions>,
    verified: boolean,
    atB: (m: Uint8Array, c: Connection) => void,
    atA: (m: Uint8Array) => void,
  ) {
    this.verified = verified
    const key = Buffer.alloc(32, 0x42)
    this.a = new Endpoint({
      mac: 0xa,
      ip: 0x0a00_0001,
      sink: (f) => this.toB.push(f),
      allocate: this.arenaA.allocate,
      options,
      key,
    })
    this.b = new Endpoint({
      mac: 0xb,
      ip: 0x0a00_0002,
      sink: (f) => this.toA.push(f),
      allocate: this.arenaB.allocate,
      options,
      key,
      listenPort: 7860,
      accept: (_remote, c) => ({ message: (m) => atB(m, c) }),
    })
    this.client = this.a.connect({ mac: 0xb, ip: 0x0a00_0002, port: 7860 }, { message: atA })
    this.exchange()
    this.exchange()
    this.framesToA = this.framesToB = 0
  }

  exchange(): void {
    const t = performance.now()
    for (const f of this.toB) this.b.receive(f, this.verified)
    this.framesToB += this.toB.length
    this.toB.length = 0
    this.arenaA.used = 0
    this.b.flush()
    this.receiverMs += performance.now() - t
    for (const f of this.toA) this.a.receive(f, this.verified)
    this.framesToA += this.toA.length
    this.toA.length = 0
    this.arenaB.used = 0
    this.a.flush()
  }
}

/** Frame memory cut from one buffer, as the LinkDriver does; a new Buffer beyond it. */
class Arena {
  private readonly memory = Buffer.allocUnsafeSlow(64 * 1024 * 1024)
  used = 0
  readonly allocate = (size: number, headroom = 0): Uint8Array => {
    const at = this.used + headroom
    if (at + size > this.memory.length) return Buffer.allocUnsafe(headroom + size).subarray(headroom)
    this.used = at + size
    return this.memory.subarray(at, at + size)
  }
}

/** A → B: every frame is built, checksummed, parsed and reassembled. */
function transfer(messageSize: number, totalBytes: number, delivery: Delivery, offload: boolean) {
  const options = {
    checksumOffload: offload,
    maxBurst: 256,
    receiveBuffer: 16 * 1024 * 1024,
    sendBuffer: 32 * 1024 * 1024,
  }
  let received = 0
  const p = new DirectPair(
    options,
    offload,
    (m) => (received += m.length),
    () => {},
  )
  p.receiverMs = 0
  const message = new Uint8Array(messageSize).fill(7)
  let queued = 0
  return () => {
    while (received < totalBytes) {
      while (queued < totalBytes && p.client.send(message, delivery)) queued += messageSize
      p.exchange()
    }
    return { frames: p.framesToB, bytes: received, receiverMs: p.receiverMs }
  }
}

/**
 * Request and answer at queue depth 1, as a block read served from the page cache: a 64-byte
 * request, answered at once from the handler with 4 KiB (one GSO super-frame), the next request
 * sent after the answer arrived. Counts every frame both ways: 2 per exchange when ACKs ride on
 * the data.
 */
function requestAnswer(exchanges: number, offload: boolean) {
  const request = new Uint8Array(64).fill(1)
  const answer = new Uint8Array(4096).fill(2)
  let answers = 0
  const p = new DirectPair(
    { checksumOffload: offload, gsoMaxSize: 64_000 },
    offload,
    (_m, c) => void c.send(answer, Delivery.Reliable),
    () => void answers++,
  )
  return () => {
    const first = answers
    for (let i = 0; i < exchanges; i++) {
      p.client.send(request, Delivery.Reliable)
      p.exchange()
    }
    if (answers - first !== exchanges) throw new Error('answers missing')
    return {
      frames: p.framesToA + p.framesToB,
      bytes: exchanges * (request.length + answer.length),
      exchanges,
    }
  }
}

const rows: Row[] = []
const n = 300_000
rows.push(measure('codec: encode+decode 1500 B, full checksums', () => codec(false, n)))
rows.push(measure('codec: encode+decode 1500 B, checksum offload', () => codec(true, n)))
const total = 512 * 1024 * 1024
for (const offload of [false, true]) {
  const mode = offload ? 'offload' : 'full csum'
  rows.push(
    measure(
      `transfer: 1 MiB reliable messages, ${mode}`,
      transfer(1 << 20, total, Delivery.Reliable, offload),
    ),
  )
  rows.push(
    measure(
      `transfer: 64 KiB reliable messages, ${mode}`,
      transfer(1 << 16, total, Delivery.Reliable, offload),
    ),
  )
  rows.push(
    measure(
      `transfer: 1400 B best-effort messages, ${mode}`,
      transfer(1400, total / 2, Delivery.BestEffort, offload),
    ),
  )
}

for (const offload of [false, true]) {
  const mode = offload ? 'offload' : 'full csum'
  rows.push(measure(`request/answer: 64 B / 4 KiB, QD1, ${mode}`, requestAnswer(100_000, offload)))
}

const header = ['case', 'frames/s', 'MB/s', 'ns/frame', 'send ns/fr', 'recv ns/fr', 'B alloc/frame']
console.log(
  `${header[0].padEnd(52)}${header
    .slice(1)
    .map((h) => h.padStart(14))
    .join('')}`,
)
for (const r of rows) {
  const cells = [
    r.framesPerSecond,
    r.megabytesPerSecond,
    r.nsPerFrame,
    r.senderNsPerFrame ?? '',
    r.receiverNsPerFrame ?? '',
    r.bytesAllocatedPerFrame,
  ]
  console.log(`${r.case.padEnd(52)}${cells.map((v) => String(v).padStart(14)).join('')}`)
}
for (const r of rows) {
  if (r.framesPerExchange === undefined) continue
  console.log(
    `${r.case.padEnd(52)}frames/exchange ${r.framesPerExchange}   ns/exchange ${Math.round(r.nsPerFrame * r.framesPerExchange)}   B alloc/exchange ${r.bytesAllocatedPerExchange}`,
  )
}
console.log(JSON.stringify({ bench: 'transport', node: process.version, rows }))
