import { recycleMessageBuffer } from '../../transport/message-buffers.ts'
import { VrioError } from '../../errors.ts'
import { Delivery } from '../../transport/config.ts'
import { type MessageHeader, MessageType } from '../../wire/message-header.ts'
import type { BlockDevice } from './device.ts'
import {
  BLOCK_ID_WINDOW,
  BLOCK_RESPONSE_HEAD_LENGTH,
  BlockFlag,
  type BlockHandle,
  BlockOp,
  BlockStatus,
  blockStatusOf,
  decodeBlockRequest,
  encodeBlockResponseHead,
  HeadArena,
  isMutatingOp,
  newBlockRequest,
} from './protocol.ts'

/** What the blk layer needs of a session: `Session` satisfies it. */
export interface BlockSender {
  sendData(parts: Uint8Array | readonly Uint8Array[], delivery: Delivery): boolean
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
  /** Front-end epochs whose completed requests are remembered (least recently used dropped). Default 4. */
  maxEpochs?: number
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
  /** Answers with each non-OK status. */
  errors: Record<number, number>
  /** Replies dropped: no session attached, or too many waiting for send space. */
  repliesDropped: number
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
  /** Write data: the backend's own copy (the message view dies with the handler call). */
  data: Uint8Array | undefined
  /** The message `data` is a view of, when the transport gave it away: recycled when the task ends. */
  message: Uint8Array | undefined
  deviceHigh: number
  deviceLow: number
  epoch: number
  id: number
  record: EpochRecord
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
    errors: {},
    repliesDropped: 0,
  }

  private readonly depth: number
  private readonly maxQueued: number
  private readonly maxQueuedBytes: number
  private readonly maxEpochs: number
  private session: BlockSender | undefined
  private readonly epochs = new Map<number, EpochRecord>()
  private readonly request = newBlockRequest()
  private readonly arena = new HeadArena()
  private running = 0
  private queue: Task[] = []
  private queueHead = 0
  private queuedBytes = 0
  private pending: (Uint8Array | readonly Uint8Array[])[] = []
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

  /** The session is gone: running requests continue, their answers wait for the next session. */
  detach(): void {
    this.session = undefined
  }

  /** The session has send space again. */
  writable(): void {
    const s = this.session
    if (!s) return
    let i = 0
    while (i < this.pending.length && s.sendData(this.pending[i], Delivery.Reliable)) i++
    if (i > 0) this.pending = this.pending.slice(i)
  }

  /**
   * One block message from the guest (the session's data handler). `message` is only read during
   * the call, unless `owned` (the transport gave the buffer away): then write data is kept as a
   * view of it instead of being copied. Never throws on anything a peer sends.
   */
  receive(h: MessageHeader, message: Uint8Array, owned = false): void {
    if (h.type !== MessageType.BlockRequest) return
    this.stats.requests++
    const epoch = h.requestHigh
    const id = h.requestLow
    if (this.handingOver) return
    if (this.closed || h.deviceHigh !== this.handle.high || h.deviceLow !== this.handle.low) {
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, BlockStatus.NoDevice, undefined)
      return
    }
    const r = this.request
    const decoded = decodeBlockRequest(h, message, r)
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
      return
    }
    if (state & DONE) {
      this.stats.replayed++
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, state & ~DONE, undefined)
      return
    }
    const refused = this.refuse(r.op, r.offset, r.length)
    if (refused !== BlockStatus.Ok) {
      if (r.op !== BlockOp.In) record.states[slot] = DONE | refused
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, refused, undefined)
      return
    }
    let data: Uint8Array | undefined
    if (r.op === BlockOp.Out && r.length > 0) {
      if (owned) data = message.subarray(r.dataOffset, r.dataOffset + r.length)
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
      message: owned && data ? message : undefined,
      deviceHigh: h.deviceHigh,
      deviceLow: h.deviceLow,
      epoch,
      id,
      record,
    }
    if (this.running < this.depth) {
      record.states[slot] = RUNNING
      this.start(task)
      return
    }
    const bytes = data?.length ?? 0
    if (this.queued >= this.maxQueued || this.queuedBytes + bytes > this.maxQueuedBytes) {
      // Not recorded: once the queue has room, a re-sent copy may run.
      this.reply(h.deviceHigh, h.deviceLow, epoch, id, BlockStatus.Busy, undefined)
      return
    }
    record.states[slot] = RUNNING
    this.queue.push(task)
    this.queuedBytes += bytes
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
      this.reply(t.deviceHigh, t.deviceLow, t.epoch, t.id, BlockStatus.NoDevice, undefined)
    }
    this.queue = []
    this.queueHead = 0
    this.queuedBytes = 0
    if (this.running === 0) return Promise.resolve()
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
    t.data = undefined
    // The device is done with the write data: the message it was a view of can be reused.
    if (t.message) recycleMessageBuffer(t.message)
    t.message = undefined
    this.finishRecord(t, status)
    let reply = data
    if (status === BlockStatus.Ok && t.op === BlockOp.In) {
      if (!reply || reply.length !== t.length) {
        status = BlockStatus.IoError // a device that returned the wrong amount: never send it on
        reply = undefined
      }
    } else reply = undefined
    this.reply(t.deviceHigh, t.deviceLow, t.epoch, t.id, status, reply)
    while (this.running < this.depth && this.queueHead < this.queue.length) {
      const next = this.queue[this.queueHead++]
      this.queuedBytes -= next.data?.length ?? 0
      if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.queueHead)
        this.queueHead = 0
      }
      this.start(next)
    }
    if (this.running === 0 && this.idle) {
      const idle = this.idle
      this.idle = undefined
      idle()
    }
  }

  private finishRecord(t: Task, status: number): void {
    const record = t.record
    // The floor may have passed this id meanwhile (a read given up by its front-end): then its
    // byte in the ring already belongs to a later id.
    if (!record.covers(t.id)) return
    const slot = t.id % BLOCK_ID_WINDOW
    if (record.states[slot] !== RUNNING) return
    record.states[slot] = t.op === BlockOp.In ? DONE_READ : DONE | status
  }

  private reply(
    deviceHigh: number,
    deviceLow: number,
    epoch: number,
    id: number,
    status: number,
    data: Uint8Array | undefined,
  ): void {
    if (status !== BlockStatus.Ok) this.stats.errors[status] = (this.stats.errors[status] ?? 0) + 1
    const s = this.session
    if (!s || this.pending.length >= this.depth + this.maxQueued) {
      this.stats.repliesDropped++
      return
    }
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
    const parts = data && data.length > 0 ? [head, data] : head
    if (this.pending.length > 0 || !s.sendData(parts, Delivery.Reliable)) this.pending.push(parts)
  }
}

/**
 * Answers a block request whose device handle names nothing this IOhyp serves to the sender (for
 * the code that routes messages to back-ends by handle).
 */
export function replyNoDevice(session: BlockSender, h: MessageHeader): void {
  if (h.type !== MessageType.BlockRequest) return
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

function positive(v: number, field: string, min = 1): number {
  if (!Number.isInteger(v) || v < min)
    throw new VrioError('invalid-config', `block backend option ${field} must be an integer ≥ ${min}`, {
      field,
    })
  return v
}
