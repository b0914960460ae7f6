import { readU16, readU32, writeU16, writeU32 } from './bytes.ts'

/**
 * The 32-byte header at the start of every vrio message (the transport carries messages; this is
 * the first thing inside one). All fields big-endian.
 *
 *   0  u8   version        MESSAGE_VERSION
 *   1  u8   type           MessageType
 *   2  u16  flags          type-specific
 *   4  u32  bodyLength     bytes after this header
 *   8  u64  device         opaque handle chosen by the side that owns the device
 *  16  u64  request        opaque handle chosen by the side that sends the request
 *  24  u32  replyLength    bytes the sender expects back (0: no reply expected)
 *  28  u16  status         0 = OK, else a type-specific error
 *  30  u16  reserved       zero
 *
 * 64-bit handles travel as two u32 halves so the data path never allocates a BigInt; the owner of
 * a handle decides what the halves mean (e.g. a table slot and a random tag) and validates both.
 */
export const MESSAGE_HEADER_LENGTH = 32
const MESSAGE_VERSION = 1

export const MessageType = {
  /** Session set-up and authentication (channel layer). */
  Hello: 0x01,
  Auth: 0x02,
  /** Control messages between IOhyp and guest (authenticated JSON; see src/session). */
  Control: 0x10,
  /** Block device requests and responses (virtio_blk semantics). */
  BlockRequest: 0x20,
  BlockResponse: 0x21,
  /** One network frame with its virtio_net_hdr. */
  NetFrame: 0x30,
} as const
export type MessageType = (typeof MessageType)[keyof typeof MessageType]

export interface MessageHeader {
  version: number
  type: number
  flags: number
  bodyLength: number
  deviceHigh: number
  deviceLow: number
  requestHigh: number
  requestLow: number
  replyLength: number
  status: number
}

export function newMessageHeader(): MessageHeader {
  return {
    version: MESSAGE_VERSION,
    type: 0,
    flags: 0,
    bodyLength: 0,
    deviceHigh: 0,
    deviceLow: 0,
    requestHigh: 0,
    requestLow: 0,
    replyLength: 0,
    status: 0,
  }
}

export type MessageHeaderDropReason =
  | 'truncated-message-header'
  | 'bad-message-version'
  | 'bad-message-length'

/** Writes `h` at `offset`; returns the offset after the header. */
export function encodeMessageHeader(buf: Uint8Array, offset: number, h: MessageHeader): number {
  const o = offset
  buf[o] = h.version
  buf[o + 1] = h.type
  writeU16(buf, o + 2, h.flags)
  writeU32(buf, o + 4, h.bodyLength)
  writeU32(buf, o + 8, h.deviceHigh)
  writeU32(buf, o + 12, h.deviceLow)
  writeU32(buf, o + 16, h.requestHigh)
  writeU32(buf, o + 20, h.requestLow)
  writeU32(buf, o + 24, h.replyLength)
  writeU16(buf, o + 28, h.status)
  writeU16(buf, o + 30, 0)
  return o + MESSAGE_HEADER_LENGTH
}

/**
 * Reads the header of the message `buf[offset, end)` into `out`. The body length must match the
 * bytes present exactly: a message is always whole when it reaches this decoder.
 */
export function decodeMessageHeader(
  buf: Uint8Array,
  offset: number,
  end: number,
  out: MessageHeader,
): MessageHeaderDropReason | undefined {
  if (end - offset < MESSAGE_HEADER_LENGTH) return 'truncated-message-header'
  const o = offset
  if (buf[o] !== MESSAGE_VERSION) return 'bad-message-version'
  const bodyLength = readU32(buf, o + 4)
  if (bodyLength !== end - offset - MESSAGE_HEADER_LENGTH) return 'bad-message-length'
  out.version = buf[o]
  out.type = buf[o + 1]
  out.flags = readU16(buf, o + 2)
  out.bodyLength = bodyLength
  out.deviceHigh = readU32(buf, o + 8)
  out.deviceLow = readU32(buf, o + 12)
  out.requestHigh = readU32(buf, o + 16)
  out.requestLow = readU32(buf, o + 20)
  out.replyLength = readU32(buf, o + 24)
  out.status = readU16(buf, o + 28)
  return undefined
}

/** A handle's two halves as one BigInt, for logs, JSON and tests (never on the data path). */
export function joinHandle(high: number, low: number): bigint {
  return (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0)
}

export function splitHandle(handle: bigint): [high: number, low: number] {
  return [Number((handle >> 32n) & 0xffff_ffffn), Number(handle & 0xffff_ffffn)]
}
