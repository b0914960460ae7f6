/**
 * The crypt service: a BlockDevice around an inner one whose payload holds only ciphertext
 * (dm-crypt `aes-xts-plain64`, see xts.ts for the IV rule). The guest sees plaintext.
 *
 * - Offsets are payload offsets: byte 0 of this device is `payloadOffset` on the inner one.
 * - One XTS call per request, in buffers the path already has: reads decrypt in place in the
 *   buffer the inner device returned; writes handed over (`transfer`, as the block back-end
 *   does) encrypt in place, other writes into a reused buffer of this device (the caller's is
 *   then never touched).
 * - Unaligned requests are served: the partial sectors at the edges are read, decrypted, patched
 *   and re-encrypted (read-modify-write). Every write-like request holds a lock on its sector
 *   span while in flight, so an RMW never interleaves with an overlapping write.
 * - writeZeroes writes encrypted zeroes (ciphertext of zeroes is not zeroes); `mayTrim` is
 *   ignored for the same reason.
 * - trim is refused unless `allowDiscards` (as dm-crypt): a discard shows which blocks are unused.
 *   Allowed, it passes the whole sectors of the range to the inner device; the plaintext there
 *   then reads back as noise, which trim permits.
 * - Nothing here holds the key where JSON, util.inspect or an error message could show it: the
 *   cipher lives in a private field and its key schedule inside OpenSSL.
 */
import {
  type BlockDevice,
  type BlockDeviceInfo,
  blockDeviceInfo,
  rangeError,
} from '../../devices/blk/device.ts'
import { VrioError } from '../../errors.ts'
import { checkTweakRule, type TweakRule, tweakOf, type XtsCipher } from './xts.ts'

export interface EncryptedDeviceOptions {
  /** The cipher, already keyed; the device owns it from now on (close() destroys it). */
  cipher: XtsCipher
  /** Where the payload starts on the inner device, in bytes (LUKS data offset). Default 0. */
  payloadOffset?: number
  /** Payload size in bytes; default: the rest of the inner device. Rounded down to whole sectors. */
  payloadSize?: number
  /** Encryption sector size, 512 (default) or 4096. */
  sectorSize?: number
  /** dm-crypt iv_large_sectors (plain mode only). Default false. */
  ivLargeSectors?: boolean
  /** dm-crypt iv_offset / LUKS2 iv_tweak, in 512-byte sectors. Default 0. */
  ivOffset?: number
  /** Pass trims through to the inner device (dm-crypt allow_discards). Default false. */
  allowDiscards?: boolean
  /** Serve read-only even if the inner device is writable. */
  readOnly?: boolean
  /** What this is, for info and JSON: e.g. 'luks2', 'plain'. */
  format?: string
}

export interface CryptCounters {
  reads: number
  writes: number
  writeZeroes: number
  trims: number
  flushes: number
  /** Plaintext bytes encrypted (written, including RMW sectors and encrypted zeroes). */
  bytesEncrypted: number
  /** Ciphertext bytes decrypted (read, including RMW edge sectors). */
  bytesDecrypted: number
  /** Requests that needed a read-modify-write of partial sectors. */
  readModifyWrites: number
  /** Requests that failed. */
  errors: number
}

interface SpanLock {
  start: number
  end: number
  done: Promise<void> | undefined
  release: (() => void) | undefined
}

/** Largest run of encrypted zeroes written at once by writeZeroes. */
const ZERO_CHUNK = 1024 * 1024

export class EncryptedDevice implements BlockDevice {
  readonly size: number
  readonly blockSize: number
  readonly readOnly: boolean
  readonly canFlush: boolean
  readonly canFua: boolean
  readonly canTrim: boolean
  readonly canWriteZeroes = true
  readonly sectorSize: number
  readonly payloadOffset: number
  readonly format: string
  /** Reads decrypt the inner device's array in place: only an inner device that pools takes it back. */
  readonly release?: (data: Uint8Array) => void
  readonly #inner: BlockDevice
  readonly #rule: TweakRule
  readonly #allowDiscards: boolean
  #cipher: XtsCipher | undefined
  readonly #counters: CryptCounters = {
    reads: 0,
    writes: 0,
    writeZeroes: 0,
    trims: 0,
    flushes: 0,
    bytesEncrypted: 0,
    bytesDecrypted: 0,
    readModifyWrites: 0,
    errors: 0,
  }
  /** Sector spans of write-like requests in flight; `done` is made only when someone waits. */
  readonly #locks = new Set<SpanLock>()
  /** Ciphertext buffers of finished writes, by size, for the next write of that size. */
  readonly #spare = new Map<number, Buffer[]>()
  #zeroes: Buffer | undefined

  constructor(inner: BlockDevice, options: EncryptedDeviceOptions) {
    const sectorSize = options.sectorSize ?? 512
    const rule: TweakRule = {
      sectorSize,
      ivLargeSectors: options.ivLargeSectors ?? false,
      ivOffset: options.ivOffset ?? 0,
    }
    checkTweakRule(rule)
    const payloadOffset = options.payloadOffset ?? 0
    if (!Number.isSafeInteger(payloadOffset) || payloadOffset < 0 || payloadOffset > inner.size)
      throw new VrioError(
        'bad-offset',
        `payload offset ${payloadOffset} is outside the device (${inner.size} bytes)`,
      )
    let size = options.payloadSize ?? inner.size - payloadOffset
    if (!Number.isSafeInteger(size) || size < 0 || payloadOffset + size > inner.size)
      throw new VrioError('bad-size', `payload size ${size} does not fit the device (${inner.size} bytes)`)
    size -= size % sectorSize
    this.#inner = inner
    this.#rule = rule
    this.#cipher = options.cipher
    this.#allowDiscards = options.allowDiscards ?? false
    this.size = size
    this.sectorSize = sectorSize
    this.blockSize = Math.max(sectorSize, inner.blockSize)
    this.payloadOffset = payloadOffset
    this.readOnly = (options.readOnly ?? false) || inner.readOnly
    this.canFlush = inner.canFlush
    this.canFua = inner.canFua
    this.canTrim = this.#allowDiscards && inner.canTrim
    this.format = options.format ?? 'plain'
    if (inner.release) this.release = (data) => inner.release!(data)
  }

  /** A copy of the counters. */
  counters(): CryptCounters {
    return { ...this.#counters }
  }

  /** Which XTS implementation runs ('native' or 'js'). */
  get implementation(): string {
    return this.#cipher?.implementation ?? 'closed'
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    try {
      this.#check(offset, length)
      this.#counters.reads++
      const s = this.sectorSize
      const start = floorTo(offset, s)
      const end = ceilTo(offset + length, s)
      const data = await this.#inner.read(this.payloadOffset + start, end - start)
      this.#crypt(false, data, start)
      return start === offset && end === offset + length
        ? data
        : data.subarray(offset - start, offset - start + length)
    } catch (error) {
      throw this.#failed(error)
    }
  }

  async write(offset: number, data: Uint8Array, fua: boolean, transfer = false): Promise<void> {
    try {
      this.#checkWritable()
      this.#check(offset, data.length)
      this.#counters.writes++
      if (data.length === 0) return
      await this.#locked(offset, data.length, () => this.#writePlain(offset, data, fua, transfer))
    } catch (error) {
      throw this.#failed(error)
    }
  }

  async flush(): Promise<void> {
    try {
      this.#counters.flushes++
      await this.#inner.flush()
    } catch (error) {
      throw this.#failed(error)
    }
  }

  async trim(offset: number, length: number): Promise<void> {
    try {
      if (!this.canTrim)
        throw new VrioError(
          'unsupported',
          this.#allowDiscards
            ? 'the device under the encryption does not support trim'
            : 'trim is not passed through encryption (it would show which blocks are in use); enable allowDiscards to pass it',
          { operation: 'trim' },
        )
      this.#checkWritable()
      this.#check(offset, length)
      this.#counters.trims++
      // Only whole sectors: trimming part of one would destroy the rest of it.
      const start = ceilTo(offset, this.sectorSize)
      const end = floorTo(offset + length, this.sectorSize)
      if (end <= start) return
      await this.#locked(start, end - start, () => this.#inner.trim(this.payloadOffset + start, end - start))
    } catch (error) {
      throw this.#failed(error)
    }
  }

  async writeZeroes(offset: number, length: number, _mayTrim: boolean, fua: boolean): Promise<void> {
    try {
      this.#checkWritable()
      this.#check(offset, length)
      this.#counters.writeZeroes++
      if (length === 0) return
      await this.#locked(offset, length, async () => {
        for (let pos = 0; pos < length; ) {
          // Chunks end on chunk boundaries so that only the first and last can be unaligned.
          const at = offset + pos
          const n = Math.min(length - pos, ZERO_CHUNK - (at % ZERO_CHUNK))
          this.#zeroes ??= Buffer.alloc(ZERO_CHUNK)
          await this.#writePlain(at, this.#zeroes.subarray(0, n), fua)
          pos += n
        }
      })
    } catch (error) {
      throw this.#failed(error)
    }
  }

  /** Destroys the key schedule; later requests fail with 'io-error'. Does not close the inner device. */
  close(): void {
    this.#cipher?.destroy()
    this.#cipher = undefined
  }

  info(): BlockDeviceInfo & { format: string; cipher: string; sectorSize: number; payloadOffset: number } {
    return {
      ...blockDeviceInfo(this),
      format: this.format,
      cipher: `aes-xts-plain64 (${this.#cipher?.keyBits ?? 0}-bit key)`,
      sectorSize: this.sectorSize,
      payloadOffset: this.payloadOffset,
    }
  }

  toJSON(): Record<string, unknown> {
    return { ...this.info(), counters: this.counters() }
  }

  /**
   * Encrypts `data` (plaintext at payload `offset`) and writes it, with RMW at unaligned edges:
   * in place when aligned and handed over (`transfer`), else into a buffer of this device.
   */
  async #writePlain(offset: number, data: Uint8Array, fua: boolean, transfer = false): Promise<void> {
    const s = this.sectorSize
    const start = floorTo(offset, s)
    const end = ceilTo(offset + data.length, s)
    if (transfer && start === offset && end === offset + data.length) {
      this.#crypt(true, data, start)
      await this.#inner.write(this.payloadOffset + start, data, fua, true)
      return
    }
    const out = this.#takeBuffer(end - start)
    if (start === offset && end === offset + data.length) {
      // Aligned: encrypt from the caller's buffer straight into ours, no copy first.
      this.#crypt(true, data, start, out)
    } else {
      this.#counters.readModifyWrites++
      // Old plaintext of the partial edge sectors (one read when they are the same sector).
      const headPartial = offset !== start
      const tailPartial = offset + data.length !== end
      if (headPartial) out.set(await this.#readPlain(start, s), 0)
      if (tailPartial && !(headPartial && end - start === s))
        out.set(await this.#readPlain(end - s, s), end - s - start)
      out.set(data, offset - start)
      this.#crypt(true, out, start)
    }
    await this.#inner.write(this.payloadOffset + start, out, fua)
    // The inner device is done with it once the write settled (BlockDevice contract).
    this.#giveBuffer(out)
  }

  async #readPlain(offset: number, length: number): Promise<Uint8Array> {
    const data = await this.#inner.read(this.payloadOffset + offset, length)
    this.#crypt(false, data, offset)
    return data
  }

  /** En- or decrypts `data` (whole sectors at payload `offset`) into `into`, by default in place. */
  #crypt(encrypt: boolean, data: Uint8Array, offset: number, into: Uint8Array = data): void {
    const cipher = this.#cipher
    if (!cipher) throw new VrioError('io-error', 'the encrypted device is closed', { closed: true })
    const { first, step } = tweakOf(this.#rule, offset)
    cipher.crypt(encrypt, data, into, first, this.sectorSize, step)
    if (encrypt) this.#counters.bytesEncrypted += data.length
    else this.#counters.bytesDecrypted += data.length
  }

  /** Runs `fn` holding the sector span of [offset, offset + length) against overlapping write-like requests. */
  async #locked(offset: number, length: number, fn: () => Promise<void>): Promise<void> {
    const start = floorTo(offset, this.sectorSize)
    const end = ceilTo(offset + length, this.sectorSize)
    for (;;) {
      let blocker: SpanLock | undefined
      for (const lock of this.#locks)
        if (lock.start < end && start < lock.end) {
          blocker = lock
          break
        }
      if (!blocker) break
      blocker.done ??= new Promise<void>((resolve) => {
        ;(blocker as SpanLock).release = resolve
      })
      await blocker.done
    }
    const lock: SpanLock = { start, end, done: undefined, release: undefined }
    this.#locks.add(lock)
    try {
      await fn()
    } finally {
      this.#locks.delete(lock)
      lock.release?.()
    }
  }

  #takeBuffer(size: number): Buffer {
    return this.#spare.get(size)?.pop() ?? Buffer.allocUnsafe(size)
  }

  /** Keeps a few buffers of the common sizes (they hold ciphertext only). */
  #giveBuffer(buffer: Buffer): void {
    if (buffer.length > 4 * 1024 * 1024) return
    let list = this.#spare.get(buffer.length)
    if (!list) {
      if (this.#spare.size >= 8) return
      list = []
      this.#spare.set(buffer.length, list)
    }
    if (list.length < 4) list.push(buffer)
  }

  #check(offset: number, length: number): void {
    if (!this.#cipher) throw new VrioError('io-error', 'the encrypted device is closed', { closed: true })
    const outside = rangeError(offset, length, this.size)
    if (outside) throw outside
  }

  #checkWritable(): void {
    if (this.readOnly) throw new VrioError('read-only', 'the device is read-only')
  }

  #failed(error: unknown): unknown {
    this.#counters.errors++
    return error
  }
}

function floorTo(n: number, to: number): number {
  return n - (n % to)
}

function ceilTo(n: number, to: number): number {
  const r = n % to
  return r === 0 ? n : n + to - r
}
