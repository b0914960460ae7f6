/**
 * Flows and TCP stream reassembly for the DPI engine (pure: no I/O, the clock comes in).
 *
 * A flow is one bidirectional conversation (5-tuple + VLAN) with two sides, each the byte stream
 * one endpoint sends. TCP sides are reassembled by sequence number: in-order bytes go straight to
 * inspection (as views of the frame); segments ahead of a hole are copied into a bounded queue and
 * delivered once the hole fills; data already delivered wins over a retransmission that overlaps it
 * (first-wins). When the queue overflows, the hole is declared a gap (counted): inspection resumes
 * after it with fresh state. The table is bounded: the least recently used flow is evicted.
 */
import type { Packet } from '../../wire/packet.ts'
import type { AppState } from './app/detect.ts'
import type { FlowVars } from './flowstate.ts'

/** Most segments queued per side (tiny segments would otherwise make the queue slow). */
const MAX_QUEUED_SEGMENTS = 256

/** A segment waiting for the hole before it to fill; `data` is a copy. */
interface QueuedSegment {
  seq: number
  data: Uint8Array
}

/** One direction of a flow: what one endpoint sends. */
export class StreamSide {
  /** The next sequence number is known (SYN seen, or first segment picked up mid-stream). */
  started = false
  nextSeq = 0
  /** Stream bytes delivered so far: the stream offset of `nextSeq` (gaps included). */
  offset = 0
  /** The last bytes delivered, kept so that matches can span segments: window[0, windowLength). */
  window: Uint8Array | undefined = undefined
  windowLength = 0
  /** Prefilter state after the last delivered byte, valid for ruleset `generation`. */
  acState = 0
  generation = -1
  /**
   * The prefilter group (engine's, groups.ts) acState belongs to, with the ruleset generation and
   * the flow's application protocol it was chosen for.
   */
  group: object | undefined = undefined
  groupGeneration = -1
  /** The application group (once the flow's protocol is known), its protocol and its state. */
  appGroup: object | undefined = undefined
  groupApp: string | undefined = undefined
  appAcState = 0
  /** Rules whose fast pattern was seen in the window but whose other parts were not (yet). */
  pendingRules: number[] = []
  pendingEnds: number[] = []
  queue: QueuedSegment[] = []
  queuedBytes = 0
  /** The stream offset the application-layer parser expects next (a jump is a gap). */
  appOffset = 0
  /**
   * The rules indexed by this side's IPv4 source and destination (the engine's headerBySource and
   * headerByDestination), in lookup order, for ruleset `addressGeneration`: a flow side's
   * addresses never change, so they are looked up once.
   */
  addressRules: readonly number[] = []
  addressGeneration = -1
  packets = 0
  bytes = 0

  /** Forgets what inspection knew (after a gap or a rule swap), keeping sequence tracking. */
  resetInspection(generation: number): void {
    this.windowLength = 0
    this.acState = 0
    this.appAcState = 0
    this.generation = generation
    this.pendingRules.length = 0
    this.pendingEnds.length = 0
  }

  /** Appends data[start, end) to the window, keeping its last `keep` bytes. */
  retain(data: Uint8Array, start: number, end: number, keep: number): void {
    if (keep <= 0) return
    const length = end - start
    if (length >= keep) {
      this.#ensure(keep, keep)
      ;(this.window as Uint8Array).set(data.subarray(end - keep, end), 0)
      this.windowLength = keep
      return
    }
    const total = Math.min(keep, this.windowLength + length)
    this.#ensure(total, keep)
    const window = this.window as Uint8Array
    const kept = total - length
    if (kept < this.windowLength) window.copyWithin(0, this.windowLength - kept, this.windowLength)
    window.set(data.subarray(start, end), kept)
    this.windowLength = total
  }

  #ensure(size: number, cap: number): void {
    if (this.window && this.window.length >= size) return
    // Grow geometrically up to the window size: short flows never pay for the whole window.
    const next = new Uint8Array(Math.max(size, Math.min(2 * (this.window?.length ?? 128), cap)))
    if (this.window) next.set(this.window.subarray(0, this.windowLength))
    this.window = next
  }
}

export class Flow {
  readonly id: number
  readonly key: string
  readonly protocol: number
  /** Whether the client (SYN sender, else first sender) is the key's low endpoint. */
  clientIsLow = true
  /** TCP: handshake completed (or picked up mid-stream); other protocols: both sides seen. */
  established = false
  /**
   * The handshake's last ACK was seen: the flow is established from the next frame on (that ACK
   * itself is not, as in Suricata).
   */
  establishing = false
  synSeen = false
  synAckSeen = false
  /** RST, or FIN from both sides. */
  closed = false
  /** Wall-clock start (µs since the epoch) for the EVE record. */
  readonly start: number
  lastSeen: number
  /** When the flow last moved to the table's recent end (FlowTable: at most once a second). */
  touchedAt: number
  /** A pass rule matched: not inspected any more. */
  passed = false
  /** A drop rule matched: every later frame of the flow is dropped. */
  dropped = false
  finLow = false
  finHigh = false
  readonly fromLow = new StreamSide()
  readonly fromHigh = new StreamSide()
  /** The application layer (protocol detection, parser), when the rules need it. */
  app: AppState | undefined = undefined
  /** flowbits and flowints (flowstate.ts), when a rule set them. */
  vars: FlowVars | undefined = undefined

  constructor(id: number, key: string, protocol: number, now: number, wallMicros: number) {
    this.id = id
    this.key = key
    this.protocol = protocol
    this.lastSeen = now
    this.touchedAt = now
    this.start = wallMicros
  }

  side(fromLow: boolean): StreamSide {
    return fromLow ? this.fromLow : this.fromHigh
  }

  toServer(fromLow: boolean): boolean {
    return fromLow === this.clientIsLow
  }
}

export interface FlowTableOptions {
  maxFlows: number
  idleTimeoutMs: number
  closedTimeoutMs: number
}

/**
 * How long a flow stays where it is in the table's order after a move to the recent end: a Map
 * delete and set on every packet cost more than the rest of the lookup, and the order only needs
 * to be as fine as the sweep (once a second).
 */
const TOUCH_MS = 1000

/**
 * The bounded flow table: a Map in least-recently-touched order (a flow moves to the recent end
 * on a packet at most once a second, so eviction is least-recently-used to within that second).
 */
export class FlowTable {
  readonly #flows = new Map<string, Flow>()
  readonly #options: FlowTableOptions
  #lastSweep = Number.NEGATIVE_INFINITY
  created = 0
  evicted = 0
  expired = 0

  constructor(options: FlowTableOptions) {
    this.#options = options
  }

  get size(): number {
    return this.#flows.size
  }

  /** The live flow for `key` (made most recent), or undefined (expired flows are removed). */
  get(key: string, now: number): Flow | undefined {
    const flow = this.#flows.get(key)
    if (!flow) return undefined
    if (this.#isExpired(flow, now)) {
      this.#flows.delete(key)
      this.expired++
      return undefined
    }
    if (now - flow.touchedAt >= TOUCH_MS) {
      this.#flows.delete(key)
      this.#flows.set(key, flow)
      flow.touchedAt = now
    }
    flow.lastSeen = now
    return flow
  }

  /** Adds a flow, evicting the least recently used one when the table is full. */
  add(flow: Flow): void {
    this.#flows.delete(flow.key)
    flow.touchedAt = flow.lastSeen
    while (this.#flows.size >= this.#options.maxFlows) {
      const oldest = this.#flows.keys().next().value as string
      this.#flows.delete(oldest)
      this.evicted++
    }
    this.#flows.set(flow.key, flow)
    this.created++
  }

  remove(key: string): void {
    this.#flows.delete(key)
  }

  /** Drops timed-out flows; cheap to call per packet (works at most once a second). */
  sweep(now: number): void {
    if (now - this.#lastSweep < 1000) return
    this.#lastSweep = now
    const horizon = Math.min(this.#options.closedTimeoutMs, this.#options.idleTimeoutMs)
    for (const [key, flow] of this.#flows) {
      // Touched in order: the rest were touched later still, and seen since, so none is expired.
      if (now - flow.touchedAt < horizon) break
      if (this.#isExpired(flow, now)) {
        this.#flows.delete(key)
        this.expired++
      }
    }
  }

  flows(): IterableIterator<Flow> {
    return this.#flows.values()
  }

  #isExpired(flow: Flow, now: number): boolean {
    const idle = now - flow.lastSeen
    return idle >= this.#options.idleTimeoutMs || (flow.closed && idle >= this.#options.closedTimeoutMs)
  }
}

const u32 = (b: Uint8Array, at: number): number =>
  ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0

/** An IPv6 address as text, for the flow key. */
function addressText(frame: Uint8Array, at: number): string {
  return `${u32(frame, at).toString(16)}.${u32(frame, at + 4).toString(16)}.${u32(frame, at + 8).toString(16)}.${u32(frame, at + 12).toString(16)}`
}

/** Negative when the packet's source endpoint sorts before its destination. */
function compareEndpoints(frame: Uint8Array, p: Packet): number {
  for (let i = 0; i < p.addressLength; i++) {
    const d = frame[p.sourceAddressOffset + i] - frame[p.destinationAddressOffset + i]
    if (d !== 0) return d
  }
  return p.sourcePort - p.destinationPort
}

/** The flow key of an IP packet and whether its sender is the key's low endpoint. */
export interface FlowKey {
  key: string
  fromLow: boolean
  /** The IPv4 packet `key` was made for (addresses, ports, protocol and VLAN), -1 when none. */
  lastSource: number
  lastDestination: number
  lastPorts: number
  lastProtocolVlan: number
}

export const newFlowKey = (): FlowKey => ({
  key: '',
  fromLow: true,
  lastSource: -1,
  lastDestination: -1,
  lastPorts: -1,
  lastProtocolVlan: -1,
})

/**
 * Fills `out` with the packet's bidirectional flow key (ports are 0 for port-less protocols). For
 * IPv4 the key is eight UTF-16 code units (protocol, VLAN, then each endpoint's address halves and
 * port, low endpoint first), built in one call and cheap to hash; a packet of the same flow and
 * direction as the last one keeps the last key (the same string, its hash already computed).
 */
export function flowKey(frame: Uint8Array, p: Packet, out: FlowKey): void {
  const fromLow = compareEndpoints(frame, p) <= 0
  out.fromLow = fromLow
  if (p.addressLength === 4) {
    const src = u32(frame, p.sourceAddressOffset)
    const dst = u32(frame, p.destinationAddressOffset)
    const ports = ((p.sourcePort << 16) | p.destinationPort) >>> 0
    const protocolVlan = p.protocol * 0x10000 + (p.vlan & 0xffff)
    if (
      src === out.lastSource &&
      dst === out.lastDestination &&
      ports === out.lastPorts &&
      protocolVlan === out.lastProtocolVlan
    )
      return
    out.lastSource = src
    out.lastDestination = dst
    out.lastPorts = ports
    out.lastProtocolVlan = protocolVlan
    const a = fromLow ? src : dst
    const b = fromLow ? dst : src
    const aPort = fromLow ? p.sourcePort : p.destinationPort
    const bPort = fromLow ? p.destinationPort : p.sourcePort
    out.key = String.fromCharCode(
      p.protocol,
      p.vlan & 0xffff,
      a >>> 16,
      a & 0xffff,
      aPort,
      b >>> 16,
      b & 0xffff,
      bPort,
    )
    return
  }
  out.lastSource = -1
  const src = addressText(frame, p.sourceAddressOffset)
  const dst = addressText(frame, p.destinationAddressOffset)
  out.key = fromLow
    ? `${p.protocol}/${p.vlan}/${src}/${p.sourcePort}/${dst}/${p.destinationPort}`
    : `${p.protocol}/${p.vlan}/${dst}/${p.destinationPort}/${src}/${p.sourcePort}`
}

/** Receives the in-order bytes of a side: data[start, end) begins at stream offset side.offset. */
export type ChunkSink = (side: StreamSide, data: Uint8Array, start: number, end: number) => void

export interface ReassemblyCounters {
  /** Holes given up on (queue overflow): inspection restarted after each. */
  gaps: number
  /** Segments that arrived ahead of a hole and were queued. */
  outOfOrderSegments: number
  /** Bytes received again after they were delivered (dropped: first-wins). */
  retransmittedBytes: number
}

/** In-order delivery of one side's segments with a bounded out-of-order queue. */
export class Reassembler {
  readonly counters: ReassemblyCounters = { gaps: 0, outOfOrderSegments: 0, retransmittedBytes: 0 }
  readonly #maxQueuedBytes: number

  constructor(maxQueuedBytes: number) {
    this.#maxQueuedBytes = maxQueuedBytes
  }

  /**
   * Feeds the segment data[start, end) with sequence number `seq` (of its first byte) and calls
   * `sink` with every chunk that became in order. `generation` resets inspection after a gap.
   */
  segment(
    side: StreamSide,
    seq: number,
    data: Uint8Array,
    start: number,
    end: number,
    sink: ChunkSink,
    generation: number,
  ): void {
    const length = end - start
    if (length <= 0) return
    if (!side.started) {
      side.started = true
      side.nextSeq = seq >>> 0
    }
    const ahead = (seq - side.nextSeq) | 0
    if (ahead + length <= 0) {
      this.counters.retransmittedBytes += length
      return
    }
    if (ahead <= 0) {
      this.counters.retransmittedBytes += -ahead
      this.#deliver(side, data, start - ahead, end, sink)
      this.#drain(side, sink)
      return
    }
    this.counters.outOfOrderSegments++
    if (length > this.#maxQueuedBytes) {
      this.#skipTo(side, seq, generation)
      this.#deliver(side, data, start, end, sink)
      this.#drain(side, sink)
      return
    }
    this.#enqueue(side, seq >>> 0, data.slice(start, end))
    while (side.queuedBytes > this.#maxQueuedBytes || side.queue.length > MAX_QUEUED_SEGMENTS) {
      this.#skipTo(side, side.queue[0].seq, generation)
      this.#drain(side, sink)
    }
  }

  #enqueue(side: StreamSide, seq: number, data: Uint8Array): void {
    const queue = side.queue
    const key = (seq - side.nextSeq) | 0
    let i = queue.length
    while (i > 0 && ((queue[i - 1].seq - side.nextSeq) | 0) > key) i--
    // An exact duplicate of a queued segment (or a part of it) is a retransmission.
    const before = queue[i - 1]
    if (before && before.seq === seq && before.data.length >= data.length) {
      this.counters.retransmittedBytes += data.length
      return
    }
    queue.splice(i, 0, { seq, data })
    side.queuedBytes += data.length
  }

  #drain(side: StreamSide, sink: ChunkSink): void {
    const queue = side.queue
    while (queue.length > 0) {
      const head = queue[0]
      const ahead = (head.seq - side.nextSeq) | 0
      if (ahead > 0) return
      queue.shift()
      side.queuedBytes -= head.data.length
      if (ahead + head.data.length <= 0) {
        this.counters.retransmittedBytes += head.data.length
        continue
      }
      this.counters.retransmittedBytes += -ahead
      this.#deliver(side, head.data, -ahead, head.data.length, sink)
    }
  }

  #skipTo(side: StreamSide, seq: number, generation: number): void {
    this.counters.gaps++
    side.offset += (seq - side.nextSeq) | 0
    side.nextSeq = seq >>> 0
    side.resetInspection(generation)
  }

  #deliver(side: StreamSide, data: Uint8Array, start: number, end: number, sink: ChunkSink): void {
    sink(side, data, start, end)
    side.nextSeq = (side.nextSeq + (end - start)) >>> 0
    side.offset += end - start
  }
}
