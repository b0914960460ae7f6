/**
 * Re-joining the pieces of a split sealed record (docs/protocol.md, "Sealed segments"): where a
 * link cuts a GSO super-frame into MSS pieces (TSO, software GSO with checksum offload off), every
 * piece carries the record's SEAL option and fails verification alone. Such pieces are staged here,
 * per (epoch, counter), until a contiguous run of them ending with PSH rebuilds a frame that
 * verifies. Bounded: a few records, 64 KiB of payload each; the oldest is evicted and its pieces
 * are counted `authFailed` then, like every piece that never joins.
 */
import { writeU16 } from '../wire/bytes.ts'
import { decodeTcpFrame, IP_OFFSET, newTcpFrame, type TcpFrame } from '../wire/frame.ts'
import { TCP_FIN, TCP_PSH } from '../wire/tcp.ts'
import type { ChannelSeal, SealCounters } from './seal.ts'

/** Records being re-joined at once, per connection. */
const REJOIN_MAX_RECORDS = 4
/** Payload bytes staged per record (a record is one IPv4 packet). */
const REJOIN_MAX_BYTES = 65_535
/** Pieces staged per record. */
const REJOIN_MAX_PIECES = 128

interface Piece {
  seq: number
  flags: number
  /** Copy of the frame's headers, Ethernet to TCP options. */
  header: Uint8Array
  tcpOffset: number
  payload: Uint8Array
}

interface Pending {
  key: number
  pieces: Piece[]
  bytes: number
}

export class SealRejoiner {
  private readonly seal: ChannelSeal
  private readonly counters: SealCounters
  /** Oldest first. */
  private pending: Pending[] = []

  constructor(seal: ChannelSeal, counters: SealCounters) {
    this.seal = seal
    this.counters = counters
  }

  /** Pieces staged now (for tests). */
  get stagedPieces(): number {
    let n = 0
    for (const p of this.pending) n += p.pieces.length
    return n
  }

  /**
   * Stages a frame with payload that failed verification alone ('authFailed', ciphertext
   * restored). Returns the re-joined frame, verified and decrypted, when this piece completes one.
   */
  stage(buf: Uint8Array, f: TcpFrame): { frame: Uint8Array; f: TcpFrame } | undefined {
    const s = f.tcp.options.seal
    const key = (s.epoch & 0xff) * 0x1_0000_0000 + (s.counter >>> 0)
    let p = this.pending.find((x) => x.key === key)
    const seq = f.tcp.seq >>> 0
    const length = f.payloadLength
    if (p) {
      if (
        p.bytes + length > REJOIN_MAX_BYTES ||
        p.pieces.length >= REJOIN_MAX_PIECES ||
        p.pieces.some((x) => overlaps(x.seq, x.payload.length, seq, length))
      ) {
        this.counters.authFailed++
        return undefined
      }
    } else {
      if (length > REJOIN_MAX_BYTES) {
        this.counters.authFailed++
        return undefined
      }
      if (this.pending.length >= REJOIN_MAX_RECORDS) this.evict(this.pending.shift()!)
      p = { key, pieces: [], bytes: 0 }
      this.pending.push(p)
    }
    const piece: Piece = {
      seq,
      flags: f.tcp.flags,
      header: Uint8Array.prototype.slice.call(buf, 0, f.payloadOffset),
      tcpOffset: f.tcpOffset,
      payload: Uint8Array.prototype.slice.call(buf, f.payloadOffset, f.payloadOffset + length),
    }
    p.pieces.push(piece)
    p.bytes += length
    this.counters.piecesStaged++
    return this.attempt(p, piece)
  }

  /** Counts what is still staged as failed (the connection ended). */
  destroy(): void {
    for (const p of this.pending) this.counters.authFailed += p.pieces.length
    this.pending = []
  }

  private evict(p: Pending): void {
    this.counters.authFailed += p.pieces.length
  }

  /** Tries the contiguous run through `added` when it ends with PSH: bounded, one AEAD pass. */
  private attempt(p: Pending, added: Piece): { frame: Uint8Array; f: TcpFrame } | undefined {
    const run = [added]
    for (let first = added; ; ) {
      const before = p.pieces.find((x) => (x.seq + x.payload.length) >>> 0 === first.seq)
      if (!before) break
      run.unshift(before)
      first = before
    }
    for (let last = added; !(last.flags & TCP_PSH); ) {
      const after = p.pieces.find((x) => x.seq === (last.seq + last.payload.length) >>> 0)
      if (!after) break
      run.push(after)
      last = after
    }
    const first = run[0]
    const last = run[run.length - 1]
    if (run.length < 2 || !(last.flags & TCP_PSH)) return undefined
    // As a split leaves them: pieces of one size without PSH, then the last one, no larger.
    const size = first.payload.length
    for (let i = 0; i < run.length - 1; i++)
      if (run[i].payload.length !== size || run[i].flags & (TCP_PSH | TCP_FIN)) return undefined
    if (last.payload.length > size) return undefined
    const headerLength = first.header.length
    let total = headerLength
    for (const x of run) total += x.payload.length
    if (total - IP_OFFSET > 0xffff) return undefined
    const frame = new Uint8Array(total)
    frame.set(first.header)
    let at = headerLength
    for (const x of run) {
      frame.set(x.payload, at)
      at += x.payload.length
    }
    frame[first.tcpOffset + 13] = first.flags | (last.flags & (TCP_PSH | TCP_FIN))
    writeU16(frame, IP_OFFSET + 2, total - IP_OFFSET)
    const f = newTcpFrame()
    if (decodeTcpFrame(frame, f, false)) return undefined
    const why = this.seal.tryOpen(frame, f, false)
    if (why === 'authFailed') return undefined
    this.pending.splice(this.pending.indexOf(p), 1)
    if (why) {
      // Its counter is already seen, or its epoch gone: none of the pieces will ever join.
      this.counters[why] += p.pieces.length
      return undefined
    }
    this.counters.recordsRejoined++
    // Pieces staged under this key outside the run (forged or duplicated) never join.
    this.counters.authFailed += p.pieces.length - run.length
    return { frame, f }
  }
}

function overlaps(a: number, aLength: number, b: number, bLength: number): boolean {
  const d = (b - a) | 0
  return d < aLength && -d < bLength
}
