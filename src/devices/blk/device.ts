import { VrioError } from '../../errors.ts'
/**
 * The block device interface every blk front-end serves (the NBD server in the guest) and every
 * back-end or service chain implements (a remote vrio disk, a file, the in-memory device).
 *
 * Offsets and lengths are in bytes. Callers keep requests inside [0, size) and, when they can,
 * aligned to `blockSize`; a device answers anything else with 'out-of-range' (or its own alignment
 * error) rather than doing something partial.
 *
 * Failures are `VrioError`s with one of the codes in `BlockErrorCode`. Anything else a device
 * throws is treated by callers as 'io-error'.
 *
 * Consistency contract (what lets the NBD server offer multi-connection safely):
 * - a read sees every write, trim and write-zeroes that completed (settled) before the read was
 *   issued, whoever issued it;
 * - `flush()` makes durable every write that completed before `flush()` was called, whoever
 *   issued it; a `fua` write is durable when its promise settles;
 * - there is no per-caller cache: all callers share one view of the device.
 */
export interface BlockDeviceInfo {
  /** Size in bytes. */
  size: number
  /** Logical block size in bytes: 512 or 4096. Requests should be multiples of it. */
  blockSize: number
  readOnly: boolean
  /** flush() does something (the device has a volatile cache to write back). */
  canFlush: boolean
  /** write(..., fua = true) and writeZeroes(..., fua = true) are honoured without a full flush. */
  canFua: boolean
  /** trim() is supported (it may still do nothing: trim is a hint). */
  canTrim: boolean
  /** writeZeroes() is supported and cheaper than writing a buffer of zeroes. */
  canWriteZeroes: boolean
}

export interface BlockDevice extends BlockDeviceInfo, BlockDeviceExtras {
  /** Resolves with exactly `length` bytes; the caller owns the returned array. */
  read(offset: number, length: number): Promise<Uint8Array>
  /**
   * Writes `data` at `offset`. The device may keep a reference to `data` until the promise
   * settles; the caller must not reuse or change it before then. With `transfer`, the caller
   * gives `data` up: the device may also change its bytes (an encrypting device encrypts in
   * place) and the caller does not read them again.
   */
  write(offset: number, data: Uint8Array, fua: boolean, transfer?: boolean): Promise<void>
  flush(): Promise<void>
  /** A hint that the range is no longer needed; afterwards its contents are unspecified. */
  trim(offset: number, length: number): Promise<void>
  /**
   * Makes the range read back as zeroes. `mayTrim` allows the device to deallocate it (false: the
   * range must stay provisioned, so later writes to it cannot fail with 'no-space').
   */
  writeZeroes(offset: number, length: number, mayTrim: boolean, fua: boolean): Promise<void>
}

/** Flags of an Extent: NBD's base:allocation bits (NBD_STATE_HOLE, NBD_STATE_ZERO), same values. */
export const ExtentFlag = {
  /** Not allocated on the backing store. */
  Hole: 1,
  /** Reads as zeros. */
  Zero: 2,
} as const

/** A run of a device's allocation map: `length` bytes, with ExtentFlag bits (0: data). */
export interface Extent {
  length: number
  flags: number
}

/** Most extents one extents() call returns (and one channel reply carries). */
export const MAX_EXTENTS = 1024

/**
 * Optional BlockDevice features. A device without `extents` is all data; one without `prefetch`
 * has nothing worth warming.
 */
export interface BlockDeviceExtras {
  /**
   * The allocation map of [offset, offset + length): consecutive extents from `offset`, at least
   * one, at most `maxExtents` (≤ MAX_EXTENTS), covering a prefix of the range (all of it unless
   * the count ran out). Zero / Hole only where that is true of what a read returns: when in
   * doubt, data (flags 0).
   */
  extents?(offset: number, length: number, maxExtents?: number): Promise<Extent[]>
  /** A hint that the range will be read soon (NBD_CMD_CACHE): warm caches; resolves when started. */
  prefetch?(offset: number, length: number): Promise<void>
  /**
   * A device that pools its read buffers takes one back here: the caller of `read` may hand the
   * array it got (once, when nothing refers to it any more) so the device can reuse its memory.
   * Only the device that returned an array is given it back; a device without `release` never
   * has its arrays reused by anyone, and its callers just drop them.
   */
  release?(data: Uint8Array): void
}

/**
 * The extents of [offset, offset + length) as `device` reports them, or one data extent when it
 * cannot say. Always at least one extent, each > 0 bytes, inside the range.
 */
export async function deviceExtents(
  device: BlockDevice,
  offset: number,
  length: number,
  maxExtents = MAX_EXTENTS,
): Promise<Extent[]> {
  if (length <= 0) return []
  const max = Math.max(1, Math.min(MAX_EXTENTS, Math.floor(maxExtents)))
  if (!device.extents) return [{ length, flags: 0 }]
  const got = await device.extents(offset, length, max)
  // Never trust more than the contract: positive lengths, inside the range, at least one.
  const out: Extent[] = []
  let covered = 0
  for (const e of got) {
    if (out.length >= max || covered >= length) break
    if (!Number.isSafeInteger(e.length) || e.length <= 0) break
    const n = Math.min(e.length, length - covered)
    const flags = e.flags & (ExtentFlag.Hole | ExtentFlag.Zero)
    const last = out[out.length - 1]
    if (last && last.flags === flags) last.length += n
    else out.push({ length: n, flags })
    covered += n
  }
  if (out.length === 0) return [{ length, flags: 0 }]
  return out
}

/** The error codes a BlockDevice fails with. */
export type BlockErrorCode =
  | 'io-error'
  | 'out-of-range'
  | 'read-only'
  | 'unsupported'
  | 'timeout'
  | 'not-connected'
  | 'no-space'

/** Just the descriptive fields of a device (for listings, create messages, JSON). */
export function blockDeviceInfo(device: BlockDeviceInfo): BlockDeviceInfo {
  return {
    size: device.size,
    blockSize: device.blockSize,
    readOnly: device.readOnly,
    canFlush: device.canFlush,
    canFua: device.canFua,
    canTrim: device.canTrim,
    canWriteZeroes: device.canWriteZeroes,
  }
}

/**
 * The error for a request on [offset, offset + length) of a device of `size` bytes, or undefined
 * when the range lies within it. One wording for every device.
 */
export function rangeError(offset: number, length: number, size: number): VrioError | undefined {
  if (
    Number.isSafeInteger(offset) &&
    Number.isSafeInteger(length) &&
    offset >= 0 &&
    length >= 0 &&
    offset + length <= size
  ) {
    return undefined
  }
  return new VrioError('out-of-range', `range ${offset}+${length} is outside the device (${size} bytes)`, {
    offset,
    length,
    size,
  })
}
