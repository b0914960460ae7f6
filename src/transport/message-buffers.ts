/**
 * Buffers for messages the transport reassembles from several frames, lent out and taken back.
 * A connection takes one per reassembled message from `messageBuffers` and delivers it `owned`;
 * the session passes that on as a lease: the receiver gets the buffer together with the `Lender`
 * it came from, may keep the buffer, and gives it back to that lender once done (it wrote the
 * frame to a TAP, the block write reached the file). The next message of that size class then
 * reuses its memory instead of leaving a new buffer to the garbage collector: at GB/s of
 * 64 KiB–1 MiB messages that collector work is a large share of a daemon's CPU. Receivers that
 * keep the buffer simply never give it back; receivers handed no lender only borrow the message
 * for the call.
 */

/** Where a lent buffer goes back once nothing refers to any part of it any more. */
export interface Lender {
  /** Takes back a buffer this lender lent (or any view into it); anything else is ignored. */
  giveBack(buffer: Uint8Array): void
}

/** Capacities kept: from 4 KiB to 16 MiB; buffers are filed by the power of two at or below their size. */
const MIN_CLASS = 12
const MAX_CLASS = 24
/** Buffers of a class looked at for one big enough, newest first. */
const SCAN = 16
/** Memory kept in the free lists, all classes together. */
const MAX_POOLED_BYTES = 32 * 1024 * 1024

/** The power of two at or below `n` (n ≥ 1). */
const floorClass = (n: number): number => 31 - Math.clz32(n)

/** Free lists of message buffers by size class. */
export class BufferPool implements Lender {
  readonly maxPooledBytes: number
  private readonly free: Buffer[][] = Array.from({ length: MAX_CLASS + 1 }, () => [])
  /** Every ArrayBuffer lent from here, and whether it is lent out now (a double give-back is ignored). */
  private readonly lent = new WeakMap<ArrayBufferLike, boolean>()
  private pooled = 0

  constructor(maxPooledBytes = MAX_POOLED_BYTES) {
    this.maxPooledBytes = maxPooledBytes
  }

  /** What the free lists hold now. */
  get pooledBytes(): number {
    return this.pooled
  }

  /**
   * A buffer of exactly `length` bytes (uninitialised) for a message being reassembled: memory
   * given back earlier when some has room for it (messages of one kind tend to have one size),
   * else a new allocation of exactly that size. Below the smallest class (4 KiB) a slice of Node's
   * shared slab, which is cheaper than a buffer of its own; it is not lent (a give-back ignores it).
   */
  take(length: number): Buffer {
    if (length < 1 << MIN_CLASS) return Buffer.allocUnsafe(length)
    return this.takePooled(length) ?? this.lend(Buffer.allocUnsafeSlow(length), length)
  }

  /** `take` when memory given back has room for `length` bytes, else undefined: never allocates. */
  takePooled(length: number): Buffer | undefined {
    const f = floorClass(length)
    if (f < MIN_CLASS || f >= MAX_CLASS) return undefined
    // Every buffer in the next class up is big enough; in this one, those at least `length`: the
    // newest such among the SCAN newest (a smaller one on top, from messages of another size, must
    // not hide the rest).
    const up = this.free[f + 1]
    const here = this.free[f]
    let whole: Buffer | undefined
    if (up.length > 0) whole = up.pop()
    else
      for (let i = here.length - 1; i >= Math.max(0, here.length - SCAN); i--)
        if (here[i].length >= length) {
          whole = here[i]
          here.splice(i, 1)
          break
        }
    if (!whole) return undefined
    this.pooled -= whole.length
    return this.lend(whole, length)
  }

  private lend(whole: Buffer, length: number): Buffer {
    this.lent.set(whole.buffer, true)
    return whole.subarray(0, length)
  }

  /**
   * Takes back a buffer lent by this pool (or any view into it); true when it was one. Anything
   * else (a view of a frame, a buffer given back already, one from elsewhere) is ignored: false.
   */
  giveBack(buffer: Uint8Array): boolean {
    const ab = buffer.buffer
    if (this.lent.get(ab) !== true) return false
    const c = floorClass(ab.byteLength)
    if (c < MIN_CLASS || c > MAX_CLASS || ab.byteLength > this.maxPooledBytes) {
      this.lent.delete(ab)
      return true
    }
    // Full: the oldest buffers make room, this class's first, then the largest (the sizes that
    // come back now are the ones taken next; a pool left full of sizes no longer used would miss
    // every time, and every message would be a fresh allocation for the collector).
    while (this.pooled + ab.byteLength > this.maxPooledBytes) {
      let list = this.free[c]
      for (let k = MAX_CLASS; list.length === 0; k--) list = this.free[k]
      const old = list.shift()!
      this.pooled -= old.length
      this.lent.delete(old.buffer)
    }
    this.lent.set(ab, false)
    this.pooled += ab.byteLength
    this.free[c].push(Buffer.from(ab))
    return true
  }
}

/** The pool every transport connection lends its reassembled messages from. */
export const messageBuffers = new BufferPool()

/** `messageBuffers.take(length)`: a buffer for a message being reassembled (the transport's call). */
export function takeMessageBuffer(length: number): Buffer {
  return messageBuffers.take(length)
}

/** `messageBuffers.takePooled(length)`: the same, only from memory given back (no allocation). */
export function takePooledMessageBuffer(length: number): Buffer | undefined {
  return messageBuffers.takePooled(length)
}
