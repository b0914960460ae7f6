/**
 * The guest's NIC kind: one TAP interface per NIC, with virtio-net headers and checksum and
 * segmentation offloads (the guest kernel hands over 64 KiB super-frames), bound by a NetPort to
 * the current session with the IOhyp. Addressing it is the guest's business, so the interface is
 * persistent: it outlives a restart of the agent (which re-opens it when the IOhyp announces the
 * NIC again), keeping its addresses and routes, and goes only when the NIC is removed. Frames sent
 * while the IOhyp is away are dropped (counted), as on a cable that is unplugged.
 */
import type { GuestNicInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import * as z from 'zod'
import { handleSchema, ifnameSchema, macSchema } from '../devices/fields.ts'
import {
  type DeviceHandle,
  type GuestDeviceEntry,
  type GuestDeviceKind,
  parseAttach,
} from '../devices/kind.ts'
import { NetPort } from '../devices/net/port.ts'
import { NET_GSO_MAX_SIZE } from '../devices/net/protocol.ts'
import { VrioError } from '../errors.ts'
import { KERNEL_LINKS, type NetLinks, type TapQueue } from '../io/net-links.ts'
import type { Session } from '../session/session.ts'
import { type MessageHeader, MessageType } from '../wire/message-header.ts'
import { GuestRegistry } from './registry.ts'
import type { Lender } from '../transport/message-buffers.ts'

/** What the IOhyp sends in `net.attach`. */
const attachNicSchema = z.object({ name: ifnameSchema, mac: macSchema, mtu: z.int(), handle: handleSchema })
export type AttachNicParams = z.output<typeof attachNicSchema>

interface Nic {
  name: string
  mac: string
  mtu: number
  tap: TapQueue
  port: NetPort
}

class GuestNicKind implements GuestDeviceKind<AttachNicParams, Nic, GuestNicInfo, { ifname: string }> {
  readonly noun = 'NIC'
  readonly messageType = MessageType.NetFrame
  readonly attachCall = 'net.attach'
  readonly detachCall = 'net.detach'
  private readonly log: Logger
  private readonly links: NetLinks

  constructor(log: Logger, links: NetLinks) {
    this.log = log
    this.links = links
  }

  parse(params: unknown): AttachNicParams {
    return parseAttach(attachNicSchema, params, 'net.attach needs name, mac, mtu and handle')
  }

  async open(p: AttachNicParams, handle: DeviceHandle): Promise<Nic> {
    // A TAP of that name is this NIC's interface, left by a previous run of the agent.
    const kind = await this.links.linkKind(p.name)
    if (kind !== undefined && kind !== 'tun')
      throw new VrioError('conflict', `the guest already has an interface named ${p.name}`)
    const tap = this.links.openTap({
      name: p.name,
      vnetHdr: true,
      offloads: { csum: true, tso4: true, tso6: true, ecn: true },
      persist: true,
    })
    try {
      await this.links.setLink(tap.name, {
        address: p.mac,
        mtu: p.mtu,
        gsoMaxSize: NET_GSO_MAX_SIZE,
        up: true,
      })
    } catch (error) {
      tap.close()
      if (tap.created) await this.links.deleteLink(tap.name).catch(() => {})
      throw error
    }
    const port = new NetPort({
      channel: tap,
      handle,
      mtu: p.mtu,
      side: 'guest',
      onKernelError: (error) => this.log.warn('nic interface refused a frame', { nic: p.name, error }),
    })
    return { name: p.name, mac: p.mac, mtu: p.mtu, tap, port }
  }

  rebind(n: Nic, session: Session | undefined, handle: DeviceHandle): void {
    n.port.attach(session, handle)
  }

  bind(n: Nic, session: Session | undefined): void {
    n.port.attach(session)
  }

  answer(e: GuestDeviceEntry<Nic>) {
    return { ifname: e.device.tap.name }
  }

  /** 'detach': the interface disappears; at a stop it stays (see above), its queue closes. */
  async close(n: Nic, why: 'detach' | 'failed' | 'stop'): Promise<void> {
    n.port.close()
    if (why !== 'stop') await this.links.deleteLink(n.name)
  }

  receive(n: Nic, h: MessageHeader, message: Uint8Array, lender: Lender | undefined): void {
    n.port.receive(h, message, lender)
  }

  info(e: GuestDeviceEntry<Nic>): GuestNicInfo {
    const n = e.device
    const c = n.port.counters()
    return {
      name: n.name,
      mac: n.mac,
      mtu: n.mtu,
      fromGuest: c.fromGuest,
      toGuest: c.toGuest,
      drops: c.drops as Record<string, number>,
    }
  }

  describe(e: GuestDeviceEntry<Nic>) {
    return { mac: e.device.mac, mtu: e.device.mtu }
  }
}

/** The guest's remote NICs (a registry of the NIC kind). */
export class GuestNics extends GuestRegistry<AttachNicParams, Nic, GuestNicInfo, { ifname: string }> {
  constructor(log: Logger, links: NetLinks = KERNEL_LINKS) {
    super(new GuestNicKind(log, links), log)
  }
}
