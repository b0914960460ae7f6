import type { StatusInfo } from '../control/api.ts'
import { ROUTES } from '../control/api.ts'
import { ControlServer } from '../control/control-server.ts'
import type { Logger } from '../daemon/log.ts'
import { openLink, VRIO_PORT } from '../daemon/runtime.ts'
import { KernelGuard } from '../io/kernel-guard.ts'
import { LinkDriver } from '../io/link-driver.ts'
import type { PacketSocket } from '../io/packet-socket.ts'
import { Rpc } from '../session/rpc.ts'
import { Session } from '../session/session.ts'
import type { ConnectionOptions } from '../transport/config.ts'
import { formatIPv4, formatMac } from '../wire/address.ts'

export interface GuestOptions {
  interface: string
  address?: string
  key: Buffer
  control: string
  version: string
  port?: number
  transport?: Partial<ConnectionOptions>
}

/** A connection that has not authenticated within this long is dropped. */
const HANDSHAKE_TIMEOUT_MS = 5000

/** The guest agent: listens for the IOhyp, proves it holds the guest key, serves its devices. */
export class GuestDaemon {
  private readonly o: GuestOptions
  private readonly log: Logger
  private readonly startedAt = new Date()
  private socket!: PacketSocket
  private driver!: LinkDriver
  private guard!: KernelGuard
  private control!: ControlServer
  private mac = 0
  private ip = 0
  /** The authenticated session with the IOhyp (the newest one wins). */
  private iohyp: Session | undefined
  /** Control calls from (and to) the IOhyp over the current session. */
  private readonly rpc = new Rpc()
  private readonly sessionFailures: Record<string, number> = {}

  private constructor(o: GuestOptions, log: Logger) {
    this.o = o
    this.log = log
  }

  static async start(o: GuestOptions, log: Logger): Promise<GuestDaemon> {
    const d = new GuestDaemon(o, log)
    await d.init()
    return d
  }

  private async init(): Promise<void> {
    const port = this.o.port ?? VRIO_PORT
    const link = openLink(this.o.interface, this.o.address)
    this.socket = link.socket
    this.mac = link.mac
    this.ip = link.ip
    this.guard = new KernelGuard({
      ifname: this.o.interface,
      address: this.ip,
      localPort: port,
      role: 'guest',
    })
    try {
      await this.guard.install()
      this.driver = new LinkDriver({
        channel: this.socket,
        vnetHdr: true,
        mac: this.mac,
        ip: this.ip,
        listenPort: port,
        options: this.o.transport,
        accept: (_remote, c) => {
          const session: Session = new Session(c, 'listener', this.o.key, {
            authenticated: () => this.onAuthenticated(session),
            control: (m) => {
              if (session === this.iohyp) this.rpc.onControl(m)
            },
            closed: (reason, failure) => {
              clearTimeout(timer)
              if (failure) {
                this.sessionFailures[failure] = (this.sessionFailures[failure] ?? 0) + 1
                this.log.warn('connection refused', { peer: formatIPv4(c.remote.ip), failure })
              }
              if (this.iohyp === session) {
                this.iohyp = undefined
                this.rpc.attach(undefined)
                this.log.warn('iohyp channel closed', { reason })
              }
            },
          })
          const timer = setTimeout(() => {
            if (!session.authenticated) c.abort('aborted')
            this.driver.flush()
          }, HANDSHAKE_TIMEOUT_MS)
          return session.connectionHandlers
        },
      })
      this.control = new ControlServer({
        path: this.o.control,
        onError: (error, req) => this.log.error('control request failed', { error, ...req }),
      })
      this.control.route('GET', ROUTES.status, () => this.status())
      await this.control.listen()
    } catch (error) {
      await this.guard.remove()
      this.socket.close()
      throw error
    }
    this.log.info('guest started', {
      interface: this.o.interface,
      mac: formatMac(this.mac),
      address: formatIPv4(this.ip),
      port,
      control: this.o.control,
    })
  }

  private onAuthenticated(session: Session): void {
    const previous = this.iohyp
    this.iohyp = session
    this.rpc.attach(session)
    const r = session.connection.remote
    this.log.info('iohyp connected', { mac: formatMac(r.mac), address: formatIPv4(r.ip) })
    if (previous && previous !== session) previous.connection.abort('aborted')
  }

  async stop(): Promise<void> {
    this.driver.stop()
    await this.control.close()
    await this.guard.remove()
    this.socket.close()
  }

  private status(): StatusInfo {
    const s = this.iohyp
    const c = s?.connection
    return {
      role: 'guest',
      version: this.o.version,
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      uptimeMs: Date.now() - this.startedAt.getTime(),
      interface: this.o.interface,
      mac: formatMac(this.mac),
      address: formatIPv4(this.ip),
      drops: { ...this.driver.endpoint.stats.drops } as Record<string, number>,
      sessionFailures: { ...this.sessionFailures },
      ...(c
        ? {
            iohyp: {
              mac: formatMac(c.remote.mac),
              address: formatIPv4(c.remote.ip),
              state: 'connected' as const,
              rttMs: c.srtt >= 0 ? Math.round(c.srtt * 1000) / 1000 : null,
            },
          }
        : {}),
    }
  }
}
