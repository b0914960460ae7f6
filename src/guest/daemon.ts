import { join } from 'node:path'
import type { StatusInfo } from '../control/api.ts'
import { ROUTES } from '../control/api.ts'
import { RawBody } from '../control/control-server.ts'
import { DaemonLink, type LinkAccess } from '../daemon/daemon-link.ts'
import type { DeviceHandle } from '../devices/kind.ts'
import type { NetLinks } from '../io/net-links.ts'
import type { GuestRegistry } from './registry.ts'
import { addStats, channelTotals, withConnection } from '../daemon/channel-totals.ts'
import {
  type ChannelMetrics,
  createGuestMetrics,
  type DaemonMetrics,
  METRICS_CONTENT_TYPE,
  type MetricsListener,
  startWithMetrics,
} from '../daemon/metrics.ts'
import type { Logger } from '../daemon/log.ts'
import { readFileIfExists, VRIO_PORT, writeFileAtomic } from '../daemon/runtime.ts'
import { Rpc } from '../session/rpc.ts'
import { Session } from '../session/session.ts'
import { GuestDisks } from './disks.ts'
import { GuestNics } from './nics.ts'
import type { ConnectionOptions } from '../transport/config.ts'
import type { Connection, ConnectionHandlers } from '../transport/connection.ts'
import { channelDescription } from '../transport/aead.ts'
import type { PreAuthOptions } from '../transport/endpoint.ts'
import { addSealDrops } from '../transport/seal.ts'
import { formatIPv4, formatMac, parseIPv4 } from '../wire/address.ts'
import { VrioError } from '../errors.ts'

export interface GuestOptions {
  interface: string
  address?: string
  key: Buffer
  control: string
  /** Runtime files: the NBD socket, FUSE mounts of attached disks. */
  runDir: string
  /** Attach every remote disk as a block device too. */
  attach: boolean
  /** A disk request unanswered this long fails (VrioError 'timeout', EIO to NBD clients). */
  ioTimeoutMs?: number
  version: string
  port?: number
  transport?: Partial<ConnectionOptions>
  /** Protocol version 1, unsealed (see IohypOptions.insecurePlaintext): the IOhyp must agree. */
  insecurePlaintext?: boolean
  /**
   * The IOhyp's IPv4 address (dotted quad): SYNs from any other address are dropped. Unset: the
   * address of the first IOhyp that authenticates is learned and kept in `<runDir>/iohyp-address`.
   */
  iohyp?: string
  /** Limits before authentication (EndpointInit's; defaults there). */
  preAuth?: Omit<PreAuthOptions, 'peerAddress' | 'requireAuthentication'>
  /** `ADDR:PORT`: also serve the Prometheus metrics there over plain HTTP (always on the control socket). */
  metrics?: string
  /** How the agent reaches its interface and NIC links (tests pass in-memory ones). */
  access?: { link?: LinkAccess; links?: NetLinks }
  /**
   * Polling (`--poll`, `--poll-idle-us`): the thread re-polls its packet socket instead of sleeping
   * until this many µs pass without a frame (DaemonLink / FrameChannel.setPoll). Unset: off.
   */
  pollIdleUs?: number
  /**
   * With pollIdleUs: poll only while disk calls are outstanding, and pollIdleUs after the last
   * settled (`vrio guest`'s default): a stream of requests keeps the thread awake between them,
   * frames of NICs alone do not.
   */
  pollDisksOnly?: boolean
}

type AnyGuestRegistry = GuestRegistry<{ name: string; handle: DeviceHandle }, unknown, unknown, unknown>

/** Where a learned IOhyp address is kept, in the run dir: delete it (and restart) to learn anew. */
const LEARNED_IOHYP_FILE = 'iohyp-address'

/** The guest agent: listens for the IOhyp, proves it holds the guest key, serves its devices. */
export class GuestDaemon {
  private readonly o: GuestOptions
  private readonly log: Logger
  private link!: DaemonLink
  /** The authenticated session with the IOhyp (the newest one wins). */
  private iohyp: Session | undefined
  /** Control calls from (and to) the IOhyp over the current session. */
  private readonly rpc = new Rpc()
  private readonly sessionFailures: Record<string, number> = {}
  /** Counters of the closed channels to an IOhyp (sessions that authenticated); see channelMetrics. */
  private readonly channelTotals = channelTotals()
  /** Sessions that authenticated (their counters join channelTotals when they close). */
  private readonly served = new WeakSet<Session>()
  private readonly disks: GuestDisks
  /** Disk calls outstanding, all disks together: the channel polls only while it is above 0 (gated polling). */
  private readonly awaiting = new Int32Array(new ArrayBuffer(4))
  private readonly nics: GuestNics
  /** Every device kind's registry. */
  private readonly registries: AnyGuestRegistry[]
  /** Every device kind's registry, by the data message type the IOhyp sends it. */
  private readonly byType = new Map<number, AnyGuestRegistry>()
  /** Set once the NBD server listens: only then are IOhyp connections accepted. */
  private ready = false
  /** The only address IOhyp connections are accepted from: configured, learned, or not yet known. */
  private iohypAddress: number | undefined
  private iohypAddressSource: 'configured' | 'learned' | 'none' = 'none'
  readonly metrics: DaemonMetrics
  private metricsListener: MetricsListener | undefined

  private constructor(o: GuestOptions, log: Logger) {
    this.o = o
    this.log = log
    this.metrics = createGuestMetrics({
      version: o.version,
      disks: () => this.disks.metrics(),
      channel: () => this.channelMetrics(),
      socket: () => this.link?.socketMetrics() ?? { interface: o.interface, kernelDrops: 0 },
    })
    // Devices and RPC handlers exist before the link and control socket open: a control request or
    // an IOhyp may arrive at once (connections are refused until the NBD server listens; see accept).
    this.disks = new GuestDisks({
      runDir: o.runDir,
      attach: o.attach,
      ioTimeoutMs: o.ioTimeoutMs,
      awaiting: this.awaiting,
      log,
    })
    this.nics = new GuestNics(log, o.access?.links)
    this.registries = [this.disks, this.nics] as AnyGuestRegistry[]
    for (const r of this.registries) {
      this.byType.set(r.kind.messageType, r)
      this.rpc.handle(r.kind.attachCall, (p) => r.attach(p)).handle(r.kind.detachCall, (p) => r.detach(p))
    }
  }

  static async start(o: GuestOptions, log: Logger): Promise<GuestDaemon> {
    const d = new GuestDaemon(o, log)
    await d.init()
    return d
  }

  private async init(): Promise<void> {
    this.metricsListener = await startWithMetrics(this.o.metrics, this.metrics, () => this.setUp())
  }

  private async setUp(): Promise<void> {
    const port = this.o.port ?? VRIO_PORT
    await this.loadIohypAddress()
    this.link = await DaemonLink.open(
      {
        role: 'guest',
        interface: this.o.interface,
        address: this.o.address,
        control: this.o.control,
        version: this.o.version,
        log: this.log,
        localPort: port,
        listenPort: port,
        transport: { ...this.o.transport, ...(this.o.insecurePlaintext && { insecurePlaintext: true }) },
        key: this.o.key,
        preAuth: { ...this.o.preAuth, requireAuthentication: true, peerAddress: this.iohypAddress },
        accept: (_remote, c) => this.accept(c),
        access: this.o.access?.link,
        pollIdleUs: this.o.pollIdleUs,
        ...(this.o.pollDisksOnly && { pollGate: this.awaiting }),
      },
      (control) => {
        control.route('GET', ROUTES.status, () => this.status())
        control.route(
          'GET',
          ROUTES.metrics,
          async () => new RawBody(METRICS_CONTENT_TYPE, await this.metrics.scrape()),
        )
        control.route('GET', ROUTES.disks, () => ({ disks: this.disks.list() }))
        control.route('GET', ROUTES.nics, () => ({ nics: this.nics.list() }))
      },
    )
    try {
      await this.disks.start()
    } catch (error) {
      await this.link.close()
      throw error
    }
    this.ready = true
    this.log.info('guest started', { ...this.link.describe(), port })
  }

  /** Any peer may open a connection; only one that proves it holds our key gets further. */
  private accept(c: Connection): ConnectionHandlers | undefined {
    // Not serving yet (starting up): refused with an RST; the IOhyp redials within 300 ms.
    if (!this.ready) return undefined
    const session: Session = new Session(c, 'listener', this.o.key, {
      authenticated: () => this.onAuthenticated(session),
      control: (m) => {
        if (session === this.iohyp) this.rpc.onControl(m)
      },
      data: (h, m, _delivery, lender) => {
        if (session === this.iohyp) this.byType.get(h.type)?.receive(h, m, lender)
      },
      writable: () => {
        if (session === this.iohyp) for (const r of this.registries) r.writable()
      },
      closed: (reason, failure) => {
        if (this.served.has(session)) addStats(this.channelTotals, c)
        if (failure) {
          this.sessionFailures[failure] = (this.sessionFailures[failure] ?? 0) + 1
          this.log.warn('connection refused', { peer: formatIPv4(c.remote.ip), failure })
        }
        if (this.iohyp === session) {
          this.iohyp = undefined
          this.rpc.attach(undefined)
          for (const r of this.registries) r.useSession(undefined)
          this.log.warn('iohyp channel closed', { reason })
        }
      },
    })
    // A connection that does not authenticate in time is aborted by the endpoint (authTimeout).
    return session.connectionHandlers
  }

  private onAuthenticated(session: Session): void {
    const previous = this.iohyp
    this.iohyp = session
    this.served.add(session)
    this.rpc.attach(session)
    for (const r of this.registries) r.useSession(session)
    const r = session.connection.remote
    this.log.info('iohyp connected', { mac: formatMac(r.mac), address: formatIPv4(r.ip) })
    if (previous && previous !== session) previous.connection.abort('aborted')
    if (this.iohypAddress === undefined) this.learnIohypAddress(r.ip)
  }

  /** The configured IOhyp address, else one learned by an earlier run (see LEARNED_IOHYP_FILE). */
  private async loadIohypAddress(): Promise<void> {
    if (this.o.iohyp !== undefined) {
      this.iohypAddress = parseIPv4(this.o.iohyp)
      if (this.iohypAddress === undefined)
        throw new VrioError('invalid-argument', `iohyp address ${this.o.iohyp} is not an IPv4 address`)
      this.iohypAddressSource = 'configured'
      return
    }
    const file = join(this.o.runDir, LEARNED_IOHYP_FILE)
    const text = await readFileIfExists(file)
    if (text === undefined) return
    const ip = parseIPv4(text.trim())
    if (ip === undefined) {
      throw new VrioError(
        'invalid-config',
        `${file} does not hold an IPv4 address; remove it to learn the IOhyp's address again`,
      )
    }
    this.iohypAddress = ip
    this.iohypAddressSource = 'learned'
    this.log.info('iohyp address remembered', { address: formatIPv4(ip), file })
  }

  /** Accepts only this IOhyp from now on, and across restarts (until the file is removed). */
  private learnIohypAddress(ip: number): void {
    this.iohypAddress = ip
    this.iohypAddressSource = 'learned'
    this.link.driver.endpoint.setPeerAddress(ip)
    const file = join(this.o.runDir, LEARNED_IOHYP_FILE)
    this.log.info('iohyp address learned', { address: formatIPv4(ip), file })
    writeFileAtomic(file, `${formatIPv4(ip)}\n`, 0o644).catch((error) =>
      this.log.error('could not keep the learned iohyp address', { file, error }),
    )
  }

  async stop(): Promise<void> {
    for (const r of this.registries) await r.close()
    await this.link.close()
    await this.metricsListener?.close()
    this.metrics.close()
  }

  private preAuthStatus(): NonNullable<StatusInfo['preAuth']> {
    const e = this.link.driver.endpoint
    return {
      iohypAddress: this.iohypAddress === undefined ? null : formatIPv4(this.iohypAddress),
      iohypAddressSource: this.iohypAddressSource,
      ...e.pending,
      evictedHalfOpen: e.stats.evictedHalfOpen,
      evictedUnauthenticated: e.stats.evictedUnauthenticated,
      authTimeouts: e.stats.authTimeouts,
      foreignAddress: e.stats.drops['foreign-address'] ?? 0,
    }
  }

  /** The channel to the IOhyp for the metrics: the counters of every authenticated session summed. */
  private channelMetrics(): ChannelMetrics {
    const c = this.iohyp?.connection
    return {
      state: c ? 'connected' : 'waiting',
      rttMs: c ? c.rttMs : null,
      ...withConnection(this.channelTotals, c),
      sessionFailures: this.sessionFailures,
      ...(c && { channel: channelDescription(c.sealCipher === 0, c.sealCipher) }),
    }
  }

  private status(): StatusInfo {
    const s = this.iohyp
    const c = s?.connection
    return {
      ...this.link.status(),
      sessionFailures: { ...this.sessionFailures },
      preAuth: this.preAuthStatus(),
      blockDevices: this.disks.blockDevices(),
      ...(c
        ? {
            iohyp: {
              mac: formatMac(c.remote.mac),
              address: formatIPv4(c.remote.ip),
              state: 'connected' as const,
              rttMs: c.rttMs,
              retransmits: c.stats.retransmits,
              rtoFirings: c.stats.rtoFirings,
              fastRecoveries: c.stats.fastRecoveries,
              channel: channelDescription(c.sealCipher === 0, c.sealCipher),
              drops: connectionDrops(c),
              rekeys: c.stats.rekeys,
            },
          }
        : {}),
    }
  }
}

/** A connection's drop counters by reason, the sealed channel's included. */
function connectionDrops(c: Connection): Record<string, number> {
  const drops = { ...c.stats.drops } as Record<string, number>
  addSealDrops(drops, c.stats)
  return drops
}
