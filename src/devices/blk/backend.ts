import { VrioError } from '../../errors.ts'
import { DEFAULT_CONNECTION_OPTIONS, Delivery } from '../../transport/config.ts'
import type { Lender } from '../../transport/message-buffers.ts'
import {
  decodeMessageHeader,
  MESSAGE_HEADER_LENGTH,
  type MessageHeader,
  MessageType,
  newMessageHeader,
} from '../../wire/message-header.ts'
import { type BlockDevice, deviceExtents } from './device.ts'
import { BlockOpStats, OP_OTHER, opIndex } from './op-stats.ts'
import {
  BLOCK_ID_WINDOW,
  BLOCK_REQUEST_HEAD_LENGTH,
  BLOCK_RESPONSE_HEAD_LENGTH,
  BlockFlag,
  batchAnswerLength,
  batchCount,
  type BlockHandle,
  BlockMessageFlag,
  BlockOp,
  BlockStatus,
  blockStatusOf,
  decodeBlockRequest,
  EXTENT_LENGTH,
  encodeBlockBatchResponseHead,
  encodeBlockResponseHead,
  encodeExtents,
  HeadArena,
  isMutatingOp,
  MAX_BATCH_BYTES,
  newBlockRequest,
} from './protocol.ts'

/** What the blk layer needs of a session: `Session` satisfies it. */
export interface BlockSender {
  sendData(parts: Uint8Array | readonly Uint8Array[], delivery: Delivery): boolean
}

/** Default bytes of read replies one guest may have the IOhyp hold (see ReplyBudget). */
export const DEFAULT_PENDING_REPLY_BYTES = 64 * 1024 * 1024

/**
 * Bytes of read data one guest has the IOhyp hold: reads running on its devices (their buffers)
 * and replies waiting because its channel cannot take them (the peer's window is closed, the send
 * queue is full). Shared by all the back-ends of one guest. A read starts only while the guest is
 * within its budget (one read always may, when nothing is held), so a guest that stops reading its
 * replies stops getting reads served, and holds at most `limit` plus one read.
 */
export class ReplyBudget {
  /** May be changed at any time (a guest re-enrolled with another budget); holdings stay. */
  limit: number
  private heldBytes = 0
  private readonly waiting = new Set<() => void>()

  constructor(limit = DEFAULT_PENDING_REPLY_BYTES) {
    this.limit = positive(limit, 'pendingReplyBytes')
  }

  /** Bytes held now. */
  get held(): number {
    return this.heldBytes
  }

  /** Takes `bytes` when they fit (or nothing is held); false otherwise. */
  take(bytes: number): boolean {
    if (this.heldBytes > 0 && this.heldBytes + bytes > this.limit) return false
    this.heldBytes += bytes
    return true
  }

  /** Gives `bytes` back and lets waiting back-ends try again. */
  give(bytes: number): void {
    if (bytes <= 0) return
    this.heldBytes -= bytes
    for (const resume of [...this.waiting]) resume()
  }

  /** `resume` is called whenever bytes come back (a back-end with reads waiting for room). */
  watch(resume: () => void): void {
    this.waiting.add(resume)
  }

  unwatch(resume: () => void): void {
    this.waiting.delete(resume)
  }
}

export interface BlockBackendOptions {
  /** This device's handle (the IOhyp's choice: e.g. a table slot and a random tag). */
  handle: BlockHandle
  /** Device operations run at once. Default 64. */
  depth?: number
  /** Requests that may wait beyond `depth`; more are answered Busy. Default 1024. */
  maxQueued?: number
  /** Write data those waiting requests may hold. Default 256 MiB. */
  maxQueuedBytes?: number
  /**
   * Write data held at once, running and waiting; a write beyond it is answered Busy. Default
   * 128 MiB: twice what a front-end with the default queue depth and transfer size (64 × 1 MiB)
   * can have outstanding, so only a guest that ignores them meets it.
   */
  maxWriteBytes?: number
  /** Front-end epochs whose completed requests are remembered (least recently used dropped). Default 4. */
  maxEpochs?: number
  /**
   * Largest message the channel carries (the transport's maxMessageSize): a read whose reply
   * would not fit is answered BadRequest. Default: the transport's default.
   */
  maxMessageSize?: number
  /** The guest's read-reply budget, shared by its back-ends. Default: one of this back-end's own. */
  replyBudget?: ReplyBudget
  /**
   * Called when the guest keeps sending while its replies cannot be sent even as far as the
   * back-end's reply queue allows (it never reads them): its owner should disconnect it.
   */
  onOverload?: () => void
}

export interface BlockBackendStats {
  /** Block messages received. */
  requests: number
  /** Device operations started. */
  executed: number
  /** Duplicates of completed writes, trims, write-zeroes and flushes answered from the record. */
  replayed: number
  /** Duplicates of requests still running: ignored, the running one will answer. */
  duplicatesRunning: number
  /** Requests answered Stale: below the floor their front-end announced. */
  stale: number
  /** Replies dropped: no session attached, or too many waiting for send space. */
  repliesDropped: number
  /** Times a read waited because the guest's reply budget was full (back-pressure). */
  budgetWaits: number
  /** Times the guest was reported overloaded (onOverload). */
  overloads: number
  /** Batches received whole (their requests count in `requests`, one by one). */
  batches: number
  /** Malformed batches, dropped unanswered (batchCount). */
  badBatches: number
}

// Record states, one byte per request id in the window (0: not seen).
const RUNNING = 1
const DONE_READ = 2
const DONE = 0x80 // | status

/**
 * What one front-end epoch has sent: a byte per request id in [base, base + BLOCK_ID_WINDOW), in a
 * ring. `base` follows the floor the front-end announces (every id below it has been answered and
 * will never be sent again), so the ring never needs more room than the window.
 */
class EpochRecord {
  base = -1
  readonly states = new Uint8Array(BLOCK_ID_WINDOW)

  advance(floor: number): void {
    if (this.base < 0) {
      this.base = floor
      return
    }
    if (floor <= this.base) return
    const n = floor - this.base
    if (n >= BLOCK_ID_WINDOW) this.states.fill(0)
    else {
      const from = this.base % BLOCK_ID_WINDOW
      const to = from + n
      if (to <= BLOCK_ID_WINDOW) this.states.fill(0, from, to)
      else {
        this.states.fill(0, from)
        this.states.fill(0, 0, to - BLOCK_ID_WINDOW)
      }
    }
    this.base = floor
  }

  covers(id: number): boolean {
    return id >= this.base && id - this.base < BLOCK_ID_WINDOW
  }
}

interface Task {
  op: number
  flags: number
  offset: number
  length: number
  /** Write data: the backend's own copy, or a view of a lent message (see `lender`). */
  data: Uint8Array | undefined
  /** Who lent the message `data` is a view of: it gets the memory back when the task ends. */
  lender: Lender | undefined
  deviceHigh: number
  deviceLow: number
  epoch: number
  id: number
  record: EpochRecord
  /** Reply bytes taken from the budget for it (reads: their length once started). */
  reserved: number
  /** Most reply bytes the requester takes (Extents: its header's replyLength), else 0. */
  replyLength: number
  /** performance.now() when it arrived: its service time runs from there to its answer. */
  arrived: number
  /** The batch response its answer goes into (a request of a batch), and its place there. */
  gather: Gathering | undefined
  index: number
}

/**
 * The answers to some of a batch's requests, gathered into one batch response (protocol.md
 * §8.2b): sent when the last is in. `abandoned` when the session it was for is gone: answers still to come are
 * dropped as they arrive (with nothing to send them on).
 */
interface Gathering {
  deviceHigh: number
  deviceLow: number
  /** Each request's answer, head then data, in the batch's order: undefined while it runs, null when none comes. */
  answers: (Uint8Array[] | null | undefined)[]
  waiting: number
  reserved: number
  abandoned: boolean
}

/** A reply waiting for send space, and the budget bytes it holds. */
interface PendingReply {
  parts: Uint8Array | readonly Uint8Array[]
  reserved: number
}

/**
 * Serves one block device to one guest (IOhyp side). Feed it the session's block messages
 * (`receive`), tell it when the session changes (`attach`/`detach`) and when it may send again
 * (`writable`). It checks every request — the handle's both halves, the descriptor, the range,
 * read-only — runs up to `depth` device operations at once, and answers each on the session
 * attached when it completes.
 *
 * Duplicates: a front-end re-sends, with the same id, every request still unanswered when its
 * session was lost. The backend remembers, per front-end epoch, the state of every id above the
 * floor the front-end announces; a duplicate of a request still running is ignored (the running
 * one answers), a duplicate of a completed write / trim / write-zeroes / flush gets the recorded
 * status without running again, an id below the floor (answered long ago) gets Stale and does
 * nothing. Reads simply run again. So a late copy of a write can never land on newer data.
 *
 * Memory: write data is copied once, out of the message (kept as is when the transport hands the
 * message over); at most `depth` requests run and
 * `maxQueued` (`maxQueuedBytes`) wait. A front-end keeps at most its queue depth outstanding,
 * so with the back-end's limits at or above it nothing is ever refused; the transport's window
 * bounds what is in transit on top of that.
 */
export class BlockBackend {
  readonly device: BlockDevice
  readonly handle: Readonly<BlockHandle>
  readonly stats: BlockBackendStats = {
    requests: 0,
    executed: 0,
    replayed: 0,
    duplicatesRunning: 0,
    stale: 0,
    repliesDropped: 0,
    budgetWaits: 0,
    overloads: 0,
    batches: 0,
    badBatches: 0,
  }
  /** Requests and bytes by operation, as received, and service time (arrival to answer) of those run. */
  readonly ops = new BlockOpStats()

  private readonly depth: number
  private readonly maxQueued: number
  private readonly maxQueuedBytes: number
  private readonly maxWriteBytes: number
  /** Write data held now: of running requests and of waiting ones. */
  private writeBytes = 0
  private readonly maxEpochs: number
  /** The longest read whose reply the channel carries. */
  readonly maxReadLength: number
  private readonly budget: ReplyBudget
  private readonly onOverload: (() => void) | undefined
  private session: BlockSender | undefined
  private readonly epochs = new Map<number, EpochRecord>()
  private readonly request = newBlockRequest()
  /** The header of the request of a batch being received, and where each of its requests starts. */
  private readonly entry = newMessageHeader()
  private readonly starts: number[] = []
  /** While a batch is received: where its requests' answers go, and the request at hand. */
  private gathering: Gathering | undefined
  private gatherIndex = 0
  /** Batch responses still waiting for answers. */
  private readonly gatherings = new Set<Gathering>()
  private readonly arena = new HeadArena()
  private running = 0
  private queue: Task[] = []
  private queueHead = 0
  private queuedBytes = 0
  private pending: PendingReply[] = []
  private pendingBytes = 0
  private readonly resume = (): void => this.startQueued()
  private closed = false
  /** Closed for a daemon stop: nothing more is answered (see close). */
  private handingOver = false
  private idle: (() => void) | undefined

  constructor(device: BlockDevice, options: BlockBackendOptions) {
    this.device = device
    this.handle = { high: options.handle.high >>> 0, low: options.handle.low >>> 0 }
    this.depth = positive(options.depth ?? 64, 'depth')
    this.maxQueued = positive(options.maxQueued ?? 1024, 'maxQueued', 0)
    this.maxQueuedBytes = positive(options.maxQueuedBytes ?? 256 * 1024 * 1024, 'maxQueuedBytes', 0)
    this.maxEpochs = positive(options.maxEpochs ?? 4, 'maxEpochs')
    this.maxWriteBytes = positive(options.maxWriteBytes ?? 128 * 1024 * 1024, 'maxWriteBytes')
    const maxMessageSize = positive(
      options.maxMessageSize ?? DEFAULT_CONNECTION_OPTIONS.maxMessageSize,
      'maxMessageSize',
      BLOCK_REQUEST_HEAD_LENGTH,
    )
    this.maxReadLength = maxMessageSize - BLOCK_RESPONSE_HEAD_LENGTH
    this.budget = options.replyBudget ?? new ReplyBudget()
    this.onOverload = options.onOverload
  }

  /** Bytes of read replies this back-end holds waiting for send space. */
  get pendingReplyBytes(): number {
    return this.pendingBytes
  }

  /** Replies waiting for send space. */
  get pendingReplies(): number {
    return this.pending.length
  }

  /** Write data held now (running and waiting requests). */
  get heldWriteBytes(): number {
    return this.writeBytes
  }

  /** Device operations running now. */
  get active(): number {
    return this.running
  }

  /** Requests waiting for a free slot. */
  get queued(): number {
    return this.queue.length - this.queueHead
  }

  /** Answers now go to `session`; replies that were waiting for send space are sent there. */
  attach(session: BlockSender): void {
    this.session = session
    this.writable()
  }

  /**
   * The session is gone: running requests continue (their answers are dropped unless a session
   * is attached by then); replies waiting for send space are dropped and their memory freed: the
   * front-end re-sends every unanswered request on its next session, and a completed write's
   * status is answered from the record.
   */
  detach(): void {
    this.session = undefined
    // First: the budget that dropping the replies gives back would start them.
    this.forgetQueuedReads()
    this.abandonGatherings()
    this.dropPending()
  }

  /** No session to send them on: what batch responses hold goes back, and what comes later is dropped. */
  private abandonGatherings(): void {
    for (const g of this.gatherings) {
      g.abandoned = true
      this.budget.give(g.reserved)
      g.reserved = 0
    }
    this.gatherings.clear()
  }

  /** The request at `index` of `g` gets no answer in it. */
  private noAnswer(g: Gathering, index: number): void {
    if (g.answers[index] !== undefined) return
    g.answers[index] = null
    if (--g.waiting === 0 && g !== this.gathering && !g.abandoned) this.sendGathered(g)
  }

  /** The session has send space again. */
  writable(): void {
    const s = this.session
    if (!s) return
    let i = 0
    let freed = 0
    while (i < this.pending.length && s.sendData(this.pending[i].parts, Delivery.Reliable)) {
      freed += this.pending[i].reserved
      i++
    }
    if (i === 0) return
    this.pending = this.pending.slice(i)
    this.pendingBytes -= freed
    this.budget.give(freed)
    this.startQueued()
  }

  /**
   * One block message from the guest (the session's data handler). `message` is only read during
   * the call, unless it is lent (`lender`): then write data is kept as a view of it instead of
   * being copied, and the message goes back to `lender` when the write is done. Never throws on
   * anything a peer sends.
   */
  receive(h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    if (h.type !== MessageType.BlockRequest) return
    if (h.flags === BlockMessageFlag.Batch) {
      this.receiveBatch(h, message)
      return
    }
    this.stats.requests++
    const epoch = h.requestHigh
    const id = h.requestLow
    if (this.handingOver) return
    if (this.closed || h.deviceHigh !== this.handle.high || h.deviceLow !== this.handle.low) {
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, BlockStatus.NoDevice, undefined)
      return
    }
    const r = this.request
    let decoded = decodeBlockRequest(h, message, r)
    // Requests as received; their bytes once done (finish): a write answered Busy and sent again
    // counts twice as a request, its bytes once, as the native fast path counts them.
    this.ops.count(decoded === BlockStatus.Ok ? opIndex(r.op) : OP_OTHER)
    // A read whose reply the channel could not carry.
    if (decoded === BlockStatus.Ok && r.op === BlockOp.In && r.length > this.maxReadLength)
      decoded = BlockStatus.BadRequest
    if (decoded !== BlockStatus.Ok || r.floor > id) {
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, decoded || BlockStatus.BadRequest, undefined)
      return
    }
    const record = this.recordFor(epoch)
    record.advance(r.floor)
    if (id < record.base) {
      this.stats.stale++
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, BlockStatus.Stale, undefined)
      return
    }
    if (!record.covers(id)) {
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, BlockStatus.BadRequest, undefined)
      return
    }
    const slot = id % BLOCK_ID_WINDOW
    const state = record.states[slot]
    if (state === RUNNING) {
      this.stats.duplicatesRunning++
      // The running one answers, on its own.
      if (this.gathering) this.noAnswer(this.gathering, this.gatherIndex)
      return
    }
    if (state & DONE) {
      this.stats.replayed++
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, state & ~DONE, undefined)
      return
    }
    const refused = this.refuse(r.op, r.offset, r.length)
    if (refused !== BlockStatus.Ok) {
      if (!answersWithData(r.op)) record.states[slot] = DONE | refused
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, refused, undefined)
      return
    }
    let data: Uint8Array | undefined
    if (r.op === BlockOp.Out && r.length > 0) {
      if (lender) data = message.subarray(r.dataOffset, r.dataOffset + r.length)
      else {
        data = Buffer.allocUnsafe(r.length)
        data.set(message.subarray(r.dataOffset, r.dataOffset + r.length))
      }
    }
    const task: Task = {
      op: r.op,
      flags: r.flags,
      offset: r.offset,
      length: r.length,
      data,
      lender: data ? lender : undefined,
      deviceHigh: h.deviceHigh,
      deviceLow: h.deviceLow,
      epoch,
      id,
      record,
      reserved: 0,
      replyLength: r.op === BlockOp.Extents ? h.replyLength : 0,
      arrived: performance.now(),
      gather: this.gathering,
      index: this.gatherIndex,
    }
    const bytes = data?.length ?? 0
    if (bytes > 0 && this.writeBytes + bytes > this.maxWriteBytes) {
      // Not recorded: once writes complete, a re-sent copy may run.
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, BlockStatus.Busy, undefined)
      return
    }
    if (this.running < this.depth && this.queued === 0 && this.reserve(task)) {
      record.states[slot] = RUNNING
      this.writeBytes += bytes
      this.start(task)
      return
    }
    if (this.queued >= this.maxQueued || this.queuedBytes + bytes > this.maxQueuedBytes) {
      // Not recorded: once the queue has room, a re-sent copy may run.
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, BlockStatus.Busy, undefined)
      return
    }
    record.states[slot] = RUNNING
    // A request that waits answers on its own: a batch response waits only for requests running,
    // which hold their reply bytes already (it could otherwise hold the budget a waiting read needs).
    if (task.gather) {
      this.noAnswer(task.gather, task.index)
      task.gather = undefined
    }
    this.queue.push(task)
    this.queuedBytes += bytes
    this.writeBytes += bytes
  }

  /**
   * A batch of reads and writes: each request as if it had come alone, in order. A malformed
   * batch is dropped and counted; it names no request to answer.
   */
  private receiveBatch(h: MessageHeader, message: Uint8Array): void {
    const starts = this.starts
    const count = batchCount(h, message, starts)
    if (count === 0) {
      this.stats.badBatches++
      return
    }
    this.stats.batches++
    // The answers in order (protocol.md §8.2b): each one joins the batch response being filled
    // while that stays within MAX_BATCH_BYTES bytes (and a largest read's), else starts the next;
    // a read whose response with a batch header is longer goes alone.
    const limit = Math.min(MAX_BATCH_BYTES, this.maxReadLength + MESSAGE_HEADER_LENGTH)
    const e = this.entry
    let g: Gathering | undefined
    let bytes = 0
    const open: Gathering[] = []
    for (let i = 0; i < count; i++) {
      const at = starts[i]
      const end = i + 1 < count ? starts[i + 1] : message.length
      const answer = batchAnswerLength(message, at)
      if (MESSAGE_HEADER_LENGTH + answer > limit) g = undefined
      else if (!g || bytes + answer > limit) {
        g = {
          deviceHigh: h.deviceHigh,
          deviceLow: h.deviceLow,
          answers: [],
          waiting: 0,
          reserved: 0,
          abandoned: false,
        }
        open.push(g)
        bytes = MESSAGE_HEADER_LENGTH
      }
      if (g) {
        bytes += answer
        g.answers.push(undefined)
        g.waiting++
      }
      const entry = message.subarray(at, end)
      decodeMessageHeader(entry, 0, entry.length, e)
      this.gathering = g
      this.gatherIndex = g ? g.answers.length - 1 : 0
      // Not lent: a write keeps a copy of its data (views of one message could not go back to
      // its lender one by one).
      this.receive(e, entry)
    }
    this.gathering = undefined
    for (const o of open) {
      if (o.waiting === 0) this.sendGathered(o)
      else this.gatherings.add(o)
    }
  }

  /** The batch response `g` once every answer is in: the answers that came, in order, in one message. */
  private sendGathered(g: Gathering): void {
    this.gatherings.delete(g)
    const parts: Uint8Array[] = [this.arena.take(BLOCK_RESPONSE_HEAD_LENGTH)]
    let body = 0
    let n = 0
    for (const a of g.answers) {
      if (!a) continue
      n++
      for (const p of a) {
        parts.push(p)
        body += p.length
      }
    }
    if (n === 0) return
    encodeBlockBatchResponseHead(parts[0], 0, { high: g.deviceHigh, low: g.deviceLow }, body)
    this.send(parts, g.reserved, n)
  }

  /**
   * Reads and extents still waiting for a slot: with no session their answers could only be dropped,
   * so they are forgotten instead of run (a burst of reads whose buffers only become garbage); the
   * front-end re-sends them on its next session, and they run then.
   */
  private forgetQueuedReads(): void {
    let kept = this.queueHead
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const t = this.queue[i]
      if (answersWithData(t.op)) {
        const record = t.record
        if (record.covers(t.id) && record.states[t.id % BLOCK_ID_WINDOW] === RUNNING)
          record.states[t.id % BLOCK_ID_WINDOW] = 0
        if (t.gather) this.noAnswer(t.gather, t.index)
      } else this.queue[kept++] = t
    }
    this.queue.length = kept
    if (this.queueHead === this.queue.length) this.budget.unwatch(this.resume)
  }

  /**
   * Stops serving; resolves when the running requests have finished (and been answered, if a
   * session is attached). `remove` (the device goes away): requests waiting in the queue and any
   * that arrive later are answered NoDevice. `handover` (the IOhyp stops and will be back): they
   * are left unanswered, so the front-end re-sends them to the next IOhyp, which runs them then.
   */
  close(mode: 'remove' | 'handover' = 'remove'): Promise<void> {
    this.closed = true
    this.handingOver = mode === 'handover'
    while (this.queueHead < this.queue.length) {
      const t = this.queue[this.queueHead++]
      if (this.handingOver) continue
      this.finishRecord(t, BlockStatus.NoDevice)
      this.reply(
        t.deviceHigh,
        t.deviceLow,
        t.epoch,
        t.id,
        BlockStatus.NoDevice,
        undefined,
        0,
        t.gather ?? null,
        t.index,
      )
    }
    this.queue = []
    this.queueHead = 0
    this.writeBytes -= this.queuedBytes
    this.queuedBytes = 0
    this.budget.unwatch(this.resume)
    if (this.running === 0) {
      this.settle()
      return Promise.resolve()
    }
    return new Promise((resolve) => (this.idle = resolve))
  }

  // ------------------------------------------------------------------------------------------

  private recordFor(epoch: number): EpochRecord {
    let record = this.epochs.get(epoch)
    if (record) {
      // Most recently used last, so the first is the one to forget.
      if (this.epochs.size > 1) {
        this.epochs.delete(epoch)
        this.epochs.set(epoch, record)
      }
      return record
    }
    if (this.epochs.size >= this.maxEpochs) this.epochs.delete(this.epochs.keys().next().value!)
    record = new EpochRecord()
    this.epochs.set(epoch, record)
    return record
  }

  /** A request the device must not see: its answer, or Ok. */
  private refuse(op: number, offset: number, length: number): BlockStatus {
    const d = this.device
    if (op !== BlockOp.Flush && offset + length > d.size) return BlockStatus.OutOfRange
    if (isMutatingOp(op) && d.readOnly) return BlockStatus.ReadOnly
    if (op === BlockOp.Discard && !d.canTrim) return BlockStatus.Unsupported
    if (op === BlockOp.WriteZeroes && !d.canWriteZeroes) return BlockStatus.Unsupported
    return BlockStatus.Ok
  }

  private start(t: Task): void {
    this.running++
    this.stats.executed++
    let p: Promise<unknown>
    try {
      p = this.run(t)
    } catch (e) {
      p = Promise.reject(e)
    }
    p.then(
      (data) => this.finish(t, BlockStatus.Ok, data instanceof Uint8Array ? data : undefined),
      (e) => this.finish(t, blockStatusOf(e), undefined),
    )
  }

  private run(t: Task): Promise<unknown> {
    const d = this.device
    const fua = (t.flags & BlockFlag.Fua) !== 0
    switch (t.op) {
      case BlockOp.In:
        return d.read(t.offset, t.length)
      case BlockOp.Out: {
        // The data is this back-end's (a view of a message the transport gave away, or a copy):
        // handed over, so an encrypting device can encrypt it in place.
        const data = t.data ?? new Uint8Array(0)
        if (fua && !d.canFua) return d.write(t.offset, data, false, true).then(() => this.flushIfAble())
        return d.write(t.offset, data, fua, true)
      }
      case BlockOp.Flush:
        return this.flushIfAble()
      case BlockOp.Discard:
        return d.trim(t.offset, t.length)
      case BlockOp.WriteZeroes: {
        const mayTrim = (t.flags & BlockFlag.Unmap) !== 0
        if (fua && !d.canFua)
          return d.writeZeroes(t.offset, t.length, mayTrim, false).then(() => this.flushIfAble())
        return d.writeZeroes(t.offset, t.length, mayTrim, fua)
      }
      case BlockOp.Extents:
        // A device that cannot tell (an encrypted one, say) reports data: never a false hole.
        return deviceExtents(d, t.offset, t.length, t.replyLength / EXTENT_LENGTH).then(encodeExtents)
      case BlockOp.Prefetch:
        return d.prefetch ? d.prefetch(t.offset, t.length) : Promise.resolve()
      default:
        return Promise.reject(new VrioError('unsupported', `block op ${t.op}`))
    }
  }

  /** A device that cannot flush has nothing to make durable: flush succeeds at once. */
  private flushIfAble(): Promise<void> {
    return this.device.canFlush ? this.device.flush() : Promise.resolve()
  }

  private finish(t: Task, status: number, data: Uint8Array | undefined): void {
    this.running--
    this.writeBytes -= t.data?.length ?? 0
    // The device is done with the write data: the message it was a view of goes back to its lender.
    if (t.lender && t.data) t.lender.giveBack(t.data)
    t.data = undefined
    t.lender = undefined
    this.finishRecord(t, status)
    let reply = data
    if (status === BlockStatus.Ok && t.op === BlockOp.In) {
      if (!reply || reply.length !== t.length) {
        status = BlockStatus.IoError // a device that returned the wrong amount: never send it on
        reply = undefined
      }
    } else if (status === BlockStatus.Ok && t.op === BlockOp.Extents) {
      if (!reply || reply.length === 0 || reply.length > t.replyLength) {
        status = BlockStatus.IoError
        reply = undefined
      }
    } else reply = undefined
    const reserved = t.reserved
    t.reserved = 0
    if (status === BlockStatus.Ok) this.ops.moved(opIndex(t.op), t.length)
    this.ops.latency.observe(opIndex(t.op), (performance.now() - t.arrived) / 1000)
    this.reply(
      t.deviceHigh,
      t.deviceLow,
      t.epoch,
      t.id,
      status,
      reply,
      reply ? reserved : 0,
      t.gather ?? null,
      t.index,
    )
    if (!reply) this.budget.give(reserved)
    this.startQueued()
    if (this.running === 0 && this.idle) {
      const idle = this.idle
      this.idle = undefined
      this.settle()
      idle()
    }
  }

  /** Starts waiting requests while there are free slots and the reply budget has room. */
  private startQueued(): void {
    while (this.running < this.depth && this.queueHead < this.queue.length) {
      const next = this.queue[this.queueHead]
      if (!this.reserve(next)) return
      this.queueHead++
      this.queuedBytes -= next.data?.length ?? 0
      if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.queueHead)
        this.queueHead = 0
      }
      this.start(next)
    }
    if (this.queueHead === this.queue.length) this.budget.unwatch(this.resume)
  }

  /**
   * Takes a read's reply bytes from the guest's budget; false (and watching the budget, to start
   * it when bytes come back) when they do not fit.
   */
  private reserve(t: Task): boolean {
    if (!answersWithData(t.op) || this.closed) return true
    const bytes = t.op === BlockOp.In ? t.length : t.replyLength
    if (!this.budget.take(bytes)) {
      this.stats.budgetWaits++
      this.budget.watch(this.resume)
      return false
    }
    t.reserved = bytes
    return true
  }

  /**
   * Closed and idle: the replies that still fit are sent, the rest dropped, so nothing of the
   * guest's budget stays with a back-end that is going away.
   */
  private settle(): void {
    this.writable()
    this.dropPending()
  }

  private dropPending(): void {
    if (this.pending.length === 0) return
    this.stats.repliesDropped += this.pending.length
    const freed = this.pendingBytes
    this.pending = []
    this.pendingBytes = 0
    this.budget.give(freed)
  }

  private finishRecord(t: Task, status: number): void {
    const record = t.record
    // The floor may have passed this id meanwhile (a read given up by its front-end): then its
    // byte in the ring already belongs to a later id.
    if (!record.covers(t.id)) return
    const slot = t.id % BLOCK_ID_WINDOW
    if (record.states[slot] !== RUNNING) return
    record.states[slot] = answersWithData(t.op) ? DONE_READ : DONE | status
  }

  /**
   * Answers a request: on its own, or (`gather`: a read of a batch; by default the batch being
   * received) into its batch response.
   */
  private reply(
    deviceHigh: number,
    deviceLow: number,
    epoch: number,
    id: number,
    status: number,
    data: Uint8Array | undefined,
    reserved = 0,
    gather: Gathering | null | undefined = this.gathering,
    index = this.gatherIndex,
  ): void {
    if (status !== BlockStatus.Ok) this.ops.errors[status]++
    const head = this.arena.take(BLOCK_RESPONSE_HEAD_LENGTH)
    encodeBlockResponseHead(
      head,
      0,
      { high: deviceHigh, low: deviceLow },
      epoch,
      id,
      status,
      data?.length ?? 0,
    )
    const parts = data && data.length > 0 ? [head, data] : undefined
    if (!gather) {
      this.send(parts ?? head, reserved, 1)
      return
    }
    if (gather.abandoned) {
      this.stats.repliesDropped++
      this.budget.give(reserved)
      return
    }
    gather.answers[index] = parts ?? [head]
    gather.reserved += reserved
    if (--gather.waiting === 0 && gather !== this.gathering) this.sendGathered(gather)
  }

  /** Sends a message of `answers` answers holding `reserved` bytes of the budget, or queues it. */
  private send(parts: Uint8Array | readonly Uint8Array[], reserved: number, answers: number): void {
    const s = this.session
    if (!s || this.pending.length >= this.depth + this.maxQueued) {
      this.stats.repliesDropped += answers
      this.budget.give(reserved)
      if (s) {
        // Replies pile up faster than the guest takes them, even with its reads held back.
        this.stats.overloads++
        this.onOverload?.()
      }
      return
    }
    if (this.pending.length > 0 || !s.sendData(parts, Delivery.Reliable)) {
      this.pending.push({ parts, reserved })
      this.pendingBytes += reserved
    } else this.budget.give(reserved)
  }
}

/**
 * Answers a block request whose device handle names nothing this IOhyp serves to the sender (for
 * the code that routes messages to back-ends by handle).
 */
export function replyNoDevice(session: BlockSender, h: MessageHeader): void {
  // A batch names no request of its own; its requests fail with their device's detach.
  if (h.type !== MessageType.BlockRequest || h.flags !== 0) return
  const head = new Uint8Array(BLOCK_RESPONSE_HEAD_LENGTH)
  encodeBlockResponseHead(
    head,
    0,
    { high: h.deviceHigh, low: h.deviceLow },
    h.requestHigh,
    h.requestLow,
    BlockStatus.NoDevice,
    0,
  )
  session.sendData(head, Delivery.Reliable)
}

/** Ops whose success carries data (reads, extents): duplicates run again, never replayed. */
function answersWithData(op: number): boolean {
  return op === BlockOp.In || op === BlockOp.Extents
}

function positive(v: number, field: string, min = 1): number {
  if (!Number.isInteger(v) || v < min)
    throw new VrioError('invalid-config', `block backend option ${field} must be an integer ≥ ${min}`, {
      field,
    })
  return v
}
