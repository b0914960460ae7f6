import {
  type BigIntStats,
  closeSync,
  constants,
  fdatasync,
  fstat,
  open,
  read,
  readFile,
  readSync,
  write,
  writeSync,
} from 'node:fs'
import { lstat, statfs } from 'node:fs/promises'
import { type ErrorCode, VrioError } from '../../errors.ts'
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  fallocateAvailable,
} from '../../io/fallocate.ts'
import {
  fadvise,
  fadviseAvailable,
  fileExtents,
  fileExtentsAvailable,
  POSIX_FADV_WILLNEED,
} from '../../io/extents.ts'
import { native } from '../../io/native.ts'
import { type BlockDevice, type Extent, ExtentFlag, MAX_EXTENTS, rangeError } from './device.ts'

export interface FileDeviceOptions {
  /** Open read-only: writes, trims and write-zeroes fail with 'read-only'. */
  readOnly?: boolean
  /** Block size to advertise (512 or 4096); default: the kernel's logical block size for block devices, 512 for files. */
  blockSize?: number
  /** Claim a block device exclusively (O_EXCL), so one that is mounted or in use is refused. Default true. */
  exclusive?: boolean
  /**
   * Punch holes and zero ranges with fallocate(2) (the native addon); default: when the addon
   * loads. Without it, trim is a no-op and write-zeroes writes zeros.
   */
  useFallocate?: boolean
  /**
   * Serve small reads and writes on the calling thread when that cannot wait on storage (see
   * FileDevice); default true. False: every request goes through the thread pool.
   */
  inlineIo?: boolean
  /**
   * FUA writes through a second descriptor with O_DSYNC (reopened through /proc/self/fd); false:
   * a FUA write is a write and an fdatasync, as it is where /proc is not mounted. Default true.
   */
  dsyncDescriptor?: boolean
}

/**
 * Which file a FileDevice has open, taken once from its descriptor: st_dev and st_ino for a
 * regular file (two paths name the same file — a hard link, a symlinked directory on the way —
 * exactly when these are equal); for a block device dev 0 and the device number (st_rdev) as
 * ino, so two device nodes of one device are the same too.
 */
export interface FileIdentity {
  dev: bigint
  ino: bigint
}

export function sameFile(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino
}

export interface FileDeviceStats {
  reads: number
  writes: number
  flushes: number
  holesPunched: number
  rangesZeroed: number
  /** Bytes written as zeros because fallocate could not do it. */
  zeroBytesWritten: number
  /** Reads and writes served on the calling thread (see FileDevice), included in reads/writes. */
  inlineReads: number
  inlineWrites: number
  /** Prefetch hints passed to the kernel (posix_fadvise WILLNEED). */
  prefetches: number
}

const ZERO_CHUNK = 1024 * 1024
let zeros: Buffer | undefined

/** Largest request tried on the event loop thread: a copy this size takes some microseconds. */
export const INLINE_IO_MAX = 64 * 1024
/** statfs f_type of the memory file systems (linux/magic.h): their files never wait on a disk. */
const TMPFS_MAGIC = 0x01021994
const RAMFS_MAGIC = 0x858458f6
const EOPNOTSUPP = 95

/**
 * How small requests may be served without the thread pool: 'memory' — a file on tmpfs/ramfs, a
 * plain pread/pwrite only copies memory; 'nowait' — preadv2/pwritev2 with RWF_NOWAIT, which copies
 * what is in the page cache and fails (EAGAIN) where it would wait; 'off' — always the pool.
 */
type InlineMode = 'memory' | 'nowait' | 'off'

/**
 * A BlockDevice over a regular file (a raw image; sparse files stay sparse: trim punches holes)
 * or a block device. Many requests may be in flight: each is an fs call on the libuv thread pool,
 * which has 4 threads unless the process sets UV_THREADPOOL_SIZE before its first fs call — that
 * bounds how many run in parallel, not how many may be queued.
 *
 * The path is resolved once, at open (O_NOFOLLOW: its last component must not be a symlink); from
 * then on everything goes through that descriptor, so renaming, replacing or re-pointing the path
 * changes nothing for the device. `identity` says which file it is.
 *
 * Caching: the page cache (no O_DIRECT); flush = fdatasync; FUA writes go through a second
 * descriptor with O_DSYNC, so one FUA write does not wait for every other write's data. That
 * descriptor is opened through /proc/self/fd/N (the open file itself, never the path again) and
 * checked to be the same inode; without /proc, a FUA write is a write and an fdatasync.
 *
 * Small requests (up to INLINE_IO_MAX) skip the thread pool's two thread hand-offs when they
 * cannot block: on a memory file system they are a plain read/write on the calling thread;
 * elsewhere one preadv2/pwritev2 with RWF_NOWAIT is tried first (served from the page cache, or
 * it fails at once and the request goes to the pool). Either way the promise is already settled
 * when returned, so the answer leaves in the same event as the request came.
 */
export class FileDevice implements BlockDevice {
  readonly path: string
  readonly size: number
  readonly blockSize: number
  readonly readOnly: boolean
  readonly canFlush = true
  readonly canFua = true
  readonly canTrim: boolean
  readonly canWriteZeroes: boolean
  readonly isBlockDevice: boolean
  /** st_dev/st_ino of the open descriptor (see FileIdentity). */
  readonly identity: FileIdentity
  readonly stats: FileDeviceStats = {
    reads: 0,
    writes: 0,
    flushes: 0,
    holesPunched: 0,
    rangesZeroed: 0,
    zeroBytesWritten: 0,
    inlineReads: 0,
    inlineWrites: 0,
    prefetches: 0,
  }

  private fd: number

  /** The open descriptor (-1 once closed), for the IOhyp's native fast path to pread. */
  get descriptor(): number {
    return this.fd
  }
  /** The O_DSYNC descriptor for FUA writes: -1 not yet opened, -2 none possible (no /proc). */
  private dsyncFd = -1
  private dsyncOpening: Promise<number> | undefined
  private punch: boolean
  private zeroRange: boolean
  private inlineRead: InlineMode
  private inlineWrite: InlineMode
  private closed = false
  private active = 0
  private drained: (() => void) | undefined

  private constructor(
    path: string,
    fd: number,
    info: {
      size: number
      blockSize: number
      readOnly: boolean
      isBlockDevice: boolean
      identity: FileIdentity
      fallocate: boolean
      inline: InlineMode
      dsyncDescriptor: boolean
    },
  ) {
    this.path = path
    this.fd = fd
    this.identity = info.identity
    if (!info.dsyncDescriptor) this.dsyncFd = -2
    this.size = info.size
    this.blockSize = info.blockSize
    this.readOnly = info.readOnly
    this.isBlockDevice = info.isBlockDevice
    this.punch = info.fallocate
    this.zeroRange = info.fallocate
    this.inlineRead = info.inline
    this.inlineWrite = info.inline
    // Trim is a hint: offered even where it can only do nothing. Write-zeroes is offered where it
    // is cheaper than writing zeros, i.e. with fallocate (the method still works without).
    this.canTrim = !info.readOnly
    this.canWriteZeroes = !info.readOnly && info.fallocate
  }

  /**
   * Opens `path` (which must exist; its last component must not be a symbolic link): O_RDWR, or
   * O_RDONLY when read-only, with O_NOFOLLOW; block devices also O_EXCL unless `exclusive` is
   * false. The size comes from fstat for files and from the size the kernel reports (sysfs) for
   * block devices. Fails with 'not-found', 'busy', 'read-only', 'permission-denied', 'symlink'
   * (the path names a symbolic link), 'invalid-argument' (neither a file nor a block device, or
   * the path changed while it was opened) or 'io-error'.
   */
  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    const readOnly = options.readOnly === true
    // lstat only to choose the flags (O_EXCL is for block devices) and to say clearly what is
    // wrong; what counts is the descriptor, checked below to be the file lstat saw.
    const st = await lstat(path, { bigint: true }).catch((e) => Promise.reject(openError(e, path)))
    if (st.isSymbolicLink()) throw symlinkError(path)
    const isBlockDevice = st.isBlockDevice()
    if (!isBlockDevice && !st.isFile()) {
      throw new VrioError('invalid-argument', `${path} is neither a regular file nor a block device`, {
        path,
      })
    }
    let flags = (readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_NOFOLLOW
    if (isBlockDevice && options.exclusive !== false) flags |= constants.O_EXCL
    // A FIFO swapped in after lstat must not hang the open (it is refused below); O_NONBLOCK
    // changes nothing for a regular file's reads and writes.
    if (!isBlockDevice) flags |= constants.O_NONBLOCK
    const fd = await new Promise<number>((resolve, reject) =>
      open(path, flags, (e, fd) =>
        e ? reject(errnoOf(e) === 'ELOOP' ? symlinkError(path) : openError(e, path)) : resolve(fd),
      ),
    )
    try {
      const fst = await new Promise<BigIntStats>((resolve, reject) =>
        fstat(fd, { bigint: true }, (e, s) => (e ? reject(fsError(e, 'fstat', path)) : resolve(s))),
      )
      if (fst.dev !== st.dev || fst.ino !== st.ino)
        throw new VrioError('invalid-argument', `${path} was replaced while it was being opened; try again`, {
          path,
        })
      let size: number
      let blockSize = options.blockSize ?? 512
      if (isBlockDevice) {
        const sys = await blockDeviceSysfs(fst.rdev)
        size = sys.size
        blockSize = options.blockSize ?? (sys.logicalBlockSize <= 512 ? 512 : 4096)
      } else {
        size = Number(fst.size)
      }
      if (
        !Number.isInteger(blockSize) ||
        blockSize < 512 ||
        blockSize > 65_536 ||
        blockSize & (blockSize - 1)
      )
        throw new VrioError(
          'invalid-argument',
          `block size must be a power of two in 512..65536, got ${blockSize}`,
        )
      const useFallocate = (options.useFallocate ?? true) && fallocateAvailable()
      const inline = options.inlineIo === false ? 'off' : await inlineMode(fd, isBlockDevice)
      return new FileDevice(path, fd, {
        size,
        blockSize,
        readOnly,
        isBlockDevice,
        identity: isBlockDevice ? { dev: 0n, ino: fst.rdev } : { dev: fst.dev, ino: fst.ino },
        fallocate: useFallocate,
        inline,
        dsyncDescriptor: options.dsyncDescriptor !== false,
      })
    } catch (e) {
      closeSync(fd)
      throw e
    }
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const bad = this.check(offset, length, false)
    if (bad) return Promise.reject(bad)
    const buf = Buffer.allocUnsafe(length)
    if (length === 0) return Promise.resolve(buf)
    this.stats.reads++
    if (length <= INLINE_IO_MAX && this.inlineRead !== 'off' && this.readInline(buf, offset)) {
      this.stats.inlineReads++
      return Promise.resolve(buf)
    }
    return this.track(
      new Promise<Uint8Array>((resolve, reject) => {
        const step = (done: number): void => {
          read(this.fd, buf, done, length - done, offset + done, (e, n) => {
            if (e) reject(fsError(e, 'read', this.path))
            else if (n === 0) {
              // The file shrank under us: what lies past its end reads as zeros, as in a raw image.
              buf.fill(0, done)
              resolve(buf)
            } else if (done + n < length) step(done + n)
            else resolve(buf)
          })
        }
        step(0)
      }),
    )
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    const bad = this.check(offset, data.length, true)
    if (bad) return Promise.reject(bad)
    if (data.length === 0) return fua ? this.flush() : Promise.resolve()
    this.stats.writes++
    if (
      !fua &&
      data.length <= INLINE_IO_MAX &&
      this.inlineWrite !== 'off' &&
      this.writeInline(data, offset)
    ) {
      this.stats.inlineWrites++
      return Promise.resolve()
    }
    if (!fua) return this.track(this.writeAll(this.fd, offset, data))
    return this.track(
      this.dsync().then(async (fd) => {
        if (fd >= 0) return this.writeAll(fd, offset, data)
        await this.writeAll(this.fd, offset, data)
        await this.datasync()
      }),
    )
  }

  flush(): Promise<void> {
    if (this.closed) return Promise.reject(closedError(this.path))
    this.stats.flushes++
    return this.track(this.datasync())
  }

  private datasync(): Promise<void> {
    return new Promise<void>((resolve, reject) =>
      fdatasync(this.fd, (e) => (e ? reject(fsError(e, 'fdatasync', this.path)) : resolve())),
    )
  }

  /**
   * Deallocates the range where the file system or device can (a hole: reads return zeros);
   * elsewhere it does nothing, which discard's semantics allow (the contents become unspecified).
   * On block devices only whole logical blocks are trimmed.
   */
  trim(offset: number, length: number): Promise<void> {
    const bad = this.check(offset, length, true)
    if (bad) return Promise.reject(bad)
    let start = offset
    let end = offset + length
    if (this.isBlockDevice) {
      start = Math.ceil(start / this.blockSize) * this.blockSize
      end = Math.floor(end / this.blockSize) * this.blockSize
    }
    if (end <= start || !this.punch) return Promise.resolve()
    return this.track(
      this.punchHole(start, end - start).then(
        () => undefined,
        (e) => {
          if (isUnsupported(e)) return // nothing we can deallocate: trimming is advisory
          throw e
        },
      ),
    )
  }

  /**
   * Makes the range read as zeros. With `mayTrim`, by punching a hole (files stay sparse);
   * otherwise with FALLOC_FL_ZERO_RANGE (allocated, no data written); where neither is possible,
   * by writing zeros. `fua`: durable when resolved.
   */
  writeZeroes(offset: number, length: number, mayTrim: boolean, fua: boolean): Promise<void> {
    const bad = this.check(offset, length, true)
    if (bad) return Promise.reject(bad)
    if (length === 0) return fua ? this.flush() : Promise.resolve()
    return this.track(this.zero(offset, length, mayTrim, fua))
  }

  /**
   * The allocation map from SEEK_DATA / SEEK_HOLE: holes of a regular file are Hole | Zero (they
   * read as zeros), everything else data. Without the addon, or on a block device, all data.
   */
  extents(offset: number, length: number, maxExtents = MAX_EXTENTS): Promise<Extent[]> {
    const bad = this.check(offset, length, false)
    if (bad) return Promise.reject(bad)
    if (length === 0) return Promise.resolve([])
    if (this.isBlockDevice || !fileExtentsAvailable()) return Promise.resolve([{ length, flags: 0 }])
    const max = Math.max(1, Math.min(MAX_EXTENTS, maxExtents))
    return this.track(
      fileExtents(this.fd, offset, length, max).then(
        (runs) =>
          runs.length === 0
            ? [{ length, flags: 0 }]
            : runs.map((r) => ({ length: r.length, flags: r.hole ? ExtentFlag.Hole | ExtentFlag.Zero : 0 })),
        (e) => Promise.reject(fsError(e, 'lseek(SEEK_DATA)', this.path)),
      ),
    )
  }

  /** Starts reading the range into the page cache (posix_fadvise WILLNEED); resolves once asked. */
  prefetch(offset: number, length: number): Promise<void> {
    const bad = this.check(offset, length, false)
    if (bad) return Promise.reject(bad)
    if (length === 0 || !fadviseAvailable()) return Promise.resolve()
    this.stats.prefetches++
    return this.track(
      fadvise(this.fd, offset, length, POSIX_FADV_WILLNEED).catch((e) => {
        throw fsError(e, 'posix_fadvise', this.path)
      }),
    )
  }

  /** Waits for requests in flight, then closes the file. Later requests fail with 'not-connected'. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.active > 0) await new Promise<void>((resolve) => (this.drained = resolve))
    if (this.dsyncOpening) await this.dsyncOpening.catch(() => undefined)
    closeSync(this.fd)
    if (this.dsyncFd >= 0) closeSync(this.dsyncFd)
    this.fd = -1
    this.dsyncFd = -1
  }

  // ------------------------------------------------------------------------------------------

  private check(offset: number, length: number, mutating: boolean): VrioError | undefined {
    if (this.closed) return closedError(this.path)
    const outside = rangeError(offset, length, this.size)
    if (outside) return outside
    if (mutating && this.readOnly) return new VrioError('read-only', `${this.path} is open read-only`)
    return undefined
  }

  /** Fills all of `buf` from `offset` without waiting, or returns false (the pool will). */
  private readInline(buf: Uint8Array, offset: number): boolean {
    if (this.inlineRead === 'memory') {
      try {
        let done = 0
        while (done < buf.length) {
          const n = readSync(this.fd, buf, done, buf.length - done, offset + done)
          if (n === 0) return false // past the end of a shrunk file: the pool path zero-fills
          done += n
        }
        return true
      } catch {
        return false // the pool path repeats it and reports the error
      }
    }
    const n = native().ioNowait(false, this.fd, buf, offset)
    if (n === -EOPNOTSUPP) this.inlineRead = 'off'
    return n === buf.length
  }

  /** Writes all of `data` at `offset` without waiting, or returns false (the pool will: a
   * partial write done here is simply written again). */
  private writeInline(data: Uint8Array, offset: number): boolean {
    if (this.inlineWrite === 'memory') {
      try {
        let done = 0
        while (done < data.length) done += writeSync(this.fd, data, done, data.length - done, offset + done)
        return true
      } catch {
        return false
      }
    }
    const n = native().ioNowait(true, this.fd, data, offset)
    if (n === -EOPNOTSUPP) this.inlineWrite = 'off'
    return n === data.length
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.active++
    const done = (): void => {
      if (--this.active === 0 && this.drained) this.drained()
    }
    p.then(done, done)
    return p
  }

  private writeAll(fd: number, offset: number, data: Uint8Array): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const step = (done: number): void => {
        write(fd, data, done, data.length - done, offset + done, (e, n) => {
          if (e) reject(fsError(e, 'write', this.path))
          else if (done + n < data.length) step(done + n)
          else resolve()
        })
      }
      step(0)
    })
  }

  /**
   * The O_DSYNC descriptor, or -2 where none can be had (then FUA is write + fdatasync). Opened
   * through /proc/self/fd: the file this device has open, wherever its path now points.
   */
  private dsync(): Promise<number> {
    if (this.dsyncFd !== -1) return Promise.resolve(this.dsyncFd)
    this.dsyncOpening ??= new Promise<number>((resolve, reject) => {
      const fail = (e: unknown): void => {
        this.dsyncOpening = undefined
        reject(fsError(e, 'open (O_DSYNC)', this.path))
      }
      // No O_EXCL: the claim on a block device is held by the first descriptor.
      open(`/proc/self/fd/${this.fd}`, constants.O_RDWR | constants.O_DSYNC, (e, fd) => {
        if (e) {
          if (errnoOf(e) !== 'ENOENT') return fail(e)
          this.dsyncFd = -2 // no /proc mounted
          return resolve(this.dsyncFd)
        }
        fstat(fd, { bigint: true }, (e2, s) => {
          const same = s && (this.isBlockDevice ? s.rdev === this.identity.ino : sameFile(s, this.identity))
          if (e2 || !same) {
            closeSync(fd)
            return fail(e2 ?? new Error(`/proc/self/fd/${this.fd} is not the open file`))
          }
          this.dsyncFd = fd
          resolve(fd)
        })
      })
    })
    return this.dsyncOpening
  }

  private async punchHole(offset: number, length: number): Promise<void> {
    try {
      await fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
      this.stats.holesPunched++
    } catch (e) {
      if (isUnsupported(e)) this.punch = false
      throw fsError(e, 'fallocate(PUNCH_HOLE)', this.path)
    }
  }

  private async zero(offset: number, length: number, mayTrim: boolean, fua: boolean): Promise<void> {
    let start = offset
    let end = offset + length
    if (this.isBlockDevice) {
      // The kernel zeroes whole logical blocks only; the ragged edges are written.
      const b = this.blockSize
      const alignedStart = Math.min(end, Math.ceil(start / b) * b)
      const alignedEnd = Math.max(alignedStart, Math.floor(end / b) * b)
      if (alignedStart > start) await this.writeZeroBytes(start, alignedStart - start)
      if (end > alignedEnd) await this.writeZeroBytes(alignedEnd, end - alignedEnd)
      start = alignedStart
      end = alignedEnd
    }
    if (end > start) {
      let done = false
      if (mayTrim && this.punch) {
        try {
          await this.punchHole(start, end - start)
          done = true
        } catch (e) {
          if (!isUnsupported(e)) throw e
        }
      }
      if (!done && this.zeroRange) {
        try {
          await fallocate(this.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, start, end - start)
          this.stats.rangesZeroed++
          done = true
        } catch (e) {
          if (!isUnsupported(e)) throw fsError(e, 'fallocate(ZERO_RANGE)', this.path)
          this.zeroRange = false
        }
      }
      if (!done) await this.writeZeroBytes(start, end - start)
    }
    if (fua) await this.flush()
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    zeros ??= Buffer.alloc(ZERO_CHUNK)
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK, length - done)
      await this.writeAll(this.fd, offset + done, zeros.subarray(0, n))
      done += n
    }
    this.stats.zeroBytesWritten += length
  }
}

/** How small requests on the open file `fd` may skip the thread pool (see InlineMode). */
async function inlineMode(fd: number, isBlockDevice: boolean): Promise<InlineMode> {
  if (!isBlockDevice) {
    // statfs of the descriptor (Node has no fstatfs): /proc/self/fd/N leads to the open file.
    const type = await statfs(`/proc/self/fd/${fd}`).then(
      (s) => s.type,
      () => 0,
    )
    if (type === TMPFS_MAGIC || type === RAMFS_MAGIC) return 'memory'
  }
  try {
    return typeof native().ioNowait === 'function' ? 'nowait' : 'off'
  } catch {
    return 'off' // no addon
  }
}

/** Size and logical block size of a block device, from /sys/dev/block/MAJOR:MINOR. */
async function blockDeviceSysfs(rdev: bigint): Promise<{ size: number; logicalBlockSize: number }> {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn))
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn))
  const dir = `/sys/dev/block/${major}:${minor}`
  const text = (p: string): Promise<string | undefined> =>
    new Promise((resolve) => readFile(p, 'utf8', (e, s) => resolve(e ? undefined : s.trim())))
  const sectors = await text(`${dir}/size`)
  if (sectors === undefined || !/^\d+$/.test(sectors))
    throw new VrioError('io-error', `cannot read the size of block device ${major}:${minor} from ${dir}/size`)
  // A partition has no queue/ of its own: its disk's is one level up.
  const lbs =
    (await text(`${dir}/queue/logical_block_size`)) ?? (await text(`${dir}/../queue/logical_block_size`))
  return { size: Number(sectors) * 512, logicalBlockSize: lbs && /^\d+$/.test(lbs) ? Number(lbs) : 512 }
}

function errnoOf(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | undefined)?.code
  return typeof code === 'string' ? code : undefined
}

function isUnsupported(e: unknown): boolean {
  const code = errnoOf(e) ?? ''
  if (e instanceof VrioError && code === 'unsupported') return true
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'ENOTTY'
}

/** A failed fs call as the BlockDevice contract's codes. */
function fsError(e: unknown, what: string, path: string): VrioError {
  if (e instanceof VrioError && !('syscall' in e)) return e
  const errno = errnoOf(e)
  let code: ErrorCode = 'io-error'
  if (errno === 'EROFS' || errno === 'EPERM') code = 'read-only'
  else if (errno === 'ENOSPC' || errno === 'EDQUOT') code = 'no-space'
  else if (errno === 'EOPNOTSUPP' || errno === 'ENOTSUP') code = 'unsupported'
  const message = e instanceof Error ? e.message : String(e)
  return new VrioError(code, `${what} on ${path} failed: ${message}`, { errno, path }, { cause: e })
}

function openError(e: unknown, path: string): VrioError {
  const errno = errnoOf(e)
  const code: ErrorCode =
    errno === 'ENOENT' || errno === 'ENOTDIR'
      ? 'not-found'
      : errno === 'EBUSY'
        ? 'busy'
        : errno === 'EROFS'
          ? 'read-only'
          : errno === 'EACCES' || errno === 'EPERM'
            ? 'permission-denied'
            : 'io-error'
  const message = e instanceof Error ? e.message : String(e)
  return new VrioError(code, `cannot open ${path}: ${message}`, { errno, path }, { cause: e })
}

function symlinkError(path: string): VrioError {
  return new VrioError(
    'symlink',
    `${path} is a symbolic link; a backing must be named by its own path, not a link to it`,
    { path, hint: `give the file it points to (readlink -f ${path})` },
  )
}

function closedError(path: string): VrioError {
  return new VrioError('not-connected', `${path} is closed`)
}
