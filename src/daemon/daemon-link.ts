import type { StatusInfo } from '../control/api.ts'
import { ControlServer } from '../control/control-server.ts'
import { KernelGuard, type KernelGuardOptions } from '../io/kernel-guard.ts'
import { LinkDriver } from '../io/link-driver.ts'
import { vrioPacketFilter } from '../io/packet-filter.ts'
import { PacketSocket } from '../io/packet-socket.ts'
import type { FrameChannel } from '../io/frame-channel.ts'
import type { ConnectionOptions } from '../transport/config.ts'
import type { Address, Connection, ConnectionHandlers } from '../transport/connection.ts'
import { aeadImplementation, channelDescription, resolveSealCipher } from '../transport/aead.ts'
import type { PreAuthOptions } from '../transport/endpoint.ts'
import { addSealDrops } from '../transport/seal.ts'
import { formatIPv4, formatMac } from '../wire/address.ts'
import type { Logger } from './log.ts'
import type { SocketMetrics } from './metrics.ts'
import { type LinkPorts, openLink } from './runtime.ts'

export interface DaemonLinkOptions {
  role: 'iohyp' | 'guest'
  interface: string
  address?: string
  /** The control socket's path; none on an iocore (its main thread serves the control API). */
  control: string | undefined
  /**
   * An iocore: the packet socket takes only segments from these addresses (setPeers changes
   * them), and the kernel guard is left to the main thread.
   */
  peers?: readonly number[]
  version: string
  log: Logger
  /** Kernel guard: our segments are those to `localPort` and those from `remotePort`. */
  localPort?: number
  remotePort?: number
  /** Passive side: accept connections on this port. */
  listenPort?: number
  accept?: (remote: Address, connection: Connection) => ConnectionHandlers | undefined
  transport?: Partial<ConnectionOptions>
  /** A guest's own key: the sealed listener verifies every SYN with it (the IOhyp passes a key per connect). */
  key?: Buffer
  /** Limits before a peer authenticates (the guest sets them: see EndpointInit). */
  preAuth?: PreAuthOptions
  /** How the interface is reached: the kernel's (a packet socket and the kernel guard) unless a test passes its own. */
  access?: LinkAccess
  /** Polling (`--poll`): µs without a frame before the thread sleeps again (FrameChannel.setPoll); unset: off. */
  pollIdleUs?: number
  /** With pollIdleUs: poll only while pollGate[0] > 0, or was within pollIdleUs (FrameChannel.setPoll). */
  pollGate?: Int32Array
}

/** The frame channel on the daemon's interface, and the guard that keeps the kernel's stack off its port. */
export interface LinkAccess {
  open(
    ifname: string,
    address: string | undefined,
    ports: LinkPorts,
  ): { socket: FrameChannel; mac: number; ip: number; filtered?: boolean }
  guard(o: KernelGuardOptions): { install(): Promise<void>; remove(): Promise<void> }
}

const NO_GUARD = { install: async () => {}, remove: async () => {} }

const KERNEL_LINK: LinkAccess = {
  open: openLink,
  guard: (o) => new KernelGuard(o),
}

/**
 * What every daemon stands on: the packet socket on its interface, the kernel guard, the link
 * driver running the transport endpoint, and the control server. `open` sets all of it up, routes
 * included, or undoes what it did and throws; `close` takes it down in the reverse order.
 */
export class DaemonLink {
  readonly socket: FrameChannel
  readonly driver: LinkDriver
  readonly control: ControlServer | undefined
  readonly mac: number
  readonly ip: number
  /** The kernel filter is on the packet socket (runtime.ts packetFilterEnabled). */
  readonly filtered: boolean
  private readonly guard: { install(): Promise<void>; remove(): Promise<void> }
  private readonly o: DaemonLinkOptions
  private readonly startedAt = new Date()

  private constructor(
    o: DaemonLinkOptions,
    socket: FrameChannel,
    mac: number,
    ip: number,
    filtered: boolean,
  ) {
    this.o = o
    this.socket = socket
    this.filtered = filtered
    this.mac = mac
    this.ip = ip
    const access = o.access ?? KERNEL_LINK
    this.guard = o.peers
      ? NO_GUARD
      : access.guard({
          ifname: o.interface,
          address: ip,
          localPort: o.localPort,
          remotePort: o.remotePort,
          role: o.role,
        })
    this.driver = new LinkDriver({
      channel: socket,
      vnetHdr: true,
      mac,
      ip,
      listenPort: o.listenPort,
      peerPort: o.remotePort,
      accept: o.accept,
      options: o.transport,
      key: o.key,
      modeMismatch: (remote, peerSealed) => this.modeMismatch(remote, peerSealed),
      preAuth: o.preAuth,
    })
    if (o.pollIdleUs && !socket.setPoll(o.pollIdleUs, o.pollGate))
      o.log.warn('--poll: this build of the addon cannot poll; the socket sleeps in epoll as without it')
    if (this.driver.endpoint.options.insecurePlaintext) {
      o.log.warn('INSECURE: --insecure-plaintext: channel segments are neither encrypted nor authenticated', {
        detail:
          'anyone on the segment can read disk and NIC data and inject or reset traffic; use only on a link you alone own',
      })
    }
    this.control =
      o.control === undefined
        ? undefined
        : new ControlServer({
            path: o.control,
            onError: (error, req) => o.log.error('control request failed', { error, ...req }),
          })
  }

  /** An iocore's guests changed: its packet socket's kernel filter passes their segments only. */
  setPeers(peers: readonly number[]): void {
    if (!this.filtered || !(this.socket instanceof PacketSocket)) return
    this.socket.setFilter(
      vrioPacketFilter({
        mac: this.mac,
        ip: this.ip,
        localPort: this.o.localPort,
        remotePort: this.o.remotePort,
        peers,
      }),
    )
  }

  private readonly mismatchedPeers = new Set<number>()

  /** The other mode's SYN or SYN-ACK from `remote`: logged once per peer address. */
  private modeMismatch(remote: Address, peerSealed: boolean): void {
    if (this.mismatchedPeers.has(remote.ip)) return
    if (this.mismatchedPeers.size < 1024) this.mismatchedPeers.add(remote.ip)
    this.o.log.warn('peer uses the other channel mode: refused (no downgrade)', {
      peer: formatIPv4(remote.ip),
      peerMode: peerSealed ? 'sealed' : 'plaintext',
      ownMode: peerSealed ? 'plaintext (insecure)' : 'sealed',
    })
  }

  /** What `status` shows as `channel`. */
  channel(): string {
    const o = this.driver.endpoint.options
    return channelDescription(
      o.insecurePlaintext,
      this.o.role === 'iohyp' && !o.insecurePlaintext ? resolveSealCipher(o.cipher) : 0,
    )
  }

  /** Opens everything; `routes` registers the daemon's control routes before the socket listens. */
  static async open(o: DaemonLinkOptions, routes: (control: ControlServer) => void): Promise<DaemonLink> {
    const link = (o.access ?? KERNEL_LINK).open(o.interface, o.address, {
      localPort: o.localPort,
      remotePort: o.remotePort,
      peers: o.peers,
    })
    const d = new DaemonLink(o, link.socket, link.mac, link.ip, link.filtered ?? false)
    try {
      await d.guard.install()
      if (d.control) {
        routes(d.control)
        await d.control.listen()
      }
    } catch (error) {
      d.driver.stop({ silent: true })
      await d.guard.remove()
      d.socket.close()
      throw error
    }
    return d
  }

  /** Resets every connection (peers learn at once), then removes the socket, guard and control socket. */
  async close(): Promise<void> {
    this.driver.stop()
    await this.control?.close()
    await this.guard.remove()
    this.socket.close()
  }

  /** What the metrics read of the packet socket (SocketMetrics). */
  socketMetrics(): SocketMetrics {
    const s = this.socket.stats()
    return {
      interface: this.o.interface,
      kernelDrops: s.kernelDrops,
      ...(this.o.pollIdleUs && { polls: s.polls ?? 0, pollUs: s.pollUs ?? 0 }),
    }
  }

  /** The fields of StatusInfo every daemon reports. */
  status(): StatusInfo {
    return {
      role: this.o.role,
      version: this.o.version,
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      uptimeMs: Date.now() - this.startedAt.getTime(),
      interface: this.o.interface,
      mac: formatMac(this.mac),
      address: formatIPv4(this.ip),
      channel: this.channel(),
      drops: this.endpointDrops(),
      socket: ((s) => ({
        rxFrames: s.rxFrames,
        rxBytes: s.rxBytes,
        txFrames: s.txFrames,
        txBytes: s.txBytes,
        kernelDrops: s.kernelDrops,
        txEagain: s.txEagain,
        ...(this.o.pollIdleUs && {
          poll: this.o.pollGate ? ('disks' as const) : ('frames' as const),
          polls: s.polls ?? 0,
          pollHits: s.pollHits ?? 0,
          pollUs: s.pollUs ?? 0,
        }),
      }))(this.socket.stats()),
    }
  }

  private endpointDrops(): Record<string, number> {
    const stats = this.driver.endpoint.stats
    const drops = { ...stats.drops } as Record<string, number>
    addSealDrops(drops, stats)
    return drops
  }

  /** Fields for the "started" log line. */
  describe(): Record<string, unknown> {
    const o = this.driver.endpoint.options
    return {
      channel: this.channel(),
      // What seals frames here (the IOhyp's choice of cipher, or this CPU's preference on a guest).
      aead: o.insecurePlaintext ? undefined : aeadImplementation(resolveSealCipher(o.cipher)),
      interface: this.o.interface,
      mac: formatMac(this.mac),
      address: formatIPv4(this.ip),
      packetFilter: this.filtered ? 'on' : 'off',
      fastPath: this.driver.fastPath ? 'on' : 'off',
      control: this.o.control,
    }
  }
}
