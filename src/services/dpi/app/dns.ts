/**
 * DNS for DPI, over UDP (a message per datagram) and TCP (2-byte length-prefixed messages),
 * decoded with dns-packet. A query opens a transaction (dns.query: one buffer per question name);
 * the response with the same id completes it (dns.answer.name: one per answer). Bounded: messages
 * over `maxMessage` are skipped, at most `maxTransactions` open per flow. Never throws: a message
 * dns-packet cannot decode whole still yields its question names when those decode.
 */
import dnsPacket from 'dns-packet'
import { type AppParser, AppTx, type BufferWants, touch } from './tx.ts'

export interface DnsLimits {
  /** Longest message parsed (TCP messages are buffered up to this). Default 16 KiB. */
  maxMessage: number
  /** Transactions (queries awaiting their response) kept per flow. Default 32. */
  maxTransactions: number
  /** Question names kept per message. Default 16. */
  maxQuestions: number
}

const DEFAULT_DNS_LIMITS: DnsLimits = { maxMessage: 16_384, maxTransactions: 32, maxQuestions: 16 }

/** What a DNS message says, as far as inspection needs it. */
export interface DnsMessage {
  id: number
  response: boolean
  opcode: number
  questions: { name: string; type: number }[]
  answers: { name: string; type: number; data: string }[]
}

type NameCodec = { decode: ((buf: Buffer, offset: number) => string) & { bytes: number } }
const nameCodec = (dnsPacket as unknown as { name: NameCodec }).name

const TYPE_NUMBERS: Record<string, number> = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  NAPTR: 35,
  OPT: 41,
  DS: 43,
  RRSIG: 46,
  DNSKEY: 48,
  HTTPS: 65,
  ANY: 255,
  CAA: 257,
}

function typeNumber(type: string | undefined): number {
  if (type === undefined) return 0
  const known = TYPE_NUMBERS[type]
  if (known !== undefined) return known
  const m = /^UNKNOWN_(\d+)$/.exec(type)
  return m ? Number(m[1]) : 0
}

/**
 * Decodes one DNS message, or returns undefined when it is not one: shorter than the header,
 * no question in a query, more than `maxQuestions` questions, or nothing decodable.
 */
export function parseDnsMessage(
  msg: Buffer,
  maxQuestions = DEFAULT_DNS_LIMITS.maxQuestions,
): DnsMessage | undefined {
  if (msg.length < 12) return undefined
  const id = msg.readUInt16BE(0)
  const flags = msg.readUInt16BE(2)
  const response = (flags & 0x8000) !== 0
  const opcode = (flags >> 11) & 0xf
  const qdcount = msg.readUInt16BE(4)
  if (opcode > 6 || qdcount > maxQuestions || (!response && qdcount === 0)) return undefined
  try {
    const p = dnsPacket.decode(msg)
    return {
      id,
      response,
      opcode,
      questions: (p.questions ?? []).map((q) => ({ name: q.name, type: typeNumber(q.type) })),
      answers: (p.answers ?? []).slice(0, 64).map((a) => ({
        name: a.name,
        type: typeNumber(a.type),
        data: 'data' in a && typeof a.data === 'string' ? a.data : '',
      })),
    }
  } catch {
    // The questions may still decode (a bad record further on).
    const questions: DnsMessage['questions'] = []
    let offset = 12
    try {
      for (let k = 0; k < qdcount; k++) {
        const name = nameCodec.decode(msg, offset)
        offset += nameCodec.decode.bytes
        if (offset + 4 > msg.length) return undefined
        questions.push({ name, type: msg.readUInt16BE(offset) })
        offset += 4
      }
    } catch {
      return undefined
    }
    if (questions.length === 0) return undefined
    return { id, response, opcode, questions, answers: [] }
  }
}

/**
 * Whether `data[start, end)` looks like the start of DNS: a UDP message, or a TCP one's length
 * prefix and message (judged on its header when not all there); undefined: too short to tell.
 */
export function looksLikeDns(
  data: Uint8Array,
  start: number,
  end: number,
  tcp: boolean,
): boolean | undefined {
  let s = start
  if (tcp) {
    if (end - s < 2) return undefined
    const length = (data[s] << 8) | data[s + 1]
    if (length < 12 || length > DEFAULT_DNS_LIMITS.maxMessage) return false
    s += 2
    if (end - s < 12) return undefined
    // Only a whole message can be decoded; a longer one is judged on its header.
    if (end - s < length) return headerPlausible(data, s)
    end = s + length
  }
  if (end - s < 12 || !headerPlausible(data, s)) return false
  return parseDnsMessage(Buffer.from(data.buffer, data.byteOffset + s, end - s)) !== undefined
}

function headerPlausible(data: Uint8Array, s: number): boolean {
  const flags = (data[s + 2] << 8) | data[s + 3]
  const opcode = (flags >> 11) & 0xf
  const qdcount = (data[s + 4] << 8) | data[s + 5]
  return opcode <= 6 && qdcount >= 1 && qdcount <= DEFAULT_DNS_LIMITS.maxQuestions && (flags & 0x0040) === 0
}

export class DnsParser implements AppParser {
  readonly #tcp: boolean
  readonly #limits: DnsLimits
  /** Open transactions by message id, oldest first. */
  readonly #txs = new Map<number, AppTx>()
  /** TCP: per direction, the bytes of a message being assembled. */
  readonly #partial: [Buffer, Buffer] = [Buffer.alloc(0), Buffer.alloc(0)]
  /** TCP: per direction, bytes of an oversized message still to skip. */
  readonly #skip: [number, number] = [0, 0]
  /** Messages that did not decode, or were over maxMessage. */
  errors = 0

  readonly #wants: BufferWants | undefined

  constructor(tcp: boolean, limits: Partial<DnsLimits> = {}, wants?: BufferWants) {
    this.#tcp = tcp
    this.#limits = { ...DEFAULT_DNS_LIMITS, ...limits }
    this.#wants = wants
  }

  get pending(): number {
    return this.#txs.size
  }

  gap(toServer: boolean): void {
    const d = toServer ? 0 : 1
    this.#partial[d] = Buffer.alloc(0)
    this.#skip[d] = Number.POSITIVE_INFINITY // framing is lost: stop that direction
  }

  feed(toServer: boolean, data: Uint8Array, start: number, end: number, updated: AppTx[]): void {
    if (!this.#tcp) {
      if (end - start > this.#limits.maxMessage) {
        this.errors++
        return
      }
      this.#message(Buffer.from(data.subarray(start, end)), updated)
      return
    }
    const d = toServer ? 0 : 1
    let i = start
    while (i < end) {
      if (this.#skip[d] > 0) {
        const n = Math.min(this.#skip[d], end - i)
        this.#skip[d] -= n
        i += n
        continue
      }
      let partial = this.#partial[d]
      const need = partial.length < 2 ? 2 : 2 + partial.readUInt16BE(0)
      const n = Math.min(need - partial.length, end - i)
      partial = Buffer.concat([partial, data.subarray(i, i + n)])
      i += n
      if (partial.length >= 2) {
        const length = partial.readUInt16BE(0)
        if (length > this.#limits.maxMessage) {
          this.errors++
          this.#skip[d] = length - (partial.length - 2)
          partial = Buffer.alloc(0)
        } else if (partial.length === 2 + length) {
          this.#message(partial.subarray(2), updated)
          partial = Buffer.alloc(0)
        }
      }
      this.#partial[d] = partial
    }
  }

  #message(msg: Buffer, updated: AppTx[]): void {
    const m = parseDnsMessage(msg, this.#limits.maxQuestions)
    if (!m) {
      this.errors++
      return
    }
    let tx = this.#txs.get(m.id)
    if (!m.response || !tx) {
      tx = new AppTx(this.#wants)
      if (this.#txs.size >= this.#limits.maxTransactions) {
        const oldest = this.#txs.keys().next().value as number
        this.#txs.delete(oldest)
      }
      if (!m.response) this.#txs.set(m.id, tx)
      else tx.requestDone = true // a response whose query was not seen
    }
    if (!m.response) {
      for (const q of m.questions) tx.add(true, 'dns.query', Buffer.from(q.name, 'latin1'))
      tx.requestDone = true
    } else {
      for (const a of m.answers) tx.add(false, 'dns.answer.name', Buffer.from(a.name, 'latin1'))
      tx.responseDone = true
      tx.version++
      this.#txs.delete(m.id)
    }
    touch(updated, tx)
  }
}
