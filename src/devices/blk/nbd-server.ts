/**
 * The guest side of a vrio disk: an NBD server on a unix socket that serves named exports, each
 * backed by a BlockDevice, to the guest's own tools (qemu-img, qemu-io, nbdcopy, nbdinfo, fio's nbd
 * engine, nbdfuse, the kernel client).
 *
 * Protocol: fixed newstyle handshake only (NO_ZEROES honoured); options EXPORT_NAME, ABORT, LIST,
 * INFO, GO (INFO_EXPORT, INFO_BLOCK_SIZE, INFO_NAME), STRUCTURED_REPLY, and LIST/SET_META_CONTEXT
 * with one context, `base:allocation` (after structured replies); STARTTLS, EXTENDED_HEADERS and
 * unknown options get NBD_REP_ERR_UNSUP. Commands READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES
 * (FUA, NO_HOLE), CACHE (the device's prefetch, answered when it has started) and BLOCK_STATUS
 * (REQ_ONE; base:allocation from the device's extents: NBD_STATE_HOLE | NBD_STATE_ZERO for holes,
 * data where the device cannot tell), with simple or structured replies.
 *
 * Block sizes: minimum = the device's block size (requests must be aligned to it; unaligned ones
 * get EINVAL, except TRIM, which is rounded inwards), preferred = max(block size, 4096), maximum
 * = 32 MiB for READ and WRITE. TRIM and WRITE_ZEROES carry no payload and may be larger. A device
 * whose size is not a multiple of its block size (an odd-sized backing file) is served with a
 * minimum of 1: any offset and length, so its last partial block can be read and written.
 *
 * Multi-conn: CAN_MULTI_CONN is advertised (unless `multiConn: false`) because the server keeps no
 * cache of its own and every connection to an export talks to the same BlockDevice, whose contract
 * (device.ts) is that reads see all completed writes and flush() covers every write completed
 * before it, whichever connection sent it.
 *
 * Data path: the server accepts connections itself (native UnixListener) and wraps each in a
 * net.Socket that reads into one buffer of the server's (`onread`), not a new 64 KiB one per read:
 * at GB/s of writes those kept V8's mark-compact collector busy (15 % of the agent's main thread,
 * and four marking threads at 44 % of a CPU). Requests are parsed straight out of that buffer; a
 * write payload is copied once, as it arrives, into a pooled buffer of its size; what a read
 * leaves unparsed (part of a header, bytes held back by flow control) is copied before the buffer
 * is read into again. Replies produced in the same tick are corked into one writev. Up to `maxInflight`
 * requests (and `maxInflightBytes` of payload plus unsent replies) run at once per connection;
 * beyond that the server stops reading the socket until something completes — nothing is dropped.
 *
 * Hostile clients: protocol violations (bad magic, unknown client flags, oversized options or
 * write payloads, an unknown export with EXPORT_NAME) end that connection — after the replies to
 * requests already in flight — and never the server; bad requests get NBD errors.
 *
 * Modules: this one listens and keeps the connections and counters; nbd-connection.ts runs one
 * connection (socket, phases, flow control, output, the byte queue), nbd-negotiation.ts its
 * handshake options, nbd-transmission.ts its requests; nbd-protocol.ts holds the codecs and what
 * they share.
 */
import { closeSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import type { Logger } from '../../daemon/log.ts'
import { VrioError } from '../../errors.ts'
import type { NativeUnixListener } from '../../io/native.ts'
import { listenUnixConnections } from '../../io/unix-socket.ts'
import type { BlockDevice } from './device.ts'
import { Connection } from './nbd-connection.ts'
import { type NbdExportStats, newExportStats } from './nbd-protocol.ts'
import { BufferPool } from '../../transport/message-buffers.ts'

export { NBD_MAX_PAYLOAD, type NbdExportStats, nbdErrnoForError } from './nbd-protocol.ts'

const DEFAULT_MAX_INFLIGHT = 64
const DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
/** Memory the server keeps for write payloads given back (its free lists; what is out is in flight). */
const WRITE_PAYLOAD_POOL_BYTES = 8 * 1024 * 1024
/** The one buffer the connections' sockets read into (a read takes at most this much). */
const READ_BUFFER_BYTES = 1024 * 1024
/**
 * Each connection's socket send buffer: replies not yet read by the client count against it, and
 * the kernel's default (about 208 KiB) has a 1 MiB reply go out in five writes, each waiting for
 * the client to read.
 */
const SEND_BUFFER_BYTES = 4 * 1024 * 1024

export interface NbdServerOptions {
  /** Path of the unix socket (created 0600; its directory 0700 when missing). */
  path: string
  /** The device behind an export name ('' is the default export), or undefined if there is none. */
  lookup: (name: string) => BlockDevice | undefined
  /** Export names for NBD_OPT_LIST. Without it, listing is refused with NBD_REP_ERR_POLICY. */
  list?: () => Iterable<string>
  /** Requests in flight per connection. Default 64. */
  maxInflight?: number
  /**
   * Bytes of read/write payload in flight plus replies not yet taken by the socket, per connection;
   * one request is always admitted when nothing else is in flight. Default 64 MiB.
   */
  maxInflightBytes?: number
  /** A connection that has not reached the transmission phase by then is closed. Default 30 s. */
  handshakeTimeoutMs?: number
  /** How long close() waits for in-flight requests before cutting connections. Default 5 s. */
  closeGraceMs?: number
  /** Advertise NBD_FLAG_CAN_MULTI_CONN (see the module comment). Default true. */
  multiConn?: boolean
  /** Further connections are refused while this many are open. Default 256. */
  maxConnections?: number
  log?: Logger
}

export interface NbdServerStats {
  /** Open connections, in any phase. */
  connections: number
  /** Connections that reached the transmission phase. */
  handshakesCompleted: number
  /** Connections that ended before it (listing, ABORT, refusals, failures, timeouts). */
  endedBeforeTransmission: number
  /** Connections closed for breaking the protocol. */
  protocolErrors: number
  /** Connections closed as they came, while maxConnections were open. */
  refused: number
  /** Accepts that failed for want of something (EMFILE...), each followed by a 200 ms pause. */
  acceptErrors: number
  exports: Record<string, NbdExportStats>
}

export class NbdServer {
  readonly path: string
  readonly maxInflight: number
  readonly maxInflightBytes: number
  /** @internal */ readonly options: NbdServerOptions
  /** @internal */ readonly log: Logger | undefined
  /** @internal */ readonly handshakeTimeoutMs: number
  /** @internal */ readonly multiConn: boolean
  private readonly closeGraceMs: number
  private readonly maxConnections: number
  private server: NativeUnixListener | undefined
  /**
   * @internal Every connection's socket reads into this one buffer: each read is parsed, and what
   * it leaves is copied, before the callback returns (reads never overlap on the event loop).
   */
  readonly readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES)
  private readonly connections = new Set<Connection>()
  private readonly exportStats = new Map<string, NbdExportStats>()
  /**
   * @internal Buffers for write payloads (copied out of the read buffer as they arrive), taken
   * back once the device has written them: a fresh 1 MiB buffer per write kept the collector busy
   * (a third of the agent's CPU at 600 MB/s of 1 MiB writes).
   */
  readonly writePayloads = new BufferPool(WRITE_PAYLOAD_POOL_BYTES)
  /** @internal */ readonly counters = {
    handshakesCompleted: 0,
    endedBeforeTransmission: 0,
    protocolErrors: 0,
    refused: 0,
    acceptErrors: 0,
  }
  private closing: Promise<void> | undefined

  constructor(options: NbdServerOptions) {
    this.options = options
    this.path = options.path
    this.maxInflight = options.maxInflight ?? DEFAULT_MAX_INFLIGHT
    this.maxInflightBytes = options.maxInflightBytes ?? DEFAULT_MAX_INFLIGHT_BYTES
    if (!Number.isSafeInteger(this.maxInflight) || this.maxInflight < 1)
      throw new RangeError(`maxInflight must be a positive integer, not ${this.maxInflight}`)
    if (!Number.isSafeInteger(this.maxInflightBytes) || this.maxInflightBytes < 1)
      throw new RangeError(`maxInflightBytes must be a positive integer, not ${this.maxInflightBytes}`)
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 30_000
    this.closeGraceMs = options.closeGraceMs ?? 5000
    this.multiConn = options.multiConn ?? true
    this.maxConnections = options.maxConnections ?? 256
    this.log = options.log
  }

  get listening(): boolean {
    return this.server !== undefined
  }

  /**
   * Creates the socket's directory (0700) if missing, replaces a stale socket left by a dead
   * process, refuses with 'nbd-socket-in-use' when a live process answers on the path, then
   * listens with the socket at mode 0600.
   */
  async listen(): Promise<void> {
    if (this.server || this.closing)
      throw new VrioError('invalid-state', `NBD server on ${this.path} is already listening or closed`)
    this.server = await listenUnixConnections(this.path, 'nbd', (fd) => this.accept(fd), {
      sendBuffer: SEND_BUFFER_BYTES,
      onAcceptError: (error) => {
        this.counters.acceptErrors++
        this.log?.warn('NBD server cannot accept a connection', { path: this.path, error })
      },
    })
    this.log?.info('NBD server listening', { path: this.path })
  }

  /**
   * Stops accepting, answers requests already in flight (new ones get ESHUTDOWN), closes every
   * connection once it is idle or after closeGraceMs, and removes the socket. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose()
    return this.closing
  }

  /**
   * Ends every connection to `name` the way close() does (for a disk being removed). Resolves
   * when they are gone; the server keeps listening.
   */
  async disconnectExport(name: string): Promise<void> {
    const targets = [...this.connections].filter((c) => c.exportName === name)
    await this.shutdownConnections(targets)
  }

  stats(): NbdServerStats {
    const exports: Record<string, NbdExportStats> = {}
    for (const [name, s] of this.exportStats)
      exports[name] = { ...s, requests: { ...s.requests }, errors: { ...s.errors } }
    return { connections: this.connections.size, ...this.counters, exports }
  }

  /** @internal */
  statsFor(name: string): NbdExportStats {
    let s = this.exportStats.get(name)
    if (!s) {
      s = newExportStats()
      this.exportStats.set(name, s)
    }
    return s
  }

  /** @internal */
  forget(connection: Connection): void {
    this.connections.delete(connection)
  }

  private accept(fd: number): void {
    if (this.closing || this.connections.size >= this.maxConnections) {
      closeSync(fd)
      if (!this.closing) {
        this.counters.refused++
        this.log?.warn('NBD connection refused: too many connections', {
          path: this.path,
          open: this.connections.size,
          refused: this.counters.refused,
        })
      }
      return
    }
    let connection: Connection
    try {
      connection = new Connection(this, fd)
    } catch (error) {
      // Node could not wrap the descriptor (it owns nothing yet): close it, keep listening.
      closeSync(fd)
      this.log?.error('NBD connection could not be set up', { path: this.path, error })
      return
    }
    this.connections.add(connection)
    connection.start()
  }

  private async doClose(): Promise<void> {
    const server = this.server
    this.server = undefined
    server?.close()
    await this.shutdownConnections([...this.connections])
    if (server) {
      await rm(this.path, { force: true })
      this.log?.info('NBD server closed', { path: this.path })
    }
  }

  private async shutdownConnections(targets: Connection[]): Promise<void> {
    if (targets.length === 0) return
    const timer = setTimeout(() => {
      for (const c of targets) c.destroy('close grace period over')
    }, this.closeGraceMs)
    timer.unref()
    await Promise.all(targets.map((c) => c.shutdown()))
    clearTimeout(timer)
  }
}
