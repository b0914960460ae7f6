import type { GuestNicInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import { NetPort } from '../devices/net/port.ts'
import { NET_GSO_MAX_SIZE } from '../devices/net/protocol.ts'
import { VrioError } from '../errors.ts'
import { deleteLink, linkKind, setLink } from '../io/ip-link.ts'
import { TapDevice } from '../io/tap.ts'
import type { Session } from '../session/session.ts'
import type { Lender } from '../transport/message-buffers.ts'
import { parseMac } from '../wire/address.ts'
import type { MessageHeader } from '../wire/message-header.ts'
import { IFNAME_RE } from '../devices/names.ts'

/** What the IOhyp sends in `net.attach`. */
export interface AttachNicParams {
  name: string
  mac: string
  mtu: number
  handle: { high: number; low: number }
}

interface Nic {
  name: string
  mac: string
  mtu: number
  tap: TapDevice
  port: NetPort
}

/**
 * The guest's remote NICs: one TAP interface per NIC, with virtio-net headers and checksum and
 * segmentation offloads (the guest kernel hands over 64 KiB super-frames), bound by a NetPort to
 * the current session with the IOhyp. Addressing it is the guest's business, so the interface is
 * persistent: it outlives a restart of the agent (which re-opens it when the IOhyp announces the
 * NIC again), keeping its addresses and routes, and goes only when the NIC is removed. Frames sent
 * while the IOhyp is away are dropped (counted), as on a cable that is unplugged.
 */
export class GuestNics {
  private readonly nics = new Map<string, Nic>()
  private readonly byHandle = new Map<number, Nic>()
  private readonly log: Logger
  private session: Session | undefined

  constructor(log: Logger) {
    this.log = log
  }

  useSession(session: Session | undefined): void {
    this.session = session
    for (const n of this.nics.values()) n.port.attach(session)
  }

  receive(h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    const n = this.byHandle.get(h.deviceLow)
    if (n && n.port.handle.high === h.deviceHigh) n.port.receive(h, message, lender)
  }

  /** `net.attach` from the IOhyp: create the interface (or, after a reconnect, re-bind it). */
  async attachNic(params: unknown): Promise<{ ifname: string }> {
    const p = params as Partial<AttachNicParams>
    const mac = typeof p?.mac === 'string' ? parseMac(p.mac) : undefined
    if (
      !p ||
      typeof p.name !== 'string' ||
      !IFNAME_RE.test(p.name) ||
      mac === undefined ||
      typeof p.mtu !== 'number' ||
      !p.handle
    ) {
      throw new VrioError('invalid-argument', 'net.attach needs name, mac, mtu and handle')
    }
    const handle = { high: p.handle.high >>> 0, low: p.handle.low >>> 0 }
    const known = this.nics.get(p.name)
    if (known) {
      this.byHandle.delete(known.port.handle.low)
      known.port.attach(this.session, handle)
      this.byHandle.set(handle.low, known)
      return { ifname: known.tap.name }
    }
    // A TAP of that name is this NIC's interface, left by a previous run of the agent.
    const kind = await linkKind(p.name)
    if (kind !== undefined && kind !== 'tun')
      throw new VrioError('conflict', `the guest already has an interface named ${p.name}`)
    const tap = TapDevice.open({
      name: p.name,
      vnetHdr: true,
      offloads: { csum: true, tso4: true, tso6: true, ecn: true },
      persist: true,
    })
    try {
      await setLink(tap.name, { address: p.mac, mtu: p.mtu, gsoMaxSize: NET_GSO_MAX_SIZE, up: true })
    } catch (error) {
      tap.close()
      if (tap.created) await deleteLink(tap.name).catch(() => {})
      throw error
    }
    const port = new NetPort({
      channel: tap,
      handle,
      mtu: p.mtu,
      side: 'guest',
      onKernelError: (error) => this.log.warn('nic interface refused a frame', { nic: p.name, error }),
    })
    port.attach(this.session)
    const nic: Nic = { name: p.name, mac: p.mac as string, mtu: p.mtu, tap, port }
    this.nics.set(p.name, nic)
    this.byHandle.set(handle.low, nic)
    this.log.info('nic attached', { nic: p.name, mac: p.mac, mtu: p.mtu })
    return { ifname: tap.name }
  }

  /** `net.detach` from the IOhyp: the interface disappears. */
  async detachNic(params: unknown): Promise<null> {
    const name = (params as { name?: unknown })?.name
    const n = typeof name === 'string' ? this.nics.get(name) : undefined
    if (!n) throw new VrioError('not-found', `no NIC named ${String(name)}`)
    this.forget(n)
    await deleteLink(n.name)
    this.log.info('nic detached', { nic: n.name })
    return null
  }

  list(): GuestNicInfo[] {
    return [...this.nics.values()].map((n) => {
      const c = n.port.counters()
      return {
        name: n.name,
        mac: n.mac,
        mtu: n.mtu,
        fromGuest: c.fromGuest,
        toGuest: c.toGuest,
        drops: c.drops as Record<string, number>,
      }
    })
  }

  /** The agent stops: the interfaces stay (see above); their queues close. */
  close(): void {
    for (const n of [...this.nics.values()]) this.forget(n)
  }

  private forget(n: Nic): void {
    n.port.close()
    this.nics.delete(n.name)
    if (this.byHandle.get(n.port.handle.low) === n) this.byHandle.delete(n.port.handle.low)
  }
}
