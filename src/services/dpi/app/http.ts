/**
 * HTTP/1.x parser for DPI: incremental over each direction's in-order bytes, bounded (head size,
 * header count, body bytes kept, transactions queued) and never throwing. It fills Suricata's
 * HTTP buffers on each transaction (see buffers.ts). Written for the job: the npm HTTP parsers
 * (http-parser-js, llhttp's wasm builds) parse for a server — they keep no raw request line or
 * header block, stop at the first oddity and report it by throwing or failing the stream —
 * whereas an IDS must keep the raw and normalised forms, tolerate what servers tolerate (bare LF,
 * folded headers, HTTP/0.9-ish lines) and just stop on garbage.
 *
 * Bodies: Content-Length and chunked are decoded; a response without either runs to the end of
 * the stream; HEAD responses and 1xx/204/304 have none. The first `bodyLimit` bytes of each body
 * are kept for inspection (http.request_body / http.response_body / file_data), gzip and deflate
 * bodies decoded (the first `bodyLimit` decoded bytes).
 */
import zlib from 'node:zlib'
import { type AppParser, AppTx, type BufferWants, touch } from './tx.ts'

export interface HttpLimits {
  /** Longest head (start line + headers) parsed; a longer one stops the direction. Default 16 KiB. */
  maxHead: number
  /** Most headers kept per head. Default 128. */
  maxHeaders: number
  /** Body bytes kept per body for inspection. Default 8 KiB. */
  bodyLimit: number
  /**
   * A body's kept bytes are handed to inspection (the body buffers set) once this many more have
   * arrived since the last time, and always when the body is complete, reaches `bodyLimit`, or its
   * direction ends (FIN) or has a hole: Suricata's body inspect window. A body arriving in many
   * segments is then prefiltered and verified a few times, not once per segment. Default 4 KiB;
   * 1: every segment.
   */
  bodyInspectStep: number
  /** Transactions queued per flow (pipelining); the oldest is dropped beyond. Default 16. */
  maxTransactions: number
  /**
   * Bytes the queued transactions' buffers may hold per flow (heads and kept bodies, roughly);
   * the oldest transactions are dropped beyond, the newest is always kept. Default 128 KiB.
   */
  maxFlowBytes: number
}

const DEFAULT_HTTP_LIMITS: HttpLimits = {
  maxHead: 16_384,
  maxHeaders: 128,
  bodyLimit: 8192,
  bodyInspectStep: 4096,
  maxTransactions: 16,
  maxFlowBytes: 131_072,
}

const HEAD = 0
const BODY_LENGTH = 1
const CHUNK_SIZE = 2
const CHUNK_DATA = 3
const CHUNK_END = 4
const TRAILERS = 5
const BODY_CLOSE = 6
const DEAD = 7

const CR = 13
const LF = 10

/** One direction's parser state. */
class Side {
  state = HEAD
  head: Buffer = Buffer.alloc(0)
  headLength = 0
  /** Where the blank-line search resumes in `head`. */
  scanFrom = 0
  /** The head's start line was parsed (its buffers are out before the headers are complete). */
  lineDone = false
  /** Body (or chunk) bytes still to come. */
  remaining = 0
  /** Chunk-size / chunk-end line bytes seen (bounded). */
  lineBytes = 0
  chunkSize = 0
  chunkSizeDigits = 0
  chunkSizeDone = false
  body: Buffer | undefined
  bodyLength = 0
  /** Body bytes handed to inspection (see HttpLimits.bodyInspectStep). */
  published = 0
  tx: AppTx | undefined
  /** The request target / the status code of the head being parsed. */
  target = ''
  code = 0
  /** The body's Content-Encoding when vrio decodes it; its decoded prefix, once full. */
  encoding: 'gzip' | 'deflate' | undefined
  decoded: Buffer | undefined
}

/** A header as parsed: name as sent, value trimmed, and where the value is in the head (-1: folded). */
interface Header {
  name: string
  lower: string
  value: string
  start: number
  end: number
  /** Where the line starts in the head when it reads exactly `name: value` (a view of it is the header's buffer), else -1. */
  line: number
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

export class HttpParser implements AppParser {
  readonly #limits: HttpLimits
  readonly #wants: BufferWants | undefined
  readonly #client = new Side()
  readonly #server = new Side()
  /** Transactions waiting for (the rest of) their response, oldest first. */
  readonly #txs: AppTx[] = []
  #heldBytes = 0
  /** Transactions dropped from the queue before completing (pipelining or memory bounds). */
  droppedTransactions = 0
  /** The flow switched to another protocol (CONNECT, 101 Upgrade): nothing more is parsed. */
  #tunnel = false
  /** Body bytes not kept (over bodyLimit). */
  skippedBodyBytes = 0
  /** Heads over maxHead or unparsable: the direction stopped there. */
  errors = 0

  /** `wants`: the buffers some rule reads (the others are not built); default all. */
  constructor(limits: Partial<HttpLimits> = {}, wants?: BufferWants) {
    this.#limits = { ...DEFAULT_HTTP_LIMITS, ...limits }
    this.#wants = wants
  }

  get pending(): number {
    return this.#txs.length
  }

  gap(toServer: boolean, updated?: AppTx[]): void {
    // After a hole the parser cannot know where it is: that direction stops (the body bytes kept
    // so far are inspected).
    const side = toServer ? this.#client : this.#server
    if (updated) this.#publishBody(side, toServer, updated)
    side.state = DEAD
  }

  feed(toServer: boolean, data: Uint8Array, start: number, end: number, updated: AppTx[]): void {
    const side = toServer ? this.#client : this.#server
    let i = start
    while (i < end && side.state !== DEAD && !this.#tunnel) {
      switch (side.state) {
        case HEAD:
          i = this.#headBytes(side, toServer, data, i, end, updated)
          break
        case BODY_LENGTH: {
          const n = Math.min(side.remaining, end - i)
          this.#bodyBytes(side, toServer, data, i, i + n, updated)
          i += n
          side.remaining -= n
          if (side.remaining === 0) this.#bodyDone(side, toServer, updated)
          break
        }
        case BODY_CLOSE:
          this.#bodyBytes(side, toServer, data, i, end, updated)
          i = end
          break
        case CHUNK_DATA: {
          const n = Math.min(side.remaining, end - i)
          this.#bodyBytes(side, toServer, data, i, i + n, updated)
          i += n
          side.remaining -= n
          if (side.remaining === 0) {
            side.state = CHUNK_END
            side.lineBytes = 0
          }
          break
        }
        case CHUNK_SIZE:
          i = this.#chunkSize(side, data, i, end)
          break
        case CHUNK_END:
        case TRAILERS:
          i = this.#lineEnd(side, toServer, data, i, end, updated)
          break
      }
    }
  }

  /** Accumulates head bytes until the blank line; returns where parsing continues. */
  #headBytes(
    side: Side,
    toServer: boolean,
    data: Uint8Array,
    i: number,
    end: number,
    updated: AppTx[],
  ): number {
    // Blank lines before a start line are skipped (RFC 9112 2.2).
    if (side.headLength === 0) {
      while (i < end && (data[i] === CR || data[i] === LF)) i++
      if (i === end) return end
    }
    const room = this.#limits.maxHead - side.headLength
    const take = Math.min(end - i, room)
    if (side.head.length < side.headLength + take) {
      const next = Buffer.allocUnsafe(
        Math.min(this.#limits.maxHead, Math.max(2 * side.head.length, side.headLength + take, 256)),
      )
      next.set(side.head.subarray(0, side.headLength))
      side.head = next
    }
    side.head.set(data.subarray(i, i + take), side.headLength)
    const before = side.headLength
    side.headLength += take
    const head = side.head
    if (!side.lineDone) {
      const lf = head.subarray(0, side.headLength).indexOf(LF)
      if (lf >= 0) {
        side.lineDone = true
        // A copy (the head buffer is reused): the line's buffers are views of it.
        const bytes = Buffer.from(head.subarray(0, lf > 0 && head[lf - 1] === CR ? lf - 1 : lf))
        const line = bytes.toString('latin1')
        const parsed = toServer
          ? this.#requestLine(side, line, bytes, updated)
          : this.#responseLine(side, line, bytes, updated)
        if (!parsed) {
          this.errors++
          side.state = DEAD
          return end
        }
      }
    }
    // Find "\n\n" or "\n\r\n".
    for (let k = Math.max(side.scanFrom, 0); k < side.headLength; k++) {
      if (head[k] !== LF) continue
      let e = k + 1
      if (e < side.headLength && head[e] === CR) e++
      if (e < side.headLength && head[e] === LF) {
        const headEnd = e + 1
        const consumed = headEnd - before
        this.#headDone(side, toServer, head.subarray(0, headEnd), updated)
        return i + consumed
      }
    }
    side.scanFrom = Math.max(0, side.headLength - 2)
    if (side.headLength >= this.#limits.maxHead) {
      this.errors++
      side.state = DEAD
      return end
    }
    return i + take
  }

  /** The head is complete (or the stream ended in it): headers, then the body. `view` is reused. */
  #headDone(side: Side, toServer: boolean, view: Buffer, updated: AppTx[]): void {
    side.headLength = 0
    side.scanFrom = 0
    side.lineDone = false
    const text = view.toString('latin1')
    const tx = side.tx
    // A copy (the head buffer is reused): the header buffers are views of it.
    const head = tx ? Buffer.from(view) : view
    // The head's buffers: up to ~5 forms of it (header, raw, start, per-header, names).
    if (tx) this.#charge(tx, 5 * view.length)
    const headers: Header[] = []
    let at = text.indexOf('\n') + 1
    while (at > 0 && at < text.length) {
      const lf = text.indexOf('\n', at)
      const next = lf < 0 ? text.length : lf + 1
      let end = lf < 0 ? text.length : lf
      if (end > at && text[end - 1] === '\r') end--
      const line = text.slice(at, end)
      const lineStart = at
      at = next
      if (line === '') break
      if ((line[0] === ' ' || line[0] === '\t') && headers.length > 0) {
        const folded = headers[headers.length - 1]
        folded.value += ` ${line.trim()}` // obsolete line folding
        folded.start = -1
        folded.line = -1
        continue
      }
      if (headers.length >= this.#limits.maxHeaders) continue
      const colon = line.indexOf(':')
      if (colon <= 0) continue
      const name = line.slice(0, colon).trim()
      const rest = line.slice(colon + 1)
      const value = rest.trim()
      const start = lineStart + colon + 1 + rest.length - rest.trimStart().length
      // Exactly "name: value": no space around the name, one after the colon.
      const exact =
        name.length === colon && start === lineStart + colon + 2 && line.charCodeAt(colon + 1) === 0x20
      headers.push({
        name,
        lower: name.toLowerCase(),
        value,
        start,
        end: start + value.length,
        line: exact ? lineStart : -1,
      })
    }
    const lf = text.indexOf('\n')
    const block = head.subarray(lf >= 0 ? lf + 1 : head.length)
    if (toServer) this.#requestHeaders(side, headers, head, block, updated)
    else this.#responseHeaders(side, headers, head, block, updated)
  }

  /**
   * A request line (`bytes` as latin1 text): a new transaction with the line's buffers (views of
   * `bytes`). False when it is not one.
   */
  #requestLine(side: Side, line: string, bytes: Buffer, updated: AppTx[]): boolean {
    // METHOD SP target [SP protocol]: the target is all between the first and the last space.
    const sp = line.indexOf(' ')
    if (sp < 0) return false
    const method = line.slice(0, sp)
    if (!TOKEN.test(method)) return false
    const last = line.lastIndexOf(' ')
    const targetEnd = last > sp ? last : line.length
    const target = line.slice(sp + 1, targetEnd)
    const protocol = last > sp ? line.slice(last + 1) : ''
    const tx = new AppTx(this.#wants)
    side.target = target
    tx.method = method
    this.#queue(tx)
    this.#charge(tx, line.length * 3)
    tx.set(true, 'http.method', bytes.subarray(0, sp))
    const raw = bytes.subarray(sp + 1, targetEnd)
    tx.set(true, 'http.uri.raw', raw)
    if (tx.wanted('http.uri')) {
      const uri = normalizeUri(target)
      tx.set(true, 'http.uri', uri === target ? raw : uri)
    }
    if (protocol !== '') tx.set(true, 'http.protocol', bytes.subarray(last + 1))
    tx.set(true, 'http.request_line', bytes)
    // An absolute-form target's host wins over the Host header (RFC 9112 3.2.2), as in libhtp.
    const host = hostOfUri(target)
    if (host !== undefined) tx.set(true, 'http.host', normalizeHost(host))
    touch(updated, tx)
    side.tx = tx
    return true
  }

  #requestHeaders(side: Side, headers: Header[], head: Buffer, block: Buffer, updated: AppTx[]): void {
    const tx = side.tx
    if (!tx) return
    tx.set(true, 'http.start', head)
    setHeaderBuffers(tx, true, headers, head, block)
    // http.host.raw is the Host header as sent (else the target's authority).
    const host = headerValue(headers, 'host')
    const uriHost = hostOfUri(side.target)
    const raw = host === undefined ? uriHost : headerBytes(headers, 'host', head)
    if (raw !== undefined) tx.set(true, 'http.host.raw', raw)
    if (host !== undefined && uriHost === undefined) tx.set(true, 'http.host', normalizeHost(host))
    for (const [name, id] of REQUEST_HEADER_BUFFERS) {
      const v = headerBytes(headers, name, head)
      if (v !== undefined) tx.set(true, id, v)
    }
    touch(updated, tx)
    if (tx.method === 'CONNECT') {
      this.#bodyDone(side, true, updated)
      return
    }
    this.#startBody(side, headers, true, updated)
  }

  /** A status line (`bytes` as text): the buffers of the oldest transaction without a response. */
  #responseLine(side: Side, line: string, bytes: Buffer, updated: AppTx[]): boolean {
    const m = /^(HTTP\/\d(?:\.\d)?)[ \t]+(\d{3})(?:[ \t]+(.*))?$/.exec(line)
    if (!m) return false
    let tx = this.#txs.find((t) => !t.responseDone)
    if (!tx) {
      // A response without a request seen (picked up mid-stream).
      tx = new AppTx(this.#wants)
      tx.requestDone = true
      this.#queue(tx)
    }
    side.code = Number(m[2])
    let code = m[1].length
    while (line[code] === ' ' || line[code] === '\t') code++
    tx.set(false, 'http.stat_code', bytes.subarray(code, code + 3))
    tx.set(false, 'http.stat_msg', bytes.subarray(line.length - (m[3] ?? '').length))
    tx.set(false, 'http.response_line', bytes)
    tx.set(false, 'http.protocol', bytes.subarray(0, m[1].length))
    touch(updated, tx)
    side.tx = tx
    return true
  }

  #responseHeaders(side: Side, headers: Header[], head: Buffer, block: Buffer, updated: AppTx[]): void {
    const tx = side.tx
    if (!tx) return
    tx.set(false, 'http.start', head)
    setHeaderBuffers(tx, false, headers, head, block)
    for (const [name, id] of RESPONSE_HEADER_BUFFERS) {
      const v = headerBytes(headers, name, head)
      if (v !== undefined) tx.set(false, id, v)
    }
    touch(updated, tx)
    const code = side.code
    if (code >= 100 && code < 200) {
      if (code === 101) this.#tunnel = true
      side.tx = undefined
      return // an interim response: the final one follows
    }
    const method = tx.method
    if (method === 'CONNECT' && code >= 200 && code < 300) {
      this.#tunnel = true
      side.tx = undefined
      this.#finish(tx, false)
      return
    }
    if (method === 'HEAD' || code === 204 || code === 304) {
      this.#bodyDone(side, false, updated)
      return
    }
    this.#startBody(side, headers, false, updated)
  }

  #startBody(side: Side, headers: Header[], toServer: boolean, updated: AppTx[]): void {
    side.body = undefined
    side.bodyLength = 0
    side.published = 0
    side.decoded = undefined
    const ce = headerValue(headers, 'content-encoding')?.trim().toLowerCase()
    side.encoding = ce === 'gzip' || ce === 'x-gzip' ? 'gzip' : ce === 'deflate' ? 'deflate' : undefined
    const te = headerValue(headers, 'transfer-encoding')
    if (te !== undefined && /chunked\s*$/i.test(te)) {
      side.state = CHUNK_SIZE
      this.#newChunkLine(side)
      return
    }
    const cl = headerValue(headers, 'content-length')
    if (cl !== undefined && /^\d{1,15}$/.test(cl)) {
      side.remaining = Number(cl)
      if (side.remaining > 0) {
        side.state = BODY_LENGTH
        return
      }
    } else if (!toServer) {
      side.state = BODY_CLOSE
      return
    }
    this.#bodyDone(side, toServer, updated)
  }

  #newChunkLine(side: Side): void {
    side.chunkSize = 0
    side.chunkSizeDigits = 0
    side.chunkSizeDone = false
    side.lineBytes = 0
  }

  /** `hex[;ext]\r\n`: returns where parsing continues. */
  #chunkSize(side: Side, data: Uint8Array, i: number, end: number): number {
    for (; i < end; i++) {
      const b = data[i]
      if (++side.lineBytes > 1024) {
        side.state = DEAD
        this.errors++
        return end
      }
      if (b === LF) {
        if (side.chunkSizeDigits === 0) {
          if (side.lineBytes <= 2) continue // a stray CRLF
          side.state = DEAD
          this.errors++
          return end
        }
        if (side.chunkSize === 0) {
          side.state = TRAILERS
          side.lineBytes = 0
        } else {
          side.state = CHUNK_DATA
          side.remaining = side.chunkSize
        }
        return i + 1
      }
      if (side.chunkSizeDone) continue
      const digit = hexDigit(b)
      if (digit >= 0 && side.chunkSizeDigits < 12) {
        side.chunkSize = side.chunkSize * 16 + digit
        side.chunkSizeDigits++
      } else if (b === 0x3b || b === 0x20 || b === 0x09 || b === CR) {
        side.chunkSizeDone = side.chunkSizeDigits > 0 || b === 0x3b
      } else {
        side.state = DEAD
        this.errors++
        return end
      }
    }
    return end
  }

  /** The CRLF after chunk data, or trailer lines up to the blank one. */
  #lineEnd(
    side: Side,
    toServer: boolean,
    data: Uint8Array,
    i: number,
    end: number,
    updated: AppTx[],
  ): number {
    for (; i < end; i++) {
      const b = data[i]
      if (b === LF) {
        const empty = side.lineBytes === 0
        side.lineBytes = 0
        if (side.state === CHUNK_END) {
          side.state = CHUNK_SIZE
          this.#newChunkLine(side)
          return i + 1
        }
        if (empty) {
          this.#bodyDone(side, toServer, updated)
          return i + 1
        }
        continue
      }
      if (b !== CR && ++side.lineBytes > this.#limits.maxHead) {
        side.state = DEAD
        return end
      }
    }
    return end
  }

  #bodyBytes(
    side: Side,
    toServer: boolean,
    data: Uint8Array,
    from: number,
    to: number,
    updated: AppTx[],
  ): void {
    const tx = side.tx
    if (!tx || to <= from) return
    if (!tx.wanted('file.data') && !tx.wanted(toServer ? 'http.request_body' : 'http.response_body')) return
    if (side.decoded) {
      this.skippedBodyBytes += to - from // the decoded body is full already
      return
    }
    const limit = this.#limits.bodyLimit
    const keep = Math.min(to - from, limit - side.bodyLength)
    this.skippedBodyBytes += to - from - Math.max(0, keep)
    if (keep <= 0) return
    // Sized for the whole body when its length is known (one buffer, not a doubling series).
    const expected = side.state === BODY_LENGTH ? side.remaining : keep
    if (!side.body) side.body = Buffer.allocUnsafe(Math.min(limit, Math.max(expected, keep, 1024)))
    if (side.body.length < side.bodyLength + keep) {
      const next = Buffer.allocUnsafe(Math.min(limit, Math.max(2 * side.body.length, side.bodyLength + keep)))
      side.body.copy(next, 0, 0, side.bodyLength)
      side.body = next
    }
    side.body.set(data.subarray(from, from + keep), side.bodyLength)
    side.bodyLength += keep
    this.#charge(tx, keep)
    // Inspected in steps (and when complete, at the limit, at the end of the direction).
    if (side.bodyLength < limit && side.bodyLength - side.published < this.#limits.bodyInspectStep) return
    this.#publishBody(side, toServer, updated)
  }

  /** The body bytes kept so far, when some were not inspected yet, as the body buffers (decoded). */
  #publishBody(side: Side, toServer: boolean, updated: AppTx[]): void {
    const tx = side.tx
    if (!tx || !side.body || side.decoded || side.bodyLength <= side.published) return
    side.published = side.bodyLength
    const limit = this.#limits.bodyLimit
    let view = side.body.subarray(0, side.bodyLength)
    if (side.encoding) {
      const out = decodeBody(view, side.encoding, limit)
      if (out) {
        view = out.data
        if (out.full) side.decoded = out.data
      } else {
        side.encoding = undefined // not what it said: the bytes as they are
      }
    }
    tx.set(toServer, toServer ? 'http.request_body' : 'http.response_body', view)
    tx.set(toServer, 'file.data', view)
    touch(updated, tx)
  }

  #bodyDone(side: Side, toServer: boolean, updated: AppTx[]): void {
    this.#publishBody(side, toServer, updated)
    side.state = HEAD
    side.body = undefined
    side.bodyLength = 0
    side.published = 0
    const tx = side.tx
    side.tx = undefined
    if (!tx) return
    touch(updated, tx)
    this.#finish(tx, toServer)
  }

  #finish(tx: AppTx, toServer: boolean): void {
    if (toServer) tx.requestDone = true
    else tx.responseDone = true
    tx.version++
    if (tx.done) {
      const k = this.#txs.indexOf(tx)
      if (k >= 0) {
        this.#txs.splice(k, 1)
        this.#heldBytes -= tx.heldBytes
      }
    }
  }

  /** Accounts `n` more bytes to `tx`; drops the oldest other transactions over the bounds. */
  #charge(tx: AppTx, n: number): void {
    if (!this.#txs.includes(tx)) return
    tx.heldBytes += n
    this.#heldBytes += n
    while (
      this.#txs.length > 1 &&
      (this.#heldBytes > this.#limits.maxFlowBytes || this.#txs.length > this.#limits.maxTransactions)
    ) {
      const oldest = this.#txs[0] === tx ? this.#txs.splice(1, 1)[0] : (this.#txs.shift() as AppTx)
      this.#heldBytes -= oldest.heldBytes
      this.droppedTransactions++
      if (this.#client.tx === oldest) this.#client.tx = undefined
      if (this.#server.tx === oldest) this.#server.tx = undefined
    }
  }

  #queue(tx: AppTx): void {
    this.#txs.push(tx)
    this.#charge(tx, 0)
  }

  /**
   * The end of the stream in one direction: a head cut short is parsed as it is (servers that
   * close after the headers), a body running to the close is complete.
   */
  close(toServer: boolean, updated: AppTx[]): void {
    const side = toServer ? this.#client : this.#server
    if (side.state === HEAD && side.lineDone && side.headLength > 0 && !this.#tunnel) {
      this.#headDone(side, toServer, side.head.subarray(0, side.headLength), updated)
    }
    if (side.state === BODY_CLOSE) this.#bodyDone(side, toServer, updated)
    else this.#publishBody(side, toServer, updated) // a body cut short
  }
}

const REQUEST_HEADER_BUFFERS: ReadonlyArray<
  [string, 'http.user_agent' | 'http.accept' | 'http.accept_enc' | 'http.accept_lang' | 'http.referer']
> = [
  ['user-agent', 'http.user_agent'],
  ['accept', 'http.accept'],
  ['accept-encoding', 'http.accept_enc'],
  ['accept-language', 'http.accept_lang'],
  ['referer', 'http.referer'],
]

const RESPONSE_HEADER_BUFFERS: ReadonlyArray<[string, 'http.location' | 'http.server']> = [
  ['location', 'http.location'],
  ['server', 'http.server'],
]

/** The buffers both sides have: headers (normalised and raw), names, cookie, content type/length. */
function setHeaderBuffers(
  tx: AppTx,
  toServer: boolean,
  headers: Header[],
  head: Buffer,
  block: Buffer,
): void {
  const cookieName = toServer ? 'cookie' : 'set-cookie'
  let names = '\r\n'
  for (const h of headers) names += `${h.name}\r\n`
  // Like Suricata, http.header is "Name: value\r\n" per header, leaving out the cookies (they have
  // their own buffer): the head's own bytes when its lines read so from the block's start, no
  // cookie among them, else built.
  const blockStart = head.length - block.length
  let at = blockStart
  for (const h of headers) {
    if (h.line !== at || h.lower === cookieName || head[h.end] !== CR || head[h.end + 1] !== LF) {
      at = -1
      break
    }
    at = h.end + 2
  }
  let normal: Buffer | string = ''
  if (at >= 0) normal = head.subarray(blockStart, at)
  else for (const h of headers) if (h.lower !== cookieName) normal += `${h.name}: ${h.value}\r\n`
  // http.request_header / http.response_header: one buffer per header, "Name: value".
  const each = toServer ? 'http.request_header' : 'http.response_header'
  if (tx.wanted(each))
    for (const h of headers)
      tx.add(toServer, each, h.line >= 0 ? head.subarray(h.line, h.end) : `${h.name}: ${h.value}`)
  tx.set(toServer, 'http.header', normal)
  tx.set(toServer, 'http.header.raw', block)
  tx.set(toServer, 'http.header_names', `${names}\r\n`)
  const cookie = headerBytes(headers, cookieName, head)
  if (cookie !== undefined) tx.set(toServer, 'http.cookie', cookie)
  for (const [name, id] of [
    ['content-type', 'http.content_type'],
    ['content-length', 'http.content_len'],
    ['connection', 'http.connection'],
  ] as const) {
    const v = headerBytes(headers, name, head)
    if (v !== undefined) tx.set(toServer, id, v)
  }
}

/** headerValue(), as a view of `head` when it is one header's value as sent, else the text. */
function headerBytes(headers: Header[], lower: string, head: Buffer): Buffer | string | undefined {
  let found: Header | undefined
  for (const h of headers) {
    if (h.lower !== lower) continue
    if (found) return headerValue(headers, lower) // several: joined
    found = h
  }
  if (!found) return undefined
  return found.start >= 0 ? head.subarray(found.start, found.end) : found.value
}

/** The value of the first header `lower` (several are joined with ", ", as libhtp does). */
function headerValue(headers: Header[], lower: string): string | undefined {
  let value: string | undefined
  for (const h of headers) {
    if (h.lower !== lower) continue
    value = value === undefined ? h.value : `${value}, ${h.value}`
  }
  return value
}

function hexDigit(b: number): number {
  if (b >= 0x30 && b <= 0x39) return b - 0x30
  if (b >= 0x61 && b <= 0x66) return b - 0x57
  if (b >= 0x41 && b <= 0x46) return b - 0x37
  return -1
}

/** The host of an absolute-form target (`http://host:port/path`), if it is one. */
function hostOfUri(target: string): string | undefined {
  // Origin form (`/path`), the usual one: no regex run.
  if (target.charCodeAt(0) === 0x2f) return undefined
  const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/([^/?#]*)/.exec(target)
  if (!m) return undefined
  const authority = m[1]
  const at = authority.lastIndexOf('@')
  return at >= 0 ? authority.slice(at + 1) : authority
}

/** http.host: lower case, without the port. */
export function normalizeHost(host: string): string {
  let h = host.trim().toLowerCase()
  if (h.startsWith('[')) {
    const close = h.indexOf(']')
    return close > 0 ? h.slice(0, close + 1) : h
  }
  const colon = h.lastIndexOf(':')
  if (colon >= 0 && /^\d*$/.test(h.slice(colon + 1))) h = h.slice(0, colon)
  if (h.endsWith('.')) h = h.slice(0, -1)
  return h
}

/**
 * http.uri, as libhtp normalises it by default: the path (and query) of the target with %XX
 * decoded, `.`/`..` segments removed and repeated slashes compressed; an absolute-form target is
 * reduced to its path and query; a fragment is dropped.
 */
export function normalizeUri(target: string): string {
  let t = target
  const abs = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/?#]*/.exec(t)
  if (abs) t = t.slice(abs[0].length) || '/'
  const hash = t.indexOf('#')
  if (hash >= 0) t = t.slice(0, hash)
  const q = t.indexOf('?')
  const rawPath = q >= 0 ? t.slice(0, q) : t
  const query = q >= 0 ? t.slice(q) : ''
  let path = percentDecode(rawPath)
  if (path.startsWith('/')) {
    path = path.replace(/\/{2,}/g, '/')
    const out: string[] = []
    const segs = path.split('/')
    for (let k = 1; k < segs.length; k++) {
      const s = segs[k]
      if (s === '.') {
        if (k === segs.length - 1) out.push('')
      } else if (s === '..') {
        out.pop()
        if (k === segs.length - 1) out.push('')
      } else out.push(s)
    }
    path = `/${out.join('/')}`
  }
  return path + percentDecode(query)
}

/**
 * The first `limit` bytes of a gzip/deflate body from its first compressed bytes (a prefix:
 * decoding stops where the input does), `full` once `limit` is reached; undefined when the bytes
 * are not that encoding. Bounded: zlib stops at `limit` output bytes (a bomb costs a few
 * decompressions of `limit` bytes, once per body).
 */
function decodeBody(
  compressed: Buffer,
  encoding: 'gzip' | 'deflate',
  limit: number,
): { data: Buffer; full: boolean } | undefined {
  const opts = { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: limit }
  const once = (input: Buffer): Buffer | 'too-large' | undefined => {
    try {
      if (encoding === 'gzip') return zlib.gunzipSync(input, opts)
      try {
        return zlib.inflateSync(input, opts)
      } catch (error) {
        if ((error as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw error
        return zlib.inflateRawSync(input, opts) // "deflate" is often raw deflate
      }
    } catch (error) {
      return (error as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE' ? 'too-large' : undefined
    }
  }
  const all = once(compressed)
  if (all === undefined) return undefined
  if (all !== 'too-large') return { data: all, full: all.length >= limit }
  // The output passes `limit` somewhere in this input: the longest prefix that fits, by bisection.
  let lo = 0
  let hi = compressed.length
  let best: Buffer = Buffer.alloc(0)
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1
    const out = once(compressed.subarray(0, mid))
    if (out === 'too-large') hi = mid
    else {
      lo = mid
      if (out) best = out
    }
  }
  return { data: best, full: true }
}

/** %XX (valid hex) → the byte; anything else is kept as is. */
function percentDecode(s: string): string {
  if (!s.includes('%')) return s
  return s.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)))
}
