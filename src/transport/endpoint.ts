import { randomInt } from 'node:crypto'
import { VrioError } from '../errors.ts'
import type { DropReason } from '../wire/drop-reason.ts'
import { decodeTcpFrame, encodeTcpFrame, newTcpFrame, type TcpFrame } from '../wire/frame.ts'
import { clearTcpOptions, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../wire/tcp.ts'
import { SEAL_CIPHER_AES_256_GCM, SEAL_CIPHER_CHACHA20_POLY1305, type SealCipher } from './aead.ts'
import { type ConnectionOptions, resolveConnectionOptions } from './config.ts'
import {
  type Address,
  Connection,
  type ConnectionHandlers,
  type FrameAllocator,
  type FrameSink,
  VRIO_PLAINTEXT_VERSION,
  VRIO_PROTOCOL_VERSION,
} from './connection.ts'
import { ChannelSeal, newSealCounters, type SealCounters, sealIdentity } from './seal.ts'

/** Why the endpoint ignored a frame before any connection saw it. */
export type EndpointDropReason =
  | DropReason
  | 'not-ours'
  | 'no-connection'
  | 'connection-exists'
  | 'not-vrio'
  | 'refused'
  | 'reset-rate-limited'
  | 'foreign-address'

export interface EndpointInit {
  /** Our MAC and IPv4 address on the link. */
  mac: number
  ip: number
  sink: FrameSink
  /** Memory for the connections' frames (see FrameAllocator); default: a new Buffer per frame. */
  allocate?: FrameAllocator
  /** Milliseconds, monotonic. Default: performance.now. Tests pass a virtual clock. */
  clock?: () => number
  /** Uniform in [0, 1): initial sequence numbers, IP ids, ports. Default: crypto-strong. Tests pass a seeded one. */
  random?: () => number
  options?: Partial<ConnectionOptions>
  /** Accept connections on this port (passive open). */
  listenPort?: number
  /**
   * The port of the peers we connect to. Segments that belong to no connection are ours to answer
   * (with an RST) only when they are addressed to our listen port or come from this one; anything
   * else is the host's own TCP traffic on the same address and is left alone.
   */
  peerPort?: number
  /**
   * Decides on a connection a peer opens: return its handlers to accept, or undefined to refuse
   * (the peer gets an RST). Called when the SYN arrives.
   */
  accept?: (remote: Address, connection: Connection) => ConnectionHandlers | undefined
  /**
   * Sealed listener: the 32-byte key every SYN must be sealed with (a guest's enrolled key).
   * An opener passes its key per `connect` instead.
   */
  key?: Uint8Array
  /**
   * A SYN or SYN-ACK of the other mode arrived (sealed against plaintext): `peerSealed` says which
   * the peer is. Dropped and counted; the owner may log it (once per peer).
   */
  modeMismatch?: (remote: Address, peerSealed: boolean) => void
  /**
   * Accept SYNs only from this IPv4 address; from any other they are dropped without an answer
   * ('foreign-address'). Undefined: from any. Changed later with `setPeerAddress`.
   */
  peerAddress?: number
  /**
   * Connections peers open are unauthenticated until the layer above calls their `authenticate()`:
   * until then they hold at most `preAuthReceiveBytes` of messages (Connection.requireAuthentication)
   * and are aborted after `authTimeout`. Without it an accepted connection counts as
   * authenticated once established (the half-open cap still applies).
   */
  requireAuthentication?: boolean
  /** Most connections in SYN-RECEIVED; at the cap a new SYN evicts the oldest one. Default 16. */
  maxHalfOpen?: number
  /** Most established, unauthenticated connections; at the cap the oldest is evicted. Default 4. */
  maxUnauthenticated?: number
  /** Bytes of messages an unauthenticated connection may hold for reassembly. Default 4096. */
  preAuthReceiveBytes?: number
  /** Milliseconds from the SYN within which a connection must authenticate. Default 5000. */
  authTimeout?: number
}

/** The EndpointInit fields about work before authentication. */
export type PreAuthOptions = Pick<
  EndpointInit,
  | 'peerAddress'
  | 'requireAuthentication'
  | 'maxHalfOpen'
  | 'maxUnauthenticated'
  | 'preAuthReceiveBytes'
  | 'authTimeout'
>

export interface EndpointStats extends SealCounters {
  framesReceived: number
  resetsSent: number
  connectionsAccepted: number
  connectionsOpened: number
  /** Unauthenticated connections evicted to make room: half-open ones, and established ones. */
  evictedHalfOpen: number
  evictedUnauthenticated: number
  /** Connections aborted because they did not authenticate within authTimeout. */
  authTimeouts: number
  drops: Partial<Record<EndpointDropReason, number>>
}

const DEFAULT_MAX_HALF_OPEN = 16
const DEFAULT_MAX_UNAUTHENTICATED = 4
const DEFAULT_PRE_AUTH_RECEIVE_BYTES = 4096
const DEFAULT_AUTH_TIMEOUT = 5000

const EPHEMERAL_LOW = 49_152
const NO_HANDLERS: ConnectionHandlers = { message() {} }
const RESETS_PER_SECOND = 200

/**
 * The vrio side of one link address (MAC + IPv4): demultiplexes frames to connections by their
 * addresses and ports, opens connections, accepts them on the listen port, and answers segments
 * for no connection with an RST as a TCP stack would. Sans-I/O like Connection.
 */
export class Endpoint {
  readonly mac: number
  readonly ip: number
  readonly options: ConnectionOptions
  readonly stats: EndpointStats = {
    framesReceived: 0,
    resetsSent: 0,
    connectionsAccepted: 0,
    connectionsOpened: 0,
    evictedHalfOpen: 0,
    evictedUnauthenticated: 0,
    authTimeouts: 0,
    drops: {},
    ...newSealCounters(),
  }

  private readonly sink: FrameSink
  private readonly allocate: FrameAllocator | undefined
  private readonly clock: () => number
  private readonly random: () => number
  private readonly listenPort: number
  private readonly peerPort: number
  private readonly acceptHandler: EndpointInit['accept']
  private peerAddress: number | undefined
  private readonly requireAuthentication: boolean
  private readonly maxHalfOpen: number
  private readonly maxUnauthenticated: number
  private readonly preAuthReceiveBytes: number
  private readonly authTimeout: number
  /**
   * Accepted connections not yet authenticated, oldest first, with the time their SYN arrived:
   * those in SYN-RECEIVED, and those established (entered in the order they got there).
   */
  private readonly halfOpen = new Map<Connection, number>()
  private readonly unauthenticated = new Map<Connection, number>()
  private readonly byRemote = new Map<number, Connection>()
  /**
   * Connections that received frames since the last flush: touched[0, touchedCount). An array that
   * never shrinks, not a Set (whose clear() allocates a new table every batch).
   */
  private readonly touched: (Connection | undefined)[] = []
  private touchedCount = 0
  private readonly rx: TcpFrame = newTcpFrame()
  private readonly rstFrame: TcpFrame = newTcpFrame()
  private resetWindowStart = 0
  private resetsInWindow = 0
  private readonly key: Buffer | undefined
  private readonly onModeMismatch: EndpointInit['modeMismatch']

  constructor(init: EndpointInit) {
    this.mac = init.mac
    this.ip = init.ip
    this.sink = init.sink
    this.allocate = init.allocate
    this.clock = init.clock ?? (() => performance.now())
    this.random = init.random ?? (() => randomInt(0x1_0000_0000) / 0x1_0000_0000)
    this.options = resolveConnectionOptions(init.options)
    this.listenPort = init.listenPort ?? -1
    this.peerPort = init.peerPort ?? -1
    this.acceptHandler = init.accept
    this.key = init.key ? Buffer.from(init.key) : undefined
    this.onModeMismatch = init.modeMismatch
    this.peerAddress = init.peerAddress
    this.requireAuthentication = init.requireAuthentication ?? false
    const count = (v: number | undefined, fallback: number, name: string): number => {
      const n = v ?? fallback
      if (!Number.isInteger(n) || n < 1) {
        throw new VrioError('invalid-config', `endpoint option ${name} must be a positive integer`, {
          field: name,
        })
      }
      return n
    }
    this.maxHalfOpen = count(init.maxHalfOpen, DEFAULT_MAX_HALF_OPEN, 'maxHalfOpen')
    this.maxUnauthenticated = count(
      init.maxUnauthenticated,
      DEFAULT_MAX_UNAUTHENTICATED,
      'maxUnauthenticated',
    )
    this.preAuthReceiveBytes = count(
      init.preAuthReceiveBytes,
      DEFAULT_PRE_AUTH_RECEIVE_BYTES,
      'preAuthReceiveBytes',
    )
    this.authTimeout = count(init.authTimeout, DEFAULT_AUTH_TIMEOUT, 'authTimeout')
  }

  /** Whether connections are sealed (protocol version 2): the default, unless insecurePlaintext. */
  get sealed(): boolean {
    return !this.options.insecurePlaintext
  }

  /** Accept SYNs only from `ip` from now on (undefined: from any); see EndpointInit.peerAddress. */
  setPeerAddress(ip: number | undefined): void {
    this.peerAddress = ip
  }

  /** Connections peers opened that have not authenticated yet: in SYN-RECEIVED, and established. */
  get pending(): { halfOpen: number; unauthenticated: number } {
    return { halfOpen: this.halfOpen.size, unauthenticated: this.unauthenticated.size }
  }

  /** Open connections (any state but closed). */
  connections(): IterableIterator<Connection> {
    return this.byRemote.values()
  }

  /**
   * Opens a connection to `remote` from a random ephemeral port. Sealed (the default), `psk` is
   * the peer's 32-byte key (default: the endpoint's own `key`). `options` override the endpoint's
   * for this connection only (e.g. a guest's reassembly budget on the IOhyp).
   */
  connect(
    remote: Address,
    handlers: ConnectionHandlers,
    psk?: Uint8Array,
    options?: Partial<ConnectionOptions>,
  ): Connection {
    // One connection per remote address and port: a new one replaces (resets) the old.
    this.byRemote.get(key(remote.ip, remote.port))?.abort('aborted')
    const port = EPHEMERAL_LOW + Math.floor(this.random() * (65_536 - EPHEMERAL_LOW))
    const c = this.newConnection(
      { mac: this.mac, ip: this.ip, port },
      remote,
      handlers,
      undefined,
      { psk: psk ?? this.key },
      options ? resolveConnectionOptions({ ...this.options, ...options }) : this.options,
    )
    this.byRemote.set(key(remote.ip, remote.port), c)
    this.stats.connectionsOpened++
    c.start()
    return c
  }

  /**
   * Handles one received frame. `checksumVerified`: the kernel or NIC already checked the IP and
   * TCP checksums (virtio_net_hdr DATA_VALID), so they are not recomputed.
   */
  receive(frame: Uint8Array, checksumVerified = false): void {
    this.stats.framesReceived++
    const f = this.rx
    const reason = decodeTcpFrame(frame, f, !checksumVerified)
    if (reason) {
      this.drop(reason)
      return
    }
    if (f.ethernet.destination !== this.mac || f.ip.destination !== this.ip) {
      this.drop('not-ours')
      return
    }
    const tcp = f.tcp
    const c = this.byRemote.get(key(f.ip.source, tcp.sourcePort))
    if (
      c &&
      !c.authenticated &&
      (tcp.flags & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN &&
      tcp.destinationPort === this.listenPort &&
      !(
        c.isRetransmittedSyn(tcp.seq) &&
        c.remote.mac === f.ethernet.source &&
        c.local.port === tcp.destinationPort
      )
    ) {
      // A new SYN on the address and port of a connection that has not authenticated.
      this.acceptSyn(frame, f, c)
      return
    }
    if (c && c.local.port === tcp.destinationPort && c.remote.mac === f.ethernet.source) {
      if (tcp.flags & TCP_SYN && this.mismatched(f)) return
      c.receive(frame, f)
      this.touch(c)
      if (this.halfOpen.has(c) || this.unauthenticated.has(c)) this.updatePending(c)
      return
    }
    if (tcp.destinationPort !== this.listenPort && tcp.sourcePort !== this.peerPort) {
      this.drop('not-ours') // the host's own TCP traffic on this address
      return
    }
    if (tcp.flags & TCP_RST) {
      this.drop('no-connection')
      return
    }
    if ((tcp.flags & (TCP_SYN | TCP_ACK)) === TCP_SYN && tcp.destinationPort === this.listenPort) {
      this.acceptSyn(frame, f)
      return
    }
    this.drop('no-connection')
    // Sealed: nothing to authenticate an RST with, so segments for no connection get no answer.
    if (!this.sealed) this.sendReset(f)
  }

  /** Sends the ACKs owed for the frames received since the last flush. */
  flush(): void {
    const t = this.touched
    for (let i = 0; i < this.touchedCount; i++) {
      const c = t[i]!
      t[i] = undefined
      c.flush()
    }
    this.touchedCount = 0
  }

  nextDeadline(): number {
    let d = Number.POSITIVE_INFINITY
    for (const c of this.byRemote.values()) d = Math.min(d, c.nextDeadline())
    if (this.requireAuthentication) d = Math.min(d, this.oldestPending() + this.authTimeout)
    return d
  }

  /** Runs due timers of every connection. */
  tick(): void {
    const now = this.clock()
    if (this.requireAuthentication) {
      this.expirePending(this.halfOpen, now, false)
      this.expirePending(this.unauthenticated, now, true)
    }
    // Maps allow deleting while iterating: a connection that finishes here forgets itself.
    for (const c of this.byRemote.values()) {
      if (c.nextDeadline() <= now) c.tick()
      c.flush()
    }
  }

  /** Aborts the connections of `pending` that did not authenticate within authTimeout. */
  private expirePending(pending: Map<Connection, number>, now: number, sendReset: boolean): void {
    for (const [c, since] of pending) {
      if (now - since < this.authTimeout) continue
      this.stats.authTimeouts++
      pending.delete(c)
      c.abort('aborted', sendReset)
    }
  }

  /** Notes that `c` owes its flush. The newest entry is looked at first: a batch's frames mostly go to one connection. */
  private touch(c: Connection): void {
    const t = this.touched
    for (let i = this.touchedCount - 1; i >= 0; i--) if (t[i] === c) return
    t[this.touchedCount++] = c
  }

  private untouch(c: Connection): void {
    const t = this.touched
    const i = t.indexOf(c)
    if (i < 0 || i >= this.touchedCount) return
    t[i] = t[--this.touchedCount]
    t[this.touchedCount] = undefined
  }

  /** Aborts every connection (RST). */
  close(): void {
    for (const c of [...this.byRemote.values()]) c.abort('aborted')
  }

  /** A SYN or SYN-ACK of the other mode: dropped, counted, reported. */
  private mismatched(f: TcpFrame): boolean {
    const version = f.tcp.options.vrioVersion
    const other = this.sealed ? VRIO_PLAINTEXT_VERSION : VRIO_PROTOCOL_VERSION
    if (version !== other) return false
    this.stats.modeMismatch++
    this.onModeMismatch?.(
      { mac: f.ethernet.source, ip: f.ip.source, port: f.tcp.sourcePort },
      version === VRIO_PROTOCOL_VERSION,
    )
    return true
  }

  /** A SYN to the listen port; `colliding`: an unauthenticated connection on the same address and port. */
  private acceptSyn(frame: Uint8Array, f: TcpFrame, colliding?: Connection): void {
    if (this.peerAddress !== undefined && f.ip.source !== this.peerAddress) {
      this.drop('foreign-address')
      return
    }
    if (this.mismatched(f)) return
    const opts = f.tcp.options
    const sealed = this.sealed
    if (
      opts.vrioVersion !== (sealed ? VRIO_PROTOCOL_VERSION : VRIO_PLAINTEXT_VERSION) ||
      (sealed &&
        opts.vrioCipher !== SEAL_CIPHER_AES_256_GCM &&
        opts.vrioCipher !== SEAL_CIPHER_CHACHA20_POLY1305)
    ) {
      this.drop('not-vrio')
      if (!sealed) this.sendReset(f)
      return
    }
    // Sealed: the SYN is verified under the opener's epoch-0 key for its identity before any
    // state exists (or is evicted for it); one that fails leaves nothing behind and gets no answer.
    let seal: ChannelSeal | undefined
    if (sealed) {
      seal = this.verifySyn(frame, f)
      if (!seal) return
    }
    const remote: Address = { mac: f.ethernet.source, ip: f.ip.source, port: f.tcp.sourcePort }
    // The peer restarted, or one of the two SYNs is a forgery: neither may lock the other out, so
    // the newer one gets the place. (An authenticated connection keeps it: below.)
    if (colliding) this.evict(colliding)
    if (this.byRemote.has(key(remote.ip, remote.port))) {
      // Same address and port as a live connection but another MAC or port of ours: a forgery or
      // a stale duplicate. A genuine restart from the same port reaches the live connection and
      // resolves through its challenge ACK (RFC 5961).
      this.drop('connection-exists')
      seal?.destroy()
      return
    }
    // Room for the newcomer: the oldest half-open connection goes (silently: its SYN may have
    // been forged, and an RST would only reflect the flood). A flood therefore never keeps a
    // genuine SYN out; it can only shorten how long each half-open connection waits.
    if (this.halfOpen.size >= this.maxHalfOpen) {
      const [oldest] = this.halfOpen.keys()
      this.evict(oldest)
    }
    const c = this.newConnection(
      { mac: this.mac, ip: this.ip, port: f.tcp.destinationPort },
      remote,
      NO_HANDLERS,
      f,
      { seal },
    )
    const handlers = this.acceptHandler?.(remote, c)
    if (!handlers) {
      this.drop('refused')
      // Sealed, the refusal is an RST the connection seals; plaintext, the stateless one.
      if (sealed) c.abort('refused')
      else this.sendReset(f)
      return
    }
    c.setHandlers(handlers)
    this.byRemote.set(key(remote.ip, remote.port), c)
    this.stats.connectionsAccepted++
    if (this.requireAuthentication) c.requireAuthentication(this.preAuthReceiveBytes)
    this.halfOpen.set(c, this.clock())
    c.start()
  }

  /** The listener's key state for a SYN that verifies, else undefined (counted). */
  private verifySyn(frame: Uint8Array, f: TcpFrame): ChannelSeal | undefined {
    if (!f.tcp.options.seal.present) {
      this.stats.unsealed++
      return undefined
    }
    if (f.tcp.options.seal.epoch !== 0 || !this.key) {
      this.stats.badEpoch++
      return undefined
    }
    const seal = new ChannelSeal({
      role: 'listener',
      psk: this.key,
      cipher: f.tcp.options.vrioCipher as SealCipher,
      identity: sealIdentity(
        f.ip.source,
        f.ip.destination,
        f.tcp.sourcePort,
        f.tcp.destinationPort,
        f.tcp.seq,
      ),
      rekeyAfterFrames: this.options.rekeyAfterFrames,
      rekeyAfterBytes: this.options.rekeyAfterBytes,
    })
    seal.bindCounters(this.stats)
    if (seal.open(frame, f)) {
      seal.destroy()
      return undefined
    }
    return seal
  }

  /** After a segment reached an accepted, unauthenticated connection: moves it between the sets. */
  private updatePending(c: Connection): void {
    if (c.closed) return // onFinished forgot it
    if (c.state === 'syn-received') return
    const since = this.halfOpen.get(c)
    if (since !== undefined) {
      this.halfOpen.delete(c)
      if (this.requireAuthentication && !c.authenticated) {
        // Established: the peer saw our SYN-ACK. The oldest such connection makes room.
        if (this.unauthenticated.size >= this.maxUnauthenticated) {
          const [oldest] = this.unauthenticated.keys()
          this.evict(oldest)
        }
        this.unauthenticated.set(c, since)
      }
    }
    if (c.authenticated) this.unauthenticated.delete(c)
  }

  /** Drops an unauthenticated connection to make room (see acceptSyn, updatePending). */
  private evict(c: Connection): void {
    const halfOpen = this.halfOpen.delete(c)
    this.unauthenticated.delete(c)
    if (halfOpen) this.stats.evictedHalfOpen++
    else this.stats.evictedUnauthenticated++
    c.abort('aborted', !halfOpen)
  }

  private oldestPending(): number {
    let t = Number.POSITIVE_INFINITY
    for (const pending of [this.halfOpen, this.unauthenticated]) {
      for (const since of pending.values()) t = Math.min(t, since)
    }
    return t
  }

  private newConnection(
    local: Address,
    remote: Address,
    handlers: ConnectionHandlers,
    syn?: TcpFrame,
    keys: { psk?: Uint8Array; seal?: ChannelSeal } = {},
    options = this.options,
  ): Connection {
    return new Connection(
      {
        options,
        psk: keys.psk,
        seal: keys.seal,
        local,
        remote,
        handlers,
        sink: this.sink,
        allocate: this.allocate,
        clock: this.clock,
        random: this.random,
        onFinished: (c) => {
          const k = key(c.remote.ip, c.remote.port)
          if (this.byRemote.get(k) === c) this.byRemote.delete(k)
          this.untouch(c)
          this.halfOpen.delete(c)
          this.unauthenticated.delete(c)
        },
      },
      syn,
    )
  }

  /** RFC 793's reset for a segment that belongs to no connection. */
  private sendReset(f: TcpFrame): void {
    const now = this.clock()
    if (now - this.resetWindowStart >= 1000) {
      this.resetWindowStart = now
      this.resetsInWindow = 0
    }
    if (++this.resetsInWindow > RESETS_PER_SECOND) {
      this.drop('reset-rate-limited')
      return
    }
    const r = this.rstFrame
    r.ethernet.source = this.mac
    r.ethernet.destination = f.ethernet.source
    r.ip.source = this.ip
    r.ip.destination = f.ip.source
    r.ip.identification = 0
    r.tcp.sourcePort = f.tcp.destinationPort
    r.tcp.destinationPort = f.tcp.sourcePort
    clearTcpOptions(r.tcp.options)
    r.tcp.window = 0
    if (f.tcp.flags & TCP_ACK) {
      r.tcp.seq = f.tcp.ack
      r.tcp.ack = 0
      r.tcp.flags = TCP_RST
    } else {
      const length = f.payloadLength + (f.tcp.flags & TCP_SYN ? 1 : 0) + (f.tcp.flags & TCP_FIN ? 1 : 0)
      r.tcp.seq = 0
      r.tcp.ack = (f.tcp.seq + length) >>> 0
      r.tcp.flags = TCP_RST | TCP_ACK
    }
    // Like every frame the sink gets, with the link's headroom in front (see FrameSink).
    const headroom = this.options.headroom
    const frame = Buffer.alloc(headroom + 54).subarray(headroom)
    encodeTcpFrame(frame, r, 0, false)
    this.stats.resetsSent++
    this.sink(frame, 0)
  }

  private drop(reason: EndpointDropReason): void {
    this.stats.drops[reason] = (this.stats.drops[reason] ?? 0) + 1
  }
}

/** Connection lookup key: remote IPv4 and port in one exact integer (48 bits). */
function key(ip: number, port: number): number {
  return ip * 65_536 + port
}
