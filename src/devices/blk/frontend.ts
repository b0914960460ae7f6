import { randomInt } from 'node:crypto'
import { VrioError } from '../../errors.ts'
import { Delivery } from '../../transport/config.ts'
import { BufferPool, type Lender } from '../../transport/message-buffers.ts'
import {
  MESSAGE_HEADER_LENGTH,
  type MessageHeader,
  MessageType,
  newMessageHeader,
} from '../../wire/message-header.ts'
import type { BlockSender } from './backend.ts'
import { type BlockDevice, type BlockDeviceInfo, type Extent, MAX_EXTENTS, rangeError } from './device.ts'
import { BlockOpStats, opIndex } from './op-stats.ts'
import {
  BLOCK_ID_WINDOW,
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockFlag,
  type BlockHandle,
  BlockMessageFlag,
  BlockOp,
  BlockStatus,
  blockResponseData,
  blockStatusError,
  decodeExtents,
  EXTENT_LENGTH,
  encodeBlockBatchHead,
  encodeBlockRequestHead,
  isBatchResponse,
  isMutatingOp,
  MAX_BATCH_BYTES,
  MAX_BATCH,
  MAX_REQUEST_ID,
  nextBatchedResponse,
} from './protocol.ts'

/**
 * Longest write sent in a batch. The IOhyp's fast path takes a batch only whole in one frame; a
 * batch the windows cut in two goes through its slow path, and a run of them takes the channel off
 * the fast path for a while. Batches of larger writes were cut often enough for 16 KiB writes at
 * QD32 to go that way in a CI run; a single write over several frames the fast path does take.
 */
const BATCHED_WRITE = 4096

/**
 * The bytes a request takes in a batch (§8.1b), or 0 when it is not sent in one: a READ whose
 * answer can share a batch response (§8.2b), a WRITE without FUA of at most BATCHED_WRITE bytes.
 * Longer reads gain nothing from a batch (their data is most of their frames) and leave alone, so
 * a queue of large reads is never one batch whose answers the fast path could not take at once.
 */
function batchBytes(op: number, flags: number, length: number): number {
  if (op === BlockOp.In)
    return length <= MAX_BATCH_BYTES - 2 * MESSAGE_HEADER_LENGTH ? BLOCK_REQUEST_HEAD_LENGTH : 0
  if (op !== BlockOp.Out || flags & BlockFlag.Fua || length > BATCHED_WRITE) return 0
  return BLOCK_REQUEST_HEAD_LENGTH + length
}

/** Memory a remote disk keeps for read copies given back (its free lists; what is out is the callers'). */
const COPY_POOL_BYTES = 2 * 1024 * 1024

export interface RemoteBlockDeviceOptions {
  /** Size and features of the device, as the IOhyp announced them. */
  info: BlockDeviceInfo
  /** The IOhyp's handle of the device. */
  handle: BlockHandle
  /** Requests in flight at once; callers beyond it wait. Default 64. */
  queueDepth?: number
  /**
   * A call that has not completed this many milliseconds after it was made fails with
   * VrioError('timeout'). Default 30 000.
   */
  deadline?: number
  /** Largest read or write in one request; larger calls are split. Default 1 MiB. */
  maxTransfer?: number
  /** Millisecond clock. Default performance.now. */
  clock?: () => number
  /** How often the deadline sweep runs while requests are outstanding, ms; 0: never, the owner calls tick(). Default 250. */
  sweepInterval?: number
  /** First request id (tests of the epoch change). Default 1. */
  firstRequestId?: number
  /**
   * A counter shared with others (several devices, the channel's polling gate): element 0 is
   * raised while each call of this device is outstanding and lowered when it settles.
   */
  awaiting?: Int32Array
}

export interface RemoteBlockDeviceStats {
  /** Requests put on a session (re-sends included). */
  sent: number
  /** Requests re-sent on a new session. */
  resent: number
  responses: number
  /** Responses for no outstanding request (late, duplicated or forged): ignored. */
  unexpectedResponses: number
  /** Malformed responses (wrong data length): the request fails with io-error. */
  badResponses: number
  timeouts: number
  /** Writes given up by their caller and still unanswered (they hold back overlapping writes). */
  zombies: number
  /** Times a new epoch began because request ids ran out. */
  epochs: number
  /** Batch messages sent (their requests count in `sent`, one by one). */
  batches: number
  /** Batch responses received (their responses count in `responses`, one by one). */
  batchResponses: number
}

/** One caller's call: several requests when it was split. */
interface Call {
  resolve(value: Uint8Array | undefined): void
  reject(error: unknown): void
  remaining: number
  settled: boolean
  deadline: number
  /**
   * Read result: the response's own buffer when one response carries the whole call (the
   * transport gave it away), else allocated at the first response and filled by each.
   */
  result: Uint8Array | undefined
  /** Bytes the call reads (0 for other ops). */
  readLength: number
  /** Operation index (op-stats.ts), bytes it moves, and when it was made (clock, ms): for `ops`. */
  op: number
  bytes: number
  madeAt: number
}

interface Epoch {
  high: number
  next: number
  /** Lowest id still outstanding (or `next` when none). */
  floor: number
  /** 1 where an id at or above floor has been answered (or given up). */
  done: Uint8Array
  outstanding: number
}

type RequestState = 'waiting' | 'unsent' | 'sent' | 'zombie' | 'done'

/** One request on the wire. */
interface Request {
  call: Call
  op: number
  flags: number
  offset: number
  length: number
  /** Write data (a view of the caller's buffer). */
  data: Uint8Array | undefined
  /** Where this request's read data goes in call.result. */
  resultOffset: number
  /** Extents: the most reply bytes it takes (its header's replyLength); else 0. */
  replyLength: number
  state: RequestState
  epoch: Epoch | undefined
  id: number
  slot: Slot | undefined
  /** Sessions it was put on, counted. */
  sends: number
  /** The session it was last put on. */
  sentOn: BlockSender | undefined
  answered: boolean
}

interface Slot {
  /** Message head (header + descriptor); rewritten only when no transport can still send it. */
  head: Uint8Array
  clean: boolean
  request: Request | undefined
}

/** A FIFO with O(1) shift, for requests waiting for a slot or for send space. */
class Fifo<T> {
  private items: (T | undefined)[] = []
  private head = 0
  get length(): number {
    return this.items.length - this.head
  }
  push(v: T): void {
    this.items.push(v)
  }
  peek(): T | undefined {
    return this.items[this.head]
  }
  /** The `i`-th item from the front. */
  at(i: number): T | undefined {
    return this.items[this.head + i]
  }
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined
    const v = this.items[this.head]
    this.items[this.head++] = undefined
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
    return v
  }
  unshift(v: T): void {
    if (this.head > 0) this.items[--this.head] = v
    else this.items.unshift(v)
  }
  clear(): T[] {
    const out = this.items.slice(this.head) as T[]
    this.items = []
    this.head = 0
    return out
  }
}

/**
 * The guest's view of a remote disk: a BlockDevice whose calls travel as block requests over the
 * current session to the IOhyp's BlockBackend.
 *
 * Sessions come and go (`attach`/`detach`); requests outlive them: those unanswered when a session
 * is lost are re-sent, with the same id, on the next one, and the back-end's record makes sure a
 * write runs once. Every call ends: answered, or failed with VrioError('timeout') `deadline` ms
 * after it was made (one sweep timer, not one per request).
 *
 * A write that timed out after it was sent may still run on the IOhyp. It stays tracked as a
 * zombie until its answer comes, and later writes that overlap it wait for that answer, so it can
 * never land on newer data; its request id also holds back the floor.
 */
export class RemoteBlockDevice implements BlockDevice {
  readonly size: number
  readonly blockSize: number
  readonly readOnly: boolean
  readonly canFlush: boolean
  readonly canFua: boolean
  readonly canTrim: boolean
  readonly canWriteZeroes: boolean
  readonly stats: RemoteBlockDeviceStats = {
    sent: 0,
    resent: 0,
    responses: 0,
    unexpectedResponses: 0,
    badResponses: 0,
    timeouts: 0,
    zombies: 0,
    epochs: 1,
    batches: 0,
    batchResponses: 0,
  }
  /** Calls by operation, their bytes and end-to-end latency (made to settled), counted when settled. */
  readonly ops = new BlockOpStats()

  private handle: BlockHandle
  /** Who lent the messages reads were answered with as views (they go back there on `release`). */
  private lender: Lender | undefined
  /**
   * The buffers reads are copied into when their data came in a message not lent (one frame, or a
   * read split over several responses); `release` brings them back for the next read instead of
   * leaving a fresh ArrayBuffer per read to the collector (at 4 KiB, one per request).
   */
  private readonly copies = new BufferPool(COPY_POOL_BYTES)
  private readonly depth: number
  private readonly deadline: number
  private readonly maxTransfer: number
  private readonly clock: () => number
  private readonly sweepInterval: number
  private session: BlockSender | undefined
  private epoch: Epoch
  private readonly slots: Slot[] = []
  private readonly freeSlots: Slot[] = []
  private readonly waiting = new Fifo<Request>()
  private readonly unsent = new Fifo<Request>()
  /** Requests holding a slot (sent, unsent or zombie), by id. */
  private readonly inflight = new Map<number, Request>()
  private readonly zombies: Request[] = []
  private timer: ReturnType<typeof setInterval> | undefined
  private closedWith: VrioError | undefined
  /** Calls not yet settled: the sweep timer runs while there are any. */
  private liveCalls = 0
  /** Cleared when the IOhyp answers Extents / Prefetch with Unsupported (an older peer); set again on a new session. */
  private extentsSupported = true
  private prefetchSupported = true
  private readonly awaiting: Int32Array
  /** Most requests one batch carries on `batchSession` (useBatch); below 2: none. */
  private batchMax = 0
  /** The header of the response of a batch response being received. */
  private readonly entry = newMessageHeader()
  private batchSession: BlockSender | undefined
  /** A pump is due at the end of this tick (small requests wait for it, to leave as one batch). */
  private pumpDue = false
  private readonly duePump = (): void => {
    this.pumpDue = false
    this.pump()
  }

  constructor(options: RemoteBlockDeviceOptions) {
    const info = options.info
    this.size = info.size
    this.blockSize = info.blockSize
    this.readOnly = info.readOnly
    this.canFlush = info.canFlush
    this.canFua = info.canFua
    this.canTrim = info.canTrim
    this.canWriteZeroes = info.canWriteZeroes
    this.handle = { high: options.handle.high >>> 0, low: options.handle.low >>> 0 }
    this.depth = integer(options.queueDepth ?? 64, 'queueDepth', 1, BLOCK_ID_WINDOW / 2)
    this.deadline = integer(options.deadline ?? 30_000, 'deadline', 1, 24 * 3600_000)
    this.maxTransfer = integer(options.maxTransfer ?? 1024 * 1024, 'maxTransfer', 512, 0xffff_ffff)
    this.clock = options.clock ?? (() => performance.now())
    this.sweepInterval = integer(options.sweepInterval ?? 250, 'sweepInterval', 0, 3600_000)
    this.epoch = newEpoch(integer(options.firstRequestId ?? 1, 'firstRequestId', 0, MAX_REQUEST_ID))
    this.awaiting = options.awaiting ?? new Int32Array(1)
    for (let i = 0; i < this.depth; i++) {
      const slot: Slot = { head: new Uint8Array(BLOCK_REQUEST_HEAD_LENGTH), clean: true, request: undefined }
      this.slots.push(slot)
      this.freeSlots.push(slot)
    }
  }

  /** Calls waiting for a slot plus requests outstanding (zombies included). */
  get outstanding(): number {
    return this.waiting.length + this.inflight.size
  }

  /**
   * Requests go to `session` from now on; the ones not answered on the previous session are
   * re-sent on it. `handle`: the device's handle if the IOhyp gave it a new one.
   */
  attach(session: BlockSender, handle?: BlockHandle): void {
    if (handle && (handle.high >>> 0 !== this.handle.high || handle.low >>> 0 !== this.handle.low)) {
      this.handle = { high: handle.high >>> 0, low: handle.low >>> 0 }
      // Heads already handed to a transport stay as they were: the new handle goes in new ones.
      for (const r of this.inflight.values()) {
        const slot = r.slot!
        slot.head = new Uint8Array(BLOCK_REQUEST_HEAD_LENGTH)
        this.encodeHead(r)
      }
    }
    this.session = session
    // The IOhyp may have been restarted (upgraded): ask it about Extents and Prefetch again.
    this.extentsSupported = true
    this.prefetchSupported = true
    // Everything sent on an earlier session and not answered goes again, in id order.
    const resend = [...this.inflight.values()].filter((r) => r.state === 'sent' || r.state === 'zombie')
    resend.sort((a, b) => (a.epoch === b.epoch ? a.id - b.id : 0))
    const already = this.unsent.clear()
    for (const r of resend) this.unsent.push(r)
    for (const r of already) if (r.state === 'unsent') this.unsent.push(r)
    this.pump()
  }

  /** The session is gone: nothing is sent until the next `attach`. Requests stay outstanding. */
  detach(): void {
    this.session = undefined
  }

  /**
   * The IOhyp of the current session takes batches of up to `max` requests (its `blk.attach`
   * announced `maxBatch`; 0 or absent: none): small reads and writes made in one tick (batchBytes)
   * then leave as one batch message. Holds until the session changes.
   */
  useBatch(max: number | undefined): void {
    this.batchMax = Number.isInteger(max) ? Math.min(Math.max(max!, 0), MAX_BATCH) : 0
    this.batchSession = this.session
  }

  /** The session has send space again. */
  writable(): void {
    this.pump()
  }

  /**
   * A block response from the IOhyp (the session's data handler). Never throws on what a peer
   * sends. With a `lender` the message is lent, so a whole read's data is handed to its caller as
   * a view of it instead of being copied; the caller may give it back with `release`.
   */
  receive(h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    if (h.type !== MessageType.BlockResponse) return
    if (h.flags === BlockMessageFlag.Batch) {
      this.receiveBatch(h, message)
      return
    }
    const r = this.inflight.get(h.requestLow)
    if (
      !r ||
      r.epoch?.high !== h.requestHigh ||
      h.deviceHigh !== this.handle.high ||
      h.deviceLow !== this.handle.low ||
      r.sends === 0
    ) {
      this.stats.unexpectedResponses++
      return
    }
    this.stats.responses++
    r.answered = true
    let data =
      r.op === BlockOp.Extents
        ? blockResponseData(h, message, r.replyLength, true)
        : blockResponseData(h, message, r.op === BlockOp.In ? r.length : 0)
    if (
      data !== undefined &&
      r.op === BlockOp.Extents &&
      h.status === BlockStatus.Ok &&
      !decodeExtents(data, r.length, r.replyLength)
    )
      data = undefined
    const zombie = r.state === 'zombie'
    this.retire(r)
    if (zombie) {
      // Its caller was told 'timeout' already; writes that overlap it may go now.
      this.pump()
      return
    }
    if (data === undefined) {
      this.stats.badResponses++
      this.fail(r.call, new VrioError('io-error', 'malformed block response', { status: h.status }))
    } else if (h.status !== BlockStatus.Ok) {
      this.fail(r.call, blockStatusError(h.status, { offset: r.offset, length: r.length }))
    } else {
      const call = r.call
      if (r.op === BlockOp.Extents)
        call.result = Uint8Array.from(data) // the message may be reused
      else if (r.op === BlockOp.In && data.length > 0) {
        if (lender && data.length === call.readLength) {
          call.result = data // the whole call in one response
          this.lender = lender
        } else {
          call.result ??= this.copies.take(call.readLength)
          call.result.set(data, r.resultOffset)
        }
      }
      this.partDone(r.call)
    }
    this.pump()
  }

  /**
   * A batch response: each response in it as if it had come alone. Their data is copied (views of
   * one message could not go back to its lender one by one). A batch for another device, or a
   * malformed one, stops at the first response that is not whole (counted as a bad response).
   */
  private receiveBatch(h: MessageHeader, message: Uint8Array): void {
    if (!isBatchResponse(h, this.handle)) {
      this.stats.unexpectedResponses++
      return
    }
    this.stats.batchResponses++
    const e = this.entry
    for (let at = MESSAGE_HEADER_LENGTH; at < message.length; ) {
      const end = nextBatchedResponse(message, at, e)
      if (end < 0 || e.flags !== 0) {
        this.stats.badResponses++
        return
      }
      this.receive(e, message.subarray(at, end))
      at = end
    }
  }

  /** Fails calls whose deadline has passed. Runs on the sweep timer, or call it yourself. */
  tick(now = this.clock()): void {
    while (this.waiting.length > 0) {
      const r = this.waiting.peek()!
      if (r.state !== 'waiting') {
        this.waiting.shift()
        continue
      }
      if (r.call.deadline > now) break
      this.waiting.shift()
      r.state = 'done'
      this.expire(r.call)
    }
    for (const r of this.inflight.values()) {
      if (r.state === 'zombie' || r.call.deadline > now) continue
      this.expire(r.call)
      if (r.state === 'unsent' || r.sends === 0) {
        this.retire(r)
      } else if (isMutatingOp(r.op)) {
        r.state = 'zombie'
        this.zombies.push(r)
        this.stats.zombies++
      } else {
        this.retire(r) // a read or flush: if it still runs, nothing it does can harm
      }
    }
    this.pump()
    this.updateTimer()
  }

  /** Fails every outstanding call with `error` (default 'not-connected') and stops. */
  close(error?: VrioError): void {
    if (this.closedWith) return
    this.closedWith = error ?? new VrioError('not-connected', 'the remote block device was closed')
    const calls = new Set<Call>()
    for (const r of this.waiting.clear()) calls.add(r.call)
    for (const r of this.inflight.values()) calls.add(r.call)
    this.inflight.clear()
    this.unsent.clear()
    for (const c of calls) this.fail(c, this.closedWith)
    this.session = undefined
    this.updateTimer()
  }

  // ------------------------------------------------------------------ BlockDevice

  /**
   * Gives back what `read` returned, once nothing refers to it: a copy goes back to this
   * device's own pool, a view of a lent message to its lender; either way the next read reuses
   * the memory.
   */
  release(data: Uint8Array): void {
    if (!this.copies.giveBack(data)) this.lender?.giveBack(data)
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const bad = this.check(offset, length, false)
    if (bad) return Promise.reject(bad)
    if (length === 0) return Promise.resolve(new Uint8Array(0))
    return this.call(BlockOp.In, 0, offset, length, undefined, true) as Promise<Uint8Array>
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    const bad = this.check(offset, data.length, true)
    if (bad) return Promise.reject(bad)
    if (data.length === 0) return fua ? this.flush() : Promise.resolve()
    return this.call(BlockOp.Out, fua ? BlockFlag.Fua : 0, offset, data.length, data, true).then(noValue)
  }

  flush(): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith)
    return this.call(BlockOp.Flush, 0, 0, 0, undefined, false).then(noValue)
  }

  trim(offset: number, length: number): Promise<void> {
    const bad = this.check(offset, length, true) ?? (this.canTrim ? undefined : unsupported('trim'))
    if (bad) return Promise.reject(bad)
    if (length === 0) return Promise.resolve()
    return this.call(BlockOp.Discard, 0, offset, length, undefined, false).then(noValue)
  }

  writeZeroes(offset: number, length: number, mayTrim: boolean, fua: boolean): Promise<void> {
    const bad =
      this.check(offset, length, true) ?? (this.canWriteZeroes ? undefined : unsupported('write-zeroes'))
    if (bad) return Promise.reject(bad)
    if (length === 0) return fua ? this.flush() : Promise.resolve()
    const flags = (mayTrim ? BlockFlag.Unmap : 0) | (fua ? BlockFlag.Fua : 0)
    return this.call(BlockOp.WriteZeroes, flags, offset, length, undefined, false).then(noValue)
  }

  /**
   * The allocation map of the range, from the IOhyp (op Extents). At most `maxExtents` extents,
   * covering a prefix of the range (at most 2 GiB of it per call). An IOhyp that does not know the
   * op answers Unsupported: then, and from then on, the whole range is reported as data.
   */
  extents(offset: number, length: number, maxExtents = MAX_EXTENTS): Promise<Extent[]> {
    const bad = this.check(offset, length, false)
    if (bad) return Promise.reject(bad)
    if (length === 0) return Promise.resolve([])
    const n = Math.min(length, 0x8000_0000)
    if (!this.extentsSupported) return Promise.resolve([{ length: n, flags: 0 }])
    const max = Math.max(1, Math.min(MAX_EXTENTS, Math.floor(maxExtents)))
    return this.call(BlockOp.Extents, 0, offset, n, undefined, false, max * EXTENT_LENGTH).then(
      (bytes) => decodeExtents(bytes!, n, max * EXTENT_LENGTH)!,
      (error: unknown) => {
        if (!(error instanceof VrioError) || error.code !== 'unsupported') throw error
        this.extentsSupported = false
        return [{ length: n, flags: 0 }]
      },
    )
  }

  /**
   * Asks the IOhyp to warm its cache for the range (op Prefetch); resolves when it has. An IOhyp
   * that does not know the op answers Unsupported, and nothing is asked again: a hint only.
   */
  prefetch(offset: number, length: number): Promise<void> {
    const bad = this.check(offset, length, false)
    if (bad) return Promise.reject(bad)
    if (length === 0 || !this.prefetchSupported) return Promise.resolve()
    return this.call(BlockOp.Prefetch, 0, offset, length, undefined, false).then(
      noValue,
      (error: unknown) => {
        if (!(error instanceof VrioError) || error.code !== 'unsupported') throw error
        this.prefetchSupported = false
      },
    )
  }

  // ------------------------------------------------------------------ internals

  private check(offset: number, length: number, mutating: boolean): VrioError | undefined {
    if (this.closedWith) return this.closedWith
    const outside = rangeError(offset, length, this.size)
    if (outside) return outside
    if (mutating && this.readOnly) return new VrioError('read-only', 'the remote device is read-only')
    return undefined
  }

  /** Splits a call into requests of at most maxTransfer (data ops) or 2^31 bytes (trim, zeroes). */
  private call(
    op: number,
    flags: number,
    offset: number,
    length: number,
    data: Uint8Array | undefined,
    carriesData: boolean,
    replyLength = 0,
  ): Promise<Uint8Array | undefined> {
    return new Promise((resolve, reject) => {
      const piece = carriesData ? this.maxTransfer : 0x8000_0000
      const parts = Math.max(1, Math.ceil(length / piece))
      const now = this.clock()
      const call: Call = {
        resolve,
        reject,
        remaining: parts,
        settled: false,
        deadline: now + this.deadline,
        result: op === BlockOp.In && length === 0 ? new Uint8Array(0) : undefined,
        readLength: op === BlockOp.In ? length : 0,
        op: opIndex(op),
        bytes: length,
        madeAt: now,
      }
      // An Extents call is never split (extents() keeps it under one piece).
      this.liveCalls++
      this.awaiting[0]++
      for (let i = 0; i < parts; i++) {
        const at = i * piece
        const n = Math.min(piece, length - at)
        this.waiting.push({
          call,
          op,
          flags,
          offset: offset + at,
          length: op === BlockOp.Flush ? 0 : n,
          data: data?.subarray(at, at + n),
          resultOffset: at,
          replyLength,
          state: 'waiting',
          epoch: undefined,
          id: 0,
          slot: undefined,
          sends: 0,
          sentOn: undefined,
          answered: false,
        })
      }
      if (batchBytes(op, flags, length) > 0 && this.batchMax >= 2 && this.session === this.batchSession) {
        if (!this.pumpDue) {
          this.pumpDue = true
          process.nextTick(this.duePump)
        }
      } else this.pump()
      this.updateTimer()
    })
  }

  /** Gives waiting requests slots and ids, then sends what the session takes. */
  private pump(): void {
    while (this.waiting.length > 0 && this.freeSlots.length > 0) {
      const r = this.waiting.peek()!
      if (r.state !== 'waiting') {
        this.waiting.shift()
        continue
      }
      if (r.call.settled) {
        // Another part of its call failed: no point sending it.
        this.waiting.shift()
        r.state = 'done'
        continue
      }
      if (isMutatingOp(r.op) && this.overlapsZombie(r)) break
      if (!this.assignId(r)) break
      this.waiting.shift()
      const slot = this.freeSlots.pop()!
      if (!slot.clean) slot.head = new Uint8Array(BLOCK_REQUEST_HEAD_LENGTH)
      slot.clean = false
      slot.request = r
      r.slot = slot
      r.state = 'unsent'
      this.inflight.set(r.id, r)
      this.encodeHead(r)
      this.unsent.push(r)
    }
    const s = this.session
    if (!s) return
    while (this.unsent.length > 0) {
      const r = this.unsent.peek()!
      if (r.state !== 'unsent' && r.state !== 'sent' && r.state !== 'zombie') {
        this.unsent.shift()
        continue
      }
      if (r.sentOn === s) {
        // Already on this session (queued twice by attach): nothing to do.
        this.unsent.shift()
        continue
      }
      if (r.sends === 0 && r.call.settled) {
        // Another part of its call failed before it left: no point sending it.
        this.unsent.shift()
        this.retire(r)
        continue
      }
      if (this.batchMax >= 2 && s === this.batchSession && batchBytes(r.op, r.flags, r.length) > 0) {
        const n = this.sendBatch(s)
        if (n < 0) break
        if (n > 0) continue
      }
      const head = r.slot!.head
      const ok = s.sendData(r.data && r.data.length > 0 ? [head, r.data] : head, Delivery.Reliable)
      if (!ok) break
      this.unsent.shift()
      this.sentOn(r, s)
    }
  }

  /**
   * Sends the requests at the front of `unsent` that a batch takes (2 to batchMax of them, each
   * due on `s`, MAX_BATCH_BYTES in all) as one batch message. Returns how many left, 0 when fewer
   * than 2 are there (nothing sent), -1 when the session took nothing.
   */
  private sendBatch(s: BlockSender): number {
    let n = 0
    let bytes = MESSAGE_HEADER_LENGTH
    while (n < this.batchMax && n < this.unsent.length) {
      const r = this.unsent.at(n)!
      const b = batchBytes(r.op, r.flags, r.length)
      if (
        b === 0 ||
        bytes + b > MAX_BATCH_BYTES ||
        (r.state !== 'unsent' && r.state !== 'sent') ||
        r.sentOn === s
      )
        break
      if (r.sends === 0 && r.call.settled) break
      bytes += b
      n++
    }
    if (n < 2) return 0
    const parts: Uint8Array[] = [new Uint8Array(MESSAGE_HEADER_LENGTH)]
    encodeBlockBatchHead(parts[0], 0, this.handle, bytes - MESSAGE_HEADER_LENGTH)
    for (let i = 0; i < n; i++) {
      const r = this.unsent.at(i)!
      parts.push(r.slot!.head)
      if (r.data && r.data.length > 0) parts.push(r.data)
    }
    if (!s.sendData(parts, Delivery.Reliable)) return -1
    for (let i = 0; i < n; i++) this.sentOn(this.unsent.shift()!, s)
    this.stats.batches++
    return n
  }

  private sentOn(r: Request, s: BlockSender): void {
    this.stats.sent++
    if (r.sends > 0) this.stats.resent++
    r.sends++
    r.sentOn = s
    if (r.state === 'unsent') r.state = 'sent'
  }

  private encodeHead(r: Request): void {
    const e = r.epoch!
    encodeBlockRequestHead(r.slot!.head, 0, this.handle, e.high, r.id, {
      op: r.op,
      flags: r.flags,
      length: r.length,
      offset: r.offset,
      floor: e.floor,
      replyLength: r.replyLength,
    })
  }

  private assignId(r: Request): boolean {
    let e = this.epoch
    if (e.next > MAX_REQUEST_ID) {
      // Ids ran out: a new epoch. The old one lives on in its outstanding requests.
      e = newEpoch(1)
      this.epoch = e
      this.stats.epochs++
    }
    if (e.next - e.floor >= BLOCK_ID_WINDOW) return false
    if (this.inflight.has(e.next)) return false // an old epoch's request still holds this number
    r.epoch = e
    r.id = e.next++
    e.outstanding++
    return true
  }

  private overlapsZombie(r: Request): boolean {
    const end = r.offset + r.length
    for (const z of this.zombies) if (z.offset < end && r.offset < z.offset + z.length) return true
    return false
  }

  /** The request is over (answered or given up): its slot and id are free. */
  private retire(r: Request): void {
    if (r.state === 'zombie') {
      const i = this.zombies.indexOf(r)
      if (i >= 0) this.zombies.splice(i, 1)
    }
    r.state = 'done'
    this.inflight.delete(r.id)
    const slot = r.slot!
    // The head may be rewritten only if no transport can still (re)send it: never sent, or sent
    // once and answered (so the back-end received that very copy).
    slot.clean = r.sends === 0 || (r.sends === 1 && r.answered)
    slot.request = undefined
    r.slot = undefined
    r.data = undefined
    this.freeSlots.push(slot)
    const e = r.epoch!
    e.outstanding--
    e.done[r.id % BLOCK_ID_WINDOW] = 1
    while (e.floor < e.next && e.done[e.floor % BLOCK_ID_WINDOW] === 1) {
      e.done[e.floor % BLOCK_ID_WINDOW] = 0
      e.floor++
    }
  }

  private partDone(call: Call): void {
    if (call.settled) return
    if (--call.remaining > 0) return
    call.settled = true
    this.liveCalls--
    this.awaiting[0]--
    this.settled(call, call.bytes)
    call.resolve(call.result ?? undefined)
    if (this.liveCalls === 0) this.updateTimer()
  }

  private fail(call: Call, error: unknown): void {
    if (call.settled) return
    call.settled = true
    this.liveCalls--
    this.awaiting[0]--
    this.settled(call, 0)
    call.result = undefined
    call.reject(error)
    if (this.liveCalls === 0) this.updateTimer()
  }

  /** A call done: `bytes` it moved (its length when it succeeded, else 0). */
  private settled(call: Call, bytes: number): void {
    this.ops.count(call.op)
    this.ops.moved(call.op, bytes)
    this.ops.latency.observe(call.op, (this.clock() - call.madeAt) / 1000)
  }

  private expire(call: Call): void {
    if (call.settled) return
    this.stats.timeouts++
    this.fail(
      call,
      new VrioError('timeout', `block request not completed within ${this.deadline} ms`, {
        deadline: this.deadline,
      }),
    )
  }

  /** One interval timer while anything with a deadline is outstanding; none otherwise. */
  private updateTimer(): void {
    if (this.sweepInterval === 0) return
    if (this.liveCalls > 0 && !this.closedWith) {
      this.timer ??= setInterval(() => this.tick(), this.sweepInterval)
    } else if (this.timer) {
      clearInterval(this.timer)
      this.timer = undefined
    }
  }
}

function newEpoch(first: number): Epoch {
  return {
    high: randomInt(1, 0x1_0000_0000) >>> 0,
    next: first,
    floor: first,
    done: new Uint8Array(BLOCK_ID_WINDOW),
    outstanding: 0,
  }
}

function noValue(): void {}

function unsupported(what: string): VrioError {
  return new VrioError('unsupported', `the remote device does not support ${what}`)
}

function integer(v: number, field: string, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max)
    throw new VrioError(
      'invalid-config',
      `remote block device option ${field} must be an integer in [${min}, ${max}]`,
      {
        field,
      },
    )
  return v
}
