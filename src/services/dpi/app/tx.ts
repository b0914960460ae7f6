/**
 * An application-layer transaction (an HTTP request/response pair, a DNS message, a TLS
 * handshake): the inspection buffers the parsers fill as the bytes arrive, and what the engine
 * remembers about it (rules already alerted, prefilter progress). Bounded: each buffer is capped
 * by the parser that fills it.
 */
import { type BufferId, RESPONSE_BUFFERS } from './buffers.ts'

/** Buffers each side of a transaction has: a rule sees the one of its packet's direction. */
export const BOTH_SIDES: ReadonlySet<BufferId> = new Set<BufferId>([
  'http.header',
  'http.header.raw',
  'http.header_names',
  'http.cookie',
  'http.content_type',
  'http.content_len',
  'http.connection',
  'http.protocol',
  'http.start',
  'file.data',
])

/** The buffers some rule reads (the engine's, updated on a rule swap); parsers skip the others. */
export interface BufferWants {
  has(id: BufferId): boolean
}

export class AppTx {
  /** Which buffers to keep; undefined: all. */
  readonly wants: BufferWants | undefined

  constructor(wants?: BufferWants) {
    this.wants = wants
  }

  /** Whether buffer `id` is kept (some rule reads it). */
  wanted(id: BufferId): boolean {
    return this.wants === undefined || this.wants.has(id)
  }

  /**
   * Per buffer: its instances (one for most; one per question for dns.query), for the client's
   * side (`request`) and the server's (`response`). Buffers that exist on both sides (http.header,
   * file.data, ...) are looked up on the side of the packet being inspected (see lookup()).
   */
  readonly request = new Map<BufferId, Buffer[]>()
  readonly response = new Map<BufferId, Buffer[]>()
  /** HTTP: the request method (HEAD responses have no body); '' when none was seen. */
  method = ''
  /** The bytes its buffers hold, roughly, as the parser counts them (HTTP: maxFlowBytes). */
  heldBytes = 0
  /** Bumped whenever a buffer is set or grows. */
  version = 0
  /** `version` when the engine last inspected this transaction. */
  inspected = -1
  /** The client's part is complete (request parsed / query seen / ClientHello seen). */
  requestDone = false
  /** The server's part is complete. */
  responseDone = false
  /** Engine state: the ruleset generation the marks below belong to. */
  generation = -1
  /** Rules (indices) that alerted on this transaction: each alerts once per transaction. */
  readonly alerted = new Set<number>()
  /** Rules whose fast pattern was seen in one of this transaction's buffers. */
  readonly candidates = new Set<number>()
  /** Buffers set or grown since the engine last inspected this transaction. */
  readonly changed = new Set<BufferId>()
  /**
   * Engine state, per buffer prefilter part and side: instances already run through the
   * prefilter, and bytes of the last one (bodies grow); see the engine's BufferPrefilter.
   */
  scanned: number[] = []

  /** Sets buffer `id` (a string is taken as latin1), unless no rule reads it. */
  set(toServer: boolean, id: BufferId, value: Buffer | string): void {
    if (this.wants !== undefined && !this.wants.has(id)) return
    const b = typeof value === 'string' ? Buffer.from(value, 'latin1') : value
    ;(toServer ? this.request : this.response).set(id, [b])
    this.changed.add(id)
    this.version++
  }

  /** Adds an instance of buffer `id`, unless no rule reads it. */
  add(toServer: boolean, id: BufferId, value: Buffer | string): void {
    if (this.wants !== undefined && !this.wants.has(id)) return
    const b = typeof value === 'string' ? Buffer.from(value, 'latin1') : value
    const map = toServer ? this.request : this.response
    const list = map.get(id)
    if (list) list.push(b)
    else map.set(id, [b])
    this.changed.add(id)
    this.version++
  }

  /** The instances of buffer `id` as a rule inspecting a packet going `toServer` sees them. */
  lookup(id: BufferId, toServer: boolean): Buffer[] | undefined {
    if (RESPONSE_BUFFERS.has(id)) return this.response.get(id)
    if (BOTH_SIDES.has(id)) return (toServer ? this.request : this.response).get(id)
    return this.request.get(id)
  }

  get done(): boolean {
    return this.requestDone && this.responseDone
  }
}

/** An application-layer parser for one flow: fed each direction's in-order bytes. */
export interface AppParser {
  /**
   * Parses data[start, end) sent by the client (`toServer`) or the server. Transactions that
   * changed are appended to `updated` (each at most once per call). Never throws.
   */
  feed(toServer: boolean, data: Uint8Array, start: number, end: number, updated: AppTx[]): void
  /**
   * A hole in one direction's stream: the parser resynchronises (or gives up) there; what it held
   * back for inspection is handed over first (transactions appended to `updated`).
   */
  gap(toServer: boolean, updated?: AppTx[]): void
  /** The end of one direction's stream (TCP FIN): what was waiting for more bytes completes. */
  close?(toServer: boolean, updated: AppTx[]): void
  /** Transactions still held (for bounds and tests). */
  readonly pending: number
}

/** Appends `tx` to `updated` unless it is there already. */
export function touch(updated: AppTx[], tx: AppTx): void {
  if (!updated.includes(tx)) updated.push(tx)
}
