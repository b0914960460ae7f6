/**
 * The guest's disk kind: one RemoteBlockDevice per disk (requests go to the IOhyp over the current
 * session, and are re-sent on the next one if it drops), all served as NBD exports on one unix
 * socket, and optionally attached as real block devices (the agent's own FUSE file + loop, see
 * exposeBlockDevice). The registry (registry.ts) does the rest.
 */
import { join } from 'node:path'
import type { GuestDiskInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import { RemoteBlockDevice } from '../devices/blk/frontend.ts'
import { NbdServer } from '../devices/blk/nbd-server.ts'
import * as z from 'zod'
import { deviceNameSchema, handleSchema } from '../devices/fields.ts'
import {
  type DeviceHandle,
  type GuestDeviceEntry,
  type GuestDeviceKind,
  parseAttach,
} from '../devices/kind.ts'
import { VrioError } from '../errors.ts'
import type { Session } from '../session/session.ts'
import { type MessageHeader, MessageType } from '../wire/message-header.ts'
import {
  type BlockExposure,
  dropStale,
  exposeBlockDevice,
  FuseLoopDevice,
  reclaimStale,
  type StaleAttachment,
} from './block-attach.ts'
import { GuestRegistry } from './registry.ts'
import type { Lender } from '../transport/message-buffers.ts'

/** What the IOhyp sends in `blk.attach`: the disk's description sizes the NBD export. */
const attachDiskSchema = z.object({
  name: deviceNameSchema,
  handle: handleSchema,
  info: z.object({
    size: z.int().min(0),
    blockSize: z.literal([512, 4096]),
    readOnly: z.boolean(),
    canFlush: z.boolean(),
    canFua: z.boolean(),
    canTrim: z.boolean(),
    canWriteZeroes: z.boolean(),
  }),
  /** Most requests the IOhyp takes in one batch message (absent: none; an older IOhyp). */
  maxBatch: z.int().min(0).optional(),
})
export type AttachDiskParams = z.output<typeof attachDiskSchema>

interface Disk {
  name: string
  front: RemoteBlockDevice
  attached: BlockExposure | undefined
}

/**
 * How long block devices a killed agent left wait to be taken over, from this agent's first
 * session on (the IOhyp announces its disks right after connecting); then they are detached.
 */
const ADOPT_GRACE_MS = 20_000

export interface GuestDisksOptions {
  runDir: string
  attach: boolean
  ioTimeoutMs?: number
  /** Raised while each disk call is outstanding (RemoteBlockDeviceOptions.awaiting): the channel's polling gate. */
  awaiting?: Int32Array
  log: Logger
}

class GuestDiskKind
  implements GuestDeviceKind<AttachDiskParams, Disk, GuestDiskInfo, { nbd: string; device: string | null }>
{
  readonly noun = 'disk'
  readonly messageType = MessageType.BlockResponse
  readonly attachCall = 'blk.attach'
  readonly detachCall = 'blk.detach'
  readonly socketPath: string
  /** Block devices a killed agent left, by disk name, until taken over or dropped. */
  readonly stale = new Map<string, StaleAttachment>()
  readonly o: GuestDisksOptions

  constructor(o: GuestDisksOptions) {
    this.o = o
    this.socketPath = join(o.runDir, 'nbd.sock')
  }

  uri(name: string): string {
    return `nbd+unix:///${name}?socket=${this.socketPath}`
  }

  parse(params: unknown): AttachDiskParams {
    return parseAttach(attachDiskSchema, params, 'blk.attach needs name, handle and info')
  }

  async open(p: AttachDiskParams, handle: DeviceHandle): Promise<Disk> {
    return {
      name: p.name,
      front: new RemoteBlockDevice({
        info: p.info,
        handle,
        deadline: this.o.ioTimeoutMs,
        awaiting: this.o.awaiting,
      }),
      attached: undefined,
    }
  }

  async ready(d: Disk, p: AttachDiskParams): Promise<void> {
    d.front.useBatch(p.maxBatch)
    if (this.o.attach) d.attached = await this.expose(p.name, d.front, p.info.readOnly)
  }

  /** The disk's block device: the one a killed agent left, taken over, or a new one. */
  private async expose(name: string, front: RemoteBlockDevice, readOnly: boolean): Promise<BlockExposure> {
    const dir = join(this.o.runDir, 'disks', name)
    const stale = this.stale.get(name)
    if (stale) {
      this.stale.delete(name)
      try {
        const taken = await FuseLoopDevice.adopt({ device: front, dir, readOnly, stale, log: this.o.log })
        this.o.log.info('took over the block device a previous agent left', {
          disk: name,
          device: taken.device,
          resent: taken.stats().resendErrno === 0,
          io: taken.io(),
        })
        return taken
      } catch (error) {
        this.o.log.warn('could not take over the block device a previous agent left', {
          disk: name,
          device: stale.record.device,
          error: (error as Error).message,
        })
        await dropStale(stale)
      }
    }
    return exposeBlockDevice({ device: front, dir, readOnly, log: this.o.log })
  }

  rebind(d: Disk, session: Session | undefined, handle: DeviceHandle, p: AttachDiskParams): void {
    if (!session) return
    d.front.attach(session, handle)
    d.front.useBatch(p.maxBatch)
  }

  bind(d: Disk, session: Session | undefined): void {
    if (session) d.front.attach(session)
    else d.front.detach()
  }

  answer(e: GuestDeviceEntry<Disk>) {
    return { nbd: this.uri(e.name), device: e.device.attached?.device ?? null }
  }

  /** 'detach': the block device goes, NBD clients get errors, the export disappears. */
  async close(d: Disk, why: 'detach' | 'failed' | 'stop'): Promise<void> {
    await d.attached?.detach()
    if (why === 'failed') d.front.close()
    else
      d.front.close(
        new VrioError(
          'not-connected',
          why === 'stop' ? 'the guest agent is stopping' : `disk ${d.name} was removed`,
        ),
      )
  }

  receive(d: Disk, h: MessageHeader, message: Uint8Array, lender: Lender | undefined): void {
    d.front.receive(h, message, lender)
  }

  writable(d: Disk): void {
    d.front.writable()
  }

  info(e: GuestDeviceEntry<Disk>): GuestDiskInfo {
    const { front, attached } = e.device
    return {
      name: e.name,
      size: front.size,
      readOnly: front.readOnly,
      nbd: this.uri(e.name),
      device: attached?.device ?? null,
    }
  }

  describe(e: GuestDeviceEntry<Disk>) {
    const a = e.device.attached
    return { size: e.device.front.size, device: a?.device ?? null, ...(a && { io: a.io() }) }
  }
}

/**
 * The guest's remote disks (a registry of the disk kind), with the NBD server that serves them and
 * the block devices a killed agent left.
 */
export class GuestDisks extends GuestRegistry<
  AttachDiskParams,
  Disk,
  GuestDiskInfo,
  { nbd: string; device: string | null }
> {
  private readonly disks: GuestDiskKind
  private readonly nbd: NbdServer
  private staleTimer: ReturnType<typeof setTimeout> | undefined

  constructor(o: GuestDisksOptions) {
    const kind = new GuestDiskKind(o)
    super(kind, o.log)
    this.disks = kind
    this.nbd = new NbdServer({
      path: kind.socketPath,
      lookup: (name) => this.find(name)?.device.front,
      list: () => [...this.entries()].map((e) => e.name),
    })
  }

  /** Attached block devices: `/dev/loopN: how requests reach the agent`, by disk name. */
  blockDevices(): Record<string, string> {
    const out: Record<string, string> = {}
    for (const e of this.entries()) {
      const a = e.device.attached
      if (a) out[e.name] = `${a.device}: ${a.io()}`
    }
    return out
  }

  async start(): Promise<void> {
    // Listening first: it refuses while another live agent serves this run dir, whose block
    // devices must not be taken for a dead agent's leftovers.
    await this.nbd.listen()
    const { adoptable, detached } = await reclaimStale(join(this.disks.o.runDir, 'disks'))
    if (detached.length > 0)
      this.disks.o.log.warn('detached block devices a previous agent left', { devices: detached })
    for (const a of adoptable) this.disks.stale.set(a.name, a)
    if (adoptable.length > 0)
      this.disks.o.log.info('block devices a previous agent left wait to be taken over', {
        devices: adoptable.map((a) => a.record.device),
      })
  }

  /** Detaches what a previous agent left and no disk took over. */
  private async dropStale(): Promise<void> {
    if (this.staleTimer) clearTimeout(this.staleTimer)
    this.staleTimer = undefined
    const left = [...this.disks.stale.values()]
    this.disks.stale.clear()
    for (const a of left) await dropStale(a)
    if (left.length > 0)
      this.disks.o.log.warn('detached block devices a previous agent left (their disks were not announced)', {
        devices: left.map((a) => a.record.device),
      })
  }

  override useSession(session: Session | undefined): void {
    if (session && this.disks.stale.size > 0 && !this.staleTimer) {
      this.staleTimer = setTimeout(() => void this.dropStale(), ADOPT_GRACE_MS)
      this.staleTimer.unref()
    }
    super.useSession(session)
  }

  /** What the metrics endpoint reads of every disk (at scrape time). */
  metrics(): { disk: string; ops: RemoteBlockDevice['ops']; inFlight: number }[] {
    return [...this.entries()].map((e) => ({
      disk: e.name,
      ops: e.device.front.ops,
      inFlight: e.device.front.outstanding,
    }))
  }

  override async close(): Promise<void> {
    await this.dropStale()
    await super.close()
    await this.nbd.close()
  }
}
