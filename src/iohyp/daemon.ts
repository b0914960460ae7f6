import { isAbsolute, join } from 'node:path'
import type { CreateDiskRequest, GuestBudgets, GuestInfo, GuestState, StatusInfo } from '../control/api.ts'
import { DEFAULT_PENDING_REPLY_BYTES, ReplyBudget } from '../devices/blk/backend.ts'
import { ROUTES } from '../control/api.ts'
import { type ControlServer, RawBody } from '../control/control-server.ts'
import { parseAddGuestRequest } from '../control/validate.ts'
import { DaemonLink } from '../daemon/daemon-link.ts'
import { VRIO_PORT } from '../daemon/runtime.ts'
import type { Logger } from '../daemon/log.ts'
import {
  createIohypMetrics,
  type DaemonMetrics,
  METRICS_CONTENT_TYPE,
  type MetricsListener,
  startWithMetrics,
} from '../daemon/metrics.ts'
import { VrioError } from '../errors.ts'
import { Rpc } from '../session/rpc.ts'
import { EveFileSink } from '../services/dpi/index.ts'
import { encryptSchema } from '../config/schema.ts'
import type { EncryptionSpec } from '../services/crypt/open.ts'
import type { ExportableState } from '../config/export.ts'
import type { DiskEntry, NicEntry } from '../config/load.ts'
import { IohypDisks } from './disks.ts'
import { IohypNics } from './nics.ts'
import { type IohypState, readStateFile, writeStateFile } from './state-file.ts'
import { Session } from '../session/session.ts'
import type { ConnectionOptions } from '../transport/config.ts'
import type { Connection } from '../transport/connection.ts'
import { channelDescription } from '../transport/aead.ts'
import { addSealDrops } from '../transport/seal.ts'
import { formatIPv4, formatMac, parseIPv4, parseMac } from '../wire/address.ts'
import { MessageType } from '../wire/message-header.ts'

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
  devices?: { disks: readonly DiskEntry[]; nics: readonly NicEntry[] }
  /** `ADDR:PORT`: also serve the Prometheus metrics there over plain HTTP (always on the control socket). */
  metrics?: string
}

const REDIAL_MIN_MS = 100
const REDIAL_MAX_MS = 300
/** Per attempt: a guest that is not up yet is retried quickly, so it connects soon after it starts. */
const DIAL_OPTIONS: Partial<ConnectionOptions> = { connectTimeout: 1000 }

interface Totals {
  framesIn: number
  framesOut: number
  bytesIn: number
  bytesOut: number
  retransmits: number
  rtoFirings: number
  fastRecoveries: number
  windowStalls: number
  drops: Record<string, number>
  rekeys: number
}

/** One enrolled guest and the channel the IOhyp keeps open to it. */
class GuestRecord {
  readonly mac: number
  readonly ip: number
  readonly key: Buffer
  /** Budgets as enrolled (those not given follow the daemon's defaults). */
  readonly budgets: Partial<GuestBudgets>
  /** The read-reply budget its disks' back-ends share (kept per MAC: see IohypDaemon.replyBudget). */
  readonly replyBudget: ReplyBudget
  /** Channels closed because the guest kept sending while over its reply budget. */
  overloads = 0
  /** Data messages of unknown types from closed sessions (the live one's are added when reporting). */
  unknownMessages = 0
  state: GuestState = 'waiting'
  session: Session | undefined
  /** Control calls to this guest over whichever session is current. */
  readonly rpc = new Rpc()
  /** Counters of closed connections; the live one is added when reporting. */
  readonly totals: Totals = {
    framesIn: 0,
    framesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    retransmits: 0,
    rtoFirings: 0,
    fastRecoveries: 0,
    windowStalls: 0,
    drops: {},
    rekeys: 0,
  }
  /** What status shows of the newest channel (cipher or plaintext). */
  channel: string | undefined
  readonly sessionFailures: Record<string, number> = {}
  retry: NodeJS.Timeout | undefined
  backoff = REDIAL_MIN_MS
  removed = false

  constructor(
    mac: number,
    ip: number,
    key: Buffer,
    budgets: Partial<GuestBudgets>,
    replyBudget: ReplyBudget,
  ) {
    this.mac = mac
    this.ip = ip
    this.key = key
    this.budgets = budgets
    this.replyBudget = replyBudget
  }

  info(budgets: GuestBudgets): GuestInfo {
    const t = { ...this.totals, drops: { ...this.totals.drops } }
    const c = this.session?.connection
    if (c && !c.closed) addStats(t, c)
    return {
      mac: formatMac(this.mac),
      address: formatIPv4(this.ip),
      state: this.state,
      rttMs: c && !c.closed && c.srtt >= 0 ? Math.round(c.srtt * 1000) / 1000 : null,
      ...t,
      sessionFailures: { ...this.sessionFailures },
      ...(this.channel !== undefined && { channel: this.channel }),
      budgets,
      held: {
        pendingReplyBytes: this.replyBudget.held,
        reassemblyBytes: c && !c.closed ? c.reassemblyMemory : 0,
      },
    }
  }
}

function addStats(t: Totals, c: Connection): void {
  t.framesIn += c.stats.framesReceived
  t.framesOut += c.stats.framesSent
  t.bytesIn += c.stats.bytesReceived
  t.bytesOut += c.stats.bytesSent
  t.retransmits += c.stats.retransmits
  t.rtoFirings += c.stats.rtoFirings
  t.fastRecoveries += c.stats.fastRecoveries
  t.windowStalls += c.stats.windowStalls
  for (const [k, v] of Object.entries(c.stats.drops)) t.drops[k] = (t.drops[k] ?? 0) + (v ?? 0)
  if (c.stats.duplicatesDropped > 0) t.drops.duplicate = (t.drops.duplicate ?? 0) + c.stats.duplicatesDropped
  addSealDrops(t.drops, c.stats)
  t.rekeys += c.stats.rekeys
}

/** The I/O hypervisor daemon: keeps an authenticated channel open to every enrolled guest. */
export class IohypDaemon {
  private readonly o: IohypOptions
  private readonly log: Logger
  private readonly guests = new Map<number, GuestRecord>()
  /** Per MAC, so a guest re-declared over its restored record keeps the budget its disks use. */
  private readonly replyBudgets = new Map<number, ReplyBudget>()
  private link!: DaemonLink
  private readonly disks: IohypDisks
  private readonly nics: IohypNics
  /** Where DPI alerts go, one EVE JSON record per line (as Suricata's eve.json); opened at the first alert. */
  private eve: EveFileSink | undefined
  readonly metrics: DaemonMetrics
  private metricsListener: MetricsListener | undefined

  private constructor(o: IohypOptions, log: Logger) {
    this.o = o
    this.log = log
    this.metrics = createIohypMetrics({
      version: o.version,
      guests: () => [...this.guests.values()].map((g) => this.guestInfo(g)),
      disks: () => this.disks.metrics(),
      nics: () => this.nics.list(),
      socket: () => ({ interface: o.interface, kernelDrops: this.link?.socket.stats().kernelDrops ?? 0 }),
    })
    this.disks = new IohypDisks(log, {
      replyBudget: (mac) => this.replyBudget(mac),
      overloaded: (mac) => this.overloaded(mac),
      maxMessageSize: () => this.link.driver.endpoint.options.maxMessageSize,
    })
    this.nics = new IohypNics(log, (record) => this.alert(record))
  }

  static async start(o: IohypOptions, log: Logger): Promise<IohypDaemon> {
    const d = new IohypDaemon(o, log)
    await d.init()
    return d
  }

  private get port(): number {
    return this.o.port ?? VRIO_PORT
  }

  private async init(): Promise<void> {
    this.metricsListener = await startWithMetrics(this.o.metrics, this.metrics, () => this.openLink())
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
      },
      (control) => this.routes(control),
    )
    try {
      await this.restoreState()
    } catch (error) {
      await this.link.close()
      throw error
    }
    this.log.info('iohyp started', { ...this.link.describe(), guests: this.guests.size })
  }

  async stop(): Promise<void> {
    for (const g of this.guests.values()) {
      g.removed = true
      clearTimeout(g.retry)
    }
    await this.disks.close()
    await this.nics.close()
    this.eve?.close()
    await this.link.close()
    await this.metricsListener?.close()
    this.metrics.close()
  }

  private routes(control: ControlServer): void {
    control.route('GET', ROUTES.status, () => this.status())
    control.route(
      'GET',
      ROUTES.metrics,
      async () => new RawBody(METRICS_CONTENT_TYPE, await this.metrics.scrape()),
    )
    control.route('GET', ROUTES.guests, () => ({
      guests: [...this.guests.values()].sort((a, b) => a.mac - b.mac).map((g) => this.guestInfo(g)),
    }))
    control.route('POST', ROUTES.guests, async (req) => ({
      guest: this.guestInfo(await this.addGuest(req.body)),
    }))
    control.route('GET', ROUTES.disks, () => ({ disks: this.disks.list() }))
    control.route('GET', ROUTES.config, () => this.exportable())
    control.route('POST', ROUTES.disks, async (req) => {
      const body = (req.body ?? {}) as Partial<CreateDiskRequest>
      if (typeof body.guest !== 'string' || typeof body.backing !== 'string') {
        throw new VrioError('invalid-argument', 'guest and backing are required')
      }
      if (body.name !== undefined && typeof body.name !== 'string')
        throw new VrioError('invalid-argument', 'name must be a string')
      const g = this.findGuest(body.guest)
      const disk = await this.disks.create(
        {
          guest: body.guest,
          backing: body.backing,
          name: body.name,
          readOnly: body.readOnly === true,
          encrypt: parseEncrypt(body.encrypt),
        },
        g,
      )
      await this.saveState()
      return disk
    })
    control.route('DELETE', ROUTES.disk, async (req) => {
      const name = req.params.name ?? ''
      const owner = this.disks.list().find((d) => d.name === name)?.guest
      const disk = await this.disks.remove(name, owner ? this.guests.get(parseMac(owner)!) : undefined)
      await this.saveState()
      return disk
    })
    control.route('GET', ROUTES.nics, () => ({ nics: this.nics.list() }))
    control.route('POST', ROUTES.nics, async (req) => {
      const guest = (req.body as { guest?: unknown } | undefined)?.guest
      const nic = await this.nics.create(req.body, this.findGuest(typeof guest === 'string' ? guest : ''))
      await this.saveState()
      return nic
    })
    control.route('POST', ROUTES.nicServices, async (req) => {
      const nic = await this.nics.setServices(req.params.name ?? '', req.body)
      await this.saveState()
      return nic
    })
    control.route('GET', ROUTES.nicAlerts, (req) => ({ alerts: this.nics.alerts(req.params.name ?? '') }))
    control.route('DELETE', ROUTES.nic, async (req) => {
      const name = req.params.name ?? ''
      const owner = this.nics.list().find((n) => n.name === name)?.guest
      const nic = await this.nics.remove(name, owner ? this.guests.get(parseMac(owner)!) : undefined)
      await this.saveState()
      return nic
    })
    control.route('DELETE', ROUTES.guest, async (req) => {
      const mac = parseMac(req.params.mac ?? '')
      const g = mac === undefined ? undefined : this.guests.get(mac)
      if (!g) throw new VrioError('not-found', `no guest with MAC ${req.params.mac}`)
      const disks = this.disks.forGuest(g.mac)
      const nics = this.nics.forGuest(g.mac)
      if (disks + nics > 0)
        throw new VrioError(
          'conflict',
          `guest ${formatMac(g.mac)} still has ${disks} disk(s) and ${nics} NIC(s); remove them first`,
        )
      const info = this.guestInfo(g)
      this.removeGuest(g)
      await this.saveState()
      return { guest: { ...info, state: 'disconnected' } }
    })
  }

  private status(): StatusInfo {
    const all = [...this.guests.values()]
    return {
      ...this.link.status(),
      guests: { total: all.length, connected: all.filter((g) => g.state === 'connected').length },
    }
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

  /** A new record for an enrolled guest; its reply budget takes the limit it is enrolled with. */
  private newGuest(mac: number, ip: number, key: Buffer, budgets: Partial<GuestBudgets> = {}): GuestRecord {
    const g = new GuestRecord(mac, ip, key, budgets, this.replyBudget(mac))
    g.replyBudget.limit =
      budgets.pendingReplyBytes ?? this.o.budgets?.pendingReplyBytes ?? DEFAULT_PENDING_REPLY_BYTES
    return g
  }

  /**
   * A guest keeps sending requests while its replies pile up unsent beyond what its disks queue:
   * its channel is closed (after the current call returns); what it held is freed and the IOhyp
   * dials it again as after any loss.
   */
  private overloaded(mac: number): void {
    const g = this.guests.get(mac)
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
    if (g.overloads > 0) info.drops['over-budget'] = g.overloads
    const unknownTypes = g.unknownMessages + (g.session?.unknownMessages ?? 0)
    if (unknownTypes > 0) info.drops['unknown-message-type'] = unknownTypes
    const unknown = this.nics.unknownDeviceDrops(g.mac)
    if (unknown > 0) info.drops['net-unknown-device'] = unknown
    return info
  }

  private findGuest(text: string): GuestRecord {
    const mac = parseMac(text)
    const ip = parseIPv4(text)
    for (const g of this.guests.values()) if (g.mac === mac || g.ip === ip) return g
    throw new VrioError('not-found', `no enrolled guest ${text}`, { field: 'guest' })
  }

  private async addGuest(body: unknown): Promise<GuestRecord> {
    const request = parseAddGuestRequest(body)
    const mac = parseMac(request.mac)!
    const ip = parseIPv4(request.address)!
    if (this.guests.has(mac))
      throw new VrioError('conflict', `a guest with MAC ${formatMac(mac)} is already enrolled`)
    for (const g of this.guests.values()) {
      if (g.ip === ip)
        throw new VrioError(
          'conflict',
          `address ${formatIPv4(ip)} is already used by guest ${formatMac(g.mac)}`,
        )
    }
    const g = this.newGuest(mac, ip, Buffer.from(request.key, 'hex'), request.budgets)
    this.guests.set(mac, g)
    await this.saveState()
    this.log.info('guest enrolled', { mac: formatMac(mac), address: formatIPv4(ip) })
    this.dial(g)
    return g
  }

  private removeGuest(g: GuestRecord): void {
    g.removed = true
    clearTimeout(g.retry)
    g.session?.close()
    this.guests.delete(g.mac)
    this.replyBudgets.delete(g.mac)
    this.log.info('guest removed', { mac: formatMac(g.mac) })
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
        this.disks.useSession(g)
        this.nics.useSession(g)
        g.state = 'connected'
        g.backoff = REDIAL_MIN_MS
        this.log.info('guest connected', { mac: formatMac(g.mac), address: formatIPv4(g.ip) })
      },
      control: (m) => g.rpc.onControl(m),
      data: (h, m, _delivery, lender) => {
        if (h.type === MessageType.NetFrame) this.nics.receive(g, h, m, lender)
        else this.disks.receive(g, h, m, lender)
      },
      writable: () => this.disks.writable(g),
      closed: (reason, failure) => {
        addStats(g.totals, c)
        g.unknownMessages += session.unknownMessages
        if (failure) g.sessionFailures[failure] = (g.sessionFailures[failure] ?? 0) + 1
        if (g.session !== session) return
        const was = g.state
        g.session = undefined
        g.rpc.attach(undefined)
        this.disks.useSession(g)
        this.nics.useSession(g)
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

  private async saveState(): Promise<void> {
    const guests = [...this.guests.values()].map((g) => ({
      mac: formatMac(g.mac),
      address: formatIPv4(g.ip),
      key: g.key.toString('hex'),
      ...(Object.keys(g.budgets).length > 0 && { budgets: g.budgets }),
    }))
    const state = { version: 1 as const, guests, disks: this.disks.state(), nics: this.nics.state() }
    await writeStateFile(this.statePath(), state as IohypState)
  }

  private async restoreState(): Promise<void> {
    // Checked whole before anything is used: a bad file stops the start naming the field.
    const state = await readStateFile(this.statePath())
    for (const g of state.guests) {
      const mac = parseMac(g.mac) as number
      const ip = parseIPv4(g.address) as number
      this.guests.set(mac, this.newGuest(mac, ip, Buffer.from(g.key, 'hex'), g.budgets))
    }
    // Disks before dialing: each guest's disks are announced as soon as its session is up.
    const macOf = (text: string) => {
      const mac = parseMac(text)
      return mac !== undefined && this.guests.has(mac) ? mac : undefined
    }
    await this.disks.restore(state.disks, macOf)
    await this.nics.restore(state.nics, macOf)
    await this.applyDeclared()
    for (const g of this.guests.values()) this.dial(g)
  }

  /** The live state for `vrio config export` (keys included: they go to key files, never printed). */
  private exportable(): ExportableState {
    return {
      interface: this.o.interface,
      ...(this.o.address !== undefined && { address: this.o.address }),
      stateDir: this.o.stateDir,
      ...(this.o.insecurePlaintext && { insecurePlaintext: true }),
      ...(this.o.metrics !== undefined && { metrics: this.o.metrics }),
      ...(this.o.budgets && { budgets: this.o.budgets }),
      guests: [...this.guests.values()]
        .sort((a, b) => a.mac - b.mac)
        .map((g) => ({
          mac: formatMac(g.mac),
          address: formatIPv4(g.ip),
          key: g.key.toString('hex'),
          ...(Object.keys(g.budgets).length > 0 && { budgets: g.budgets }),
        })),
      disks: this.disks.state().map(({ handle: _, ...d }) => d),
      nics: this.nics.state().map(({ handle: _, ...n }) => n),
    }
  }

  /**
   * The config file's guests and disks over the restored state: a config guest replaces a state
   * guest with its MAC (key and address), a config disk one with its name. Nothing is dialed yet.
   */
  private async applyDeclared(): Promise<void> {
    const declared = this.o.guests ?? []
    const disks = this.o.devices?.disks ?? []
    if (declared.length === 0 && disks.length === 0 && (this.o.devices?.nics.length ?? 0) === 0) return
    for (const d of declared) {
      const mac = parseMac(d.mac)!
      const ip = parseIPv4(d.address)!
      for (const g of this.guests.values()) {
        if (g.ip === ip && g.mac !== mac && !declared.some((o) => parseMac(o.mac) === g.mac))
          throw new VrioError(
            'conflict',
            `config guest ${d.mac}: address ${d.address} is used by enrolled guest ${formatMac(g.mac)} (state file); remove that guest or change the config`,
          )
      }
      this.guests.set(mac, this.newGuest(mac, ip, Buffer.from(d.key), d.budgets))
    }
    await this.disks.declare(disks, (text) => {
      const mac = parseMac(text)
      return mac !== undefined && this.guests.has(mac) ? mac : undefined
    })
    await this.nics.declare(this.o.devices?.nics ?? [], (text) => {
      const mac = parseMac(text)
      return mac !== undefined && this.guests.has(mac) ? mac : undefined
    })
    await this.saveState()
  }
}

/** The `encrypt` field of a disk request: its shape only (openEncryption checks the files). */
function parseEncrypt(value: unknown): EncryptionSpec | undefined {
  if (value === undefined || value === null) return undefined
  // The same shape as a config file's `encrypt` (one schema for both); paths must be absolute here.
  const parsed = encryptSchema.safeParse(value)
  const spec = parsed.success ? parsed.data : undefined
  const files = spec ? [spec.keyFile, spec.kind === 'luks' ? spec.passphraseFile : undefined] : []
  if (
    spec &&
    files.every((f) => f === undefined || isAbsolute(f)) &&
    (spec.kind === 'plain' || (spec.keyFile === undefined) !== (spec.passphraseFile === undefined))
  )
    return spec
  throw new VrioError(
    'invalid-argument',
    "encrypt must be {kind: 'plain', cipher: 'aes-xts-plain64', keyFile, sectorSize?} or {kind: 'luks', passphraseFile | keyFile}, with absolute paths",
    { field: 'encrypt' },
  )
}
