import { readSync } from 'node:fs'
import type { Address, Connection } from '../transport/connection.ts'
import { type ConnectionLease, LEND, LEND_DISK_STRIDE, type LeaseReturn } from '../transport/lease.ts'
import { REPLAY_WINDOW } from '../transport/seal.ts'
import type { FrameChannel } from './frame-channel.ts'
import { type NativeFastPath, type NativeFastPathConstructor, native } from './native.ts'

/**
 * The host of the IOhyp's native fast path (native/fastpath.cc; docs/architecture.md, "Fast path
 * and slow path"): lends idle connections whose guest has plain-file disks to it, gives them back
 * to their Connection on demand, and reads its counters. The arrays below are shared with the
 * addon: it writes a slot's state and counters there, and the replies it has not seen
 * acknowledged (plaintext) in the slot's store.
 */

/** Connections lent at once, at most. */
const SLOTS = 8
/** Offsets in a slot's shared state — kept in step with native/fastpath.cc (kSlotStride in io.h). */
export const SLOT_STRIDE = 48
const S = {
  state: 0,
  rcvNxt: 1,
  sndUna: 2,
  sndNxt: 3,
  ipId: 4,
  txCounter: 5,
  txBytes: 6,
  rxHighest: 7,
  sndWnd: 8,
  wl1: 9,
  wl2: 10,
  records: 11,
  framesTaken: 12,
  ackProgress: 13,
  inFlight: 14,
  cwnd: 15,
  srtt: 32,
  rttvar: 33,
  rttSamples: 34,
  partStart: 35,
  partLength: 36,
  partFilled: 37,
  partFd: 38,
  partOffset: 39,
  rcvAdvance: 40,
  unaAdvance: 41,
  sndMax: 42,
} as const
const STATE_FREE = 0
const STATE_LENT = 1
/** Counters from this offset on, in this order (then `batches`, at BATCHES_AT). */
const COUNTERS_AT = 16
const BATCHES_AT = 43
const COUNTER_NAMES = [
  'framesIn',
  'bytesIn',
  'requests',
  'framesOut',
  'bytesOut',
  'readBytes',
  'handbacks',
  'lends',
  'pureAcks',
  'readErrors',
  'rttSamples',
  'writes',
  'writeBytes',
  'writeErrors',
  'partialHandbacks',
  'sentThrough',
  'batches',
] as const
/** Each counter's offset in a slot's shared state. */
const COUNTER_AT = COUNTER_NAMES.map((n, i) => (n === 'batches' ? BATCHES_AT : COUNTERS_AT + i))
export type FastPathCounter = (typeof COUNTER_NAMES)[number]
export type FastPathCounters = Record<FastPathCounter, number>

/** Unacknowledged replies per slot, and the bytes of their messages. */
const MAX_RECORDS = 128
const RECORD_STRIDE = 3
/**
 * A slot's store: the unacknowledged replies (at most the peer's window, 8 MiB by default), with
 * room for one more of the largest message (4 MiB) however the ring wraps. Only what is used is
 * touched; a reply that does not fit hands the connection back.
 */
const STORE_BYTES = 12 << 20
const BITS_WORDS = REPLAY_WINDOW / 32
const MAX_DISKS = 8
const REQUESTS = COUNTER_NAMES.indexOf('requests')
/** A BlockRequest's message header and request head (devices/blk/protocol.ts), as the addon keeps them. */
const REQUEST_HEAD = 56
/**
 * A connection lent twice in a row without the fast path answering a request (its guest's requests
 * are ones the addon hands back: FUA writes, flushes, trims; or its NIC's frames) skips the next
 * lend attempts, 1 doubling up to this many (an attempt is made after every batch the link
 * flushes): each lend and hand back costs both sides a round of state copies and the request a
 * detour, once per request when nothing else is done (1 MiB reads at QD8, before the addon
 * answered them: a lend and a hand back per request, 20 % slower than the slow path alone). Counted in batches, not time, so a burst of
 * requests the addon does answer gets its lend back within a few of its own batches.
 */
const MAX_LEND_SKIPS = 64

/**
 * A disk the fast path may read, and write unless `readOnly`: its handle, descriptor, size, and
 * the longest read it answers.
 */
export interface FastDisk {
  high: number
  low: number
  fd: number
  size: number
  maxRead: number
  readOnly: boolean
  /**
   * The disk's own counters (devices/blk/op-stats.ts BlockOpStats: rows read 0, write 1; errors by
   * status), which the addon adds the requests it answers to, so that the metrics count them where
   * the backend's are.
   */
  stats: {
    requests: Float64Array
    bytes: Float64Array
    errors: Float64Array
    latency: { bounds: readonly number[]; buckets: Float64Array; count: Float64Array; sum: Float64Array }
  }
}

/**
 * `VRIO_FASTPATH`, read once: the fast path is on unless it is '0' (then every frame goes through
 * the TypeScript transport, the slow path).
 */
export const FASTPATH_ENABLED = process.env.VRIO_FASTPATH !== '0'

function newFastPathCounters(): FastPathCounters {
  const c = {} as FastPathCounters
  for (const n of COUNTER_NAMES) c[n] = 0
  return c
}

class SlotLease implements ConnectionLease {
  readonly slot: number
  private readonly host: FastPathHost

  constructor(host: FastPathHost, slot: number) {
    this.host = host
    this.slot = slot
  }

  get framesTaken(): number {
    return this.host.shared[this.slot * SLOT_STRIDE + S.framesTaken]
  }

  get ackProgress(): number {
    return this.host.shared[this.slot * SLOT_STRIDE + S.ackProgress]
  }

  get inFlight(): number {
    return this.host.shared[this.slot * SLOT_STRIDE + S.inFlight]
  }

  get rttSamples(): number {
    return this.host.shared[this.slot * SLOT_STRIDE + S.rttSamples]
  }

  get srtt(): number {
    return this.host.shared[this.slot * SLOT_STRIDE + S.srtt]
  }

  get rttvar(): number {
    return this.host.shared[this.slot * SLOT_STRIDE + S.rttvar]
  }

  reclaim(into: LeaseReturn): void {
    this.host.giveBack(this.slot, into)
  }

  send(head: Uint8Array, body?: Uint8Array): boolean {
    return this.host.sendThrough(this.slot, head, body)
  }
}

export class FastPathHost {
  /** @internal read by the slot leases */
  readonly shared = new Float64Array(SLOTS * SLOT_STRIDE)
  private readonly records = new Float64Array(SLOTS * MAX_RECORDS * RECORD_STRIDE)
  private readonly bits = new Uint32Array(SLOTS * BITS_WORDS)
  private readonly store = new Uint8Array(SLOTS * STORE_BYTES)
  private readonly params = new Float64Array(LEND.disks + MAX_DISKS * LEND_DISK_STRIDE)
  /** lend's last argument, reused: each disk's six stats arrays, then the latency bounds. */
  private readonly statsArgs: Float64Array[] = []
  private bounds: { of: readonly number[]; array: Float64Array } | undefined
  private readonly native: NativeFastPath
  private readonly channel: FrameChannel
  private readonly leases: SlotLease[] = []
  private readonly owners: (Connection | undefined)[] = new Array(SLOTS).fill(undefined)
  /** Each slot's counters at its lend, to credit what happened meanwhile to its guest. */
  private readonly base = new Float64Array(SLOTS * COUNTER_NAMES.length)
  /** Each slot's `requests` counter at its lend: what that lend answered is read at its handback. */
  private readonly requestsAtLend = new Float64Array(SLOTS)
  /** Connections whose last lends answered nothing: how many in a row, and lend attempts still to skip. */
  private readonly backoff = new WeakMap<Connection, { fruitless: number; skip: number }>()
  /** Counters of connections no longer lent, by remote IPv4 address. */
  private readonly byRemote = new Map<number, FastPathCounters>()
  private readonly disksFor: (remote: Address) => readonly FastDisk[] | undefined

  private constructor(
    channel: FrameChannel,
    Ctor: NativeFastPathConstructor,
    disksFor: (remote: Address) => readonly FastDisk[] | undefined,
  ) {
    this.channel = channel
    this.native = new Ctor(SLOTS, this.shared, this.records, this.bits, this.store, MAX_RECORDS, STORE_BYTES)
    this.disksFor = disksFor
    for (let i = 0; i < SLOTS; i++) this.leases.push(new SlotLease(this, i))
  }

  /** A host on `channel`, or undefined when the addon has no fast path. */
  static create(
    channel: FrameChannel,
    disksFor: (remote: Address) => readonly FastDisk[] | undefined,
    /** The addon's FastPath (tests give a stand-in). */
    Ctor: NativeFastPathConstructor | undefined = native().FastPath,
  ): FastPathHost | undefined {
    // A channel that is not the addon's (the tests' in-memory channels) has no fast path.
    if (!Ctor || typeof channel.attachFastPath !== 'function') return undefined
    const h = new FastPathHost(channel, Ctor, disksFor)
    return channel.attachFastPath(h.native) ? h : undefined
  }

  /** Lends every connection that can be lent now (after a batch, after the timer); true when one was. */
  lendIdle(connections: Iterable<Connection>): boolean {
    let free = this.owners.indexOf(undefined)
    let lent = false
    if (free < 0) return false
    for (const c of connections) {
      if (c.lent || c.state !== 'established') continue
      const b = this.backoff.get(c)
      if (b && b.skip > 0) {
        b.skip--
        continue
      }
      if (!this.lend(free, c)) continue
      lent = true
      free = this.owners.indexOf(undefined)
      if (free < 0) break
    }
    return lent
  }

  private lend(slot: number, c: Connection): boolean {
    const p = this.params
    // Disks first: a guest without any (a NIC-only guest) costs no lend attempt per flush.
    const disks = this.disksFor(c.remote)
    if (!disks || disks.length === 0) return false
    const keys = c.lendTo(
      this.leases[slot],
      p,
      this.bits.subarray(slot * BITS_WORDS, (slot + 1) * BITS_WORDS),
    )
    if (!keys) return false
    const n = Math.min(disks.length, MAX_DISKS)
    p[LEND.diskCount] = n
    const stats = this.statsArgs
    stats.length = 0
    for (let i = 0; i < n; i++) {
      const d = disks[i]
      const at = LEND.disks + i * LEND_DISK_STRIDE
      p[at] = d.high >>> 0
      p[at + 1] = d.low >>> 0
      p[at + 2] = d.fd
      p[at + 3] = d.size
      p[at + 4] = d.maxRead
      p[at + 5] = d.readOnly ? 0 : 1
      const s = d.stats
      stats.push(s.requests, s.bytes, s.latency.buckets, s.latency.count, s.latency.sum, s.errors)
    }
    const bounds = disks[0].stats.latency.bounds
    if (this.bounds?.of !== bounds) this.bounds = { of: bounds, array: new Float64Array(bounds) }
    stats.push(this.bounds.array)
    const part = p[LEND.partLength] > 0 ? c.lendingPartial : undefined
    if (!this.native.lend(slot, p, keys.txKey, keys.rxKey, stats, part)) {
      // Refused (a message partly received that is no WRITE it takes, for one): a fruitless lend,
      // backed off like one, so a connection that keeps such messages coming is not re-offered
      // (its keys derived, its state copied) after every batch.
      c.cancelLend()
      this.noteLend(c, 0)
      return false
    }
    c.lendTaken()
    this.owners[slot] = c
    const s = slot * SLOT_STRIDE
    this.requestsAtLend[slot] = this.shared[s + COUNTER_AT[REQUESTS]]
    for (let i = 0; i < COUNTER_NAMES.length; i++)
      this.base[slot * COUNTER_NAMES.length + i] = this.shared[s + COUNTER_AT[i]]
    // The lend itself counts for the guest (the addon counted it before the base was taken).
    this.base[slot * COUNTER_NAMES.length + COUNTER_NAMES.indexOf('lends')]--
    return true
  }

  /** @internal the slot's connection sends a message of its own through it (SlotLease.send). */
  sendThrough(slot: number, head: Uint8Array, body: Uint8Array | undefined): boolean {
    return this.native.send(slot, head, body)
  }

  /** @internal the slot's connection takes itself back (SlotLease.reclaim). */
  giveBack(slot: number, into: LeaseReturn): void {
    this.native.reclaim(slot)
    const sh = this.shared
    const s = slot * SLOT_STRIDE
    into.rcvAdvance = sh[s + S.rcvAdvance]
    into.unaAdvance = sh[s + S.unaAdvance]
    into.sndNxt = sh[s + S.sndNxt]
    into.sndMax = sh[s + S.sndMax]
    into.ipId = sh[s + S.ipId]
    into.txCounter = sh[s + S.txCounter]
    into.txBytes = sh[s + S.txBytes]
    into.rxHighest = sh[s + S.rxHighest]
    into.rxBits.set(this.bits.subarray(slot * BITS_WORDS, (slot + 1) * BITS_WORDS))
    into.sndWnd = sh[s + S.sndWnd]
    into.cwnd = sh[s + S.cwnd]
    into.wl1 = sh[s + S.wl1]
    into.wl2 = sh[s + S.wl2]
    into.framesTaken = sh[s + S.framesTaken]
    into.ackProgress = sh[s + S.ackProgress]
    into.rttSamples = sh[s + S.rttSamples]
    into.srtt = sh[s + S.srtt]
    into.rttvar = sh[s + S.rttvar]
    const n = sh[s + S.records]
    into.replySeqs.length = n
    into.replies.length = n
    const r = slot * MAX_RECORDS * RECORD_STRIDE
    for (let i = 0; i < n; i++) {
      const at = slot * STORE_BYTES + this.records[r + i * RECORD_STRIDE + 2]
      into.replySeqs[i] = this.records[r + i * RECORD_STRIDE]
      // A copy: the store is the addon's again once the slot is free.
      into.replies[i] = Buffer.from(this.store.subarray(at, at + this.records[r + i * RECORD_STRIDE + 1]))
    }
    this.partialBack(slot, into)
    const c = this.owners[slot]
    if (c) {
      this.noteLend(c, this.shared[s + COUNTER_AT[REQUESTS]] - this.requestsAtLend[slot])
      this.credit(slot, c.remote.ip)
    }
    this.owners[slot] = undefined
    sh[s + S.state] = STATE_FREE
  }

  /**
   * A WRITE the addon was receiving over several frames when it handed back: the bytes it took
   * (the request's head, kept in the store, then the data it wrote, read back from the disk) go to
   * the connection, which goes on reassembling the message from there.
   */
  private partialBack(slot: number, into: LeaseReturn): void {
    const sh = this.shared
    const s = slot * SLOT_STRIDE
    into.partial = undefined
    into.partialLost = false
    const length = sh[s + S.partLength]
    if (length === 0) return
    const filled = sh[s + S.partFilled]
    const fd = sh[s + S.partFd]
    if (fd < 0) {
      into.partialLost = true
      return
    }
    const bytes = Buffer.allocUnsafe(filled)
    bytes.set(this.store.subarray(slot * STORE_BYTES, slot * STORE_BYTES + REQUEST_HEAD), 0)
    let done = REQUEST_HEAD
    try {
      while (done < filled) {
        const n = readSync(fd, bytes, done, filled - done, sh[s + S.partOffset] + done - REQUEST_HEAD)
        if (n <= 0) break
        done += n
      }
    } catch {
      // An I/O error: lost as below.
    }
    if (done < filled) {
      into.partialLost = true
      return
    }
    into.partialSeq = sh[s + S.partStart]
    into.partialLength = length
    into.partial = bytes
  }

  /** A lend of `c` ended having answered `answered` requests: the lend attempts it skips next. */
  private noteLend(c: Connection, answered: number): void {
    if (answered > 0) {
      this.backoff.delete(c)
      return
    }
    let b = this.backoff.get(c)
    if (!b) {
      b = { fruitless: 0, skip: 0 }
      this.backoff.set(c, b)
    }
    b.fruitless++
    if (b.fruitless >= 2) b.skip = Math.min(MAX_LEND_SKIPS, 2 ** (b.fruitless - 2))
  }

  private credit(slot: number, remoteIp: number): void {
    let t = this.byRemote.get(remoteIp)
    if (!t) {
      t = newFastPathCounters()
      this.byRemote.set(remoteIp, t)
    }
    const s = slot * SLOT_STRIDE
    for (let i = 0; i < COUNTER_NAMES.length; i++) {
      const b = slot * COUNTER_NAMES.length + i
      t[COUNTER_NAMES[i]] += this.shared[s + COUNTER_AT[i]] - this.base[b]
      this.base[b] = this.shared[s + COUNTER_AT[i]]
    }
  }

  /** Counters per remote IPv4 address (connections lent now included). */
  counters(): Map<number, FastPathCounters> {
    for (let slot = 0; slot < SLOTS; slot++) {
      const c = this.owners[slot]
      if (c) this.credit(slot, c.remote.ip)
    }
    return this.byRemote
  }

  /** Every lent connection back to its Connection (a disk closes, the link stops). */
  reclaimAll(): void {
    for (let slot = 0; slot < SLOTS; slot++) {
      const c = this.owners[slot]
      if (c && this.shared[slot * SLOT_STRIDE + S.state] !== STATE_FREE) c.takeBack()
    }
  }

  close(): void {
    this.reclaimAll()
    this.channel.attachFastPath(null)
  }

  /** Whether slot `slot` is lent (tests). */
  isLent(slot: number): boolean {
    return this.shared[slot * SLOT_STRIDE + S.state] === STATE_LENT
  }
}
