/**
 * A sparse in-memory BlockDevice, for tests and benchmarks: memory is taken in fixed-size chunks
 * on first write, holes read as zeroes, trim (and write-zeroes that may trim) give chunks back.
 * Nothing is volatile, so flush and FUA have nothing to do; the capability flags can still be
 * turned off to exercise callers' handling of devices without them.
 */
import { VrioError } from '../../errors.ts'
import { type BlockDevice, type Extent, ExtentFlag, MAX_EXTENTS, rangeError } from './device.ts'

export interface MemoryDeviceOptions {
  /** Size in bytes. */
  size: number
  /** 512 (default) or 4096. */
  blockSize?: number
  readOnly?: boolean
  /** Allocation unit, a power of two between 512 bytes and 16 MiB. Default 64 KiB. */
  chunkSize?: number
  /** Writes that would need more memory than this fail with 'no-space'. Default: no limit. */
  maxAllocatedBytes?: number
  canFlush?: boolean
  canFua?: boolean
  canTrim?: boolean
  canWriteZeroes?: boolean
}

const DEFAULT_CHUNK_SIZE = 64 * 1024

export class MemoryDevice implements BlockDevice {
  readonly size: number
  readonly blockSize: number
  readonly readOnly: boolean
  readonly canFlush: boolean
  readonly canFua: boolean
  readonly canTrim: boolean
  readonly canWriteZeroes: boolean
  readonly chunkSize: number
  readonly maxAllocatedBytes: number
  private readonly chunkShift: number
  private readonly chunks = new Map<number, Buffer>()

  constructor(options: MemoryDeviceOptions) {
    const { size } = options
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid device size ${size}`)
    const blockSize = options.blockSize ?? 512
    if (blockSize !== 512 && blockSize !== 4096)
      throw new RangeError(`block size must be 512 or 4096, not ${blockSize}`)
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE
    if (!isPowerOfTwo(chunkSize) || chunkSize < 512 || chunkSize > 16 * 1024 * 1024)
      throw new RangeError(`chunk size must be a power of two between 512 and 16 MiB, not ${chunkSize}`)
    this.size = size
    this.blockSize = blockSize
    this.readOnly = options.readOnly ?? false
    this.canFlush = options.canFlush ?? true
    this.canFua = options.canFua ?? true
    this.canTrim = options.canTrim ?? true
    this.canWriteZeroes = options.canWriteZeroes ?? true
    this.chunkSize = chunkSize
    this.chunkShift = Math.log2(chunkSize)
    this.maxAllocatedBytes = options.maxAllocatedBytes ?? Number.POSITIVE_INFINITY
  }

  /** Bytes of memory currently holding data. */
  get allocatedBytes(): number {
    return this.chunks.size * this.chunkSize
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.checkRange(offset, length)
    const out = Buffer.allocUnsafe(length)
    this.forEachPiece(offset, length, (index, at, n, pos) => {
      const chunk = this.chunks.get(index)
      if (chunk) chunk.copy(out, pos, at, at + n)
      else out.fill(0, pos, pos + n)
    })
    return out
  }

  async write(offset: number, data: Uint8Array, _fua: boolean): Promise<void> {
    this.checkWritable()
    this.checkRange(offset, data.length)
    this.reserve(offset, data.length)
    this.forEachPiece(offset, data.length, (index, at, n, pos) => {
      this.chunkFor(index).set(data.subarray(pos, pos + n), at)
    })
  }

  /** Chunks never written (or given back) are holes that read as zeros; the rest is data. */
  async extents(offset: number, length: number, maxExtents = MAX_EXTENTS): Promise<Extent[]> {
    this.checkRange(offset, length)
    const out: Extent[] = []
    const max = Math.max(1, Math.min(MAX_EXTENTS, maxExtents))
    let full = false
    this.forEachPiece(offset, length, (index, _at, n) => {
      if (full) return
      const flags = this.chunks.has(index) ? 0 : ExtentFlag.Hole | ExtentFlag.Zero
      const last = out[out.length - 1]
      if (last && last.flags === flags) last.length += n
      else if (out.length < max) out.push({ length: n, flags })
      else full = true
    })
    return out
  }

  async flush(): Promise<void> {
    if (!this.canFlush) throw unsupported('flush')
  }

  async trim(offset: number, length: number): Promise<void> {
    if (!this.canTrim) throw unsupported('trim')
    this.checkWritable()
    this.checkRange(offset, length)
    this.zero(offset, length, true)
  }

  async writeZeroes(offset: number, length: number, mayTrim: boolean, _fua: boolean): Promise<void> {
    if (!this.canWriteZeroes) throw unsupported('write-zeroes')
    this.checkWritable()
    this.checkRange(offset, length)
    if (!mayTrim) this.reserve(offset, length)
    this.zero(offset, length, mayTrim)
  }

  private zero(offset: number, length: number, deallocate: boolean): void {
    this.forEachPiece(offset, length, (index, at, n) => {
      const whole = at === 0 && n === this.chunkSize
      const chunk = this.chunks.get(index)
      if (whole && deallocate) this.chunks.delete(index)
      else if (chunk) chunk.fill(0, at, at + n)
      else if (!deallocate) this.chunkFor(index)
    })
  }

  /** Fails with 'no-space' before anything changes when the range needs more chunks than allowed. */
  private reserve(offset: number, length: number): void {
    if (this.maxAllocatedBytes === Number.POSITIVE_INFINITY || length === 0) return
    let missing = 0
    for (let i = this.chunkIndex(offset); i <= this.chunkIndex(offset + length - 1); i++)
      if (!this.chunks.has(i)) missing++
    if (this.allocatedBytes + missing * this.chunkSize > this.maxAllocatedBytes)
      throw new VrioError('no-space', `memory device limit of ${this.maxAllocatedBytes} bytes reached`, {
        limit: this.maxAllocatedBytes,
      })
  }

  private chunkFor(index: number): Buffer {
    let chunk = this.chunks.get(index)
    if (!chunk) {
      chunk = Buffer.alloc(this.chunkSize)
      this.chunks.set(index, chunk)
    }
    return chunk
  }

  private chunkIndex(offset: number): number {
    return Math.floor(offset / this.chunkSize)
  }

  /** Calls `fn(chunkIndex, offsetInChunk, bytes, positionInRequest)` for each chunk the range touches. */
  private forEachPiece(
    offset: number,
    length: number,
    fn: (index: number, at: number, n: number, pos: number) => void,
  ): void {
    let pos = 0
    while (pos < length) {
      const abs = offset + pos
      const index = abs < 2 ** 31 ? abs >>> this.chunkShift : this.chunkIndex(abs)
      const at = abs - index * this.chunkSize
      const n = Math.min(this.chunkSize - at, length - pos)
      fn(index, at, n, pos)
      pos += n
    }
  }

  private checkRange(offset: number, length: number): void {
    const outside = rangeError(offset, length, this.size)
    if (outside) throw outside
  }

  private checkWritable(): void {
    if (this.readOnly) throw new VrioError('read-only', 'the device is read-only')
  }
}

function unsupported(what: string): VrioError {
  return new VrioError('unsupported', `this memory device does not support ${what}`, { operation: what })
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0
}
