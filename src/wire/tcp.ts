import { readU16, readU32, writeU16, writeU32 } from './bytes.ts'
import { finishChecksum, foldSum, pseudoHeaderSum, sumWords } from './checksum.ts'
import type { DropReason } from './drop-reason.ts'
import { IP_PROTOCOL_TCP } from './ipv4.ts'

export const TCP_HEADER_LENGTH = 20

export const TCP_FIN = 0x01
export const TCP_SYN = 0x02
export const TCP_RST = 0x04
export const TCP_PSH = 0x08
export const TCP_ACK = 0x10

const OPT_EOL = 0
const OPT_NOP = 1
const OPT_MSS = 2
const OPT_WINDOW_SCALE = 3
const OPT_SACK_PERMITTED = 4
const OPT_SACK = 5
const OPT_TIMESTAMP = 8
/** RFC 6994 shared experimental option kind; vrio's options are told apart by their ExID. */
export const OPT_EXPERIMENTAL = 254
/** vrio's RFC 6994 experiment identifier ("vr"). */
export const VRIO_EXID = 0x7672
/** vrio option subtypes (the byte after the ExID). */
const VRIO_OPTION_HELLO = 1
export const VRIO_OPTION_SEGMENT = 2
const VRIO_OPTION_SEAL = 3
/** Hello of protocol version 1 (plaintext): kind, length, ExID, subtype, version. */
const VRIO_HELLO_OPTION_LENGTH = 6
/** Hello of protocol version 2 (sealed): one more byte, the cipher the opener chose. */
const VRIO_SEALED_HELLO_OPTION_LENGTH = 7
export const VRIO_SEGMENT_OPTION_LENGTH = 14
/** SEAL: kind, length, ExID (2), subtype, epoch (1), counter (4), tag (12). */
export const VRIO_SEAL_OPTION_LENGTH = 22
/** Offset of the tag inside the SEAL option. */
export const SEAL_TAG_OFFSET = 10
/** Most SACK blocks a segment can carry; fewer when other options need the space. */
export const MAX_SACK_BLOCKS = 4

/**
 * Per-segment vrio metadata, carried in a TCP option so that it is copied onto every segment when
 * the kernel splits a GSO super-frame and kept when GRO merges segments (merging needs identical
 * options). The byte offset inside the message is `seq - messageStart`.
 */
export interface VrioSegmentOption {
  present: boolean
  /** Delivery class and flags; see transport/delivery.ts. */
  flags: number
  /** Sequence number of the message's first byte. */
  messageStart: number
  /** Length of the whole message in bytes. */
  messageLength: number
}

/**
 * The SEAL option of a sealed connection (protocol version 2): the frame's key epoch (low 8 bits),
 * its counter (low 32 bits) and, at `offset + SEAL_TAG_OFFSET` in the frame, its AEAD tag.
 */
export interface SealOption {
  present: boolean
  epoch: number
  counter: number
  /** Where the option starts in the buffer; set by encoding and decoding. */
  offset: number
}

export interface TcpOptions {
  /** -1 when absent. */
  mss: number
  /** -1 when absent. */
  windowScale: number
  sackPermitted: boolean
  hasTimestamp: boolean
  tsValue: number
  tsEcho: number
  /** Number of SACK blocks in `sackBlocks` (pairs of left and right edges). */
  sackCount: number
  sackBlocks: number[]
  /** vrio protocol version from a SYN's hello option; -1 when absent. */
  vrioVersion: number
  /** Cipher byte of a version-2 hello (1 AES-256-GCM, 2 ChaCha20-Poly1305); -1 when absent. */
  vrioCipher: number
  vrio: VrioSegmentOption
  seal: SealOption
}

export interface TcpHeader {
  sourcePort: number
  destinationPort: number
  seq: number
  ack: number
  /** Header length in bytes, options included. */
  headerLength: number
  flags: number
  window: number
  checksum: number
  urgent: number
  options: TcpOptions
}

function newTcpOptions(): TcpOptions {
  return {
    mss: -1,
    windowScale: -1,
    sackPermitted: false,
    hasTimestamp: false,
    tsValue: 0,
    tsEcho: 0,
    sackCount: 0,
    sackBlocks: [0, 0, 0, 0, 0, 0, 0, 0],
    vrioVersion: -1,
    vrioCipher: -1,
    vrio: { present: false, flags: 0, messageStart: 0, messageLength: 0 },
    seal: { present: false, epoch: 0, counter: 0, offset: -1 },
  }
}

export function newTcpHeader(): TcpHeader {
  return {
    sourcePort: 0,
    destinationPort: 0,
    seq: 0,
    ack: 0,
    headerLength: TCP_HEADER_LENGTH,
    flags: 0,
    window: 0,
    checksum: 0,
    urgent: 0,
    options: newTcpOptions(),
  }
}

export function clearTcpOptions(o: TcpOptions): void {
  o.mss = -1
  o.windowScale = -1
  o.sackPermitted = false
  o.hasTimestamp = false
  o.tsValue = 0
  o.tsEcho = 0
  o.sackCount = 0
  o.vrioVersion = -1
  o.vrioCipher = -1
  o.vrio.present = false
  o.vrio.flags = 0
  o.vrio.messageStart = 0
  o.vrio.messageLength = 0
  o.seal.present = false
  o.seal.epoch = 0
  o.seal.counter = 0
  o.seal.offset = -1
}

/** Bytes the options of `o` take on the wire, padded to a multiple of four. */
export function tcpOptionsLength(o: TcpOptions): number {
  let n = 0
  if (o.vrio.present) n += VRIO_SEGMENT_OPTION_LENGTH
  if (o.mss >= 0) n += 4
  if (o.sackPermitted) n += 2
  if (o.hasTimestamp) n += 10
  if (o.windowScale >= 0) n += 4 // with its NOP
  if (o.vrioVersion >= 0) n += o.vrioCipher >= 0 ? VRIO_SEALED_HELLO_OPTION_LENGTH : VRIO_HELLO_OPTION_LENGTH
  if (o.seal.present) n += VRIO_SEAL_OPTION_LENGTH
  if (o.sackCount > 0) n += 2 + 8 * o.sackCount
  return (n + 3) & ~3
}

/**
 * Writes the options of `o` at `offset`, padded with NOPs to a multiple of four, in the order a
 * Linux stack uses for the standard ones (MSS, SACK-permitted, timestamps, window scale), vrio's
 * own first on data segments so that header plus timestamps stays 4-byte aligned without padding.
 * SEAL comes after the others but before SACK blocks (which then need no aligning NOPs, so a pure
 * ACK holds SEAL and two blocks in 40 bytes); its tag is written as zeros, to be filled in by
 * sealing, and `o.seal.offset` is set to where it starts. Returns the offset after the options.
 */
export function encodeTcpOptions(buf: Uint8Array, offset: number, o: TcpOptions): number {
  let p = offset
  if (o.vrio.present) {
    buf[p] = OPT_EXPERIMENTAL
    buf[p + 1] = VRIO_SEGMENT_OPTION_LENGTH
    writeU16(buf, p + 2, VRIO_EXID)
    buf[p + 4] = VRIO_OPTION_SEGMENT
    buf[p + 5] = o.vrio.flags
    writeU32(buf, p + 6, o.vrio.messageStart)
    writeU32(buf, p + 10, o.vrio.messageLength)
    p += VRIO_SEGMENT_OPTION_LENGTH
  }
  if (o.mss >= 0) {
    buf[p] = OPT_MSS
    buf[p + 1] = 4
    writeU16(buf, p + 2, o.mss)
    p += 4
  }
  if (o.sackPermitted) {
    buf[p] = OPT_SACK_PERMITTED
    buf[p + 1] = 2
    p += 2
  }
  if (o.hasTimestamp) {
    buf[p] = OPT_TIMESTAMP
    buf[p + 1] = 10
    writeU32(buf, p + 2, o.tsValue)
    writeU32(buf, p + 6, o.tsEcho)
    p += 10
  }
  if (o.windowScale >= 0) {
    buf[p] = OPT_NOP
    buf[p + 1] = OPT_WINDOW_SCALE
    buf[p + 2] = 3
    buf[p + 3] = o.windowScale
    p += 4
  }
  if (o.vrioVersion >= 0) {
    buf[p] = OPT_EXPERIMENTAL
    buf[p + 1] = VRIO_HELLO_OPTION_LENGTH
    writeU16(buf, p + 2, VRIO_EXID)
    buf[p + 4] = VRIO_OPTION_HELLO
    buf[p + 5] = o.vrioVersion
    if (o.vrioCipher >= 0) {
      buf[p + 1] = VRIO_SEALED_HELLO_OPTION_LENGTH
      buf[p + 6] = o.vrioCipher
      p += VRIO_SEALED_HELLO_OPTION_LENGTH
    } else {
      p += VRIO_HELLO_OPTION_LENGTH
    }
  }
  if (o.seal.present) {
    o.seal.offset = p
    buf[p] = OPT_EXPERIMENTAL
    buf[p + 1] = VRIO_SEAL_OPTION_LENGTH
    writeU16(buf, p + 2, VRIO_EXID)
    buf[p + 4] = VRIO_OPTION_SEAL
    buf[p + 5] = o.seal.epoch & 0xff
    writeU32(buf, p + 6, o.seal.counter >>> 0)
    buf.fill(0, p + SEAL_TAG_OFFSET, p + VRIO_SEAL_OPTION_LENGTH)
    p += VRIO_SEAL_OPTION_LENGTH
  }
  if (o.sackCount > 0) {
    // Two NOPs keep the blocks 4-byte aligned, as Linux does (not after SEAL: no room for them).
    if (((p - offset) & 3) === 0 && !o.seal.present) {
      buf[p++] = OPT_NOP
      buf[p++] = OPT_NOP
    }
    buf[p] = OPT_SACK
    buf[p + 1] = 2 + 8 * o.sackCount
    p += 2
    for (let i = 0; i < o.sackCount * 2; i++, p += 4) writeU32(buf, p, o.sackBlocks[i])
  }
  while (((p - offset) & 3) !== 0) buf[p++] = OPT_NOP
  return p
}

/** Parses the options in `buf[start, end)` into `out`. Unknown kinds are skipped, as TCP requires. */
export function decodeTcpOptions(
  buf: Uint8Array,
  start: number,
  end: number,
  out: TcpOptions,
): DropReason | undefined {
  clearTcpOptions(out)
  let p = start
  while (p < end) {
    const kind = buf[p]
    if (kind === OPT_EOL) break
    if (kind === OPT_NOP) {
      p++
      continue
    }
    if (p + 1 >= end) return 'bad-tcp-option'
    const length = buf[p + 1]
    if (length < 2 || p + length > end) return 'bad-tcp-option'
    switch (kind) {
      case OPT_MSS:
        if (length !== 4) return 'bad-tcp-option'
        out.mss = readU16(buf, p + 2)
        break
      case OPT_WINDOW_SCALE:
        if (length !== 3) return 'bad-tcp-option'
        out.windowScale = Math.min(buf[p + 2], 14) // RFC 7323: larger values are treated as 14
        break
      case OPT_SACK_PERMITTED:
        if (length !== 2) return 'bad-tcp-option'
        out.sackPermitted = true
        break
      case OPT_TIMESTAMP:
        if (length !== 10) return 'bad-tcp-option'
        out.hasTimestamp = true
        out.tsValue = readU32(buf, p + 2)
        out.tsEcho = readU32(buf, p + 6)
        break
      case OPT_SACK: {
        const count = (length - 2) / 8
        if (!Number.isInteger(count) || count < 1 || count > MAX_SACK_BLOCKS) return 'bad-tcp-option'
        out.sackCount = count
        for (let i = 0; i < count * 2; i++) out.sackBlocks[i] = readU32(buf, p + 2 + 4 * i)
        break
      }
      case OPT_EXPERIMENTAL: {
        if (length < 4 || readU16(buf, p + 2) !== VRIO_EXID) break // someone else's experiment
        const reason = decodeVrioOption(buf, p, length, out)
        if (reason) return reason
        break
      }
    }
    p += length
  }
  return undefined
}

function decodeVrioOption(
  buf: Uint8Array,
  p: number,
  length: number,
  out: TcpOptions,
): DropReason | undefined {
  if (length < 5) return 'bad-vrio-option'
  const subtype = buf[p + 4]
  if (subtype === VRIO_OPTION_HELLO) {
    if (length === VRIO_HELLO_OPTION_LENGTH) {
      out.vrioVersion = buf[p + 5]
      out.vrioCipher = -1
    } else if (length === VRIO_SEALED_HELLO_OPTION_LENGTH) {
      out.vrioVersion = buf[p + 5]
      out.vrioCipher = buf[p + 6]
    } else {
      return 'bad-vrio-option'
    }
  } else if (subtype === VRIO_OPTION_SEAL) {
    if (length !== VRIO_SEAL_OPTION_LENGTH || out.seal.present) return 'bad-vrio-option'
    out.seal.present = true
    out.seal.epoch = buf[p + 5]
    out.seal.counter = readU32(buf, p + 6)
    out.seal.offset = p
  } else if (subtype === VRIO_OPTION_SEGMENT) {
    if (length !== VRIO_SEGMENT_OPTION_LENGTH) return 'bad-vrio-option'
    out.vrio.present = true
    out.vrio.flags = buf[p + 5]
    out.vrio.messageStart = readU32(buf, p + 6)
    out.vrio.messageLength = readU32(buf, p + 10)
  } else {
    return 'bad-vrio-option'
  }
  return undefined
}

/**
 * Writes a TCP header (options included) at `offset` with a zero checksum; returns the offset after
 * it, where the payload goes. `headerLength` and `checksum` of `h` are ignored.
 */
export function encodeTcpHeader(buf: Uint8Array, offset: number, h: TcpHeader): number {
  const o = offset
  writeU16(buf, o, h.sourcePort)
  writeU16(buf, o + 2, h.destinationPort)
  writeU32(buf, o + 4, h.seq)
  writeU32(buf, o + 8, h.ack)
  const end = encodeTcpOptions(buf, o + TCP_HEADER_LENGTH, h.options)
  const headerLength = end - o
  buf[o + 12] = (headerLength / 4) << 4
  buf[o + 13] = h.flags
  writeU16(buf, o + 14, h.window)
  buf[o + 16] = 0
  buf[o + 17] = 0
  writeU16(buf, o + 18, h.urgent)
  return end
}

/**
 * Fills in the checksum of the TCP segment at `buf[offset, offset + length)`. With `partial`, only
 * the pseudo-header sum is stored, uncomplemented: the form a NIC or the kernel finishes when a
 * frame is handed over with checksum offload (virtio_net_hdr NEEDS_CSUM).
 */
export function setTcpChecksum(
  buf: Uint8Array,
  offset: number,
  length: number,
  source: number,
  destination: number,
  partial = false,
): void {
  buf[offset + 16] = 0
  buf[offset + 17] = 0
  const pseudo = pseudoHeaderSum(source, destination, IP_PROTOCOL_TCP, length)
  const value = partial ? foldSum(pseudo) : finishChecksum(sumWords(buf, offset, offset + length, pseudo))
  writeU16(buf, offset + 16, value)
}

export function verifyTcpChecksum(
  buf: Uint8Array,
  offset: number,
  length: number,
  source: number,
  destination: number,
): boolean {
  const pseudo = pseudoHeaderSum(source, destination, IP_PROTOCOL_TCP, length)
  return foldSum(sumWords(buf, offset, offset + length, pseudo)) === 0xffff
}

/** Reads the TCP header at `buf[offset, end)` (end = end of the IP packet) into `out`. */
export function decodeTcpHeader(
  buf: Uint8Array,
  offset: number,
  end: number,
  out: TcpHeader,
): DropReason | undefined {
  if (end - offset < TCP_HEADER_LENGTH) return 'truncated-tcp'
  const o = offset
  const headerLength = (buf[o + 12] >>> 4) * 4
  if (headerLength < TCP_HEADER_LENGTH || headerLength > end - offset) return 'bad-tcp-header-length'
  out.sourcePort = readU16(buf, o)
  out.destinationPort = readU16(buf, o + 2)
  out.seq = readU32(buf, o + 4)
  out.ack = readU32(buf, o + 8)
  out.headerLength = headerLength
  out.flags = buf[o + 13]
  out.window = readU16(buf, o + 14)
  out.checksum = readU16(buf, o + 16)
  out.urgent = readU16(buf, o + 18)
  return decodeTcpOptions(buf, o + TCP_HEADER_LENGTH, o + headerLength, out.options)
}
