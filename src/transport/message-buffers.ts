/**
 * Buffers for messages the transport reassembles from several frames, recycled. A connection takes
 * one per reassembled message and delivers it `owned`; a handler that is done with it (it wrote the
 * frame to a TAP, the block write reached the file) may give it back with
 * `recycleMessageBuffer`, and the next message of that size class reuses its memory instead of
 * leaving a new buffer to the garbage collector: at GB/s of 64 KiB–1 MiB messages that collector
 * work is a large share of a daemon's CPU. Handlers that keep the buffer simply never give it back.
 */

/** Capacities kept: from 4 KiB to 16 MiB; buffers are filed by the power of two at or below their size. */
const MIN_CLASS = 12
const MAX_CLASS = 24
/** Memory kept in the free lists, all classes together. */
const MAX_POOLED_BYTES = 32 * 1024 * 1024

const free: Buffer[][] = Array.from({ length: MAX_CLASS + 1 }, () => [])
/** Every ArrayBuffer handed out from here, and whether it is lent out now (a double give-back is ignored). */
const lent = new WeakMap<ArrayBufferLike, boolean>()
let pooledBytes = 0

/** The power of two at or below `n` (n ≥ 1). */
const floorClass = (n: number): number => 31 - Math.clz32(n)

/**
 * A buffer of exactly `length` bytes (uninitialised) for a message being reassembled: memory
 * given back earlier when some has room for it (messages of one kind tend to have one size),
 * else a new allocation of exactly that size.
 */
export function takeMessageBuffer(length: number): Buffer {
  const f = floorClass(length)
  let whole: Buffer | undefined
  if (f >= MIN_CLASS && f < MAX_CLASS) {
    // Every buffer in the next class up is big enough; in this one, those at least `length`.
    const up = free[f + 1]
    const here = free[f]
    if (up.length > 0) whole = up.pop()
    else if (here.length > 0 && here[here.length - 1].length >= length) whole = here.pop()
  }
  if (whole) pooledBytes -= whole.length
  else whole = Buffer.allocUnsafeSlow(length)
  lent.set(whole.buffer, true)
  return whole.subarray(0, length)
}

/**
 * Gives back a message buffer delivered `owned` (or any view into it), once nothing refers to any
 * part of it any more. Anything else (a view of a frame, a buffer given back already, one from
 * elsewhere) is ignored.
 */
export function recycleMessageBuffer(message: Uint8Array): void {
  const ab = message.buffer
  if (lent.get(ab) !== true) return
  const c = floorClass(ab.byteLength)
  if (c < MIN_CLASS || c > MAX_CLASS || pooledBytes + ab.byteLength > MAX_POOLED_BYTES) {
    lent.delete(ab)
    return
  }
  lent.set(ab, false)
  pooledBytes += ab.byteLength
  free[c].push(Buffer.from(ab))
}

/** What the free lists hold now (tests). */
export function pooledMessageBytes(): number {
  return pooledBytes
}
