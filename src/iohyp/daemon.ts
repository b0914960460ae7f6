import { join } from 'node:path'
import type { GuestBudgets, GuestInfo, StatusInfo } from '../control/api.ts'
import type { ControlServer } from '../control/control-server.ts'
import { parseAddGuestRequest } from '../control/guest-spec.ts'
import type { ExportableState } from '../config/export.ts'
import { DaemonLink, type LinkAccess } from '../daemon/daemon-link.ts'
import type { Logger } from '../daemon/log.ts'
import {
  createIohypMetrics,
  type DaemonMetrics,
  type MetricsListener,
  startWithMetrics,
} from '../daemon/metrics.ts'
import { VRIO_PORT } from '../daemon/runtime.ts'
import { DEFAULT_PENDING_REPLY_BYTES, ReplyBudget } from '../devices/blk/backend.ts'
import type { DiskRequest } from '../devices/blk/spec.ts'
import type { DeviceSpec } from '../devices/kind.ts'
import type { NicRequest } from '../devices/net/spec.ts'
import { VrioError } from '../errors.ts'
import { FASTPATH_ENABLED } from '../io/fast-path.ts'
import type { NetLinks } from '../io/net-links.ts'
import { EveFileSink } from '../services/dpi/index.ts'
import { Session } from '../session/session.ts'
import { channelDescription } from '../transport/aead.ts'
import type { ConnectionOptions } from '../transport/config.ts'
import { formatIPv4, formatMac, parseIPv4, parseMac } from '../wire/address.ts'
import { type DiskFiles, IohypDisks } from './disks.ts'
import { addStats } from '../daemon/channel-totals.ts'
import { GuestRecord, REDIAL_MAX_MS, REDIAL_MIN_MS } from './guest-record.ts'
import { IohypNics } from './nics.ts'
import type { DeviceRegistry } from './registry.ts'
import { iohypRoutes } from './routes.ts'
import { type IohypState, readStateFile, writeStateFile } from './state-file.ts'
import type { DeviceKindName, IohypApi } from './api.ts'

export interface IohypOptions {
  interface: string
  address?: string
  stateDir: string
  control: string
  version: string
  /** The guests' listen port. */
  port?: number
  transport?: Partial<ConnectionOptions>
  /**
   * Protocol version 1: channel segments neither encrypted nor authenticated (logged loudly, shown
   * in status). Guests must run with it too.
   */
  insecurePlaintext?: boolean
  /**
   * Guests declared in a config file: enrolled at start, after the state file is restored; for a
   * MAC the state file holds too, the config's key and address win (see applyDeclared).
   */
  guests?: readonly { mac: string; address: string; key: Buffer; budgets?: Partial<GuestBudgets> }[]
  /** Budgets of every guest that does not set its own (docs/operations.md, "Budgets"). */
  budgets?: Partial<GuestBudgets>
  /** Devices declared in a config file, applied at start over the state file's (same name: config wins). */
  devices?: { disks: readonly DiskDeclaration[]; nics: readonly NicDeclaration[] }
  /** `ADDR:PORT`: also serve the Prometheus metrics there over plain HTTP (always on the control socket). */
  metrics?: string
  /**
   * Polling (`--poll`, `--poll-idle-us`): the thread re-polls its packet socket instead of sleeping
   * until this many µs pass without a frame (DaemonLink / FrameChannel.setPoll). Unset: off.
   */
  pollIdleUs?: number
  /** How the daemon reaches its interface, backing files and NIC links (tests pass in-memory ones). */
  access?: { link?: LinkAccess; files?: DiskFiles; links?: NetLinks }
  /**
   * Runs as iocore `index` of `count` (iohyp/iocores.ts): no control socket, kernel guard or state
   * file of its own (the main thread keeps them); it starts from `state` (its guests and their
   * devices), its packet socket takes only its guests' segments, and device slots are numbered
   * index, index + count, ... so a guest moving between iocores keeps its handles.
   */
  iocore?: { index: number; count: number; state: IohypState }
}

/** A disk or NIC the config declares (its spec, parsed, the guest by MAC). */
type DiskDeclaration = DiskRequest & { name: string }
type NicDeclaration = NicRequest & { name: string }

/** Per attempt: a guest that is not up yet is retried quickly, so it connects soon after it starts. */
const DIAL_OPTIONS: Partial<ConnectionOptions> = { connectTimeout: 1000 }

/** The I/O hypervisor daemon: keeps an authenticated channel open to every enrolled guest. */
export class IohypDaemon implements IohypApi {
  private readonly o: IohypOptions
  private readonly log: Logger
  private readonly records = new Map<number, GuestRecord>()
  /** Per MAC, so a guest re-declared over its restored record keeps the budget its disks use. */
  private readonly replyBudgets = new Map<number, ReplyBudget>()
  private link!: DaemonLink
  readonly disks: IohypDisks
  readonly nics: IohypNics
  /** Every device kind's registry, by the data message type its guests send it. */
  private readonly byType: Map<number, DeviceRegistry<DeviceSpec, unknown, unknown>>
  /** Where DPI alerts go, one EVE JSON record per line (as Suricata's eve.json); opened at the first alert. */
  private eve: EveFileSink | undefined
  readonly metrics: DaemonMetrics
  private metricsListener: MetricsListener | undefined

  private constructor(o: IohypOptions, log: Logger) {
    this.o = o
    this.log = log
    this.metrics = createIohypMetrics({
      version: o.version,
      guests: () => this.guests(),
      disks: () => this.disks.metrics(),
      nics: () => this.nics.list(),
      socket: () => this.link?.socketMetrics() ?? { interface: o.interface, kernelDrops: 0 },
    })
    this.disks = new IohypDisks(
      log,
      {
        replyBudget: (mac) => this.replyBudget(mac),
        overloaded: (mac) => this.overloaded(mac),
        maxMessageSize: () => this.link.driver.endpoint.options.maxMessageSize,
      },
      o.access?.files,
    )
    this.nics = new IohypNics(log, (record) => this.alert(record), o.access?.links)
    const registries = [this.disks, this.nics] as DeviceRegistry<DeviceSpec, unknown, unknown>[]
    this.byType = new Map(registries.map((r) => [r.kind.messageType, r]))
    if (o.iocore) for (const r of registries) r.partition(o.iocore.index, o.iocore.count)
  }

  static async start(o: IohypOptions, log: Logger): Promise<IohypDaemon> {
    const d = new IohypDaemon(o, log)
    d.metricsListener = await startWithMetrics(o.metrics, d.metrics, () => d.openLink())
    return d
  }

  private get port(): number {
    return this.o.port ?? VRIO_PORT
  }

  private async openLink(): Promise<void> {
    this.link = await DaemonLink.open(
      {
        role: 'iohyp',
        interface: this.o.interface,
        address: this.o.address,
        control: this.o.control,
        version: this.o.version,
        log: this.log,
        remotePort: this.port,
        transport: {
          ...DIAL_OPTIONS,
          ...this.o.transport,
          ...(this.o.insecurePlaintext && { insecurePlaintext: true }),
        },
        access: this.o.access?.link,
        pollIdleUs: this.o.pollIdleUs,
        ...(this.o.iocore && { control: undefined, peers: [] }),
      },
      (control: ControlServer) => iohypRoutes(control, this),
    )
    // The native fast path (on unless VRIO_FASTPATH=0): guests' block reads and writes of plain-file disks in the addon.
    const driver = this.link.driver
    if (FASTPATH_ENABLED && !driver.endpoint.options.insecurePlaintext) {
      if (driver.enableFastPath((remote) => this.disks.fastDisks(remote.mac)))
        this.disks.beforeClose = () => driver.fastPath?.reclaimAll()
    }
    try {
      await this.restoreState()
    } catch (error) {
      await this.link.close()
      throw error
    }
    this.log.info('iohyp started', { ...this.link.describe(), guests: this.records.size })
  }

  async stop(): Promise<void> {
    for (const g of this.records.values()) {
      g.removed = true
      clearTimeout(g.retry)
    }
    for (const r of this.byType.values()) await r.close()
    this.eve?.close()
    await this.link.close()
    await this.metricsListener?.close()
    this.metrics.close()
  }

  status(): StatusInfo {
    const all = [...this.records.values()]
    return {
      ...this.link.status(),
      guests: { total: all.length, connected: all.filter((g) => g.state === 'connected').length },
      fastPath: this.fastPathStatus(),
    }
  }

  private fastPathStatus(): NonNullable<StatusInfo['fastPath']> {
    const host = this.link.driver.fastPath
    const channels = [...(host?.counters() ?? [])].map(([ip, c]) => ({ guest: formatIPv4(ip), ...c }))
    return { enabled: host !== undefined, channels }
  }

  scrape(): Promise<string> {
    return this.metrics.scrape()
  }

  guests(): GuestInfo[] {
    return [...this.records.values()].sort((a, b) => a.mac - b.mac).map((g) => this.guestInfo(g))
  }

  private alert(record: Record<string, unknown>): void {
    const file = join(this.o.stateDir, 'eve.json')
    try {
      this.eve ??= new EveFileSink(file)
      this.eve.write(record)
    } catch (error) {
      this.log.warn('could not write an alert to the EVE file', { file, error })
    }
  }

  /** The budgets `g` gets: its own, else the daemon's, else the defaults. */
  private budgetsOf(g: { budgets: Partial<GuestBudgets> }): GuestBudgets {
    const o = this.link.driver.endpoint.options
    const d = this.o.budgets ?? {}
    return {
      pendingReplyBytes: g.budgets.pendingReplyBytes ?? d.pendingReplyBytes ?? DEFAULT_PENDING_REPLY_BYTES,
      reassemblyBytes: Math.max(
        g.budgets.reassemblyBytes ?? d.reassemblyBytes ?? o.receiveBuffer + o.maxMessageSize,
        o.maxMessageSize,
      ),
    }
  }

  private replyBudget(mac: number): ReplyBudget {
    let b = this.replyBudgets.get(mac)
    if (!b) {
      b = new ReplyBudget()
      this.replyBudgets.set(mac, b)
    }
    return b
  }

  /** Enrolls a guest (a new record); its reply budget takes the limit it is enrolled with. */
  private enroll(mac: number, ip: number, key: Buffer, budgets: Partial<GuestBudgets> = {}): GuestRecord {
    const g = new GuestRecord(mac, ip, key, budgets, this.replyBudget(mac))
    g.replyBudget.limit =
      budgets.pendingReplyBytes ?? this.o.budgets?.pendingReplyBytes ?? DEFAULT_PENDING_REPLY_BYTES
    this.records.set(mac, g)
    return g
  }

  /**
   * A guest keeps sending requests while its replies pile up unsent beyond what its disks queue:
   * its channel is closed (after the current call returns); what it held is freed and the IOhyp
   * dials it again as after any loss.
   */
  private overloaded(mac: number): void {
    const g = this.records.get(mac)
    const session = g?.session
    if (!g || !session || session.connection.closed) return
    queueMicrotask(() => {
      if (g.session !== session || session.connection.closed) return
      g.overloads++
      this.log.warn('guest over its reply budget: channel closed', { mac: formatMac(g.mac) })
      session.connection.abort('aborted')
    })
  }

  private guestInfo(g: GuestRecord): GuestInfo {
    const info = g.info(this.budgetsOf(g))
    // The frames the addon's fast path took and sent for this guest's channel count as the channel's.
    const fast = this.link?.driver.fastPath?.counters().get(g.ip)
    if (fast) {
      info.framesIn += fast.framesIn
      info.bytesIn += fast.bytesIn
      info.framesOut += fast.framesOut
      info.bytesOut += fast.bytesOut
      info.fastPath = { requests: fast.requests, lends: fast.lends, handbacks: fast.handbacks }
    }
    if (g.overloads > 0) info.drops['over-budget'] = g.overloads
    const unknownTypes = g.unknownMessages + (g.session?.unknownMessages ?? 0)
    if (unknownTypes > 0) info.drops['unknown-message-type'] = unknownTypes
    const unknown = this.nics.unknownDeviceDrops(g.mac)
    if (unknown > 0) info.drops['net-unknown-device'] = unknown
    return info
  }

  findGuest(text: string): GuestRecord {
    const mac = parseMac(text)
    const ip = parseIPv4(text)
    for (const g of this.records.values()) if (g.mac === mac || g.ip === ip) return g
    throw new VrioError('not-found', `no enrolled guest ${text}`, { field: 'guest' })
  }

  guestOf(mac: number): GuestRecord | undefined {
    return this.records.get(mac)
  }

  /** An enrolled guest's MAC, from a device's `guest` field (state file, config). */
  private readonly enrolled = (text: string): number | undefined => {
    const mac = parseMac(text)
    return mac !== undefined && this.records.has(mac) ? mac : undefined
  }

  async addGuest(body: unknown): Promise<GuestInfo> {
    const request = parseAddGuestRequest(body)
    const mac = parseMac(request.mac)!
    const ip = parseIPv4(request.address)!
    if (this.records.has(mac))
      throw new VrioError('conflict', `a guest with MAC ${formatMac(mac)} is already enrolled`)
    for (const g of this.records.values()) {
      if (g.ip === ip)
        throw new VrioError(
          'conflict',
          `address ${formatIPv4(ip)} is already used by guest ${formatMac(g.mac)}`,
        )
    }
    const g = this.enroll(mac, ip, Buffer.from(request.key, 'hex'), request.budgets)
    this.peersChanged()
    await this.saveState()
    this.log.info('guest enrolled', { mac: formatMac(mac), address: formatIPv4(ip) })
    this.dial(g)
    return this.guestInfo(g)
  }

  /** Unenrolls a guest that has no devices left. */
  async removeGuest(text: string): Promise<GuestInfo> {
    const mac = parseMac(text)
    const g = mac === undefined ? undefined : this.records.get(mac)
    if (!g) throw new VrioError('not-found', `no guest with MAC ${text}`)
    const disks = this.disks.forGuest(g.mac)
    const nics = this.nics.forGuest(g.mac)
    if (disks + nics > 0)
      throw new VrioError(
        'conflict',
        `guest ${formatMac(g.mac)} still has ${disks} disk(s) and ${nics} NIC(s); remove them first`,
      )
    const info = this.guestInfo(g)
    g.removed = true
    clearTimeout(g.retry)
    g.session?.close()
    this.records.delete(g.mac)
    this.replyBudgets.delete(g.mac)
    this.peersChanged()
    this.log.info('guest removed', { mac: formatMac(g.mac) })
    await this.saveState()
    return { ...info, state: 'disconnected' }
  }

  /** Every device of the guest follows its session (a new one gets them all announced). */
  private useSession(g: GuestRecord): void {
    for (const r of this.byType.values()) r.useSession(g)
  }

  private dial(g: GuestRecord): void {
    if (g.removed) return
    g.state = 'connecting'
    // Sealed: the guest's key seals this connection from its SYN on.
    const c = this.link.driver.connect({ mac: g.mac, ip: g.ip, port: this.port }, { message() {} }, g.key, {
      maxReassemblyBytes: this.budgetsOf(g).reassemblyBytes,
    })
    const session = new Session(c, 'opener', g.key, {
      authenticated: () => {
        g.rpc.attach(session)
        this.useSession(g)
        g.state = 'connected'
        g.backoff = REDIAL_MIN_MS
        this.log.info('guest connected', { mac: formatMac(g.mac), address: formatIPv4(g.ip) })
      },
      control: (m) => g.rpc.onControl(m),
      data: (h, m, _delivery, lender) => this.byType.get(h.type)?.receive(g, h, m, lender),
      writable: () => {
        for (const r of this.byType.values()) r.writable(g)
      },
      closed: (reason, failure) => {
        addStats(g.totals, c)
        g.unknownMessages += session.unknownMessages
        if (failure) g.sessionFailures[failure] = (g.sessionFailures[failure] ?? 0) + 1
        if (g.session !== session) return
        const was = g.state
        g.session = undefined
        g.rpc.attach(undefined)
        this.useSession(g)
        if (g.removed) return
        g.state = 'disconnected'
        if (was === 'connected' || failure) {
          this.log.warn('guest channel closed', { mac: formatMac(g.mac), reason, failure })
        }
        g.retry = setTimeout(() => this.dial(g), g.backoff)
        g.backoff = Math.min(g.backoff * 2, REDIAL_MAX_MS)
      },
    })
    g.session = session
    g.channel = channelDescription(c.sealCipher === 0, c.sealCipher)
    this.link.driver.flush()
  }

  private statePath(): string {
    return join(this.o.stateDir, 'iohyp-state.json')
  }

  /** What the state file holds of this daemon (an iocore's part of it, on an iocore). */
  state(): IohypState {
    return {
      version: 1,
      guests: [...this.records.values()].map((g) => g.entry()),
      disks: this.disks.state(),
      nics: this.nics.state(),
    }
  }

  async saveState(): Promise<void> {
    // An iocore's main thread gathers every iocore's state and writes the one file.
    if (this.o.iocore) return
    await writeStateFile(this.statePath(), this.state())
  }

  private async restoreState(): Promise<void> {
    // Checked whole before anything is used: a bad file stops the start naming the field.
    const state = this.o.iocore?.state ?? (await readStateFile(this.statePath()))
    for (const g of state.guests)
      this.enroll(parseMac(g.mac)!, parseIPv4(g.address)!, Buffer.from(g.key, 'hex'), g.budgets)
    // Devices before dialing: each guest's devices are announced as soon as its session is up.
    await this.disks.restore(state.disks, this.enrolled)
    await this.nics.restore(state.nics, this.enrolled)
    await this.applyDeclared()
    this.peersChanged()
    for (const g of this.records.values()) this.dial(g)
  }

  /** An iocore's packet socket follows its guests: only their segments reach it. */
  private peersChanged(): void {
    if (!this.o.iocore) return
    this.link.setPeers([...this.records.values()].map((g) => g.ip))
  }

  /**
   * Hands a guest over to another iocore: its channel closes, its devices close as at a stop
   * (requests running finish, backing stores flushed) and are forgotten here; what the state file
   * holds of it comes back, for importGuest on the other iocore.
   */
  async exportGuest(text: string): Promise<IohypState> {
    const g = this.findGuest(text)
    const part: IohypState = {
      version: 1,
      guests: [g.entry()],
      disks: this.disks.state().filter((d) => parseMac(d.guest) === g.mac),
      nics: this.nics.state().filter((n) => parseMac(n.guest) === g.mac),
    }
    g.removed = true
    clearTimeout(g.retry)
    g.session?.connection.abort('aborted')
    for (const r of this.byType.values()) await r.release(g.mac)
    this.records.delete(g.mac)
    this.replyBudgets.delete(g.mac)
    this.peersChanged()
    return part
  }

  /** Takes over guests with their devices (exportGuest's result, or a restarted iocore's share). */
  async importGuests(part: IohypState): Promise<GuestInfo[]> {
    const added: GuestRecord[] = []
    for (const e of part.guests) {
      const mac = parseMac(e.mac)!
      if (this.records.has(mac)) throw new VrioError('conflict', `guest ${e.mac} is here already`)
      added.push(this.enroll(mac, parseIPv4(e.address)!, Buffer.from(e.key, 'hex'), e.budgets))
    }
    await this.disks.restore(part.disks, this.enrolled)
    await this.nics.restore(part.nics, this.enrolled)
    this.peersChanged()
    for (const g of added) this.dial(g)
    return added.map((g) => this.guestInfo(g))
  }

  moveGuest(_mac: string, _body: unknown): Promise<GuestInfo> {
    return Promise.reject(
      new VrioError(
        'invalid-argument',
        'this IOhyp runs one iocore: start it with --iocores N to move guests',
        {
          field: 'iocore',
        },
      ),
    )
  }

  listDevices(kind: DeviceKindName): unknown[] {
    return this.registry(kind).list()
  }

  async createDevice(kind: DeviceKindName, body: unknown): Promise<unknown> {
    const info = await this.registry(kind).create(body, (text) => this.findGuest(text))
    await this.saveState()
    return info
  }

  async removeDevice(kind: DeviceKindName, name: string): Promise<unknown> {
    const info = await this.registry(kind).remove(name, (mac) => this.guestOf(mac))
    await this.saveState()
    return info
  }

  async setNicServices(name: string, body: unknown): Promise<unknown> {
    const nic = await this.nics.setServices(name, body)
    await this.saveState()
    return nic
  }

  nicAlerts(name: string): unknown[] {
    return this.nics.alerts(name)
  }

  private registry(kind: DeviceKindName): DeviceRegistry<DeviceSpec, unknown, unknown> {
    return (kind === 'disks' ? this.disks : this.nics) as DeviceRegistry<DeviceSpec, unknown, unknown>
  }

  /** The live state for `vrio config export` (keys included: they go to key files, never printed). */
  exportable(): ExportableState {
    return {
      interface: this.o.interface,
      ...(this.o.address !== undefined && { address: this.o.address }),
      stateDir: this.o.stateDir,
      ...(this.o.insecurePlaintext && { insecurePlaintext: true }),
      ...(this.o.metrics !== undefined && { metrics: this.o.metrics }),
      ...(this.o.budgets && { budgets: this.o.budgets }),
      guests: [...this.records.values()].sort((a, b) => a.mac - b.mac).map((g) => g.entry()),
      disks: this.disks.state().map(({ handle: _, ...d }) => d),
      nics: this.nics.state().map(({ handle: _, ...n }) => n),
    }
  }

  /**
   * The config file's guests and devices over the restored state: a config guest replaces a state
   * guest with its MAC (key and address), a config device one with its name. Nothing is dialed yet.
   */
  private async applyDeclared(): Promise<void> {
    const declared = this.o.guests ?? []
    const disks = this.o.devices?.disks ?? []
    const nics = this.o.devices?.nics ?? []
    if (declared.length === 0 && disks.length === 0 && nics.length === 0) return
    for (const d of declared) {
      const mac = parseMac(d.mac)!
      const ip = parseIPv4(d.address)!
      for (const g of this.records.values()) {
        if (g.ip === ip && g.mac !== mac && !declared.some((o) => parseMac(o.mac) === g.mac))
          throw new VrioError(
            'conflict',
            `config guest ${d.mac}: address ${d.address} is used by enrolled guest ${formatMac(g.mac)} (state file); remove that guest or change the config`,
          )
      }
      this.enroll(mac, ip, Buffer.from(d.key), d.budgets)
    }
    await this.disks.declare(disks, this.enrolled)
    await this.nics.declare(nics, this.enrolled)
    await this.saveState()
  }
}
