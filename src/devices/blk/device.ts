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

export interface BlockDevice extends BlockDeviceInfo {
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

/** The error codes a BlockDevice fails with. */
export type BlockErrorCode =
  | 'io-error'
  | 'out-of-range'
  | 'read-only'
  | 'unsupported'
  | 'timeout'
  | 'not-connected'
  | 'no-space'

export const BLOCK_ERROR_CODES: readonly BlockErrorCode[] = [
  'io-error',
  'out-of-range',
  'read-only',
  'unsupported',
  'timeout',
  'not-connected',
  'no-space',
]

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
