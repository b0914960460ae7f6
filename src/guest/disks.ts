import { join } from 'node:path'
import type { GuestDiskInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import type { BlockDeviceInfo } from '../devices/blk/device.ts'
import { RemoteBlockDevice } from '../devices/blk/frontend.ts'
import { NbdServer } from '../devices/blk/nbd-server.ts'
import { VrioError } from '../errors.ts'
import type { Session } from '../session/session.ts'
import type { Lender } from '../transport/message-buffers.ts'
import { type MessageHeader, MessageType } from '../wire/message-header.ts'
import {
  type BlockExposure,
  dropStale,
  exposeBlockDevice,
  FuseLoopDevice,
  reclaimStale,
  type StaleAttachment,
} from './block-attach.ts'
import { DEVICE_NAME_RE } from '../devices/names.ts'

/** What the IOhyp sends in `blk.attach`. */
export interface AttachDiskParams {
  name: string
  handle: { high: number; low: number }
  info: BlockDeviceInfo
}

interface Disk {
  name: string
  front: RemoteBlockDevice
  handle: { high: number; low: number }
  attached: BlockExposure | undefined
}

/**
 * How long block devices a killed agent left wait to be taken over, from this agent's first
 * session on (the IOhyp announces its disks right after connecting); then they are detached.
 */
const ADOPT_GRACE_MS = 20_000

/**
 * The guest's remote disks: one RemoteBlockDevice per disk (requests go to the IOhyp over the
 * current session, and are re-sent on the next one if it drops), all served as NBD exports on one
 * unix socket, and optionally attached as real block devices (the agent's own FUSE file + loop,
 * see exposeBlockDevice).
 */
export class GuestDisks {
  readonly socketPath: string
  private readonly runDir: string
  private readonly attach: boolean
  private readonly ioTimeoutMs: number | undefined
  private readonly log: Logger
  private readonly disks = new Map<string, Disk>()
  /** Front-ends by the low half of their handle (the IOhyp's slot); the high half is checked too. */
  private readonly byHandle = new Map<number, Disk>()
  private readonly nbd: NbdServer
  private session: Session | undefined
  /** Block devices a killed agent left, by disk name, until taken over or dropped. */
  private readonly stale = new Map<string, StaleAttachment>()
  private staleTimer: ReturnType<typeof setTimeout> | undefined

  constructor(o: { runDir: string; attach: boolean; ioTimeoutMs?: number; log: Logger }) {
    this.runDir = o.runDir
    this.attach = o.attach
    this.ioTimeoutMs = o.ioTimeoutMs
    this.log = o.log
    this.socketPath = join(o.runDir, 'nbd.sock')
    this.nbd = new NbdServer({
      path: this.socketPath,
      lookup: (name) => this.disks.get(name)?.front,
      list: () => this.disks.keys(),
    })
  }

  async start(): Promise<void> {
    // Listening first: it refuses while another live agent serves this run dir, whose block
    // devices must not be taken for a dead agent's leftovers.
    await this.nbd.listen()
    const { adoptable, detached } = await reclaimStale(join(this.runDir, 'disks'))
    if (detached.length > 0)
      this.log.warn('detached block devices a previous agent left', { devices: detached })
    for (const a of adoptable) this.stale.set(a.name, a)
    if (adoptable.length > 0)
      this.log.info('block devices a previous agent left wait to be taken over', {
        devices: adoptable.map((a) => a.record.device),
      })
  }

  /** Detaches what a previous agent left and no disk took over. */
  private async dropStale(): Promise<void> {
    if (this.staleTimer) clearTimeout(this.staleTimer)
    this.staleTimer = undefined
    const left = [...this.stale.values()]
    this.stale.clear()
    for (const a of left) await dropStale(a)
    if (left.length > 0)
      this.log.warn('detached block devices a previous agent left (their disks were not announced)', {
        devices: left.map((a) => a.record.device),
      })
  }

  uri(name: string): string {
    return `nbd+unix:///${name}?socket=${this.socketPath}`
  }

  /** The session to the IOhyp changed: requests go (and unanswered ones are re-sent) on the new one. */
  useSession(session: Session | undefined): void {
    this.session = session
    if (session && this.stale.size > 0 && !this.staleTimer) {
      this.staleTimer = setTimeout(() => void this.dropStale(), ADOPT_GRACE_MS)
      this.staleTimer.unref()
    }
    for (const d of this.disks.values()) {
      if (session) d.front.attach(session)
      else d.front.detach()
    }
  }

  writable(): void {
    for (const d of this.disks.values()) d.front.writable()
  }

  /** A block response from the IOhyp; `lender`: see RemoteBlockDevice.receive. */
  receive(h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    if (h.type !== MessageType.BlockResponse) return
    const d = this.byHandle.get(h.deviceLow)
    if (d && d.handle.high === h.deviceHigh) d.front.receive(h, message, lender)
  }

  /** `blk.attach` from the IOhyp: create (or, after a reconnect, re-bind) a disk. */
  async attachDisk(params: unknown): Promise<{ nbd: string; device: string | null }> {
    const p = params as Partial<AttachDiskParams>
    if (
      !p ||
      typeof p.name !== 'string' ||
      !DEVICE_NAME_RE.test(p.name) ||
      !isHandle(p.handle) ||
      !isDeviceInfo(p.info)
    ) {
      throw new VrioError('invalid-argument', 'blk.attach needs name, handle and info')
    }
    const handle = { high: p.handle.high >>> 0, low: p.handle.low >>> 0 }
    let d = this.disks.get(p.name)
    if (d) {
      this.byHandle.delete(d.handle.low)
      d.handle = handle
      if (this.session) d.front.attach(this.session, handle)
      this.byHandle.set(handle.low, d)
    } else {
      const front = new RemoteBlockDevice({ info: p.info, handle, deadline: this.ioTimeoutMs })
      d = { name: p.name, front, handle, attached: undefined }
      this.disks.set(p.name, d)
      this.byHandle.set(handle.low, d)
      if (this.session) front.attach(this.session)
      if (this.attach) {
        try {
          d.attached = await this.expose(p.name, front, p.info.readOnly)
        } catch (error) {
          this.forget(d)
          front.close()
          throw error
        }
      }
      this.log.info('disk attached', { disk: p.name, size: p.info.size, device: d.attached?.device ?? null })
    }
    return { nbd: this.uri(p.name), device: d.attached?.device ?? null }
  }

  /** The disk's block device: the one a killed agent left, taken over, or a new one. */
  private async expose(name: string, front: RemoteBlockDevice, readOnly: boolean): Promise<BlockExposure> {
    const dir = join(this.runDir, 'disks', name)
    const stale = this.stale.get(name)
    if (stale) {
      this.stale.delete(name)
      try {
        const taken = await FuseLoopDevice.adopt({ device: front, dir, readOnly, stale })
        this.log.info('took over the block device a previous agent left', {
          disk: name,
          device: taken.device,
          resent: taken.stats().resendErrno === 0,
        })
        return taken
      } catch (error) {
        this.log.warn('could not take over the block device a previous agent left', {
          disk: name,
          device: stale.record.device,
          error: (error as Error).message,
        })
        await dropStale(stale)
      }
    }
    return exposeBlockDevice({ device: front, dir, readOnly })
  }

  /** `blk.detach` from the IOhyp: the block device goes, NBD clients get errors, the export disappears. */
  async detachDisk(params: unknown): Promise<null> {
    const name = (params as { name?: unknown })?.name
    const d = typeof name === 'string' ? this.disks.get(name) : undefined
    if (!d) throw new VrioError('not-found', `no disk named ${String(name)}`)
    await d.attached?.detach()
    this.forget(d)
    d.front.close(new VrioError('not-connected', `disk ${d.name} was removed`))
    this.log.info('disk detached', { disk: d.name })
    return null
  }

  /** What the metrics endpoint reads of every disk (at scrape time). */
  metrics(): { disk: string; ops: RemoteBlockDevice['ops']; inFlight: number }[] {
    return [...this.disks.values()].map((d) => ({
      disk: d.name,
      ops: d.front.ops,
      inFlight: d.front.outstanding,
    }))
  }

  list(): GuestDiskInfo[] {
    return [...this.disks.values()].map((d) => ({
      name: d.name,
      size: d.front.size,
      readOnly: d.front.readOnly,
      nbd: this.uri(d.name),
      device: d.attached?.device ?? null,
    }))
  }

  async close(): Promise<void> {
    await this.dropStale()
    for (const d of [...this.disks.values()]) {
      await d.attached?.detach()
      d.front.close(new VrioError('not-connected', 'the guest agent is stopping'))
      this.forget(d)
    }
    await this.nbd.close()
  }

  private forget(d: Disk): void {
    this.disks.delete(d.name)
    if (this.byHandle.get(d.handle.low) === d) this.byHandle.delete(d.handle.low)
  }
}

function isHandle(v: unknown): v is { high: number; low: number } {
  const h = v as { high?: unknown; low?: unknown } | null | undefined
  return (
    typeof h === 'object' &&
    h !== null &&
    Number.isInteger(h.high) &&
    Number.isInteger(h.low) &&
    (h.high as number) >= 0 &&
    (h.high as number) <= 0xffff_ffff &&
    (h.low as number) >= 0 &&
    (h.low as number) <= 0xffff_ffff
  )
}

/** A disk's description from the IOhyp, checked field by field (it sizes the NBD export). */
function isDeviceInfo(v: unknown): v is BlockDeviceInfo {
  const i = v as Record<string, unknown> | null | undefined
  if (typeof i !== 'object' || i === null) return false
  const flags = ['readOnly', 'canFlush', 'canFua', 'canTrim', 'canWriteZeroes']
  return (
    Number.isSafeInteger(i.size) &&
    (i.size as number) >= 0 &&
    (i.blockSize === 512 || i.blockSize === 4096) &&
    flags.every((f) => typeof i[f] === 'boolean')
  )
}
