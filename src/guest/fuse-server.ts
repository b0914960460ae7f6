import { constants as os } from 'node:os'
import type { BlockDevice } from '../devices/blk/device.ts'
import { VrioError } from '../errors.ts'
import { type FuseNativeStats, type NativeFuseDisk, native } from '../io/native.ts'
import {
  decodeFuseRequest,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  FuseOp,
  fuseErrno,
} from './fuse-protocol.ts'

export interface FuseDiskOptions {
  /** An empty directory to mount on. */
  dir: string
  /** The one file's name in it. */
  name: string
  device: BlockDevice
  /** Data requests in flight at once (the kernel's max_background). Default 64. */
  slots?: number
  /** Called once if the kernel ends the connection (an unmount or abort from outside). */
  onEnd?: (errno: number) => void
  /** Called for each data request the device failed (its FUSE reply carries `errno`). */
  onFailure?: (failure: FuseFailure) => void
  /**
   * Serve the live connection behind this /dev/fuse fd (a previous agent's, taken over; closed by
   * close()) instead of mounting: nothing is mounted, the kernel resends what went unanswered.
   */
  adoptFd?: number
  /**
   * FUSE over io_uring: offered at INIT (the kernel offers it only while fuse's `enable_uring`
   * is on, see enableFuseUring); with `adoptFd`, whether that connection was served over it.
   */
  uring?: boolean
  /** With `adoptFd` and `uring`: the previous agent's ring memory (see `ring`). */
  adoptRing?: { fd: number; addr: number }
  /**
   * Where /dev/fuse is read: 'loop' (the default), on the event loop — a request reaches the device
   * in the event that finds it, with no thread in between, but this process must never wait on
   * the mount (stat, open or read the file) from its event loop thread; or 'thread', on a reader
   * thread of its own that hands the requests over.
   */
  reader?: 'loop' | 'thread'
}

/** A data request the device failed, as FuseDiskOptions.onFailure hears of it. */
export interface FuseFailure {
  op: 'read' | 'write' | 'flush' | 'fallocate'
  offset: number
  length: number
  /** The errno the kernel gets (positive). */
  errno: number
  error: unknown
}

/**
 * Serves `device` as the one file of a FUSE mount on `dir`, from this process: the addon reads
 * /dev/fuse (on the event loop, or on a thread of its own: `reader`) and answers metadata itself;
 * READ, WRITE, FLUSH, FSYNC and FALLOCATE come here in batches and run on the device (writes
 * straight from the request's buffer, reads replied from the device's result buffer).
 */
export class FuseDiskServer {
  readonly file: string
  private readonly handle: NativeFuseDisk
  private readonly device: BlockDevice
  private readonly views: DataView[] = []
  private readonly bytes: Uint8Array[] = []
  private batch: Uint32Array = new Uint32Array(0)
  /** Slots from here on are io_uring entries (their own layout). */
  private readonly ringFirst: number
  private readonly onEnd: ((errno: number) => void) | undefined
  private readonly onFailure: ((failure: FuseFailure) => void) | undefined
  private closed = false

  constructor(o: FuseDiskOptions) {
    this.device = o.device
    this.file = `${o.dir}/${o.name}`
    this.onEnd = o.onEnd
    this.onFailure = o.onFailure
    const Ctor = native().FuseDisk
    if (!Ctor) throw new VrioError('unsupported', 'the native addon has no FUSE support (rebuild it)')
    try {
      this.handle = new Ctor(
        {
          dir: o.dir,
          name: o.name,
          size: o.device.size,
          readOnly: o.device.readOnly,
          slots: o.slots ?? 64,
          maxWrite: 1024 * 1024,
          ...(o.adoptFd === undefined ? {} : { fd: o.adoptFd }),
          uring: o.uring === true,
          ...(o.adoptRing && { ringFd: o.adoptRing.fd, ringAddr: o.adoptRing.addr }),
          reader: o.reader ?? 'loop',
        },
        (count: number) => this.onBatch(count),
      )
    } catch (error) {
      throw new VrioError('attach-failed', `could not mount FUSE on ${o.dir}: ${(error as Error).message}`)
    }
    const s = this.handle.slots()
    for (const b of s.buffers) {
      this.views.push(new DataView(b))
      this.bytes.push(new Uint8Array(b))
    }
    this.batch = s.batch
    this.ringFirst = s.ringFirst
  }

  stats(): FuseNativeStats {
    return this.handle.stats()
  }

  /** The /dev/fuse fd (see FuseLoopDevice's holder). */
  get fd(): number {
    return this.handle.fd()
  }

  /** The io_uring entries' memory file and address (the holder keeps the file for the next agent), or null. */
  get ring(): { fd: number; addr: number } | null {
    return this.handle.ring()
  }

  /** Unmounts (lazily: a loop device still holding the file gets errors from now on). Idempotent. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.handle.close()
  }

  private onBatch(count: number): void {
    if (count < 0) {
      if (!this.closed) this.onEnd?.(-count)
      return
    }
    const batch = this.batch
    for (let i = 0; i < count; i++) this.serve(batch[i])
  }

  private serve(slot: number): void {
    const r = decodeFuseRequest(this.views[slot], slot >= this.ringFirst)
    const d = this.device
    if (!r) {
      this.handle.reply(slot, -os.errno.EINVAL)
      return
    }
    switch (r.opcode) {
      case FuseOp.Read: {
        // The kernel keeps direct reads within the file's size; clamp anyway.
        const n = Math.max(0, Math.min(r.size, d.size - r.offset))
        if (n === 0) {
          this.handle.reply(slot, 0)
          return
        }
        d.read(r.offset, n).then(
          (data) => {
            this.reply(slot, 0, data)
            // writev copied it: a device that pools may reuse its memory (no garbage for the collector).
            d.release?.(data)
          },
          (e) => this.fail(slot, 'read', r.offset, n, e),
        )
        return
      }
      case FuseOp.Write: {
        const data = this.bytes[slot].subarray(r.dataOffset, r.dataOffset + r.size)
        // The slot is ours until we reply: the device may use (even encrypt in place) the data.
        d.write(r.offset, data, false, true).then(
          () => this.replyWrite(slot, r.size),
          (e) => this.fail(slot, 'write', r.offset, r.size, e),
        )
        return
      }
      case FuseOp.Flush:
      case FuseOp.Fsync:
        if (!d.canFlush || d.readOnly) {
          this.handle.reply(slot, 0)
          return
        }
        d.flush().then(
          () => this.reply(slot, 0),
          (e) => this.fail(slot, 'flush', 0, 0, e),
        )
        return
      case FuseOp.Fallocate: {
        const op = this.fallocate(r.mode, r.offset, r.size)
        if (typeof op === 'number') {
          this.handle.reply(slot, op)
          return
        }
        op.then(
          () => this.reply(slot, 0),
          (e) => this.fail(slot, 'fallocate', r.offset, r.size, e),
        )
        return
      }
    }
    this.handle.reply(slot, -os.errno.ENOSYS)
  }

  /**
   * fallocate(2) on the file: a punched hole (the loop device's discard) deallocates on the
   * IOhyp's file, a zeroed range (its write-zeroes) is written as zeroes there, and plain
   * allocation inside the file has nothing to do.
   */
  private fallocate(mode: number, offset: number, length: number): Promise<void> | number {
    const d = this.device
    if (d.readOnly) return -os.errno.EROFS
    if (offset + length > d.size && !(mode & FALLOC_FL_KEEP_SIZE)) return -os.errno.EOPNOTSUPP
    const end = Math.min(offset + length, d.size)
    if (end <= offset) return 0
    if (mode & FALLOC_FL_PUNCH_HOLE) {
      if (d.canWriteZeroes) return d.writeZeroes(offset, end - offset, true, false)
      if (d.canTrim) return d.trim(offset, end - offset)
      return -os.errno.EOPNOTSUPP
    }
    if (mode & FALLOC_FL_ZERO_RANGE) {
      if (d.canWriteZeroes) return d.writeZeroes(offset, end - offset, false, false)
      return -os.errno.EOPNOTSUPP
    }
    if ((mode & ~FALLOC_FL_KEEP_SIZE) === 0) return 0 // the whole file exists already
    return -os.errno.EOPNOTSUPP
  }

  private reply(slot: number, error: number, data?: Uint8Array): void {
    this.handle.reply(slot, error, data)
  }

  private fail(slot: number, op: FuseFailure['op'], offset: number, length: number, error: unknown): void {
    const errno = fuseErrno(error)
    this.reply(slot, -errno)
    this.onFailure?.({ op, offset, length, errno, error })
  }

  private replyWrite(slot: number, size: number): void {
    this.handle.replyWrite(slot, size)
  }
}
