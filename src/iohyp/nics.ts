/**
 * The IOhyp's NIC kind: per NIC a TAP (on a bridge) or a macvtap (on an uplink), see
 * nic-backend.ts, bound by a NetPort to the guest's current session; its services (firewall,
 * DPI, see nic-services.ts) sit in the port's filter. The registry (registry.ts) does the rest.
 */
import type { NicInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import type { DeviceEntry, DeviceHandle, DeviceKind } from '../devices/kind.ts'
import { NetPort } from '../devices/net/port.ts'
import { parseIPv4Prefix } from '../devices/net/source-guard.ts'
import { type NicRequest, parseNicRequest } from '../devices/net/spec.ts'
import { VrioError } from '../errors.ts'
import { KERNEL_LINKS, type NetLinks } from '../io/net-links.ts'
import type { NetServiceChain } from '../services/net/chain.ts'
import type { Session } from '../session/session.ts'
import { formatMac, parseMac } from '../wire/address.ts'
import { type MessageHeader, MessageType } from '../wire/message-header.ts'
import { type NicBackend, openNicBackend } from './nic-backend.ts'
import { changeNicServices, loadNicServices } from './nic-services.ts'
import { DeviceRegistry } from './registry.ts'
import type { Lender } from '../transport/message-buffers.ts'

/** A NIC as the IOhyp serves it: the request completed (mtu set; allowSpoofing only when true). */
export type NicSpec = Omit<NicRequest, 'mtu' | 'allowSpoofing'> & {
  name: string
  mtu: number
  allowSpoofing?: boolean
}

interface Nic {
  backend: NicBackend
  port: NetPort
  chain: NetServiceChain
  alerts: Record<string, unknown>[]
}

class NicKind implements DeviceKind<NicSpec, Nic, NicInfo> {
  readonly noun = 'NIC'
  readonly namePrefix = 'vnic'
  readonly messageType = MessageType.NetFrame
  readonly attachCall = 'net.attach'
  readonly detachCall = 'net.detach'
  readonly attachTimeoutMs = 15_000
  private readonly log: Logger
  private readonly links: NetLinks
  private readonly onAlert: (record: Record<string, unknown>) => void

  constructor(log: Logger, links: NetLinks, onAlert: (record: Record<string, unknown>) => void) {
    this.log = log
    this.links = links
    this.onAlert = onAlert
  }

  parse(body: unknown) {
    const { allowSpoofing, ...req } = parseNicRequest(body)
    return { ...req, ...(allowSpoofing && { allowSpoofing: true }) }
  }

  check(spec: NicSpec, nics: Iterable<DeviceEntry<NicSpec, Nic>>): void {
    for (const { spec: n } of nics) {
      if (n.mac === spec.mac)
        throw new VrioError('conflict', `MAC ${spec.mac} is already used by NIC ${n.name}`, { field: 'mac' })
      if (spec.tap && n.tap === spec.tap)
        throw new VrioError('conflict', `TAP ${spec.tap} already serves NIC ${n.name}`, { field: 'tap' })
    }
  }

  async open(s: NicSpec, handle: DeviceHandle): Promise<Nic> {
    const { chain, alerts } = await loadNicServices(
      s.name,
      { firewall: s.firewall, dpi: s.dpi },
      this.onAlert,
    )
    let opened: Awaited<ReturnType<typeof openNicBackend>>
    try {
      opened = await openNicBackend(s, handle.low, this.links)
    } catch (error) {
      chain.close()
      throw error
    }
    const { backend, tap } = opened
    const port = new NetPort({
      channel: tap,
      handle,
      mtu: s.mtu,
      side: 'iohyp',
      filter: chain,
      source: s.allowSpoofing
        ? undefined
        : { mac: parseMac(s.mac)!, ip: s.ip === undefined ? undefined : parseIPv4Prefix(s.ip) },
      onKernelError: (error) => this.log.warn('nic back-end refused a frame', { nic: s.name, error }),
    })
    return { backend, port, chain, alerts }
  }

  /** A TAP this daemon created disappears with its last fd; a macvtap must be deleted. */
  async close(n: Nic): Promise<void> {
    n.port.close()
    n.chain.close()
    if (n.backend.kind !== 'macvtap') return
    await this.links
      .deleteLink(n.backend.device)
      .catch((error) => this.log.warn('could not delete a macvtap', { backend: n.backend, error }))
  }

  bind(n: Nic, session: Session | undefined): void {
    n.port.attach(session)
  }

  announcement(e: DeviceEntry<NicSpec, Nic>) {
    return { name: e.spec.name, mac: e.spec.mac, mtu: e.spec.mtu, handle: e.handle }
  }

  receive(n: Nic, h: MessageHeader, message: Uint8Array, lender: Lender | undefined): void {
    n.port.receive(h, message, lender)
  }

  info(e: DeviceEntry<NicSpec, Nic>): NicInfo {
    const n = e.device
    const c = n.port.counters()
    return {
      name: e.spec.name,
      guest: formatMac(e.guest),
      mac: e.spec.mac,
      mtu: e.spec.mtu,
      ip: e.spec.ip ?? null,
      allowSpoofing: e.spec.allowSpoofing === true,
      backend: n.backend,
      state: e.announced ? 'attached' : 'waiting',
      fromGuest: c.fromGuest,
      toGuest: c.toGuest,
      drops: c.drops as Record<string, number>,
      services: n.chain.counters(),
    }
  }

  describe(e: DeviceEntry<NicSpec, Nic>) {
    const s = e.spec
    return {
      guest: formatMac(e.guest),
      mac: s.mac,
      backend: e.device.backend,
      source: s.allowSpoofing ? 'not enforced' : { mac: s.mac, ip: s.ip ?? 'any' },
    }
  }
}

/** The IOhyp's remote NICs (a registry of the NIC kind), with their run-time services. */
export class IohypNics extends DeviceRegistry<NicSpec, Nic, NicInfo> {
  private readonly logger: Logger

  /** `onAlert` gets every DPI alert of every NIC (the daemon appends them to its EVE file). */
  constructor(
    log: Logger,
    onAlert: (record: Record<string, unknown>) => void = () => {},
    links: NetLinks = KERNEL_LINKS,
  ) {
    super(new NicKind(log, links, onAlert), log)
    this.logger = log
  }

  /** Adds, replaces (keeping flow state) or removes a NIC's services at run time (see nic-services.ts). */
  async setServices(name: string, body: unknown): Promise<NicInfo> {
    const e = this.get(name)
    const loaded = await changeNicServices(name, e.device.chain, body)
    const { firewall: _, dpi: __, ...rest } = e.spec
    const files = { firewall: e.device.chain.get('firewall')?.file, dpi: e.device.chain.get('dpi')?.file }
    e.spec = {
      ...rest,
      ...(files.firewall && { firewall: files.firewall }),
      ...(files.dpi && { dpi: files.dpi }),
    }
    this.logger.info('nic services changed', { nic: name, services: e.spec, loaded })
    return this.kind.info(e)
  }

  alerts(name: string): Record<string, unknown>[] {
    return [...this.get(name).device.alerts]
  }
}
