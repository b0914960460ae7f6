import type { CreateDiskRequest, DiskInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import type { IohypDiskMetrics } from '../daemon/metrics.ts'
import { BlockBackend, type ReplyBudget, replyNoDevice } from '../devices/blk/backend.ts'
import type { BlockDevice } from '../devices/blk/device.ts'
import { FileDevice, sameFile } from '../devices/blk/file-device.ts'
import type { EncryptedDevice } from '../services/crypt/encrypted-device.ts'
import { type EncryptionSpec, openEncryption } from '../services/crypt/open.ts'
import { isVrioError, VrioError } from '../errors.ts'
import { newDeviceHandle } from './handles.ts'
import type { Rpc } from '../session/rpc.ts'
import type { Session } from '../session/session.ts'
import type { Lender } from '../transport/message-buffers.ts'
import { formatMac } from '../wire/address.ts'
import { type MessageHeader, MessageType } from '../wire/message-header.ts'
import { DEVICE_NAME_RE } from '../devices/names.ts'

/** What the disk registry needs of an enrolled guest. */
export interface DiskGuest {
  mac: number
  session: Session | undefined
  rpc: Rpc
}

/** A disk as the state file keeps it. */
export interface DiskState {
  name: string
  guest: string
  backing: string
  readOnly: boolean
  /** The encryption service's settings (file paths only; keys stay in their files). */
  encrypt?: EncryptionSpec
  handle: { high: number; low: number }
}

/** A disk's store: the backing file, and the encryption service around it when there is one. */
interface Store {
  file: FileDevice
  crypt?: EncryptedDevice
  encrypt?: EncryptionSpec
}

interface Disk {
  name: string
  guest: number
  backing: string
  readOnly: boolean
  /** low: a slot number unique on this IOhyp; high: a random tag, so a guessed slot names nothing. */
  handle: { high: number; low: number }
  store: Store
  /** What the back-end serves: the encrypted view of the file, or the file. */
  device: BlockDevice
  backend: BlockBackend
  nbd: string | null
  attachedAs: string | null
  announced: boolean
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

/** Longest NBD URI or device name taken from a guest's answer (a path and a socket path fit). */
const MAX_PEER_STRING = 1024

function peerString(value: unknown): string | null {
  return typeof value === 'string' && value.length <= MAX_PEER_STRING ? value : null
}
/** How long a guest may take to set a disk up (NBD export, block device). */
const ATTACH_TIMEOUT_MS = 30_000

/**
 * The IOhyp's remote disks: a FileDevice and a BlockBackend per disk, bound to its guest's current
 * session; block requests are routed by handle, and a request naming no disk of that guest gets a
 * NoDevice answer. A disk exists for its guest across reconnections (re-announced on each new
 * session, so a restarted guest agent gets it back).
 */
export class IohypDisks {
  private readonly disks = new Map<string, Disk>()
  private readonly bySlot = new Map<number, Disk>()
  /** Backings opened for a disk not added yet (see openUnshared). */
  private readonly opening = new Map<FileDevice, { name: string; backing: string; readOnly: boolean }>()
  /** Set by close(): block requests are no longer answered. */
  private stopping = false
  private nextSlot = 1
  private readonly log: Logger
  private readonly limits: DiskLimits | undefined

  constructor(log: Logger, limits?: DiskLimits) {
    this.log = log
    this.limits = limits
  }

  list(): DiskInfo[] {
    return [...this.disks.values()].sort((a, b) => a.name.localeCompare(b.name)).map((d) => this.info(d))
  }

  /** What the metrics endpoint reads of every disk (at scrape time). */
  metrics(): IohypDiskMetrics[] {
    return [...this.disks.values()].map((d) => {
      const c = d.store.crypt?.counters()
      return {
        guest: formatMac(d.guest),
        disk: d.name,
        ops: d.backend.ops,
        errors: d.backend.stats.errors,
        inFlight: d.backend.active + d.backend.queued,
        ...(c && { crypt: { bytesEncrypted: c.bytesEncrypted, bytesDecrypted: c.bytesDecrypted } }),
      }
    })
  }

  state(): DiskState[] {
    return [...this.disks.values()].map((d) => ({
      name: d.name,
      guest: formatMac(d.guest),
      backing: d.backing,
      readOnly: d.readOnly,
      ...(d.store.encrypt ? { encrypt: d.store.encrypt } : {}),
      handle: d.handle,
    }))
  }

  forGuest(mac: number): number {
    let n = 0
    for (const d of this.disks.values()) if (d.guest === mac) n++
    return n
  }

  /** Creates a disk and waits until the guest has it ready; fails (undoing everything) otherwise. */
  async create(req: CreateDiskRequest, guest: DiskGuest): Promise<DiskInfo> {
    const name = req.name ?? this.freeName()
    if (!DEVICE_NAME_RE.test(name)) {
      throw new VrioError(
        'invalid-argument',
        `disk name '${name}' must be 1-64 letters, digits, '.', '-' or '_'`,
        { field: 'name' },
      )
    }
    if (this.disks.has(name)) throw new VrioError('conflict', `a disk named ${name} exists already`)
    if (!guest.session?.authenticated) {
      throw new VrioError('not-connected', `guest ${formatMac(guest.mac)} is not connected`)
    }
    const store = await this.openUnshared(name, req.backing, req.readOnly === true, req.encrypt)
    const handle = newDeviceHandle(this.nextSlot++)
    const d = this.add(name, guest.mac, req.backing, req.readOnly === true, handle, store)
    try {
      d.backend.attach(guest.session)
      await this.announce(d, guest)
    } catch (error) {
      await this.drop(d)
      throw error
    }
    this.log.info('disk created', {
      disk: name,
      guest: formatMac(guest.mac),
      backing: req.backing,
      size: d.device.size,
      encrypted: store.crypt ? store.encrypt?.kind : false,
    })
    return this.info(d)
  }

  async remove(name: string, guest: DiskGuest | undefined): Promise<DiskInfo> {
    const d = this.disks.get(name)
    if (!d) throw new VrioError('not-found', `no disk named ${name}`)
    const info = this.info(d)
    if (guest?.session?.authenticated) {
      // Best effort: a guest that does not answer still loses the disk (its requests get NoDevice).
      await guest.rpc.call('blk.detach', { name }, 10_000).catch((error) => {
        this.log.warn('guest did not confirm disk removal', { disk: name, error })
      })
    }
    await this.drop(d)
    this.log.info('disk removed', { disk: name })
    return { ...info, state: 'waiting', device: null }
  }

  /** Recreates disks from the state file; they are announced when their guests connect. */
  async restore(entries: readonly DiskState[], macOf: (text: string) => number | undefined): Promise<void> {
    for (const e of entries) {
      const mac = macOf(e.guest)
      if (mac === undefined || !DEVICE_NAME_RE.test(e.name))
        throw new VrioError('invalid-state', `malformed disk entry ${e.name}`)
      // The state file keeps the path; which file it is, is taken again here, at open.
      this.add(
        e.name,
        mac,
        e.backing,
        e.readOnly,
        e.handle,
        await this.openUnshared(e.name, e.backing, e.readOnly, e.encrypt),
      )
      this.nextSlot = Math.max(this.nextSlot, e.handle.low + 1)
    }
  }

  /**
   * Disks declared in a config file, applied at start over those restored from the state file: one
   * with the same name is kept when its guest, backing and read-only flag match, else replaced.
   * They are announced when their guests connect, like restored ones.
   */
  async declare(
    entries: readonly {
      name: string
      guest: string
      backing: string
      readOnly: boolean
      encrypt?: unknown
    }[],
    macOf: (text: string) => number | undefined,
  ): Promise<void> {
    for (const e of entries) {
      const mac = macOf(e.guest)
      if (mac === undefined || !DEVICE_NAME_RE.test(e.name))
        throw new VrioError('invalid-argument', `disk ${e.name}: no enrolled guest ${e.guest}`)
      const old = this.disks.get(e.name)
      if (
        old &&
        old.guest === mac &&
        old.backing === e.backing &&
        old.readOnly === e.readOnly &&
        JSON.stringify(old.store.encrypt) === JSON.stringify(e.encrypt)
      )
        continue
      if (old) await this.drop(old)
      const store = await this.openUnshared(
        e.name,
        e.backing,
        e.readOnly,
        e.encrypt as EncryptionSpec | undefined,
      ).catch((error) => {
        if (isVrioError(error, 'conflict')) error.message = `disk ${e.name}: ${error.message}`
        throw error
      })
      const handle = newDeviceHandle(this.nextSlot++)
      this.add(e.name, mac, e.backing, e.readOnly, handle, store)
      this.log.info('disk declared', { disk: e.name, guest: formatMac(mac), backing: e.backing })
    }
  }

  /** A guest's session came (or went): its disks follow it; a new session gets every disk announced. */
  useSession(guest: DiskGuest): void {
    for (const d of this.disks.values()) {
      if (d.guest !== guest.mac) continue
      d.announced = false
      if (!guest.session) {
        d.backend.detach()
        continue
      }
      d.backend.attach(guest.session)
      this.announce(d, guest).catch((error) =>
        this.log.warn('could not give a disk to its guest', { disk: d.name, error }),
      )
    }
  }

  /** A block request from `guest`; a lent message may be kept (see BlockBackend.receive). */
  receive(guest: DiskGuest, h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    if (h.type !== MessageType.BlockRequest || !guest.session || this.stopping) return
    const d = this.bySlot.get(h.deviceLow)
    if (d && d.guest === guest.mac && d.handle.high === h.deviceHigh) d.backend.receive(h, message, lender)
    else replyNoDevice(guest.session, h)
  }

  writable(guest: DiskGuest): void {
    for (const d of this.disks.values()) if (d.guest === guest.mac) d.backend.writable()
  }

  /**
   * The daemon stops: each disk finishes the requests it is running and flushes its backing
   * store; requests not yet started, and any arriving from now on, stay unanswered, so guests
   * re-send them to the restarted IOhyp (an error would reach their NBD clients instead).
   */
  async close(): Promise<void> {
    this.stopping = true
    for (const d of [...this.disks.values()]) {
      // Acknowledged writes are on the backing store once the backend is idle and flushed.
      await d.backend.close('handover')
      await d.device.flush().catch(() => {})
      await closeStore(d.store)
    }
    this.disks.clear()
    this.bySlot.clear()
  }

  private add(
    name: string,
    guest: number,
    backing: string,
    readOnly: boolean,
    handle: { high: number; low: number },
    store: Store,
  ): Disk {
    this.opening.delete(store.file)
    const device = store.crypt ?? store.file
    const d: Disk = {
      name,
      guest,
      backing,
      readOnly,
      handle,
      store,
      device,
      backend: new BlockBackend(device, {
        handle,
        ...(this.limits && {
          replyBudget: this.limits.replyBudget(guest),
          maxMessageSize: this.limits.maxMessageSize(),
          onOverload: () => this.limits?.overloaded(guest),
        }),
      }),
      nbd: null,
      attachedAs: null,
      announced: false,
    }
    this.disks.set(name, d)
    this.bySlot.set(handle.low, d)
    return d
  }

  /**
   * Opens a backing (and its encryption) that no other disk uses: the same file — by device and
   * inode, so a hard link or a path through a symlinked directory counts — is refused with
   * 'conflict' unless this disk and every disk already on it are read-only.
   */
  private async openUnshared(
    name: string,
    path: string,
    readOnly: boolean,
    encrypt: EncryptionSpec | undefined,
  ): Promise<Store> {
    let claimed: FileDevice | undefined
    try {
      return await openStore(path, readOnly, encrypt, (file) => {
        // Checked again here: another create may have taken the name while this one was opening.
        if (this.disks.has(name) || [...this.opening.values()].some((c) => c.name === name))
          throw new VrioError('conflict', `a disk named ${name} exists already`)
        const users = [
          ...[...this.disks.values()].map((d) => ({ ...d, file: d.store.file })),
          ...[...this.opening].map(([f, c]) => ({ ...c, file: f })),
        ]
        for (const d of users) {
          if (!sameFile(d.file.identity, file.identity) || (d.readOnly && readOnly)) continue
          const same = d.backing === path ? '' : ` (the same file as ${d.backing})`
          throw new VrioError(
            'conflict',
            `${path}${same} already backs disk ${d.name}; only read-only disks may share a backing`,
            { field: 'backing', path, disk: d.name },
          )
        }
        // Claimed until add() takes it: a create running meanwhile (its key being read, say) sees it.
        this.opening.set(file, { name, backing: path, readOnly })
        claimed = file
      })
    } catch (error) {
      if (claimed) this.opening.delete(claimed)
      throw error
    }
  }

  private async announce(d: Disk, guest: DiskGuest): Promise<void> {
    const info = {
      size: d.device.size,
      blockSize: d.device.blockSize,
      readOnly: d.device.readOnly,
      canFlush: d.device.canFlush,
      canFua: d.device.canFua,
      canTrim: d.device.canTrim,
      canWriteZeroes: d.device.canWriteZeroes,
    }
    const answer = (await guest.rpc.call(
      'blk.attach',
      { name: d.name, handle: d.handle, info },
      ATTACH_TIMEOUT_MS,
    )) as {
      nbd?: string
      device?: string | null
    }
    // The guest chose these strings: kept short (they are shown, escaped, by blk list).
    d.nbd = peerString(answer?.nbd)
    d.attachedAs = peerString(answer?.device)
    d.announced = true
  }

  private async drop(d: Disk): Promise<void> {
    this.disks.delete(d.name)
    this.bySlot.delete(d.handle.low)
    await d.backend.close()
    await closeStore(d.store)
  }

  private freeName(): string {
    for (let i = 0; ; i++) if (!this.disks.has(`disk${i}`)) return `disk${i}`
  }

  private info(d: Disk): DiskInfo {
    const s = d.backend.stats
    return {
      name: d.name,
      guest: formatMac(d.guest),
      backing: d.backing,
      size: d.device.size,
      blockSize: d.device.blockSize,
      readOnly: d.readOnly,
      state: d.announced ? 'attached' : 'waiting',
      nbd: d.nbd,
      device: d.attachedAs,
      requests: s.requests,
      errors: Object.values(s.errors).reduce((a, b) => a + b, 0),
      encryption: d.store.crypt
        ? { kind: d.store.encrypt!.kind, ...d.store.crypt.info(), counters: d.store.crypt.counters() }
        : null,
    }
  }
}

/**
 * Opens the backing file and, for an encrypted disk, the encryption service around it; `check`
 * sees the open file first (and may refuse it by throwing).
 */
async function openStore(
  path: string,
  readOnly: boolean,
  encrypt: EncryptionSpec | undefined,
  check: (file: FileDevice) => void,
): Promise<Store> {
  const file = await openBacking(path, readOnly)
  try {
    check(file)
    if (!encrypt) return { file }
    return { file, crypt: await openEncryption(file, encrypt), encrypt }
  } catch (error) {
    await file.close()
    throw error
  }
}

async function closeStore(store: Store): Promise<void> {
  store.crypt?.close()
  await store.file.close()
}

async function openBacking(path: string, readOnly: boolean): Promise<FileDevice> {
  try {
    return await FileDevice.open(path, { readOnly })
  } catch (error) {
    if (isVrioError(error, 'not-found'))
      throw new VrioError('not-found', `backing ${path} does not exist`, { field: 'backing', path })
    if (isVrioError(error, 'busy'))
      throw new VrioError('conflict', `backing ${path} is in use`, { field: 'backing', path })
    throw error
  }
}
