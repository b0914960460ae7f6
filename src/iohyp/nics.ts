import type { NicInfo } from '../control/api.ts'
import type { Logger } from '../daemon/log.ts'
import { NetPort } from '../devices/net/port.ts'
import { parseIPv4Prefix } from '../devices/net/source-guard.ts'
import { VrioError } from '../errors.ts'
import { addMacvtap, deleteLink, linkKind, macvtapDevice, setLink } from '../io/ip-link.ts'
import { TapDevice } from '../io/tap.ts'
import type { Rpc } from '../session/rpc.ts'
import type { Session } from '../session/session.ts'
import type { Lender } from '../transport/message-buffers.ts'
import { formatMac, parseMac } from '../wire/address.ts'
import type { MessageHeader } from '../wire/message-header.ts'
import { NET_SERVICE_KINDS, NetServiceChain, type NetServiceKind } from '../services/net/chain.ts'
import type { CompiledRules } from '../services/net/compile.ts'
import { buildNetService, compileInWorker, prepareReplace } from '../services/net/load.ts'
import { type DeviceHandle, newDeviceHandle } from './handles.ts'
import { IFNAME_RE } from '../devices/names.ts'
import { parseNicRequest } from '../devices/net/spec.ts'

/** What the NIC registry needs of an enrolled guest. */
export interface NicGuest {
  mac: number
  session: Session | undefined
  rpc: Rpc
}

/** A NIC as the state file keeps it. */
export interface NicState {
  name: string
  guest: string
  mac: string
  mtu: number
  tap?: string
  bridge?: string
  macvtap?: string
  /** Rules files of the NIC's services. */
  firewall?: string
  dpi?: string
  /** IPv4 sources the guest may use on this NIC (`a.b.c.d[/n]`); unset: not checked. */
  ip?: string
  /** No source enforcement at all (neither MAC nor IP). */
  allowSpoofing?: boolean
  handle: DeviceHandle
}

/** How the IOhyp's side of a NIC reaches the world. */
type Backend =
  | { kind: 'tap'; tap: string; bridge: string | null }
  | { kind: 'macvtap'; uplink: string; device: string }

interface Nic {
  name: string
  guest: number
  mac: string
  mtu: number
  ip: string | undefined
  allowSpoofing: boolean
  backend: Backend
  handle: DeviceHandle
  port: NetPort
  chain: NetServiceChain
  /** The latest alerts (EVE records), oldest first. */
  alerts: Record<string, unknown>[]
  announced: boolean
}

/** Alerts kept per NIC for `vrio nic alerts` (all of them also go to the EVE file). */
const ALERTS_KEPT = 1000

const ATTACH_TIMEOUT_MS = 15_000
/** TAP offloads: the kernels on both sides hand over 64 KiB super-frames with partial checksums. */
const OFFLOADS = { csum: true, tso4: true, tso6: true, ecn: true }

/** Reads and checks a NIC request; throws 'invalid-argument' naming the field (one schema: devices/net/spec.ts). */
export const parseCreateNicRequest = parseNicRequest

/**
 * The IOhyp's remote NICs: per NIC, a TAP (on a bridge) or a macvtap (on an uplink) opened with
 * virtio-net headers and offloads, bound by a NetPort to the guest's current session. A NIC exists
 * for its guest across reconnections (re-announced on each new session). Services (firewall, DPI)
 * sit in the port's filter.
 */
export class IohypNics {
  private readonly nics = new Map<string, Nic>()
  private readonly bySlot = new Map<number, Nic>()
  /** NetFrames naming no NIC of the sending guest, by guest MAC. */
  private readonly unknown = new Map<number, number>()
  private nextSlot = 1
  private readonly log: Logger
  private readonly onAlert: (record: Record<string, unknown>) => void

  /** `onAlert` gets every DPI alert of every NIC (the daemon appends them to its EVE file). */
  constructor(log: Logger, onAlert: (record: Record<string, unknown>) => void = () => {}) {
    this.log = log
    this.onAlert = onAlert
  }

  list(): NicInfo[] {
    return [...this.nics.values()].sort((a, b) => a.name.localeCompare(b.name)).map((n) => this.info(n))
  }

  state(): NicState[] {
    return [...this.nics.values()].map(stateOf)
  }

  forGuest(mac: number): number {
    let n = 0
    for (const nic of this.nics.values()) if (nic.guest === mac) n++
    return n
  }

  /** NetFrames from this guest that named no NIC of its. */
  unknownDeviceDrops(mac: number): number {
    return this.unknown.get(mac) ?? 0
  }

  /** Creates a NIC and waits until the guest's interface exists; fails (undoing everything) otherwise. */
  async create(body: unknown, guest: NicGuest): Promise<NicInfo> {
    const req = parseCreateNicRequest(body)
    const name = req.name ?? this.freeName()
    if (this.nics.has(name))
      throw new VrioError('conflict', `a NIC named ${name} exists already`, { field: 'name' })
    for (const n of this.nics.values()) {
      if (n.mac === req.mac)
        throw new VrioError('conflict', `MAC ${req.mac} is already used by NIC ${n.name}`, { field: 'mac' })
      if (req.tap && n.backend.kind === 'tap' && n.backend.tap === req.tap)
        throw new VrioError('conflict', `TAP ${req.tap} already serves NIC ${n.name}`, { field: 'tap' })
    }
    if (!guest.session?.authenticated) {
      throw new VrioError('not-connected', `guest ${formatMac(guest.mac)} is not connected`)
    }
    const state: NicState = {
      name,
      guest: formatMac(guest.mac),
      mac: req.mac,
      mtu: req.mtu,
      tap: req.tap,
      bridge: req.bridge,
      macvtap: req.macvtap,
      firewall: req.firewall,
      dpi: req.dpi,
      ...(req.ip !== undefined && { ip: req.ip }),
      ...(req.allowSpoofing && { allowSpoofing: true }),
      handle: newDeviceHandle(this.nextSlot++),
    }
    const nic = await this.open(state, guest.mac)
    try {
      nic.port.attach(guest.session)
      await this.announce(nic, guest)
    } catch (error) {
      await this.drop(nic)
      throw error
    }
    this.log.info('nic created', {
      nic: name,
      guest: formatMac(guest.mac),
      mac: req.mac,
      backend: nic.backend,
      source: req.allowSpoofing ? 'not enforced' : { mac: req.mac, ip: req.ip ?? 'any' },
    })
    return this.info(nic)
  }

  async remove(name: string, guest: NicGuest | undefined): Promise<NicInfo> {
    const n = this.nics.get(name)
    if (!n) throw new VrioError('not-found', `no NIC named ${name}`)
    if (guest?.session?.authenticated) {
      await guest.rpc.call('net.detach', { name }, 10_000).catch((error) => {
        this.log.warn('guest did not confirm NIC removal', { nic: name, error })
      })
    }
    const info = this.info(n)
    await this.drop(n)
    this.log.info('nic removed', { nic: name })
    return { ...info, state: 'waiting' }
  }

  /** Recreates NICs from the state file; they are announced when their guests connect. */
  async restore(entries: readonly NicState[], macOf: (text: string) => number | undefined): Promise<void> {
    for (const e of entries) {
      const mac = macOf(e.guest)
      if (mac === undefined || !IFNAME_RE.test(e.name))
        throw new VrioError('invalid-state', `malformed NIC entry ${e.name}`)
      await this.open(e, mac)
      this.nextSlot = Math.max(this.nextSlot, e.handle.low + 1)
    }
  }

  /**
   * NICs declared in a config file, applied at start over those restored from the state file: one
   * with the same name is kept when nothing about it changed, else replaced. They are announced
   * when their guests connect.
   */
  async declare(
    entries: readonly (Omit<NicState, 'handle' | 'mtu'> & { mtu?: number })[],
    macOf: (text: string) => number | undefined,
  ): Promise<void> {
    for (const e of entries) {
      const mac = macOf(e.guest)
      if (mac === undefined)
        throw new VrioError('invalid-argument', `NIC ${e.name}: no enrolled guest ${e.guest}`)
      const req = parseCreateNicRequest(e)
      const want: NicState = {
        name: e.name,
        guest: formatMac(mac),
        mac: req.mac,
        mtu: req.mtu,
        tap: req.tap,
        bridge: req.bridge,
        macvtap: req.macvtap,
        firewall: req.firewall,
        dpi: req.dpi,
        ...(req.ip !== undefined && { ip: req.ip }),
        ...(req.allowSpoofing && { allowSpoofing: true }),
        handle: newDeviceHandle(this.nextSlot),
      }
      const old = this.nics.get(e.name)
      if (old && sameNic(stateOf(old), want)) continue
      if (old) await this.drop(old)
      this.nextSlot++
      await this.open(want, mac)
      this.log.info('nic declared', { nic: e.name, guest: want.guest, mac: want.mac })
    }
  }

  /** A guest's session came (or went): its NICs follow it; a new session gets every NIC announced. */
  useSession(guest: NicGuest): void {
    for (const n of this.nics.values()) {
      if (n.guest !== guest.mac) continue
      n.announced = false
      n.port.attach(guest.session)
      if (!guest.session) continue
      this.announce(n, guest).catch((error) =>
        this.log.warn('could not give a NIC to its guest', { nic: n.name, error }),
      )
    }
  }

  /**
   * Adds, replaces (keeping flow state) or removes a NIC's services at runtime: all of the request
   * applies, or none of it. `strict: true` refuses a DPI rules file with any unusable rule (by
   * default those are skipped and reported, as Suricata does).
   */
  async setServices(name: string, body: unknown): Promise<NicInfo> {
    const n = this.nics.get(name)
    if (!n) throw new VrioError('not-found', `no NIC named ${name}`)
    const req = (body ?? {}) as Record<string, unknown>
    for (const key of Object.keys(req)) {
      if (key === 'strict') {
        if (typeof req.strict !== 'boolean')
          throw new VrioError('invalid-argument', 'strict must be true or false', { field: key })
        continue
      }
      if (!(NET_SERVICE_KINDS as readonly string[]).includes(key))
        throw new VrioError('invalid-argument', `unknown service '${key}'`, { field: key })
      const v = req[key]
      if (v !== null && (typeof v !== 'string' || !v.startsWith('/')))
        throw new VrioError('invalid-argument', `${key} must be the absolute path of a rules file, or null`, {
          field: key,
        })
    }
    // Read, check and compile every file in worker threads (a missing, bad or too large one
    // changes nothing), then build the new services and prepare the swaps in the running ones
    // (off the data path, or a slice at a time), and only then apply everything at once.
    const strict = req.strict === true
    const compiled = new Map<NetServiceKind, { path: string; rules: CompiledRules }>()
    await Promise.all(
      NET_SERVICE_KINDS.map(async (kind) => {
        const path = req[kind]
        if (typeof path !== 'string') return
        compiled.set(kind, { path, rules: await compileInWorker({ kind, files: [path], strict }) })
      }),
    )
    const swaps: (() => void)[] = []
    for (const kind of NET_SERVICE_KINDS) {
      const c = compiled.get(kind)
      if (!c) continue
      const current = n.chain.get(kind)
      const slot = { file: c.path, report: c.rules.report }
      if (current) {
        const swap = await prepareReplace(kind, current.service, c.rules)
        swaps.push(() => {
          swap()
          n.chain.set(kind, { ...slot, service: current.service })
        })
      } else {
        const service = await buildNetService(kind, c.rules, n.name)
        swaps.push(() => n.chain.set(kind, { ...slot, service }))
      }
    }
    for (const kind of NET_SERVICE_KINDS)
      if (req[kind] === null) swaps.push(() => n.chain.set(kind, undefined))
    for (const swap of swaps) swap()
    this.log.info('nic services changed', {
      nic: name,
      services: this.state().find((s) => s.name === name),
      loaded: Object.fromEntries(
        [...compiled].map(([kind, c]) => [
          kind,
          { rules: c.rules.report.loaded, skipped: c.rules.report.skipped.length },
        ]),
      ),
    })
    return this.info(n)
  }

  alerts(name: string): Record<string, unknown>[] {
    const n = this.nics.get(name)
    if (!n) throw new VrioError('not-found', `no NIC named ${name}`)
    return [...n.alerts]
  }

  receive(guest: NicGuest, h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    const n = this.bySlot.get(h.deviceLow)
    if (n && n.guest === guest.mac && n.handle.high === h.deviceHigh) n.port.receive(h, message, lender)
    else this.unknown.set(guest.mac, (this.unknown.get(guest.mac) ?? 0) + 1)
  }

  async close(): Promise<void> {
    for (const n of [...this.nics.values()]) await this.drop(n)
  }

  private async open(s: NicState, guest: number): Promise<Nic> {
    const alerts: Record<string, unknown>[] = []
    const chain = new NetServiceChain((record) => {
      alerts.push(record)
      if (alerts.length > ALERTS_KEPT) alerts.shift()
      this.onAlert(record)
    })
    for (const kind of NET_SERVICE_KINDS) {
      const path = s[kind]
      if (path === undefined) continue
      const rules = await compileInWorker({ kind, files: [path] })
      chain.set(kind, {
        service: await buildNetService(kind, rules, s.name),
        file: path,
        report: rules.report,
      })
    }
    let backend: Backend
    let tap: TapDevice
    if (s.macvtap !== undefined) {
      const device = `vmvt${s.handle.low}`
      if ((await linkKind(s.macvtap)) === undefined)
        throw new VrioError('not-found', `uplink ${s.macvtap} does not exist`, { field: 'macvtap' })
      // A macvtap outlives a killed daemon; its successor replaces it.
      if ((await linkKind(device)) === 'macvtap') await deleteLink(device)
      await addMacvtap(s.macvtap, device, s.mac, s.mtu)
      try {
        tap = TapDevice.open({
          name: device,
          path: await macvtapDevice(device),
          vnetHdr: true,
          offloads: OFFLOADS,
        })
      } catch (error) {
        await deleteLink(device).catch(() => {})
        throw error
      }
      backend = { kind: 'macvtap', uplink: s.macvtap, device }
    } else {
      const tapName = s.tap as string
      if (s.bridge !== undefined && (await linkKind(s.bridge)) !== 'bridge')
        throw new VrioError('not-found', `bridge ${s.bridge} does not exist`, { field: 'bridge' })
      const kind = await linkKind(tapName)
      if (kind !== undefined && kind !== 'tun')
        throw new VrioError('conflict', `${tapName} exists and is not a TAP device`, { field: 'tap' })
      tap = TapDevice.open({ name: tapName, vnetHdr: true, offloads: OFFLOADS })
      try {
        await setLink(tap.name, { mtu: s.mtu, master: s.bridge, up: true })
      } catch (error) {
        tap.close()
        throw error
      }
      backend = { kind: 'tap', tap: tap.name, bridge: s.bridge ?? null }
    }
    const port = new NetPort({
      channel: tap,
      handle: s.handle,
      mtu: s.mtu,
      side: 'iohyp',
      filter: chain,
      source: s.allowSpoofing
        ? undefined
        : { mac: parseMac(s.mac)!, ip: s.ip === undefined ? undefined : parseIPv4Prefix(s.ip) },
      onKernelError: (error) => this.log.warn('nic back-end refused a frame', { nic: s.name, error }),
    })
    const nic: Nic = {
      name: s.name,
      guest,
      mac: s.mac,
      mtu: s.mtu,
      ip: s.ip,
      allowSpoofing: s.allowSpoofing === true,
      backend,
      handle: s.handle,
      port,
      chain,
      alerts,
      announced: false,
    }
    this.nics.set(s.name, nic)
    this.bySlot.set(s.handle.low, nic)
    return nic
  }

  private async announce(n: Nic, guest: NicGuest): Promise<void> {
    await guest.rpc.call(
      'net.attach',
      { name: n.name, mac: n.mac, mtu: n.mtu, handle: n.handle },
      ATTACH_TIMEOUT_MS,
    )
    n.announced = true
  }

  private async drop(n: Nic): Promise<void> {
    this.nics.delete(n.name)
    this.bySlot.delete(n.handle.low)
    // A TAP this daemon created disappears with its last fd; a macvtap must be deleted.
    n.port.close()
    if (n.backend.kind === 'macvtap') {
      await deleteLink(n.backend.device).catch((error) =>
        this.log.warn('could not delete a macvtap', {
          device: (n.backend as { device: string }).device,
          error,
        }),
      )
    }
  }

  private freeName(): string {
    for (let i = 0; ; i++) if (!this.nics.has(`vnic${i}`)) return `vnic${i}`
  }

  private info(n: Nic): NicInfo {
    const c = n.port.counters()
    return {
      name: n.name,
      guest: formatMac(n.guest),
      mac: n.mac,
      mtu: n.mtu,
      ip: n.ip ?? null,
      allowSpoofing: n.allowSpoofing,
      backend: n.backend,
      state: n.announced ? 'attached' : 'waiting',
      fromGuest: c.fromGuest,
      toGuest: c.toGuest,
      drops: c.drops as Record<string, number>,
      services: n.chain.counters(),
    }
  }
}

function stateOf(n: Nic): NicState {
  return {
    name: n.name,
    guest: formatMac(n.guest),
    mac: n.mac,
    mtu: n.mtu,
    ...(n.backend.kind === 'tap'
      ? { tap: n.backend.tap, ...(n.backend.bridge ? { bridge: n.backend.bridge } : {}) }
      : { macvtap: n.backend.uplink }),
    ...(n.chain.get('firewall') ? { firewall: n.chain.get('firewall')!.file } : {}),
    ...(n.chain.get('dpi') ? { dpi: n.chain.get('dpi')!.file } : {}),
    ...(n.ip !== undefined ? { ip: n.ip } : {}),
    ...(n.allowSpoofing ? { allowSpoofing: true } : {}),
    handle: n.handle,
  }
}

const NIC_FIELDS = [
  'name',
  'guest',
  'mac',
  'mtu',
  'tap',
  'bridge',
  'macvtap',
  'firewall',
  'dpi',
  'ip',
  'allowSpoofing',
] as const

/** Same NIC apart from its handle. */
function sameNic(a: NicState, b: NicState): boolean {
  return NIC_FIELDS.every((k) => a[k] === b[k])
}
