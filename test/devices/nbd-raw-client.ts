/**
 * A deliberately bare NBD client for tests: exact bytes in, exact bytes out, so tests can speak
 * the protocol correctly, almost correctly and not at all to the server under test.
 */
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import {
  ClientFlag,
  decodeString,
  NBD_OPTS_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  type NbdRequest,
  Option,
  OptionReply,
  REQUEST_HEADER_LENGTH,
  readU64,
  writeU64,
} from '../../src/devices/blk/nbd-protocol.ts'
import { writeU16, writeU32 } from '../../src/wire/bytes.ts'

/** Encodes a request (what a client sends). */
export function encodeRequest(request: NbdRequest): Buffer {
  const buf = Buffer.allocUnsafe(REQUEST_HEADER_LENGTH)
  writeU32(buf, 0, NBD_REQUEST_MAGIC)
  writeU16(buf, 4, request.flags)
  writeU16(buf, 6, request.type)
  writeU32(buf, 8, request.cookieHigh)
  writeU32(buf, 12, request.cookieLow)
  writeU64(buf, 16, request.offset)
  writeU32(buf, 24, request.length)
  return buf
}

export interface OptionReplyMessage {
  option: number
  type: number
  data: Buffer
}

export interface ReplyMessage {
  /** 'simple' or 'structured'. */
  kind: 'simple' | 'structured'
  cookie: bigint
  /** Simple: error field. Structured: error of an error chunk, else 0. */
  error: number
  /** Structured only. */
  flags: number
  type: number
  /** Structured: the payload; OFFSET_DATA: offset and data split out. */
  payload: Buffer
  offset?: number
  data?: Buffer
  message?: string
}

export class RawClient {
  readonly socket: Socket
  private buffered: Buffer[] = []
  private length = 0
  private waiter: (() => void) | undefined
  private ended = false
  readonly closed: Promise<void>

  private constructor(socket: Socket) {
    this.socket = socket
    socket.on('data', (chunk: Buffer) => {
      this.buffered.push(chunk)
      this.length += chunk.length
      this.waiter?.()
    })
    socket.on('end', () => {
      this.ended = true
      this.waiter?.()
    })
    socket.on('error', () => {
      this.ended = true
      this.waiter?.()
    })
    // Not events.once: that rejects on 'error', and a reset is just another way to be closed.
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
  }

  static async connect(path: string): Promise<RawClient> {
    const socket = connect(path)
    await once(socket, 'connect')
    return new RawClient(socket)
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes)
  }

  /** Exactly `n` bytes; rejects when the server closes first or after `timeoutMs`. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs
    while (this.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.length} of ${n} bytes`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.length})`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiter = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.waiter = undefined
    }
    const all = Buffer.concat(this.buffered)
    const out = all.subarray(0, n)
    this.buffered = all.length > n ? [all.subarray(n)] : []
    this.length -= n
    return out
  }

  /** Resolves when the server closes the connection; rejects after `timeoutMs`. */
  async expectClose(timeoutMs = 5000): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('the server did not close the connection')), timeoutMs)
    })
    try {
      await Promise.race([this.closed, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  destroy(): void {
    this.socket.destroy()
  }

  // ---- handshake

  /** Reads the 18-byte greeting and answers with `flags`. */
  async greet(flags = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes): Promise<Buffer> {
    const greeting = await this.read(18)
    const f = Buffer.alloc(4)
    f.writeUInt32BE(flags)
    this.write(f)
    return greeting
  }

  sendOption(option: number, data: Uint8Array = new Uint8Array(0)): void {
    const header = Buffer.alloc(16)
    header.writeUInt32BE(NBD_OPTS_MAGIC[0], 0)
    header.writeUInt32BE(NBD_OPTS_MAGIC[1], 4)
    header.writeUInt32BE(option, 8)
    header.writeUInt32BE(data.length, 12)
    this.write(Buffer.concat([header, data]))
  }

  async optionReply(): Promise<OptionReplyMessage> {
    const header = await this.read(20)
    if (header.readUInt32BE(0) !== 0x0003e889 || header.readUInt32BE(4) !== 0x045565a9)
      throw new Error(`bad option reply magic ${header.subarray(0, 8).toString('hex')}`)
    const length = header.readUInt32BE(16)
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: await this.read(length) }
  }

  /** Option replies up to and including the final one (ACK or an error). */
  async optionReplies(): Promise<OptionReplyMessage[]> {
    const replies: OptionReplyMessage[] = []
    for (;;) {
      const r = await this.optionReply()
      replies.push(r)
      if (r.type === OptionReply.Ack || r.type >= 0x80000000) return replies
    }
  }

  /** NBD_OPT_GO / NBD_OPT_INFO request data. */
  static infoData(name: string, requests: number[] = []): Buffer {
    const n = Buffer.from(name)
    const buf = Buffer.alloc(4 + n.length + 2 + 2 * requests.length)
    buf.writeUInt32BE(n.length, 0)
    n.copy(buf, 4)
    buf.writeUInt16BE(requests.length, 4 + n.length)
    for (const [i, r] of requests.entries()) buf.writeUInt16BE(r, 6 + n.length + 2 * i)
    return buf
  }

  /**
   * Full handshake up to transmission with NBD_OPT_GO. Returns the export size and flags.
   * Throws when the server answers with an error.
   */
  async attach(
    name: string,
    options: { structured?: boolean; allocation?: boolean } = {},
  ): Promise<{ size: number; flags: number }> {
    await this.greet()
    if (options.structured || options.allocation) {
      this.sendOption(Option.StructuredReply)
      const r = await this.optionReply()
      if (r.type !== OptionReply.Ack) throw new Error(`structured replies refused: ${r.type}`)
    }
    if (options.allocation) {
      // NBD_OPT_SET_META_CONTEXT for base:allocation on this export.
      const n = Buffer.from(name)
      const q = Buffer.from('base:allocation')
      const data = Buffer.alloc(4 + n.length + 4 + 4 + q.length)
      data.writeUInt32BE(n.length, 0)
      n.copy(data, 4)
      data.writeUInt32BE(1, 4 + n.length)
      data.writeUInt32BE(q.length, 8 + n.length)
      q.copy(data, 12 + n.length)
      this.sendOption(Option.SetMetaContext, data)
      const replies = await this.optionReplies()
      if (replies.length !== 2 || replies[0].type !== OptionReply.MetaContext)
        throw new Error(`base:allocation refused: ${replies.map((r) => r.type).join(',')}`)
    }
    this.sendOption(Option.Go, RawClient.infoData(name, [3]))
    let size = -1
    let flags = -1
    for (const r of await this.optionReplies()) {
      if (r.type >= 0x80000000) throw new Error(`NBD_OPT_GO failed: 0x${r.type.toString(16)} ${r.data}`)
      if (r.type === OptionReply.Info && r.data.readUInt16BE(0) === 0) {
        size = readU64(r.data, 2)
        flags = r.data.readUInt16BE(10)
      }
    }
    return { size, flags }
  }

  // ---- transmission

  request(r: Partial<NbdRequest> & { type: number }, payload?: Uint8Array): void {
    const header = encodeRequest({
      flags: 0,
      cookieHigh: 0,
      cookieLow: 0,
      offset: 0,
      length: payload?.length ?? 0,
      ...r,
    })
    this.write(payload ? Buffer.concat([header, payload]) : header)
  }

  /**
   * The next reply message. Simple replies to reads need the read length (`readLengths` maps
   * cookieLow to it); structured replies carry their own lengths.
   */
  async reply(readLengths: Map<number, number> = new Map()): Promise<ReplyMessage> {
    const magic = (await this.read(4)).readUInt32BE(0)
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12)
      const error = rest.readUInt32BE(0)
      const cookieLow = rest.readUInt32BE(8)
      const cookie = rest.readBigUInt64BE(4)
      const n = error === 0 ? (readLengths.get(cookieLow) ?? 0) : 0
      const data = n > 0 ? await this.read(n) : Buffer.alloc(0)
      return { kind: 'simple', cookie, error, flags: 0, type: 0, payload: data, data }
    }
    if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
      const rest = await this.read(16)
      const flags = rest.readUInt16BE(0)
      const type = rest.readUInt16BE(2)
      const cookie = rest.readBigUInt64BE(4)
      const length = rest.readUInt32BE(12)
      const payload = await this.read(length)
      const reply: ReplyMessage = { kind: 'structured', cookie, error: 0, flags, type, payload }
      if (type === 1) {
        reply.offset = readU64(payload, 0)
        reply.data = payload.subarray(8)
      } else if (type & 0x8000) {
        reply.error = payload.readUInt32BE(0)
        const ml = payload.readUInt16BE(4)
        reply.message = decodeString(payload.subarray(6, 6 + ml))
      }
      return reply
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`)
  }
}
