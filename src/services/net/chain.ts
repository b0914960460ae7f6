/**
 * A remote NIC's service chain: the NetFilter the IOhyp's NetPort calls for every frame. The frame
 * is dissected once; then the firewall (if any) and the DPI (if any) see it in that order, and the
 * first that refuses it drops it. With no services the chain passes every frame untouched.
 *
 * A service that cannot drop at the moment (`canDrop: false`: a DPI whose rules only alert, as
 * Suricata in IDS mode) is not on the frame's path: inspect() skips it and the port hands each frame
 * that inspect() passed to observe() once it has forwarded it, so the frame does not wait for it.
 * Such a service sees the same frames, in the same order, as it would inline (it comes last: the
 * firewall can always drop); only its alerts come microseconds after the frame left.
 *
 * Pure: files, logs and clocks are the caller's.
 */
import type { NetFilter } from '../../devices/net/port.ts'
import { dissectPacket, newPacket } from '../../wire/packet.ts'
import type { LoadReport } from './compile.ts'
import type { NetContext, NetDirection, NetService } from './service.ts'

const NO_REPLY = (): void => {}

/** The kinds of NIC service, in chain order. */
export const NET_SERVICE_KINDS = ['firewall', 'dpi'] as const
export type NetServiceKind = (typeof NET_SERVICE_KINDS)[number]

/** A service whose rules can be swapped while it runs, keeping its flow state (load.ts, prepareReplace). */
export type ReplaceableNetService = NetService

export interface NetServiceSlot {
  service: ReplaceableNetService
  /** The rules file it was loaded from. */
  file: string
  /** Rules loaded and skipped (with FILE:LINE and reason) when it was. */
  report?: LoadReport
}

export interface ChainCounters {
  /** Frames dropped because they could not be dissected (only counted while services run). */
  malformed: number
  services: Partial<
    Record<NetServiceKind, { file: string; counters: Record<string, unknown>; report?: LoadReport }>
  >
}

export class NetServiceChain implements NetFilter {
  private readonly slots = new Map<NetServiceKind, NetServiceSlot>()
  private order: ReplaceableNetService[] = []
  private readonly packet = newPacket()
  private readonly ctx: NetContext
  private reply: (frame: Uint8Array) => void = () => {}
  private malformed = 0

  constructor(
    onEvent: (record: Record<string, unknown>) => void,
    clock: () => number = () => performance.now(),
  ) {
    this.ctx = {
      get now() {
        return clock()
      },
      reply: (frame) => this.reply(frame),
      event: onEvent,
    }
  }

  get(kind: NetServiceKind): NetServiceSlot | undefined {
    return this.slots.get(kind)
  }

  /** Puts a service in its place in the chain (undefined removes it). */
  set(kind: NetServiceKind, slot: NetServiceSlot | undefined): void {
    const old = this.slots.get(kind)?.service
    if (slot) this.slots.set(kind, slot)
    else this.slots.delete(kind)
    if (old && old !== slot?.service) old.close?.()
    this.order = NET_SERVICE_KINDS.flatMap((k) => {
      const s = this.slots.get(k)
      return s ? [s.service] : []
    })
  }

  inspect(frame: Uint8Array, direction: NetDirection, reply: (frame: Uint8Array) => void): boolean {
    const order = this.order
    if (order.length === 0) return true
    if (dissectPacket(frame, this.packet) !== undefined) {
      this.malformed++
      return false
    }
    this.reply = reply
    for (let i = 0; i < order.length; i++) {
      const service = order[i]
      if (service.canDrop !== false && !service.inspect(frame, this.packet, direction, this.ctx)) return false
    }
    return true
  }

  /** Whether some service runs after forwarding (see observe()). */
  get observing(): boolean {
    const order = this.order
    for (let i = 0; i < order.length; i++) if (order[i].canDrop === false) return true
    return false
  }

  /**
   * The services that cannot drop, on a frame that inspect() passed and the port has forwarded
   * (still unchanged). Replies are not possible any more: such services send none.
   */
  observe(frame: Uint8Array, direction: NetDirection): void {
    const order = this.order
    if (dissectPacket(frame, this.packet) !== undefined) return
    this.reply = NO_REPLY
    for (let i = 0; i < order.length; i++) {
      const service = order[i]
      if (service.canDrop === false) service.inspect(frame, this.packet, direction, this.ctx)
    }
  }

  /** Resolves once every service has done what it was handed so far (see NetService.settled). */
  async settled(): Promise<void> {
    await Promise.all(this.order.map((s) => s.settled?.()))
  }

  /** Closes every service (the NIC is closing). */
  close(): void {
    for (const kind of NET_SERVICE_KINDS) this.set(kind, undefined)
  }

  counters(): ChainCounters {
    const services: ChainCounters['services'] = {}
    for (const [kind, s] of this.slots)
      services[kind] = { file: s.file, counters: s.service.counters(), ...(s.report && { report: s.report }) }
    return { malformed: this.malformed, services }
  }
}
