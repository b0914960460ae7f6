/**
 * TLS handshake parser for DPI: the records of each direction are read until the traffic is
 * encrypted; the ClientHello gives tls.sni and JA3, the ServerHello JA3S, and (TLS ≤ 1.2, where it
 * travels in clear) the server's Certificate message the certificate buffers, parsed with
 * node:crypto's X509Certificate. Hand-written: no npm package parses TLS records incrementally
 * from a byte stream without a TLS stack. Bounded (a handshake message is buffered up to
 * `maxHandshake`) and never throwing: anything that is not TLS stops the direction.
 */
import { createHash, X509Certificate } from 'node:crypto'
import { type AppParser, AppTx, type BufferWants, touch } from './tx.ts'

export interface TlsLimits {
  /** Largest handshake message parsed (a Certificate chain is often a few KiB). Default 64 KiB. */
  maxHandshake: number
}

const DEFAULT_TLS_LIMITS: TlsLimits = { maxHandshake: 65_536 }

const HANDSHAKE = 22
const CHANGE_CIPHER_SPEC = 20
const APPLICATION_DATA = 23
const HEARTBEAT = 24

/** GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa; left out of JA3. */
const isGrease = (v: number): boolean => (v & 0x0f0f) === 0x0a0a && v >> 8 === (v & 0xff)

/** Parsed ClientHello fields. */
export interface ClientHello {
  version: number
  ciphers: number[]
  extensions: number[]
  groups: number[]
  pointFormats: number[]
  sni: string | undefined
  supportedVersions: number[]
}

export interface ServerHello {
  version: number
  cipher: number
  extensions: number[]
  selectedVersion: number | undefined
}

/** JA3 string: version,ciphers,extensions,groups,point formats (GREASE removed). */
export function ja3String(h: ClientHello): string {
  const list = (xs: number[]): string => xs.filter((x) => !isGrease(x)).join('-')
  return `${h.version},${list(h.ciphers)},${list(h.extensions)},${list(h.groups)},${h.pointFormats.join('-')}`
}

function ja3sString(h: ServerHello): string {
  return `${h.version},${h.cipher},${h.extensions.filter((x) => !isGrease(x)).join('-')}`
}

/** `1.2` for 0x0303, ...; `3.0` for SSLv3 (0x0300). */
function versionText(v: number): string {
  if (v >> 8 !== 3) return `${v >> 8}.${v & 0xff}`
  return (v & 0xff) === 0 ? '3.0' : `1.${(v & 0xff) - 1}`
}

const md5Hex = (s: string): string => createHash('md5').update(s, 'latin1').digest('hex')

/** A bounds-checked reader: any read past the end sets `bad` and yields 0. */
class Reader {
  readonly #b: Uint8Array
  pos: number
  readonly end: number
  bad = false
  constructor(b: Uint8Array, start: number, end: number) {
    this.#b = b
    this.pos = start
    this.end = end
  }
  u8(): number {
    if (this.pos + 1 > this.end) return this.#fail()
    return this.#b[this.pos++]
  }
  u16(): number {
    if (this.pos + 2 > this.end) return this.#fail()
    const v = (this.#b[this.pos] << 8) | this.#b[this.pos + 1]
    this.pos += 2
    return v
  }
  u24(): number {
    if (this.pos + 3 > this.end) return this.#fail()
    const v = (this.#b[this.pos] << 16) | (this.#b[this.pos + 1] << 8) | this.#b[this.pos + 2]
    this.pos += 3
    return v
  }
  skip(n: number): void {
    if (this.pos + n > this.end) this.#fail()
    else this.pos += n
  }
  /** A sub-reader over the next n bytes. */
  sub(n: number): Reader {
    const r = new Reader(this.#b, this.pos, Math.min(this.end, this.pos + n))
    if (this.pos + n > this.end) r.bad = this.bad = true
    this.pos = Math.min(this.end, this.pos + n)
    return r
  }
  bytes(n: number): Uint8Array {
    const from = this.pos
    this.skip(n)
    return this.#b.subarray(from, this.bad ? from : from + n)
  }
  get left(): number {
    return this.end - this.pos
  }
  #fail(): number {
    this.bad = true
    this.pos = this.end
    return 0
  }
}

/** Parses a ClientHello body (after the 4-byte handshake header); undefined when malformed. */
export function parseClientHello(b: Uint8Array): ClientHello | undefined {
  const r = new Reader(b, 0, b.length)
  const version = r.u16()
  r.skip(32) // random
  r.skip(r.u8()) // session id
  const cs = r.sub(r.u16())
  const ciphers: number[] = []
  while (cs.left >= 2) ciphers.push(cs.u16())
  r.skip(r.u8()) // compression methods
  const h: ClientHello = {
    version,
    ciphers,
    extensions: [],
    groups: [],
    pointFormats: [],
    sni: undefined,
    supportedVersions: [],
  }
  if (r.bad) return undefined
  if (r.left < 2) return h
  const ext = r.sub(r.u16())
  while (ext.left >= 4 && !ext.bad) {
    const type = ext.u16()
    const body = ext.sub(ext.u16())
    h.extensions.push(type)
    if (type === 0) {
      const list = body.sub(body.u16())
      while (list.left >= 3) {
        const nameType = list.u8()
        const name = list.bytes(list.u16())
        if (nameType === 0 && h.sni === undefined) h.sni = Buffer.from(name).toString('latin1')
      }
    } else if (type === 10) {
      const list = body.sub(body.u16())
      while (list.left >= 2) h.groups.push(list.u16())
    } else if (type === 11) {
      const list = body.sub(body.u8())
      while (list.left >= 1) h.pointFormats.push(list.u8())
    } else if (type === 43) {
      const list = body.sub(body.u8())
      while (list.left >= 2) h.supportedVersions.push(list.u16())
    }
  }
  return ext.bad ? undefined : h
}

function parseServerHello(b: Uint8Array): ServerHello | undefined {
  const r = new Reader(b, 0, b.length)
  const version = r.u16()
  r.skip(32)
  r.skip(r.u8())
  const cipher = r.u16()
  r.skip(1) // compression
  if (r.bad) return undefined
  const h: ServerHello = { version, cipher, extensions: [], selectedVersion: undefined }
  if (r.left < 2) return h
  const ext = r.sub(r.u16())
  while (ext.left >= 4 && !ext.bad) {
    const type = ext.u16()
    const body = ext.sub(ext.u16())
    h.extensions.push(type)
    if (type === 43 && body.left >= 2) h.selectedVersion = body.u16()
  }
  return ext.bad ? undefined : h
}

/** The DER certificates of a Certificate message body (TLS ≤ 1.2 layout). */
function parseCertificates(b: Uint8Array, max = 8): Uint8Array[] {
  const r = new Reader(b, 0, b.length)
  const list = r.sub(r.u24())
  const certs: Uint8Array[] = []
  while (list.left >= 3 && certs.length < max) {
    const der = list.bytes(list.u24())
    if (list.bad) break
    certs.push(der)
  }
  return certs
}

/** Suricata's forms of a certificate's fields. */
function certificateFields(
  der: Uint8Array,
): { subject: string; issuer: string; serial: string; fingerprint: string } | undefined {
  try {
    const cert = new X509Certificate(der)
    let serial = cert.serialNumber.toUpperCase()
    if (serial.length % 2 === 1) serial = `0${serial}`
    return {
      subject: cert.subject.split('\n').join(', '),
      issuer: cert.issuer.split('\n').join(', '),
      serial: serial.match(/../g)?.join(':') ?? '',
      fingerprint: cert.fingerprint.toLowerCase(),
    }
  } catch {
    return undefined
  }
}

class Direction {
  /** Record header bytes being assembled. */
  header = new Uint8Array(5)
  headerLength = 0
  /** Bytes left in the current record, and its type. */
  recordLeft = 0
  recordType = 0
  /** Handshake bytes being assembled into messages. */
  hs = Buffer.alloc(0)
  /** The direction's handshake is encrypted from here on (ChangeCipherSpec or application data). */
  encrypted = false
  dead = false
}

export class TlsParser implements AppParser {
  readonly #limits: TlsLimits
  readonly #client = new Direction()
  readonly #server = new Direction()
  readonly #tx: AppTx
  errors = 0

  constructor(limits: Partial<TlsLimits> = {}, wants?: BufferWants) {
    this.#limits = { ...DEFAULT_TLS_LIMITS, ...limits }
    this.#tx = new AppTx(wants)
  }

  get pending(): number {
    return this.#tx.done ? 0 : 1
  }

  gap(toServer: boolean): void {
    ;(toServer ? this.#client : this.#server).dead = true
  }

  feed(toServer: boolean, data: Uint8Array, start: number, end: number, updated: AppTx[]): void {
    const d = toServer ? this.#client : this.#server
    let i = start
    while (i < end && !d.dead) {
      if (d.recordLeft === 0) {
        const n = Math.min(5 - d.headerLength, end - i)
        d.header.set(data.subarray(i, i + n), d.headerLength)
        d.headerLength += n
        i += n
        if (d.headerLength < 5) break
        d.headerLength = 0
        const type = d.header[0]
        if (type < CHANGE_CIPHER_SPEC || type > HEARTBEAT || d.header[1] !== 3 || d.header[2] > 4) {
          this.errors++
          d.dead = true
          break
        }
        d.recordType = type
        d.recordLeft = (d.header[3] << 8) | d.header[4]
        if (type === CHANGE_CIPHER_SPEC || type === APPLICATION_DATA) d.encrypted = true
        if (type === APPLICATION_DATA) this.#encrypted(toServer, updated)
        continue
      }
      const n = Math.min(d.recordLeft, end - i)
      if (d.recordType === HANDSHAKE && !d.encrypted)
        this.#handshakeBytes(d, toServer, data.subarray(i, i + n), updated)
      d.recordLeft -= n
      i += n
    }
  }

  #encrypted(toServer: boolean, updated: AppTx[]): void {
    const tx = this.#tx
    if (toServer) tx.requestDone = true
    else tx.responseDone = true
    tx.version++
    touch(updated, tx)
  }

  #handshakeBytes(d: Direction, toServer: boolean, bytes: Uint8Array, updated: AppTx[]): void {
    d.hs = d.hs.length === 0 ? Buffer.from(bytes) : Buffer.concat([d.hs, bytes])
    while (d.hs.length >= 4) {
      const type = d.hs[0]
      const length = (d.hs[1] << 16) | (d.hs[2] << 8) | d.hs[3]
      if (length > this.#limits.maxHandshake) {
        this.errors++
        d.dead = true
        d.hs = Buffer.alloc(0)
        return
      }
      if (d.hs.length < 4 + length) return
      this.#message(type, d.hs.subarray(4, 4 + length), toServer, updated)
      d.hs = d.hs.subarray(4 + length)
    }
  }

  #message(type: number, body: Buffer, toServer: boolean, updated: AppTx[]): void {
    const tx = this.#tx
    const latin = (s: string): Buffer => Buffer.from(s, 'latin1')
    if (type === 1 && toServer) {
      const h = parseClientHello(body)
      if (!h) {
        this.errors++
        return
      }
      if (h.sni !== undefined) tx.set(true, 'tls.sni', latin(h.sni))
      const ja3 = ja3String(h)
      tx.set(true, 'ja3.string', latin(ja3))
      tx.set(true, 'ja3.hash', latin(md5Hex(ja3)))
      tx.requestDone = true
      touch(updated, tx)
    } else if (type === 2 && !toServer) {
      const h = parseServerHello(body)
      if (!h) {
        this.errors++
        return
      }
      tx.set(false, 'tls.version', latin(versionText(h.selectedVersion ?? h.version)))
      const ja3s = ja3sString(h)
      tx.set(false, 'ja3s.string', latin(ja3s))
      tx.set(false, 'ja3s.hash', latin(md5Hex(ja3s)))
      // TLS 1.3: everything after the ServerHello is encrypted.
      if (h.selectedVersion === 0x0304) this.#encrypted(false, updated)
      touch(updated, tx)
    } else if (type === 11 && !toServer) {
      const certs = parseCertificates(body)
      for (const der of certs) tx.add(false, 'tls.certs', Buffer.from(der))
      if (certs.length > 0) touch(updated, tx)
      const f = certs.length > 0 ? certificateFields(certs[0]) : undefined
      if (f) {
        tx.set(false, 'tls.cert_subject', latin(f.subject))
        tx.set(false, 'tls.cert_issuer', latin(f.issuer))
        tx.set(false, 'tls.cert_serial', latin(f.serial))
        tx.set(false, 'tls.cert_fingerprint', latin(f.fingerprint))
        touch(updated, tx)
      }
    } else if (type === 14 && !toServer) {
      // ServerHelloDone: the server's clear part of the handshake is over.
      this.#encrypted(false, updated)
    }
  }
}
