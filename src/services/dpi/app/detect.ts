/**
 * Application-protocol detection by content (not port), per flow: the first bytes each side
 * sends are probed for HTTP/1.x (a request method and a space, or `HTTP/1.`), TLS (a handshake
 * record holding a ClientHello/ServerHello) and DNS (a message that decodes, length-prefixed on
 * TCP). Up to `PROBE_BYTES` per direction are held while the answer is still open; then the flow
 * is "unknown" for good. The detected protocol's parser (http.ts, dns.ts, tls.ts) is then fed
 * every in-order byte, starting with the probed ones.
 */
import type { AppProto } from './buffers.ts'
import { looksLikeDns, DnsParser } from './dns.ts'
import { HttpParser, type HttpLimits } from './http.ts'
import { TlsParser } from './tls.ts'
import type { AppParser, AppTx, BufferWants } from './tx.ts'

/** Bytes per direction held for detection before giving up. */
const PROBE_BYTES = 512
/** UDP datagrams per flow probed for DNS before giving up. */
const UDP_PROBES = 4

const METHODS = new Set([
  'GET',
  'POST',
  'HEAD',
  'PUT',
  'DELETE',
  'OPTIONS',
  'CONNECT',
  'PATCH',
  'TRACE',
  'PROPFIND',
  'PROPPATCH',
  'MKCOL',
  'COPY',
  'MOVE',
  'LOCK',
  'UNLOCK',
  'SEARCH',
  'REPORT',
  'SUBSCRIBE',
  'NOTIFY',
  'M-SEARCH',
])

/** 'http' when data starts like an HTTP request (toServer) or response; undefined: need more bytes. */
function looksLikeHttp(data: Uint8Array, start: number, end: number, toServer: boolean): boolean | undefined {
  if (!toServer) {
    const want = 'HTTP/1.'
    for (let k = 0; k < want.length; k++) {
      if (start + k >= end) return undefined
      if (data[start + k] !== want.charCodeAt(k)) return false
    }
    return true
  }
  let word = ''
  for (let k = start; k < end && k - start <= 10; k++) {
    const b = data[k]
    if (b === 0x20) return METHODS.has(word)
    if (!((b >= 0x41 && b <= 0x5a) || b === 0x2d)) return false
    word += String.fromCharCode(b)
  }
  return end - start > 10 ? false : undefined
}

/**
 * What `data[start, end)`, a side's first bytes, says: the protocol, 'none' (it is none of
 * those), or undefined (too few bytes to tell yet).
 */
export function detect(
  data: Uint8Array,
  start: number,
  end: number,
  toServer: boolean,
  tcp: boolean,
): AppProto | 'none' | undefined {
  if (!tcp) return looksLikeDns(data, start, end, false) === true ? 'dns' : 'none'
  let open = false
  const text = lineText(data, start, end)
  if (text.startsWith('SSH-')) return 'ssh'
  const banner = /^220[ -]/.exec(text)
  if (!toServer && banner) {
    if (/\bE?SMTP\b/i.test(text)) return 'smtp'
    if (/\bFTP\b/i.test(text)) return 'ftp'
  }
  if (toServer) {
    if (/^(?:EHLO|HELO) /i.test(text)) return 'smtp'
    if (/^(?:USER|FEAT|SYST|PASV|EPSV|PWD|CWD|RETR|STOR|LIST)(?: |\r?\n)/.test(text)) return 'ftp'
  }
  if (end - start >= 8 && data[start] === 0 && data[start + 5] === 0x53 && data[start + 6] === 0x4d) {
    const magic = data[start + 4]
    if (data[start + 7] === 0x42 && (magic === 0xff || magic === 0xfe || magic === 0xfd)) return 'smb'
  } else if (end - start < 8 && (end - start < 1 || data[start] === 0)) open = true
  if (end - start < 5) open = true
  const http = looksLikeHttp(data, start, end, toServer)
  if (http) return 'http'
  if (http === undefined) open = true
  const tls = looksLikeTlsStart(data, start, end)
  if (tls) return 'tls'
  if (tls === undefined) open = true
  const dns = looksLikeDns(data, start, end, true)
  if (dns) return 'dns'
  if (dns === undefined) open = true
  return open ? undefined : 'none'
}

/** The first bytes (up to 80) as latin1 text, for the line-based protocols. */
function lineText(data: Uint8Array, start: number, end: number): string {
  return Buffer.from(data.buffer, data.byteOffset + start, Math.min(80, end - start)).toString('latin1')
}

function looksLikeTlsStart(data: Uint8Array, start: number, end: number): boolean | undefined {
  if (end - start < 6) {
    if (end - start >= 1 && data[start] !== 22) return false
    if (end - start >= 2 && data[start + 1] !== 3) return false
    return undefined
  }
  return (
    data[start] === 22 &&
    data[start + 1] === 3 &&
    data[start + 2] <= 4 &&
    ((data[start + 3] << 8) | data[start + 4]) > 0 &&
    (data[start + 5] === 1 || data[start + 5] === 2)
  )
}

export interface AppLimits {
  http?: Partial<HttpLimits>
  /** The buffers some rule reads; parsers build only those. Default all. */
  wants?: BufferWants
  /** Whether some rule reads a buffer of `proto` (else it is only detected). Default yes. */
  parses?: (proto: AppProto) => boolean
}

/** A flow's application layer: detection, then the parser. */
export class AppState {
  proto: AppProto | undefined
  /** Detection gave up: no application layer for this flow. */
  unknown = false
  parser: AppParser | undefined
  readonly #tcp: boolean
  readonly #limits: AppLimits
  /** Per direction (0: to server): bytes held while detecting. */
  readonly #held: [Buffer, Buffer] = [Buffer.alloc(0), Buffer.alloc(0)]
  readonly #verdict: [boolean, boolean] = [false, false]
  /** UDP: datagrams probed without finding DNS. */
  #misses = 0

  constructor(tcp: boolean, limits: AppLimits = {}) {
    this.#tcp = tcp
    this.#limits = limits
  }

  /**
   * Feeds a side's in-order bytes: detects the protocol first, then parses. Transactions that
   * changed are appended to `updated`. Never throws.
   */
  feed(toServer: boolean, data: Uint8Array, start: number, end: number, updated: AppTx[]): void {
    if (this.unknown || end <= start || (this.proto !== undefined && !this.parser)) return
    if (this.parser) {
      this.parser.feed(toServer, data, start, end, updated)
      return
    }
    const d = toServer ? 0 : 1
    if (this.#verdict[d]) return
    let buf = data
    let s = start
    let e = end
    const held = this.#held[d]
    if (held.length > 0) {
      buf = Buffer.concat([held, data.subarray(start, end)])
      s = 0
      e = buf.length
    }
    const found = detect(buf, s, e, toServer, this.#tcp)
    if (found === undefined && e - s < PROBE_BYTES) {
      this.#held[d] = Buffer.from(buf.subarray(s, e))
      return
    }
    this.#held[d] = Buffer.alloc(0)
    if (found === undefined || found === 'none') {
      // UDP: each datagram is probed on its own, the first UDP_PROBES of the flow.
      if (!this.#tcp) {
        if (++this.#misses >= UDP_PROBES) this.unknown = true
        return
      }
      this.#verdict[d] = true
      if (this.#verdict[0] && this.#verdict[1]) this.unknown = true
      return
    }
    this.proto = found
    // ftp, smtp, smb, ssh: detected only (rules on their payload), no parser.
    if (found === 'ftp' || found === 'smtp' || found === 'smb' || found === 'ssh') return
    // No rule reads this protocol's buffers (only `alert http ...` payload rules): detection only.
    if (this.#limits.parses && !this.#limits.parses(found)) return
    this.parser =
      found === 'http'
        ? new HttpParser(this.#limits.http, this.#limits.wants)
        : found === 'tls'
          ? new TlsParser({}, this.#limits.wants)
          : new DnsParser(this.#tcp, {}, this.#limits.wants)
    // The other side's held bytes first when it spoke first? Each side is independent: feed ours.
    const other = this.#held[1 - d]
    this.parser.feed(toServer, buf, s, e, updated)
    if (other.length > 0) {
      this.#held[1 - d] = Buffer.alloc(0)
      this.parser.feed(!toServer, other, 0, other.length, updated)
    }
  }

  close(toServer: boolean, updated: AppTx[]): void {
    this.parser?.close?.(toServer, updated)
  }

  gap(toServer: boolean, updated?: AppTx[]): void {
    if (this.parser) this.parser.gap(toServer, updated)
    else this.#held[toServer ? 0 : 1] = Buffer.alloc(0)
  }
}
