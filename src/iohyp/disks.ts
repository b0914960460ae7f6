/**
 * The IOhyp's disk kind: per disk a backing file (and the encryption service around it when
 * there is one) served by a BlockBackend on its guest's current session. The registry
 * (registry.ts) does the rest. Backing files are opened through `DiskFiles`, FileDevice unless a
 * test passes its own.
 */
import type { DiskInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import type { IohypDiskMetrics } from '../daemon/metrics.ts'
import { BlockBackend, type ReplyBudget, replyNoDevice } from '../devices/blk/backend.ts'
import { type BlockDevice, blockDeviceInfo } from '../devices/blk/device.ts'
import { FileDevice, type FileIdentity, sameFile } from '../devices/blk/file-device.ts'
import { MAX_BATCH } from '../devices/blk/protocol.ts'
import { type DiskSpec, parseDiskRequest } from '../devices/blk/spec.ts'
import type { DeviceEntry, DeviceHandle, DeviceKind } from '../devices/kind.ts'
import type { FastDisk } from '../io/fast-path.ts'
import type { EncryptedDevice } from '../services/crypt/encrypted-device.ts'
import { type EncryptionSpec, openEncryption } from '../services/crypt/open.ts'
import { isVrioError, VrioError } from '../errors.ts'
import type { Session } from '../session/session.ts'
import { formatMac } from '../wire/address.ts'
import { MessageType } from '../wire/message-header.ts'
import { DeviceRegistry } from './registry.ts'
import type { Lender } from '../transport/message-buffers.ts'

/**
 * Most requests a guest may send in one batch message (announced in blk.attach): `VRIO_BATCH`,
 * 0–64 (0: none, every request its own message); default 64. Read when the daemon starts, so a
 * bad value is refused there like any other setting.
 */
function batchSetting(value: string | undefined): number {
  if (value === undefined || value === '') return MAX_BATCH
  const n = Number(value)
  if (!Number.isInteger(n) || n < 0 || n > MAX_BATCH)
    throw new VrioError('invalid-config', `VRIO_BATCH must be an integer from 0 to ${MAX_BATCH}`, {
      field: 'VRIO_BATCH',
      value,
    })
  return n
}

/** A disk as the state file keeps it. */
export type DiskState = DiskSpec & { handle: DeviceHandle }

/** A backing store: a block device that says which file it is. */
export interface BackingFile extends BlockDevice {
  readonly identity: FileIdentity
  close(): Promise<void>
}

/** How disks reach their backing files. */
export interface DiskFiles {
  open(path: string, readOnly: boolean): Promise<BackingFile>
}

/** Backing files on the IOhyp's file system (FileDevice). */
const FILE_BACKINGS: DiskFiles = {
  async open(path, readOnly) {
    try {
      return await FileDevice.open(path, { readOnly })
    } catch (error) {
      if (isVrioError(error, 'not-found'))
        throw new VrioError('not-found', `backing ${path} does not exist`, { field: 'backing', path })
      if (isVrioError(error, 'busy'))
        throw new VrioError('conflict', `backing ${path} is in use`, { field: 'backing', path })
      throw error
    }
  },
}

/** What the disks need of the daemon for each guest's limits. */
export interface DiskLimits {
  /** The read-reply budget all of a guest's back-ends share. */
  replyBudget(mac: number): ReplyBudget
  /** The guest keeps sending while its replies pile up: close its channel. */
  overloaded(mac: number): void
  /** The channel's largest message (reads whose reply would not fit are refused). */
  maxMessageSize(): number
}

/** A backing in use (or being opened) by a disk: who may share it. */
interface Claim {
  name: string
  backing: string
  readOnly: boolean
  file: BackingFile
}

interface Disk {
  claim: Claim
  crypt: EncryptedDevice | undefined
  /** What the back-end serves: the encrypted view of the file, or the file. */
  device: BlockDevice
  backend: BlockBackend
  nbd: string | null
  attachedAs: string | null
  /** Being closed: no more lent to the native fast path. */
  closing: boolean
}

/** Longest NBD URI or device name taken from a guest's answer (a path and a socket path fit). */
const MAX_PEER_STRING = 1024

function peerString(value: unknown): string | null {
  return typeof value === 'string' && value.length <= MAX_PEER_STRING ? value : null
}

/** `backing` is the file another writable disk (or a writable one on it) already uses. */
export function backingConflict(backing: string, other: { name: string; backing: string }): VrioError {
  const same = other.backing === backing ? '' : ` (the same file as ${other.backing})`
  return new VrioError(
    'conflict',
    `${backing}${same} already backs disk ${other.name}; only read-only disks may share a backing`,
    { field: 'backing', path: backing, disk: other.name },
  )
}

class DiskKind implements DeviceKind<DiskSpec, Disk, DiskInfo> {
  readonly noun = 'disk'
  readonly namePrefix = 'disk'
  readonly messageType = MessageType.BlockRequest
  readonly attachCall = 'blk.attach'
  readonly detachCall = 'blk.detach'
  /** How long a guest may take to set a disk up (NBD export, block device). */
  readonly attachTimeoutMs = 30_000
  /** Backings open or being opened, so one file backs one writable disk (see open). */
  private readonly claims = new Set<Claim>()
  private readonly files: DiskFiles
  private readonly limits: DiskLimits | undefined
  /** What blk.attach announces as maxBatch (batchSetting). */
  private readonly batch = batchSetting(process.env.VRIO_BATCH)
  /** Called when a disk starts closing (the IOhyp takes lent connections back from the fast path). */
  beforeClose: (() => void) | undefined

  constructor(files: DiskFiles, limits: DiskLimits | undefined) {
    this.files = files
    this.limits = limits
  }

  parse(body: unknown) {
    return parseDiskRequest(body)
  }

  /**
   * Opens the backing (and its encryption). The same file — by device and inode, so a hard link or
   * a path through a symlinked directory counts — is refused with 'conflict' unless this disk and
   * every disk already on it are read-only; checked before any key is read.
   */
  async open(spec: DiskSpec, handle: DeviceHandle, guest: number): Promise<Disk> {
    const file = await this.files.open(spec.backing, spec.readOnly)
    const claim: Claim = { name: spec.name, backing: spec.backing, readOnly: spec.readOnly, file }
    try {
      for (const c of this.claims) {
        if (!sameFile(c.file.identity, file.identity) || (c.readOnly && spec.readOnly)) continue
        throw backingConflict(spec.backing, c)
      }
      this.claims.add(claim)
      const crypt = spec.encrypt ? await openEncryption(file, spec.encrypt as EncryptionSpec) : undefined
      const device = crypt ?? file
      const limits = this.limits
      const backend = new BlockBackend(device, {
        handle,
        ...(limits && {
          replyBudget: limits.replyBudget(guest),
          maxMessageSize: limits.maxMessageSize(),
          onOverload: () => limits.overloaded(guest),
        }),
      })
      return { claim, crypt, device, backend, nbd: null, attachedAs: null, closing: false }
    } catch (error) {
      this.claims.delete(claim)
      await file.close()
      throw error
    }
  }

  /**
   * 'stop': the disk finishes the requests it is running and flushes its backing store; requests
   * not yet started stay unanswered, so guests re-send them to the restarted IOhyp (an error would
   * reach their NBD clients instead).
   */
  async close(d: Disk, why: 'remove' | 'stop'): Promise<void> {
    // The fast path reads the backing's descriptor: no connection keeps it once it closes.
    d.closing = true
    this.beforeClose?.()
    if (why === 'stop') {
      // Acknowledged writes are on the backing store once the backend is idle and flushed.
      await d.backend.close('handover')
      await d.device.flush().catch(() => {})
    } else await d.backend.close()
    d.attachedAs = null
    d.crypt?.close()
    this.claims.delete(d.claim)
    await d.claim.file.close()
  }

  bind(d: Disk, session: Session | undefined): void {
    if (session) d.backend.attach(session)
    else d.backend.detach()
  }

  announcement(e: DeviceEntry<DiskSpec, Disk>) {
    return {
      name: e.spec.name,
      handle: e.handle,
      info: blockDeviceInfo(e.device.device),
      maxBatch: this.batch,
    }
  }

  announced(d: Disk, answer: unknown): void {
    const a = answer as { nbd?: unknown; device?: unknown } | null
    // The guest chose these strings: kept short (they are shown, escaped, by blk list).
    d.nbd = peerString(a?.nbd)
    d.attachedAs = peerString(a?.device)
  }

  receive(
    d: Disk,
    h: Parameters<BlockBackend['receive']>[0],
    message: Uint8Array,
    lender: Lender | undefined,
  ): void {
    d.backend.receive(h, message, lender)
  }

  unknown(session: Session, h: Parameters<typeof replyNoDevice>[1]): void {
    replyNoDevice(session, h)
  }

  writable(d: Disk): void {
    d.backend.writable()
  }

  info(e: DeviceEntry<DiskSpec, Disk>): DiskInfo {
    const d = e.device
    return {
      name: e.spec.name,
      guest: formatMac(e.guest),
      backing: e.spec.backing,
      size: d.device.size,
      blockSize: d.device.blockSize,
      readOnly: e.spec.readOnly,
      state: e.announced ? 'attached' : 'waiting',
      nbd: d.nbd,
      device: d.attachedAs,
      // The disk's own counters: requests the addon's fast path answered count there too.
      requests: d.backend.ops.requests.reduce((a, b) => a + b, 0),
      errors: d.backend.ops.errors.reduce((a, b) => a + b, 0),
      encryption: d.crypt
        ? { kind: e.spec.encrypt!.kind, ...d.crypt.info(), counters: d.crypt.counters() }
        : null,
    }
  }

  describe(e: DeviceEntry<DiskSpec, Disk>) {
    return {
      guest: formatMac(e.guest),
      backing: e.spec.backing,
      size: e.device.device.size,
      encrypted: e.device.crypt ? e.spec.encrypt?.kind : false,
    }
  }
}

/** The IOhyp's remote disks (a registry of the disk kind). */
export class IohypDisks extends DeviceRegistry<DiskSpec, Disk, DiskInfo> {
  constructor(log: Logger, limits?: DiskLimits, files: DiskFiles = FILE_BACKINGS) {
    super(new DiskKind(files, limits), log)
  }

  /** Called when a disk starts closing (see DiskKind.beforeClose). */
  set beforeClose(f: (() => void) | undefined) {
    ;(this.kind as DiskKind).beforeClose = f
  }

  /**
   * The disks of guest `mac` the native fast path may read: plain files (not encrypted), open, not
   * closing.
   */
  fastDisks(mac: number): FastDisk[] {
    const out: FastDisk[] = []
    for (const { guest, handle, device: d } of this.entries()) {
      if (guest !== mac || d.crypt || d.closing || !(d.device instanceof FileDevice)) continue
      const fd = d.device.descriptor
      if (fd < 0) continue
      out.push({
        high: handle.high,
        low: handle.low,
        fd,
        size: d.device.size,
        maxRead: d.backend.maxReadLength,
        readOnly: d.device.readOnly,
        stats: d.backend.ops,
      })
    }
    return out
  }

  /** What the metrics endpoint reads of every disk (at scrape time). */
  metrics(): IohypDiskMetrics[] {
    return [...this.entries()].map(({ spec, guest, device: d }) => {
      const c = d.crypt?.counters()
      return {
        guest: formatMac(guest),
        disk: spec.name,
        ops: d.backend.ops,
        inFlight: d.backend.active + d.backend.queued,
        ...(c && { crypt: { bytesEncrypted: c.bytesEncrypted, bytesDecrypted: c.bytesDecrypted } }),
      }
    })
  }
}
