import type { IoError } from './errors.ts'
import { fromNative } from './errors.ts'
import type { NativeChannel, NativeFastPath, NativeStats } from './native.ts'

/**
 * One batch of received frames: a slab plus a table of where its frames lie. `frame(i)` is a view
 * (no copy) into the slab.
 *
 * Valid while the batch handler runs and, for a batch the event loop delivered, until the
 * microtasks it queued have run (the addon delivers each batch with MakeCallback, which runs them
 * before it reads again); after that the slab is filled with the next frames, so copy whatever must
 * outlive them. drain(), called from JavaScript, delivers within its caller's stack: there the next
 * batch follows as soon as the handler returns. The FrameBatch object itself is reused for the
 * next batch.
 */
export class FrameBatch {
  /** The whole slab; frame i is slab[offsets[i], offsets[i] + lengths[i]). */
  readonly slab: Buffer
  /** Only the first `count` entries are meaningful. */
  readonly offsets: Uint32Array
  readonly lengths: Uint32Array
  #count = 0

  constructor(slab: Buffer, offsets: Uint32Array, lengths: Uint32Array) {
    this.slab = slab
    this.offsets = offsets
    this.lengths = lengths
  }

  get count(): number {
    return this.#count
  }

  /** @internal set by the channel before each delivery */
  setCount(count: number): void {
    this.#count = count
  }

  frame(i: number): Buffer {
    const start = this.offsets[i]
    return this.slab.subarray(start, start + this.lengths[i])
  }
}

export type BatchHandler = (batch: FrameBatch) => void
export type ErrorHandler = (error: IoError) => void

/** Counters of a channel (see NativeStats for each field). */
export type ChannelStats = NativeStats

export interface ReceiveConfig {
  /** Frames per batch at most (1..1024): read with one recvmmsg, handed to the handler in one call. */
  rxBatch: number
  /** Bytes reserved per frame in a slab; longer frames are truncated (see ChannelStats). */
  frameSize: number
}

/** What a native open returns that every channel keeps. */
interface Opened {
  handle: NativeChannel
  ifindex: number
  mtu: number
  mac: string
}

/**
 * What packet sockets and TAP devices share: the receive path feeding `onBatch` (the fd is watched
 * on the event loop and drained with batched reads when readable, each batch handed to the handler
 * at once, in the same event), batched send, stats, ref/unref and close.
 */
export class FrameChannel {
  readonly rx: Readonly<ReceiveConfig>
  readonly ifname: string
  readonly ifindex: number
  readonly netns: string | undefined
  readonly vnetHdr: boolean
  /** MTU and MAC of the interface when the channel was opened. */
  readonly mtu: number
  readonly mac: string
  readonly #handle: NativeChannel
  readonly #where: { ifname: string; netns?: string }
  #batches: FrameBatch[] = []
  #onBatch: BatchHandler | undefined
  #onError: ErrorHandler | undefined
  #started = false
  #closed = false

  protected constructor(
    opened: Opened,
    rx: ReceiveConfig,
    o: { ifname: string; netns?: string; vnetHdr?: boolean },
  ) {
    this.#handle = opened.handle
    this.rx = Object.freeze({ ...rx })
    this.ifname = o.ifname
    this.ifindex = opened.ifindex
    this.netns = o.netns
    this.vnetHdr = o.vnetHdr ?? false
    this.mtu = opened.mtu
    this.mac = opened.mac
    this.#where = { ifname: o.ifname, netns: o.netns }
  }

  /** Offers received frames to a native fast path first (see fast-path.ts); false when the addon has none. */
  attachFastPath(fastPath: NativeFastPath | null): boolean {
    if (this.#closed || !this.#handle.attachFastPath) return false
    this.#handle.attachFastPath(fastPath)
    return true
  }

  /**
   * Polling: after the event loop's work, and before it sleeps, the fd is drained again and again
   * (non-blocking) until `idleUs` pass without a frame, or a timer, an immediate or another fd
   * wants the loop; then it sleeps as without polling. 0 (the default) turns it off. With `gate`
   * it polls only while the process awaits answers from the peer (gate[0] of them) or did within
   * `idleUs`. False when the addon cannot poll.
   */
  setPoll(idleUs: number, gate?: Int32Array): boolean {
    if (this.#closed || !this.#handle.setPoll) return false
    this.#handle.setPoll(idleUs, gate)
    return true
  }

  get closed(): boolean {
    return this.#closed
  }

  /**
   * Sets the batch handler and starts receiving on first use. Until then nothing is read
   * (a receiving packet socket's frames wait in the kernel's socket buffer, then are dropped and
   * counted; open send-only sockets with protocol 0) and the channel does not keep the event loop
   * alive. Once started, it does, until close() or unref().
   *
   * With vnetHdr, every frame starts with its 10-byte virtio_net_hdr (see wire/virtio-net-hdr.ts).
   */
  onBatch(handler: BatchHandler): this {
    this.#onBatch = handler
    if (!this.#started && !this.#closed) this.#start()
    return this
  }

  /**
   * Called if receiving stops on an unexpected error (e.g. EBADFD: the TAP device was
   * deleted). Nothing more will be received; close() the channel. Without a handler the error
   * is thrown as an uncaught exception.
   */
  onError(handler: ErrorHandler): this {
    this.#onError = handler
    return this
  }

  /**
   * Sends frames in one batch, without blocking. Returns how many the kernel accepted, in order;
   * fewer than given means it pushed back (counted in `txEagain`): retry the rest later. A hard
   * error throws an IoError when it hits the first frame; after a partial send it shows up on the
   * next call.
   */
  send(frames: readonly Uint8Array[]): number {
    try {
      return this.#handle.send(frames)
    } catch (e) {
      throw fromNative(e, this.#where)
    }
  }

  /**
   * Like send(), for frames described by a table, e.g. a received FrameBatch being forwarded:
   * `sendBatch(b.slab, b.offsets, b.lengths, b.count)`.
   */
  sendBatch(
    slab: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    count = offsets.length,
    start = 0,
  ): number {
    try {
      return this.#handle.sendSlab(slab, offsets, lengths, start, count)
    } catch (e) {
      throw fromNative(e, this.#where)
    }
  }

  stats(): ChannelStats {
    return this.#handle.stats()
  }

  /** The native handle, for a subclass's own operations (PacketSocket.setFilter). */
  protected nativeHandle(): NativeChannel {
    return this.#handle
  }

  /**
   * Delivers the frames queued now, synchronously, as the next readable event would. A timer
   * that fires late (the event loop was busy) calls this first, so that it judges with what has
   * arrived meanwhile; libuv runs timers before it polls for I/O.
   */
  drain(): void {
    if (!this.#closed) this.#handle.drain()
  }

  ref(): this {
    if (!this.#closed) this.#handle.setRef(true)
    return this
  }

  unref(): this {
    if (!this.#closed) this.#handle.setRef(false)
    return this
  }

  /** Stops receiving and closes the fd. Frames not yet read are dropped. Safe to call twice, and
   * from inside the batch handler. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#handle.close()
  }

  #start(): void {
    const { rxBatch, frameSize } = this.rx
    let buffers: { data: ArrayBuffer; meta: ArrayBuffer }[]
    try {
      buffers = this.#handle.start(this.#dispatch, rxBatch, frameSize)
    } catch (e) {
      throw fromNative(e, this.#where)
    }
    this.#batches = buffers.map(
      ({ data, meta }) =>
        new FrameBatch(
          Buffer.from(data),
          new Uint32Array(meta, 0, rxBatch),
          new Uint32Array(meta, rxBatch * 4, rxBatch),
        ),
    )
    this.#started = true
  }

  // Called by the addon on the main thread. Must not throw: the slab is recycled after it returns.
  #dispatch = (slab: number, count: number, syscall?: string, message?: string): void => {
    if (slab < 0) {
      this.#readerFailed(count, syscall ?? 'read', message ?? 'reader stopped')
      return
    }
    const batch = this.#batches[slab]
    batch.setCount(count)
    try {
      this.#onBatch?.(batch)
    } catch (e) {
      rethrowLater(e)
    }
  }

  #readerFailed(errno: number, syscall: string, message: string): void {
    const error = fromNative(
      Object.assign(new Error(message), { errno, syscall, detail: 'receiving stopped' }),
      this.#where,
    ) as IoError
    if (!this.#onError) {
      rethrowLater(error)
      return
    }
    try {
      this.#onError(error)
    } catch (e) {
      rethrowLater(e)
    }
  }
}

// Surfaces an exception from a handler as an ordinary uncaught exception, outside the addon's
// callback (which must return normally so the slab is recycled).
function rethrowLater(error: unknown): void {
  process.nextTick(() => {
    throw error
  })
}

export function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to
}
