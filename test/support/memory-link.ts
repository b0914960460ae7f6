import { readU32, writeU16, writeU32 } from '../../src/wire/bytes.ts'
import { decodeTcpFrame, newTcpFrame } from '../../src/wire/frame.ts'
import { encodeIPv4 } from '../../src/wire/ipv4.ts'
import { setTcpChecksum, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from '../../src/wire/tcp.ts'
import { ETHERNET_HEADER_LENGTH } from '../../src/wire/ethernet.ts'

/** Faults a MemoryLink injects, each an independent per-frame probability unless stated. */
export interface FaultModel {
  loss: number
  duplicate: number
  /** Probability that a frame is held back by `reorderDelay` ms, so later frames overtake it. */
  reorder: number
  reorderDelay: number
  /** Probability that one byte of the frame is flipped (the checksum must catch it). */
  corrupt: number
  /** One-way delay in ms, and uniform jitter added to it. */
  delay: number
  jitter: number
  /** Probability that a frame is merged with the next ones of the same message, as GRO does. */
  gro: number
  /** Frames longer than this (Ethernet header excluded) are dropped, like an MTU on a real link. */
  mtu: number
}

export const NO_FAULTS: FaultModel = {
  loss: 0,
  duplicate: 0,
  reorder: 0,
  reorderDelay: 2,
  corrupt: 0,
  delay: 0.05,
  jitter: 0,
  gro: 0,
  mtu: 65_535,
}

interface InFlight {
  at: number
  seq: number
  to: 0 | 1
  frame: Uint8Array
}

export interface LinkStats {
  sent: number
  delivered: number
  lost: number
  duplicated: number
  corrupted: number
  reordered: number
  merged: number
  oversize: number
}

/**
 * An in-memory Ethernet link between two sides (0 and 1) with seeded faults, driven by a virtual
 * clock. It performs GSO segmentation the way the kernel does, so the transport's super-frames can
 * be tested without a kernel.
 */
export class MemoryLink {
  readonly stats: LinkStats = {
    sent: 0,
    delivered: 0,
    lost: 0,
    duplicated: 0,
    corrupted: 0,
    reordered: 0,
    merged: 0,
    oversize: 0,
  }
  /** Every frame put on the wire (after GSO), in order, with its time: for pcap files. */
  readonly capture: { at: number; frame: Uint8Array }[] | undefined
  /** Called with a copy of every frame put on the wire (before faults), and its destination side. */
  tap: ((to: 0 | 1, frame: Buffer) => void) | undefined
  private queue: InFlight[] = []
  private order = 0

  private readonly clock: { now: number }
  private readonly random: () => number
  private readonly faults: FaultModel

  constructor(
    clock: { now: number },
    random: () => number,
    faults: FaultModel = NO_FAULTS,
    captureFrames = false,
  ) {
    this.clock = clock
    this.random = random
    this.faults = faults
    this.capture = captureFrames ? [] : undefined
  }

  /**
   * A frame sink for side `from`. GSO super-frames are split as the kernel does, or with
   * `splitGso` false handed over whole, as a veth pair or bridge does (then no MTU applies to them).
   */
  sinkFor(from: 0 | 1, splitGso = true): (frame: Uint8Array, gsoSize: number) => void {
    return (frame, gsoSize) => {
      if (gsoSize > 0 && !splitGso) {
        this.put((1 - from) as 0 | 1, frame, true)
        return
      }
      const frames = gsoSize > 0 ? gsoSplit(frame, gsoSize) : [frame]
      for (const f of frames) this.put((1 - from) as 0 | 1, f)
    }
  }

  private put(to: 0 | 1, frame: Uint8Array, superFrame = false): void {
    const f = this.faults
    const r = this.random
    this.stats.sent++
    // Copies: a sealed receiver decrypts the frame it is given in place.
    if (this.capture || this.tap) {
      const copy = Buffer.from(frame)
      this.capture?.push({ at: this.clock.now, frame: copy })
      this.tap?.(to, Buffer.from(copy))
    }
    if (!superFrame && frame.length - ETHERNET_HEADER_LENGTH > f.mtu) {
      this.stats.oversize++
      return
    }
    if (r() < f.loss) {
      this.stats.lost++
      return
    }
    const copies = r() < f.duplicate ? 2 : 1
    if (copies === 2) this.stats.duplicated++
    for (let i = 0; i < copies; i++) {
      let data = frame
      if (r() < f.corrupt) {
        data = Uint8Array.from(frame)
        const at = Math.floor(r() * data.length)
        data[at] ^= 1 + Math.floor(r() * 255)
        this.stats.corrupted++
      }
      let at = this.clock.now + f.delay + r() * f.jitter
      if (r() < f.reorder) {
        at += f.reorderDelay * r()
        this.stats.reordered++
      }
      this.insert({ at, seq: this.order++, to, frame: data })
    }
  }

  private insert(e: InFlight): void {
    const q = this.queue
    let i = q.length
    while (i > 0 && (q[i - 1].at > e.at || (q[i - 1].at === e.at && q[i - 1].seq > e.seq))) i--
    q.splice(i, 0, e)
  }

  /** Time of the next delivery, or Infinity. */
  nextDelivery(): number {
    return this.queue.length > 0 ? this.queue[0].at : Number.POSITIVE_INFINITY
  }

  /** Removes and returns the frames due by the current time, grouped by destination side. */
  takeDue(): [Uint8Array[], Uint8Array[]] {
    const due: [Uint8Array[], Uint8Array[]] = [[], []]
    const now = this.clock.now
    while (this.queue.length > 0 && this.queue[0].at <= now) {
      const e = this.queue.shift()!
      due[e.to].push(e.frame)
      this.stats.delivered++
    }
    if (this.faults.gro > 0) {
      for (const side of [0, 1] as const)
        due[side] = groMerge(due[side], this.random, this.faults.gro, this.stats)
    }
    return due
  }
}

/** Splits a TCP super-frame into segments of `gsoSize` payload bytes, as the kernel's GSO does. */
export function gsoSplit(frame: Uint8Array, gsoSize: number): Uint8Array[] {
  const f = newTcpFrame()
  if (decodeTcpFrame(frame, f, false)) return [frame]
  const header = f.payloadOffset
  const out: Uint8Array[] = []
  const flags = f.tcp.flags
  for (let off = 0, i = 0; off < f.payloadLength; off += gsoSize, i++) {
    const n = Math.min(gsoSize, f.payloadLength - off)
    const last = off + n >= f.payloadLength
    const seg = new Uint8Array(header + n)
    seg.set(frame.subarray(0, header))
    seg.set(frame.subarray(header + off, header + off + n), header)
    writeU32(seg, f.tcpOffset + 4, (f.tcp.seq + off) >>> 0)
    seg[f.tcpOffset + 13] = last ? flags : flags & ~(TCP_PSH | TCP_FIN)
    rewriteLengths(seg, f.ip, f.tcpOffset, (f.ip.identification + i) & 0xffff)
    out.push(seg)
  }
  return out
}

/** Merges runs of contiguous segments with identical headers but for seq, the way GRO does. */
function groMerge(
  frames: Uint8Array[],
  random: () => number,
  probability: number,
  stats: LinkStats,
): Uint8Array[] {
  const out: Uint8Array[] = []
  const a = newTcpFrame()
  const b = newTcpFrame()
  let i = 0
  while (i < frames.length) {
    let current = frames[i++]
    while (i < frames.length && random() < probability) {
      if (decodeTcpFrame(current, a, true) || decodeTcpFrame(frames[i], b, true)) break
      if (!mergeable(current, a, frames[i], b)) break
      const merged = new Uint8Array(current.length + b.payloadLength)
      merged.set(current)
      merged.set(frames[i].subarray(b.payloadOffset, b.payloadOffset + b.payloadLength), current.length)
      merged[a.tcpOffset + 13] = b.tcp.flags
      rewriteLengths(merged, a.ip, a.tcpOffset, a.ip.identification)
      current = merged
      stats.merged++
      i++
    }
    out.push(current)
  }
  return out
}

function mergeable(
  x: Uint8Array,
  a: ReturnType<typeof newTcpFrame>,
  y: Uint8Array,
  b: ReturnType<typeof newTcpFrame>,
): boolean {
  if (a.payloadLength === 0 || b.payloadLength === 0) return false
  if ((a.tcp.flags | b.tcp.flags) & (TCP_SYN | TCP_FIN | TCP_RST) || a.tcp.flags & TCP_PSH) return false
  if (a.tcp.headerLength !== b.tcp.headerLength || a.ip.source !== b.ip.source) return false
  if (a.tcp.sourcePort !== b.tcp.sourcePort || a.tcp.destinationPort !== b.tcp.destinationPort) return false
  if ((a.tcp.seq + a.payloadLength) >>> 0 !== b.tcp.seq || a.tcp.ack !== b.tcp.ack) return false
  const optStart = 20
  for (let k = optStart; k < a.tcp.headerLength; k++)
    if (x[a.tcpOffset + k] !== y[b.tcpOffset + k]) return false
  return readU32(x, a.tcpOffset + 8) === readU32(y, b.tcpOffset + 8)
}

function rewriteLengths(
  frame: Uint8Array,
  ip: ReturnType<typeof newTcpFrame>['ip'],
  tcpOffset: number,
  id: number,
): void {
  const totalLength = frame.length - ETHERNET_HEADER_LENGTH
  encodeIPv4(frame, ETHERNET_HEADER_LENGTH, { ...ip, totalLength, identification: id })
  writeU16(frame, tcpOffset + 16, 0)
  setTcpChecksum(frame, tcpOffset, frame.length - tcpOffset, ip.source, ip.destination)
}
