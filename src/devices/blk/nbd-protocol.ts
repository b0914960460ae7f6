/**
 * The NBD wire protocol (fixed newstyle handshake, simple and structured replies) as pure codecs:
 * constants, encoders that return ready-to-send buffers, and bounds-checked decoders that report
 * malformed input instead of throwing; then what the server's modules share: its limits, the export a
 * connection is attached to and its counters, and the errno a device failure is answered with. No
 * I/O here; nbd-server.ts drives it.
 *
 * Reference: the NBD protocol document (NetworkBlockDevice/nbd, doc/proto.md). All integers are
 * big-endian. 64-bit cookies (handles) travel as two u32 halves so the data path never needs a
 * BigInt; 64-bit offsets and sizes are plain numbers (exact below 2^53, which covers any export).
 */
import { VrioError } from '../../errors.ts'
import { readU16, readU32, writeU16, writeU32 } from '../../wire/bytes.ts'
import type { BlockDevice } from './device.ts'

/** 'NBDMAGIC' */
const NBD_MAGIC = [0x4e42444d, 0x41474943] as const
/** 'IHAVEOPT': the newstyle magic, also the prefix of every option the client sends. */
export const NBD_OPTS_MAGIC = [0x49484156, 0x454f5054] as const
/** Prefix of every option reply. */
const NBD_REP_MAGIC = [0x0003e889, 0x045565a9] as const
export const NBD_REQUEST_MAGIC = 0x25609513
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef

const GREETING_LENGTH = 18
export const CLIENT_FLAGS_LENGTH = 4
export const OPTION_HEADER_LENGTH = 16
const OPTION_REPLY_HEADER_LENGTH = 20
export const REQUEST_HEADER_LENGTH = 28
const SIMPLE_REPLY_HEADER_LENGTH = 16
const STRUCTURED_REPLY_HEADER_LENGTH = 20
/** Structured header plus the 8-byte offset of an OFFSET_DATA chunk. */
const OFFSET_DATA_HEADER_LENGTH = 28
/** Zero padding after NBD_OPT_EXPORT_NAME's reply unless NO_ZEROES was negotiated. */
const EXPORT_NAME_ZEROES = 124
/** Strings (export names, messages) MUST NOT be longer than this. */
const MAX_STRING_LENGTH = 4096

/** Handshake flags (server, 16 bits). */
export const HandshakeFlag = {
  FixedNewstyle: 1 << 0,
  NoZeroes: 1 << 1,
} as const

/** Client flags (32 bits). */
export const ClientFlag = {
  FixedNewstyle: 1 << 0,
  NoZeroes: 1 << 1,
} as const

/** Transmission flags (16 bits). */
export const TransmissionFlag = {
  HasFlags: 1 << 0,
  ReadOnly: 1 << 1,
  SendFlush: 1 << 2,
  SendFua: 1 << 3,
  Rotational: 1 << 4,
  SendTrim: 1 << 5,
  SendWriteZeroes: 1 << 6,
  SendDf: 1 << 7,
  CanMultiConn: 1 << 8,
  SendResize: 1 << 9,
  SendCache: 1 << 10,
  SendFastZero: 1 << 11,
} as const

export const Option = {
  ExportName: 1,
  Abort: 2,
  List: 3,
  PeekExport: 4,
  StartTls: 5,
  Info: 6,
  Go: 7,
  StructuredReply: 8,
  ListMetaContext: 9,
  SetMetaContext: 10,
  ExtendedHeaders: 11,
} as const

const ERR = 0x80000000
export const OptionReply = {
  Ack: 1,
  Server: 2,
  Info: 3,
  MetaContext: 4,
  ErrUnsup: ERR + 1,
  ErrPolicy: ERR + 2,
  ErrInvalid: ERR + 3,
  ErrPlatform: ERR + 4,
  ErrTlsReqd: ERR + 5,
  ErrUnknown: ERR + 6,
  ErrShutdown: ERR + 7,
  ErrBlockSizeReqd: ERR + 8,
  ErrTooBig: ERR + 9,
} as const

export const InfoType = {
  Export: 0,
  Name: 1,
  Description: 2,
  BlockSize: 3,
} as const

export const Command = {
  Read: 0,
  Write: 1,
  Disc: 2,
  Flush: 3,
  Trim: 4,
  Cache: 5,
  WriteZeroes: 6,
  BlockStatus: 7,
  Resize: 8,
} as const

export const CommandFlag = {
  Fua: 1 << 0,
  NoHole: 1 << 1,
  Df: 1 << 2,
  ReqOne: 1 << 3,
  FastZero: 1 << 4,
  PayloadLen: 1 << 5,
} as const

export const ReplyFlag = {
  Done: 1 << 0,
} as const

/**
 * The base:allocation metadata context. Its status bits, NBD_STATE_HOLE (1) and NBD_STATE_ZERO (2),
 * are the channel's extent flags (protocol.ts) unchanged.
 */
export const BASE_ALLOCATION = 'base:allocation'

export const ReplyType = {
  None: 0,
  OffsetData: 1,
  OffsetHole: 2,
  BlockStatus: 5,
  Error: 0x8001,
  ErrorOffset: 0x8002,
} as const

/** The error values NBD allows in replies (not the host's errno numbering, though they agree on Linux). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const
export type NbdErrno = (typeof NbdErrno)[keyof typeof NbdErrno]

const ERRNO_NAMES = new Map<number, string>(Object.entries(NbdErrno).map(([k, v]) => [v, k]))

/** 'EIO' for 5, and so on; `E<number>` for values outside the list. */
export function nbdErrnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`
}

const COMMAND_NAMES = new Map<number, string>([
  [Command.Read, 'read'],
  [Command.Write, 'write'],
  [Command.Disc, 'disconnect'],
  [Command.Flush, 'flush'],
  [Command.Trim, 'trim'],
  [Command.Cache, 'cache'],
  [Command.WriteZeroes, 'writeZeroes'],
  [Command.BlockStatus, 'blockStatus'],
  [Command.Resize, 'resize'],
])

/** Lower-camel name of a command type ('read', 'writeZeroes', ...); 'other' for unknown ones. */
export function commandName(type: number): string {
  return COMMAND_NAMES.get(type) ?? 'other'
}

// ---------------------------------------------------------------------------------------------
// 64-bit helpers

/** Reads a big-endian u64 as a number; exact below 2^53, larger values come out larger anyway. */
export function readU64(buf: Uint8Array, offset: number): number {
  return readU32(buf, offset) * 0x100000000 + readU32(buf, offset + 4)
}

export function writeU64(buf: Uint8Array, offset: number, value: number): void {
  writeU32(buf, offset, Math.floor(value / 0x100000000) >>> 0)
  writeU32(buf, offset + 4, value >>> 0)
}

function matches(buf: Uint8Array, offset: number, magic: readonly [number, number]): boolean {
  return readU32(buf, offset) === magic[0] && readU32(buf, offset + 4) === magic[1]
}

function writeMagic(buf: Uint8Array, offset: number, magic: readonly [number, number]): void {
  writeU32(buf, offset, magic[0])
  writeU32(buf, offset + 4, magic[1])
}

const utf8 = new TextDecoder('utf-8', { fatal: true })
const encoder = new TextEncoder()

/** Decodes an NBD string: valid UTF-8, no NUL, at most MAX_STRING_LENGTH bytes. */
export function decodeString(bytes: Uint8Array): string | undefined {
  if (bytes.length > MAX_STRING_LENGTH || bytes.includes(0)) return undefined
  try {
    return utf8.decode(bytes)
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake

/** S: 'NBDMAGIC', 'IHAVEOPT', 16-bit handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.alloc(GREETING_LENGTH)
  writeMagic(buf, 0, NBD_MAGIC)
  writeMagic(buf, 8, NBD_OPTS_MAGIC)
  writeU16(buf, 16, handshakeFlags)
  return buf
}

export interface OptionHeader {
  option: number
  length: number
}

/** C: 'IHAVEOPT', u32 option, u32 data length. Undefined when the magic is wrong. */
export function decodeOptionHeader(buf: Uint8Array, offset = 0): OptionHeader | undefined {
  if (!matches(buf, offset, NBD_OPTS_MAGIC)) return undefined
  return { option: readU32(buf, offset + 8), length: readU32(buf, offset + 12) }
}

/** S: reply magic, u32 option, u32 reply type, u32 length, data. */
export function encodeOptionReply(option: number, type: number, data?: Uint8Array | string): Buffer {
  const payload = typeof data === 'string' ? encoder.encode(data) : (data ?? new Uint8Array(0))
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_LENGTH + payload.length)
  writeMagic(buf, 0, NBD_REP_MAGIC)
  writeU32(buf, 8, option)
  writeU32(buf, 12, type)
  writeU32(buf, 16, payload.length)
  buf.set(payload, OPTION_REPLY_HEADER_LENGTH)
  return buf
}

/** NBD_REP_SERVER data: u32 name length, name, optional description. */
export function encodeServerEntry(name: string, description = ''): Uint8Array {
  const n = encoder.encode(name)
  const d = encoder.encode(description)
  const buf = new Uint8Array(4 + n.length + d.length)
  writeU32(buf, 0, n.length)
  buf.set(n, 4)
  buf.set(d, 4 + n.length)
  return buf
}

/** NBD_REP_INFO data for NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags. */
export function encodeInfoExport(size: number, transmissionFlags: number): Uint8Array {
  const buf = new Uint8Array(12)
  writeU16(buf, 0, InfoType.Export)
  writeU64(buf, 2, size)
  writeU16(buf, 10, transmissionFlags)
  return buf
}

/** NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE: u16 type, u32 minimum, preferred, maximum. */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Uint8Array {
  const buf = new Uint8Array(14)
  writeU16(buf, 0, InfoType.BlockSize)
  writeU32(buf, 2, minimum)
  writeU32(buf, 6, preferred)
  writeU32(buf, 10, maximum)
  return buf
}

/** NBD_REP_INFO data for NBD_INFO_NAME or NBD_INFO_DESCRIPTION: u16 type, string. */
export function encodeInfoString(type: number, text: string): Uint8Array {
  const t = encoder.encode(text)
  const buf = new Uint8Array(2 + t.length)
  writeU16(buf, 0, type)
  buf.set(t, 2)
  return buf
}

/** NBD_REP_META_CONTEXT data: u32 context id, the context's name. */
export function encodeMetaContext(id: number, name: string): Uint8Array {
  const n = encoder.encode(name)
  const buf = new Uint8Array(4 + n.length)
  writeU32(buf, 0, id)
  buf.set(n, 4)
  return buf
}

/** The answer to NBD_OPT_EXPORT_NAME: u64 size, u16 flags, 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES))
  writeU64(buf, 0, size)
  writeU16(buf, 8, transmissionFlags)
  return buf
}

export type Decoded<T> = ({ ok: true } & T) | { ok: false; message: string }

/** Data of NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 count, count × u16 info type. */
export function decodeInfoRequest(data: Uint8Array): Decoded<{ name: string; requests: number[] }> {
  if (data.length < 6) return { ok: false, message: 'option data shorter than 6 bytes' }
  const nameLength = readU32(data, 0)
  if (nameLength > data.length - 6) return { ok: false, message: 'export name length exceeds the option' }
  const name = decodeString(data.subarray(4, 4 + nameLength))
  if (name === undefined) return { ok: false, message: 'export name is not a valid NBD string' }
  const count = readU16(data, 4 + nameLength)
  if (data.length !== 6 + nameLength + 2 * count)
    return { ok: false, message: 'information request count does not match the option length' }
  const requests: number[] = []
  for (let i = 0; i < count; i++) requests.push(readU16(data, 6 + nameLength + 2 * i))
  return { ok: true, name, requests }
}

/**
 * Data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: u32 name length, name,
 * u32 query count, then per query u32 length and string.
 */
export function decodeMetaContextRequest(data: Uint8Array): Decoded<{ name: string; queries: string[] }> {
  let at = 0
  const u32 = (): number | undefined => {
    if (at + 4 > data.length) return undefined
    const v = readU32(data, at)
    at += 4
    return v
  }
  const str = (): string | undefined => {
    const n = u32()
    if (n === undefined || n > data.length - at) return undefined
    const s = decodeString(data.subarray(at, at + n))
    at += n
    return s
  }
  const name = str()
  if (name === undefined) return { ok: false, message: 'malformed export name' }
  const count = u32()
  if (count === undefined) return { ok: false, message: 'missing query count' }
  // Every query takes at least 4 bytes, so a count the data cannot hold is refused before the loop.
  if (count > (data.length - at) / 4) return { ok: false, message: 'query count exceeds the option' }
  const queries: string[] = []
  for (let i = 0; i < count; i++) {
    const q = str()
    if (q === undefined) return { ok: false, message: `malformed query ${i}` }
    queries.push(q)
  }
  if (at !== data.length) return { ok: false, message: 'trailing bytes after the queries' }
  return { ok: true, name, queries }
}

// ---------------------------------------------------------------------------------------------
// Transmission

export interface NbdRequest {
  flags: number
  type: number
  cookieHigh: number
  cookieLow: number
  offset: number
  length: number
}

export function newRequest(): NbdRequest {
  return { flags: 0, type: 0, cookieHigh: 0, cookieLow: 0, offset: 0, length: 0 }
}

/**
 * C: u32 magic, u16 flags, u16 type, u64 cookie, u64 offset, u32 length. Fills `out`; false (and
 * `out` untouched) when the magic is wrong.
 */
export function decodeRequest(buf: Uint8Array, offset: number, out: NbdRequest): boolean {
  if (readU32(buf, offset) !== NBD_REQUEST_MAGIC) return false
  out.flags = readU16(buf, offset + 4)
  out.type = readU16(buf, offset + 6)
  out.cookieHigh = readU32(buf, offset + 8)
  out.cookieLow = readU32(buf, offset + 12)
  out.offset = readU64(buf, offset + 16)
  out.length = readU32(buf, offset + 24)
  return true
}

/** S: u32 magic, u32 error, u64 cookie (read data, if any, follows separately). */
export function encodeSimpleReply(cookieHigh: number, cookieLow: number, error: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_LENGTH)
  writeU32(buf, 0, NBD_SIMPLE_REPLY_MAGIC)
  writeU32(buf, 4, error)
  writeU32(buf, 8, cookieHigh)
  writeU32(buf, 12, cookieLow)
  return buf
}

function writeStructuredHeader(
  buf: Uint8Array,
  flags: number,
  type: number,
  cookieHigh: number,
  cookieLow: number,
  length: number,
): void {
  writeU32(buf, 0, NBD_STRUCTURED_REPLY_MAGIC)
  writeU16(buf, 4, flags)
  writeU16(buf, 6, type)
  writeU32(buf, 8, cookieHigh)
  writeU32(buf, 12, cookieLow)
  writeU32(buf, 16, length)
}

/**
 * Header of an NBD_REPLY_TYPE_OFFSET_DATA chunk carrying `dataLength` bytes read at `offset`
 * (the data follows separately). `dataLength` must be 1..2^32-9.
 */
export function encodeOffsetDataHeader(
  cookieHigh: number,
  cookieLow: number,
  offset: number,
  dataLength: number,
  done: boolean,
): Buffer {
  const buf = Buffer.allocUnsafe(OFFSET_DATA_HEADER_LENGTH)
  writeStructuredHeader(
    buf,
    done ? ReplyFlag.Done : 0,
    ReplyType.OffsetData,
    cookieHigh,
    cookieLow,
    8 + dataLength,
  )
  writeU64(buf, 20, offset)
  return buf
}

/** An NBD_REPLY_TYPE_NONE chunk with DONE set: success with nothing (more) to say. */
export function encodeStructuredNone(cookieHigh: number, cookieLow: number): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_LENGTH)
  writeStructuredHeader(buf, ReplyFlag.Done, ReplyType.None, cookieHigh, cookieLow, 0)
  return buf
}

/**
 * An NBD_REPLY_TYPE_ERROR chunk (DONE set): u32 error, u16 message length, message. The message
 * is cut (on a character boundary) to fit in 4096 bytes.
 */
export function encodeStructuredError(
  cookieHigh: number,
  cookieLow: number,
  error: number,
  message: string,
): Buffer {
  const text = truncateUtf8(message, MAX_STRING_LENGTH)
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_LENGTH + 6 + text.length)
  writeStructuredHeader(buf, ReplyFlag.Done, ReplyType.Error, cookieHigh, cookieLow, 6 + text.length)
  writeU32(buf, 20, error)
  writeU16(buf, 24, text.length)
  buf.set(text, 26)
  return buf
}

/** UTF-8 bytes of `text`, at most `max` of them, never ending inside a character. */
export function truncateUtf8(text: string, max: number): Uint8Array {
  const bytes = encoder.encode(text)
  if (bytes.length <= max) return bytes
  let end = max
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--
  return bytes.subarray(0, end)
}

/** One block status descriptor: `length` bytes with NBD_STATE_HOLE / NBD_STATE_ZERO bits. */
export interface BlockStatusDescriptor {
  length: number
  flags: number
}

/**
 * An NBD_REPLY_TYPE_BLOCK_STATUS chunk (DONE set): u32 context id, then per descriptor u32 length
 * and u32 status flags.
 */
export function encodeBlockStatusReply(
  cookieHigh: number,
  cookieLow: number,
  contextId: number,
  descriptors: readonly BlockStatusDescriptor[],
): Buffer {
  const payload = 4 + 8 * descriptors.length
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_LENGTH + payload)
  writeStructuredHeader(buf, ReplyFlag.Done, ReplyType.BlockStatus, cookieHigh, cookieLow, payload)
  writeU32(buf, STRUCTURED_REPLY_HEADER_LENGTH, contextId)
  let at = STRUCTURED_REPLY_HEADER_LENGTH + 4
  for (const d of descriptors) {
    writeU32(buf, at, d.length)
    writeU32(buf, at + 4, d.flags)
    at += 8
  }
  return buf
}

/** Largest READ or WRITE (the maximum block size advertised; 2^25 is what every client expects). */
export const NBD_MAX_PAYLOAD = 32 * 1024 * 1024
/** Option data longer than this is treated as an attack: the connection is closed. */
export const NBD_MAX_OPTION_LENGTH = 64 * 1024
/** Options one connection may send before it is considered abusive. */
export const NBD_MAX_OPTIONS = 1024

/** The id this server gives base:allocation in NBD_OPT_SET_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1

export interface NbdRequestCounts {
  read: number
  write: number
  flush: number
  trim: number
  writeZeroes: number
  blockStatus: number
  cache: number
  disconnect: number
  other: number
}

export interface NbdExportStats {
  /** Connections in the transmission phase on this export now, and since the server started. */
  connections: number
  connectionsTotal: number
  requests: NbdRequestCounts
  bytesRead: number
  bytesWritten: number
  bytesTrimmed: number
  bytesZeroed: number
  /** Error replies by NBD errno name ('EIO', 'EINVAL', 'EPERM', 'ENOSPC', 'ESHUTDOWN', ...). */
  errors: Record<string, number>
  /** Most requests in flight at once on one connection. */
  inflightHighWater: number
}

/**
 * The NBD error for a failure: VrioError codes of the BlockDevice contract map to the errno the
 * spec suggests; anything else (a bug in a device) is EIO.
 */
export function nbdErrnoForError(error: unknown): number {
  if (error instanceof VrioError) {
    switch (error.code) {
      case 'read-only':
        return NbdErrno.EPERM
      case 'out-of-range':
      case 'unsupported':
      case 'invalid-argument':
        return NbdErrno.EINVAL
      case 'no-space':
        return NbdErrno.ENOSPC
      case 'not-connected':
        return NbdErrno.ESHUTDOWN
      default:
        return NbdErrno.EIO
    }
  }
  return NbdErrno.EIO
}

export function newExportStats(): NbdExportStats {
  return {
    connections: 0,
    connectionsTotal: 0,
    requests: {
      read: 0,
      write: 0,
      flush: 0,
      trim: 0,
      writeZeroes: 0,
      blockStatus: 0,
      cache: 0,
      disconnect: 0,
      other: 0,
    },
    bytesRead: 0,
    bytesWritten: 0,
    bytesTrimmed: 0,
    bytesZeroed: 0,
    errors: {},
    inflightHighWater: 0,
  }
}

/** An export as one connection sees it (after NBD_OPT_GO or NBD_OPT_EXPORT_NAME). */
export interface Export {
  name: string
  device: BlockDevice
  size: number
  blockSize: number
  flags: number
  stats: NbdExportStats
}
