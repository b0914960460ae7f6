import { type ErrorCode, VrioError } from '../../errors.ts'
import { readU32, writeU16, writeU32 } from '../../wire/bytes.ts'
import {
  decodeMessageHeader,
  encodeMessageHeader,
  MESSAGE_HEADER_LENGTH,
  type MessageHeader,
  MessageType,
  newMessageHeader,
} from '../../wire/message-header.ts'

/**
 * Block messages (docs/protocol.md §8): virtio_blk requests carried in vrio messages. Pure codec,
 * no I/O. A request is the 32-byte message header, a 24-byte descriptor and, for a write, the data;
 * a response is the message header (status in its `status` field) and, for a successful read, the
 * data.
 *
 *   request descriptor (after the message header), big-endian:
 *     0  u8   op         BlockOp (virtio_blk request type numbers)
 *     1  u8   flags      BlockFlag bits
 *     2  u16  reserved   0
 *     4  u32  length     bytes to read / write / discard / zero (0 for flush)
 *     8  u64  offset     byte offset on the device, < 2^53 (0 for flush)
 *    16  u32  floor      lowest request id (low half) of this epoch the sender still has outstanding
 *    20  u32  reserved   0
 *
 * Header use: `device` = the IOhyp's handle of the device, `request` = (front-end epoch, request
 * id), `replyLength` = bytes of read data expected back (reads), or the most bytes of extents
 * the requester takes (Extents), `flags` = 0.
 *
 * A batch (header flag BATCH, §8.1b) carries 2 to MAX_BATCH whole requests of one device, each a
 * READ or a WRITE without FUA, back to back as its body, so a queue of small requests leaves in
 * one message; each is taken as if it had come alone, and their answers may come in batch
 * responses (§8.2b). An IOhyp that takes batches says so in `blk.attach` (`maxBatch`).
 *
 * vrio's own ops (numbers from 0x40, outside virtio_blk's): Extents (the allocation map of a
 * range; the reply carries 8-byte extents, see encodeExtents) and Prefetch (a read hint). A peer
 * that does not know them answers Unsupported.
 */

/** Request types: virtio_blk's VIRTIO_BLK_T_* numbers. */
export const BlockOp = {
  /** Read (VIRTIO_BLK_T_IN). */
  In: 0,
  /** Write (VIRTIO_BLK_T_OUT). */
  Out: 1,
  /** Make every completed write durable (VIRTIO_BLK_T_FLUSH). */
  Flush: 4,
  /** Discard / trim: the range's contents become unspecified (VIRTIO_BLK_T_DISCARD). */
  Discard: 11,
  /** The range reads as zeros afterwards (VIRTIO_BLK_T_WRITE_ZEROES). */
  WriteZeroes: 13,
  /** vrio: the allocation map (holes, zeros) of the range; the reply carries extents. */
  Extents: 0x40,
  /** vrio: the range will be read soon (NBD_CMD_CACHE): the IOhyp warms its cache. No data. */
  Prefetch: 0x41,
} as const
export type BlockOp = (typeof BlockOp)[keyof typeof BlockOp]

/** Descriptor flag bits. */
export const BlockFlag = {
  /** Forced unit access: durable when answered (Out, WriteZeroes). */
  Fua: 0x01,
  /** WriteZeroes may deallocate the range (virtio_blk's VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP). */
  Unmap: 0x02,
} as const

/** Response status (message header `status`): 0–2 are virtio_blk's, 0x10 and up vrio's. */
export const BlockStatus = {
  Ok: 0,
  IoError: 1,
  Unsupported: 2,
  OutOfRange: 0x10,
  ReadOnly: 0x11,
  NoSpace: 0x12,
  /** The device handle names no device served to this guest. */
  NoDevice: 0x13,
  /** The request is malformed (lengths, flags, reserved bits) or outside the id window. */
  BadRequest: 0x14,
  /** The request id lies below the floor already announced: it was answered before; not run. */
  Stale: 0x15,
  /** The back-end's queue is full (a front-end exceeded its announced queue depth). */
  Busy: 0x16,
} as const
export type BlockStatus = (typeof BlockStatus)[keyof typeof BlockStatus]

const BLOCK_DESCRIPTOR_LENGTH = 24
/** Message header plus descriptor: every request starts with these bytes. */
export const BLOCK_REQUEST_HEAD_LENGTH = MESSAGE_HEADER_LENGTH + BLOCK_DESCRIPTOR_LENGTH
export const BLOCK_RESPONSE_HEAD_LENGTH = MESSAGE_HEADER_LENGTH
/**
 * Request ids of one epoch that may be outstanding at once lie in [floor, floor + BLOCK_ID_WINDOW):
 * the front-end never sends an id at or above floor + window, so the back-end's record of
 * completed requests is one fixed-size ring per epoch.
 */
export const BLOCK_ID_WINDOW = 65_536
/** Largest request id; a front-end moves to a new epoch before passing it. */
export const MAX_REQUEST_ID = 0xffff_ffff
/** Block request and response message header flags. */
export const BlockMessageFlag = {
  /** The body is whole requests (a batch, §8.1b) or whole responses (a batch response, §8.2b). */
  Batch: 0x0001,
} as const
/** Most requests one batch carries (an IOhyp may announce fewer). */
export const MAX_BATCH = 64
/**
 * Longest batch, and longest batch response, this implementation sends, header included: one GSO
 * super-frame's worth on a 1500-byte MTU (62 656 bytes of payload), so that it is small requests
 * and answers that share a message (a large one's data is most of its frames: it gains nothing),
 * and so that a batch reaches the IOhyp's fast path in one frame.
 */
export const MAX_BATCH_BYTES = 60 * 1024
/** Bytes of one extent in an Extents reply: u32 length, u32 flags. */
export const EXTENT_LENGTH = 8
/** Most extents one Extents reply carries (its replyLength is at most this many × 8). */
export const MAX_REPLY_EXTENTS = 1024
/** Extent flag bits on the wire (NBD's NBD_STATE_HOLE, NBD_STATE_ZERO). */
const EXTENT_HOLE = 1
const EXTENT_ZERO = 2
const KNOWN_EXTENT_FLAGS = EXTENT_HOLE | EXTENT_ZERO

const KNOWN_FLAGS = BlockFlag.Fua | BlockFlag.Unmap

/** An opaque 64-bit handle as its two halves. */
export interface BlockHandle {
  high: number
  low: number
}

/** A decoded request descriptor. */
export interface BlockRequest {
  op: number
  flags: number
  length: number
  offset: number
  floor: number
  /** Where the write data starts in the message (Out only). */
  dataOffset: number
}

export function newBlockRequest(): BlockRequest {
  return { op: 0, flags: 0, length: 0, offset: 0, floor: 0, dataOffset: 0 }
}

function isKnownOp(op: number): boolean {
  return (
    op === BlockOp.In ||
    op === BlockOp.Out ||
    op === BlockOp.Flush ||
    op === BlockOp.Discard ||
    op === BlockOp.WriteZeroes ||
    op === BlockOp.Extents ||
    op === BlockOp.Prefetch
  )
}

/** Ops that change the device: answered from the back-end's record when duplicated. */
export function isMutatingOp(op: number): boolean {
  return op === BlockOp.Out || op === BlockOp.Discard || op === BlockOp.WriteZeroes
}

const scratch = newMessageHeader()

/**
 * Writes the message header and descriptor of a request (BLOCK_REQUEST_HEAD_LENGTH bytes) at
 * `offset`. For Out, the `length` data bytes follow as a separate chunk; `bodyLength` counts them.
 */
export function encodeBlockRequestHead(
  buf: Uint8Array,
  offset: number,
  device: BlockHandle,
  epoch: number,
  id: number,
  r: Readonly<Omit<BlockRequest, 'dataOffset'>> & { readonly replyLength?: number },
): number {
  const h = scratch
  h.type = MessageType.BlockRequest
  h.flags = 0
  h.bodyLength = BLOCK_DESCRIPTOR_LENGTH + (r.op === BlockOp.Out ? r.length : 0)
  h.deviceHigh = device.high
  h.deviceLow = device.low
  h.requestHigh = epoch
  h.requestLow = id
  h.replyLength = r.op === BlockOp.In ? r.length : r.op === BlockOp.Extents ? (r.replyLength ?? 0) : 0
  h.status = 0
  let o = encodeMessageHeader(buf, offset, h)
  buf[o] = r.op
  buf[o + 1] = r.flags
  writeU16(buf, o + 2, 0)
  writeU32(buf, o + 4, r.length)
  writeU32(buf, o + 8, Math.floor(r.offset / 0x1_0000_0000))
  writeU32(buf, o + 12, r.offset >>> 0)
  writeU32(buf, o + 16, r.floor)
  writeU32(buf, o + 20, 0)
  o += BLOCK_DESCRIPTOR_LENGTH
  return o
}

/** The header of a batch message of `type` (§8.1b, §8.2b): flag BATCH, request, replyLength and status 0. */
function encodeBatchHead(
  buf: Uint8Array,
  offset: number,
  type: number,
  device: BlockHandle,
  body: number,
): number {
  const h = scratch
  h.type = type
  h.flags = BlockMessageFlag.Batch
  h.bodyLength = body
  h.deviceHigh = device.high
  h.deviceLow = device.low
  h.requestHigh = 0
  h.requestLow = 0
  h.replyLength = 0
  h.status = 0
  return encodeMessageHeader(buf, offset, h)
}

/**
 * Writes the header of a batch for `device` whose requests (each as encodeBlockRequestHead writes
 * it, a WRITE's data after its head) are `bodyLength` bytes.
 */
export function encodeBlockBatchHead(
  buf: Uint8Array,
  offset: number,
  device: BlockHandle,
  bodyLength: number,
): number {
  return encodeBatchHead(buf, offset, MessageType.BlockRequest, device, bodyLength)
}

/**
 * Where each request of the batch `message` (header decoded into `h`, flag BATCH) starts, in
 * `starts` (its end is the next one's start, the last one's the message's end), and how many
 * there are; 0 when it is malformed: its own request, replyLength or status not zero, a body that
 * is not 2 to MAX_BATCH whole requests, or one of them not a READ (body: its descriptor alone) or
 * a WRITE of the batch's device (message version 1, type BlockRequest, header flags 0). Each
 * request is then checked as one that came alone (decodeBlockRequest: a WRITE's FUA flag, its data
 * length, its range). Never throws.
 */
export function batchCount(h: MessageHeader, message: Uint8Array, starts: number[]): number {
  if (h.type !== MessageType.BlockRequest || h.flags !== BlockMessageFlag.Batch) return 0
  if (h.requestHigh !== 0 || h.requestLow !== 0 || h.replyLength !== 0 || h.status !== 0) return 0
  if (h.bodyLength !== message.length - MESSAGE_HEADER_LENGTH) return 0
  let count = 0
  for (let at = MESSAGE_HEADER_LENGTH; at < message.length; count++) {
    if (count === MAX_BATCH || message.length - at < BLOCK_REQUEST_HEAD_LENGTH) return 0
    const body = readU32(message, at + 4)
    const op = message[at + MESSAGE_HEADER_LENGTH]
    if (
      // version 1, type BlockRequest, header flags 0
      readU32(message, at) !== (0x0100_0000 | (MessageType.BlockRequest << 16)) ||
      readU32(message, at + 8) !== h.deviceHigh ||
      readU32(message, at + 12) !== h.deviceLow ||
      !(op === BlockOp.In
        ? body === BLOCK_DESCRIPTOR_LENGTH
        : op === BlockOp.Out && body >= BLOCK_DESCRIPTOR_LENGTH) ||
      body > message.length - at - MESSAGE_HEADER_LENGTH
    )
      return 0
    starts[count] = at
    at += MESSAGE_HEADER_LENGTH + body
  }
  return count >= 2 ? count : 0
}

/** The bytes of the answer to the request at `at` of a batch (§8.2b): its header, and a READ's data. */
export function batchAnswerLength(message: Uint8Array, at: number): number {
  const read = message[at + MESSAGE_HEADER_LENGTH] === BlockOp.In
  return BLOCK_RESPONSE_HEAD_LENGTH + (read ? readU32(message, at + MESSAGE_HEADER_LENGTH + 4) : 0)
}

/** Writes the header of a batch response (§8.2b) for `device` whose responses are `bodyLength` bytes. */
export function encodeBlockBatchResponseHead(
  buf: Uint8Array,
  offset: number,
  device: BlockHandle,
  bodyLength: number,
): number {
  return encodeBatchHead(buf, offset, MessageType.BlockResponse, device, bodyLength)
}

/**
 * Whether `h` heads a batch response (§8.2b) for `device`: flag BATCH, request, replyLength and
 * status zero. Its responses are then read one by one with nextBatchedResponse.
 */
export function isBatchResponse(h: MessageHeader, device: BlockHandle): boolean {
  return (
    h.type === MessageType.BlockResponse &&
    h.flags === BlockMessageFlag.Batch &&
    h.deviceHigh === device.high &&
    h.deviceLow === device.low &&
    h.requestHigh === 0 &&
    h.requestLow === 0 &&
    h.replyLength === 0 &&
    h.status === 0
  )
}

/**
 * The response at `at` in the batch response `message` (header decoded into `out`): where it
 * ends, or -1 when no whole response of version 1 starts there. Never throws.
 */
export function nextBatchedResponse(message: Uint8Array, at: number, out: MessageHeader): number {
  if (message.length - at < MESSAGE_HEADER_LENGTH) return -1
  const end = at + MESSAGE_HEADER_LENGTH + readU32(message, at + 4)
  if (end > message.length || decodeMessageHeader(message, at, end, out) !== undefined) return -1
  return end
}

/**
 * Decodes the request in `message` (whose header is already decoded into `h`) into `out`. Returns
 * Ok, BadRequest (malformed: lengths that disagree with the header, unknown flag bits, non-zero
 * reserved bytes, an offset past 2^53) or Unsupported (an op this version does not know).
 * Never throws.
 */
export function decodeBlockRequest(h: MessageHeader, message: Uint8Array, out: BlockRequest): BlockStatus {
  if (h.type !== MessageType.BlockRequest) return BlockStatus.BadRequest
  if (message.length < BLOCK_REQUEST_HEAD_LENGTH || h.bodyLength !== message.length - MESSAGE_HEADER_LENGTH)
    return BlockStatus.BadRequest
  // A request's header flags and status are zero (unknown flags are refused, not ignored).
  if (h.flags !== 0 || h.status !== 0) return BlockStatus.BadRequest
  const o = MESSAGE_HEADER_LENGTH
  const op = message[o]
  const flags = message[o + 1]
  if (message[o + 2] !== 0 || message[o + 3] !== 0 || readU32(message, o + 20) !== 0)
    return BlockStatus.BadRequest
  const length = readU32(message, o + 4)
  const offsetHigh = readU32(message, o + 8)
  if (offsetHigh > 0x1f_ffff) return BlockStatus.BadRequest
  out.op = op
  out.flags = flags
  out.length = length
  out.offset = offsetHigh * 0x1_0000_0000 + readU32(message, o + 12)
  out.floor = readU32(message, o + 16)
  out.dataOffset = BLOCK_REQUEST_HEAD_LENGTH
  if (!isKnownOp(op)) return BlockStatus.Unsupported
  if (flags & ~KNOWN_FLAGS) return BlockStatus.BadRequest
  const dataBytes = message.length - BLOCK_REQUEST_HEAD_LENGTH
  switch (op) {
    case BlockOp.In:
      if (flags !== 0 || dataBytes !== 0 || h.replyLength !== length) return BlockStatus.BadRequest
      break
    case BlockOp.Out:
      if (flags & BlockFlag.Unmap || dataBytes !== length || h.replyLength !== 0)
        return BlockStatus.BadRequest
      break
    case BlockOp.Flush:
      if (flags !== 0 || dataBytes !== 0 || length !== 0 || out.offset !== 0 || h.replyLength !== 0)
        return BlockStatus.BadRequest
      break
    case BlockOp.Discard:
      if (flags !== 0 || dataBytes !== 0 || h.replyLength !== 0) return BlockStatus.BadRequest
      break
    case BlockOp.WriteZeroes:
      if (dataBytes !== 0 || h.replyLength !== 0) return BlockStatus.BadRequest
      break
    case BlockOp.Extents:
      if (
        flags !== 0 ||
        dataBytes !== 0 ||
        length === 0 ||
        h.replyLength < EXTENT_LENGTH ||
        h.replyLength > MAX_REPLY_EXTENTS * EXTENT_LENGTH ||
        h.replyLength % EXTENT_LENGTH !== 0
      )
        return BlockStatus.BadRequest
      break
    case BlockOp.Prefetch:
      if (flags !== 0 || dataBytes !== 0 || h.replyLength !== 0) return BlockStatus.BadRequest
      break
  }
  return BlockStatus.Ok
}

/**
 * Writes the 32-byte header of a response to the request whose header is `request` (its device and
 * request handles are echoed). `dataLength` is the read data that follows (successful reads only).
 */
export function encodeBlockResponseHead(
  buf: Uint8Array,
  offset: number,
  device: BlockHandle,
  requestHigh: number,
  requestLow: number,
  status: number,
  dataLength: number,
): number {
  const h = scratch
  h.type = MessageType.BlockResponse
  h.flags = 0
  h.bodyLength = dataLength
  h.deviceHigh = device.high
  h.deviceLow = device.low
  h.requestHigh = requestHigh
  h.requestLow = requestLow
  h.replyLength = 0
  h.status = status
  return encodeMessageHeader(buf, offset, h)
}

/**
 * Checks a response against what the request expects: a successful read carries exactly
 * `expectedData` bytes (with `upTo`, an Extents reply: at most that many), everything else none. Returns the data (a view into `message`, valid while
 * the message is), an empty view for data-less success, or undefined when the response is malformed.
 */
export function blockResponseData(
  h: MessageHeader,
  message: Uint8Array,
  expectedData: number,
  upTo = false,
): Uint8Array | undefined {
  if (h.type !== MessageType.BlockResponse || h.bodyLength !== message.length - MESSAGE_HEADER_LENGTH)
    return undefined
  // Flags and replyLength are zero in a response: unknown bits are refused, not ignored.
  if (h.flags !== 0 || h.replyLength !== 0) return undefined
  const data = h.bodyLength
  const ok = upTo ? data <= expectedData : data === expectedData
  if (h.status === BlockStatus.Ok ? !ok : data !== 0) return undefined
  return message.subarray(MESSAGE_HEADER_LENGTH)
}

/** One extent of an Extents reply: `length` bytes with EXTENT_HOLE / EXTENT_ZERO bits. */
export interface WireExtent {
  length: number
  flags: number
}

/**
 * The body of an Extents reply: per extent u32 length (> 0), u32 flags, big-endian. The caller
 * keeps the count within the request's replyLength / 8.
 */
export function encodeExtents(extents: readonly WireExtent[]): Uint8Array {
  const buf = Buffer.allocUnsafe(extents.length * EXTENT_LENGTH)
  for (let i = 0; i < extents.length; i++) {
    writeU32(buf, i * EXTENT_LENGTH, extents[i].length)
    writeU32(buf, i * EXTENT_LENGTH + 4, extents[i].flags)
  }
  return buf
}

/**
 * Decodes an Extents reply to a request for `length` bytes that took at most `replyLength` bytes:
 * at least one extent, whole 8-byte entries, each length > 0, together at most `length`, only
 * known flag bits. Undefined when it breaks any of these (the reply is malformed).
 */
export function decodeExtents(
  data: Uint8Array,
  length: number,
  replyLength: number,
): WireExtent[] | undefined {
  if (data.length === 0 || data.length % EXTENT_LENGTH !== 0 || data.length > replyLength) return undefined
  const out: WireExtent[] = []
  let covered = 0
  for (let at = 0; at < data.length; at += EXTENT_LENGTH) {
    const n = readU32(data, at)
    const flags = readU32(data, at + 4)
    if (n === 0 || flags & ~KNOWN_EXTENT_FLAGS) return undefined
    covered += n
    if (covered > length) return undefined
    out.push({ length: n, flags })
  }
  return out
}

/** The VrioError code a status maps to (the BlockDevice failure codes). */
export function blockStatusCode(status: number): ErrorCode {
  switch (status) {
    case BlockStatus.Unsupported:
      return 'unsupported'
    case BlockStatus.OutOfRange:
      return 'out-of-range'
    case BlockStatus.ReadOnly:
      return 'read-only'
    case BlockStatus.NoSpace:
      return 'no-space'
    case BlockStatus.NoDevice:
      return 'not-connected'
    default:
      return 'io-error'
  }
}

const STATUS_NAMES: Record<number, string> = {
  [BlockStatus.Ok]: 'ok',
  [BlockStatus.IoError]: 'I/O error',
  [BlockStatus.Unsupported]: 'unsupported request',
  [BlockStatus.OutOfRange]: 'beyond the end of the device',
  [BlockStatus.ReadOnly]: 'the device is read-only',
  [BlockStatus.NoSpace]: 'no space left on the backing store',
  [BlockStatus.NoDevice]: 'the IOhyp serves no such device',
  [BlockStatus.BadRequest]: 'malformed request',
  [BlockStatus.Stale]: 'stale request id',
  [BlockStatus.Busy]: 'the IOhyp queue is full',
}

function blockStatusName(status: number): string {
  return STATUS_NAMES[status] ?? `status ${status}`
}

/** The error a front-end reports for a non-OK status. */
export function blockStatusError(status: number, details: Record<string, unknown> = {}): VrioError {
  return new VrioError(blockStatusCode(status), `block request failed: ${blockStatusName(status)}`, {
    status,
    ...details,
  })
}

/** The status a back-end answers for a device failure (a VrioError code, or anything else: IoError). */
export function blockStatusOf(error: unknown): BlockStatus {
  const code = error instanceof VrioError ? error.code : undefined
  switch (code) {
    case 'out-of-range':
      return BlockStatus.OutOfRange
    case 'read-only':
      return BlockStatus.ReadOnly
    case 'no-space':
      return BlockStatus.NoSpace
    case 'unsupported':
      return BlockStatus.Unsupported
    default:
      return BlockStatus.IoError
  }
}

/**
 * Hands out message heads carved from 64 KiB slabs. A head given to the transport is referenced
 * until acknowledged, so it is never rewritten: a used-up slab is left to the transport and the GC,
 * and a new one taken — one allocation per 64 KiB of heads instead of one per message.
 */
export class HeadArena {
  private readonly slabSize: number
  private slab: Buffer
  private used = 0

  constructor(slabSize = 64 * 1024) {
    this.slabSize = slabSize
    this.slab = Buffer.allocUnsafeSlow(slabSize)
  }

  take(length: number): Uint8Array {
    if (this.used + length > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(Math.max(this.slabSize, length))
      this.used = 0
    }
    const head = this.slab.subarray(this.used, this.used + length)
    this.used += length
    return head
  }
}
