import { listenUnixSocket } from '../../io/unix-socket.ts'
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
 * Data path: requests are parsed straight out of the socket's chunks; a write payload that sits in
 * one chunk is passed on as a view, a larger one is copied once into a buffer of its exact size as
 * chunks arrive. Replies produced in the same tick are corked into one writev. Up to `maxInflight`
 * requests (and `maxInflightBytes` of payload plus unsent replies) run at once per connection;
 * beyond that the server stops reading the socket until something completes — nothing is dropped.
 *
 * Hostile clients: protocol violations (bad magic, unknown client flags, oversized options or
 * write payloads, an unknown export with EXPORT_NAME) end that connection — after the replies to
 * requests already in flight — and never the server; bad requests get NBD errors.
 */
import { rm } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import type { Logger } from '../../daemon/log.ts'
import { VrioError } from '../../errors.ts'
import { type BlockDevice, deviceExtents, MAX_EXTENTS } from './device.ts'
import {
  ClientFlag,
  Command,
  CommandFlag,
  commandName,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  decodeString,
  encodeBlockStatusReply,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOffsetDataHeader,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
  encodeStructuredError,
  encodeStructuredNone,
  HandshakeFlag,
  InfoType,
  NbdErrno,
  type NbdRequest,
  nbdErrnoName,
  newRequest,
  Option,
  OptionReply,
  OPTION_HEADER_LENGTH,
  REQUEST_HEADER_LENGTH,
  TransmissionFlag,
  BASE_ALLOCATION,
} from './nbd-protocol.ts'

/** Largest READ or WRITE (the maximum block size advertised; 2^25 is what every client expects). */
export const NBD_MAX_PAYLOAD = 32 * 1024 * 1024
/** Option data longer than this is treated as an attack: the connection is closed. */
export const NBD_MAX_OPTION_LENGTH = 64 * 1024
/** Options one connection may send before it is considered abusive. */
export const NBD_MAX_OPTIONS = 1024

export const DEFAULT_MAX_INFLIGHT = 64
export const DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024

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

export interface NbdRequestCounts {
  read: number
  write: number
  flush: number
  trim: number
  writeZeroes: number
  blockStatus: number
  cache: number
  disconnect: number
  other: number
}

export interface NbdExportStats {
  /** Connections in the transmission phase on this export now, and since the server started. */
  connections: number
  connectionsTotal: number
  requests: NbdRequestCounts
  bytesRead: number
  bytesWritten: number
  bytesTrimmed: number
  bytesZeroed: number
  /** Error replies by NBD errno name ('EIO', 'EINVAL', 'EPERM', 'ENOSPC', 'ESHUTDOWN', ...). */
  errors: Record<string, number>
  /** Most requests in flight at once on one connection. */
  inflightHighWater: number
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
  exports: Record<string, NbdExportStats>
}

/**
 * The NBD error for a failure: VrioError codes of the BlockDevice contract map to the errno the
 * spec suggests; anything else (a bug in a device) is EIO.
 */
export function nbdErrnoForError(error: unknown): number {
  if (error instanceof VrioError) {
    switch (error.code) {
      case 'read-only':
        return NbdErrno.EPERM
      case 'out-of-range':
      case 'unsupported':
      case 'invalid-argument':
        return NbdErrno.EINVAL
      case 'no-space':
        return NbdErrno.ENOSPC
      case 'not-connected':
        return NbdErrno.ESHUTDOWN
      default:
        return NbdErrno.EIO
    }
  }
  return NbdErrno.EIO
}

function newExportStats(): NbdExportStats {
  return {
    connections: 0,
    connectionsTotal: 0,
    requests: {
      read: 0,
      write: 0,
      flush: 0,
      trim: 0,
      writeZeroes: 0,
      blockStatus: 0,
      cache: 0,
      disconnect: 0,
      other: 0,
    },
    bytesRead: 0,
    bytesWritten: 0,
    bytesTrimmed: 0,
    bytesZeroed: 0,
    errors: {},
    inflightHighWater: 0,
  }
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
  private server: Server | undefined
  private readonly connections = new Set<Connection>()
  private readonly exportStats = new Map<string, NbdExportStats>()
  /** @internal */ readonly counters = {
    handshakesCompleted: 0,
    endedBeforeTransmission: 0,
    protocolErrors: 0,
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
    return this.server?.listening ?? false
  }

  /**
   * Creates the socket's directory (0700) if missing, replaces a stale socket left by a dead
   * process, refuses with 'nbd-socket-in-use' when a live process answers on the path, then
   * listens with the socket at mode 0600.
   */
  async listen(): Promise<void> {
    if (this.server || this.closing)
      throw new VrioError('invalid-state', `NBD server on ${this.path} is already listening or closed`)
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) =>
      this.accept(socket),
    )
    server.maxConnections = this.maxConnections
    await listenUnixSocket(server, this.path, 'nbd')
    server.on('error', (error) => this.log?.error('NBD server socket error', { path: this.path, error }))
    server.on('drop', () =>
      this.log?.warn('NBD connection refused: too many connections', { path: this.path }),
    )
    this.server = server
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

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy()
      return
    }
    const connection = new Connection(this, socket)
    this.connections.add(connection)
    connection.start()
  }

  private async doClose(): Promise<void> {
    const server = this.server
    this.server = undefined
    const stopped = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve()
    await this.shutdownConnections([...this.connections])
    await stopped
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

// ---------------------------------------------------------------------------------------------

/** Received bytes as a queue of the socket's own chunks: nothing is joined unless it must be. */
class ByteQueue {
  private bufs: Buffer[] = []
  private head = 0
  length = 0

  push(chunk: Buffer): void {
    if (chunk.length === 0) return
    this.bufs.push(chunk)
    this.length += chunk.length
  }

  /** The first `n` bytes as one view; copied into `scratch` only when they straddle chunks. */
  peek(n: number, scratch: Buffer): Buffer {
    const first = this.bufs[0]
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n)
    this.copy(scratch, 0, n, false)
    return scratch
  }

  /** Removes and returns `n` bytes: a view of one chunk when possible, else one exact-size copy. */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0)
    const first = this.bufs[0]
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n)
      this.skip(n)
      return view
    }
    const out = Buffer.allocUnsafe(n)
    this.copy(out, 0, n, true)
    return out
  }

  skip(n: number): void {
    this.length -= n
    while (n > 0) {
      const first = this.bufs[0]
      const here = first.length - this.head
      if (n < here) {
        this.head += n
        return
      }
      n -= here
      this.bufs.shift()
      this.head = 0
    }
  }

  /** Moves up to `n` bytes into `dest` at `at`; returns how many moved. */
  drainInto(dest: Uint8Array, at: number, n: number): number {
    const moved = Math.min(n, this.length)
    this.copy(dest, at, moved, true)
    return moved
  }

  private copy(dest: Uint8Array, at: number, n: number, consume: boolean): void {
    let i = 0
    let head = this.head
    let done = 0
    while (done < n) {
      const buf = this.bufs[i]
      const take = Math.min(buf.length - head, n - done)
      dest.set(buf.subarray(head, head + take), at + done)
      done += take
      head += take
      if (head === buf.length) {
        i++
        head = 0
      }
    }
    if (consume) {
      this.bufs.splice(0, i)
      this.head = head
      this.length -= n
    }
  }
}

interface Export {
  name: string
  device: BlockDevice
  size: number
  blockSize: number
  flags: number
  stats: NbdExportStats
}

/** A request between admission and its reply. */
interface Pending {
  type: number
  flags: number
  cookieHigh: number
  cookieLow: number
  offset: number
  length: number
  /** Counted against maxInflightBytes. */
  cost: number
}

/** A write whose payload is still arriving. */
interface Payload {
  request: Pending
  /** Undefined when the payload is being discarded (the request is refused with `errno`). */
  buffer: Buffer | undefined
  filled: number
  errno: number
  message: string
}

type Phase = 'greeting' | 'options' | 'transmission' | 'ending'

/** The id this server gives base:allocation in NBD_OPT_SET_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1

/** Option replies a client has not read yet; past this the server stops reading its options. */
const HANDSHAKE_OUTPUT_LIMIT = 1024 * 1024

const ALLOWED_CLIENT_FLAGS = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes

class Connection {
  private readonly server: NbdServer
  private readonly socket: Socket
  private readonly rx = new ByteQueue()
  private readonly scratch = Buffer.alloc(32)
  private readonly header: NbdRequest = newRequest()
  private phase: Phase = 'greeting'
  private fixed = false
  private noZeroes = false
  private structured = false
  /** The export base:allocation was selected for (NBD_OPT_SET_META_CONTEXT), if it was. */
  private allocationFor: string | undefined
  /** base:allocation is active on the export in use (BLOCK_STATUS is answered). */
  private allocation = false
  private optionCount = 0
  private export: Export | undefined
  private payload: Payload | undefined
  private inflight = 0
  private inflightBytes = 0
  /** No more requests will be read: DISC, client EOF, a protocol violation or shutdown. */
  private draining = false
  private shuttingDown = false
  private pumping = false
  private corked = false
  private closed = false
  private handshakeTimer: NodeJS.Timeout | undefined
  private readonly closedPromise: Promise<void>
  private resolveClosed: () => void = () => {}

  constructor(server: NbdServer, socket: Socket) {
    this.server = server
    this.socket = socket
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve))
  }

  get exportName(): string | undefined {
    return this.export?.name
  }

  start(): void {
    const socket = this.socket
    socket.on('data', (chunk: Buffer) => {
      this.rx.push(chunk)
      this.pump()
    })
    socket.on('end', () => this.onEnd())
    socket.on('drain', () => this.pump())
    socket.on('error', (error) => this.server.log?.debug('NBD connection error', { error }))
    socket.on('close', () => this.onClose())
    this.handshakeTimer = setTimeout(() => {
      this.server.log?.warn('NBD handshake timed out', { ms: this.server.handshakeTimeoutMs })
      this.destroy('handshake timeout')
    }, this.server.handshakeTimeoutMs)
    this.handshakeTimer.unref()
    this.send(encodeGreeting(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes))
  }

  /** Server shutdown: finish what is in flight, refuse the rest with ESHUTDOWN, then close. */
  shutdown(): Promise<void> {
    if (!this.closed) {
      this.shuttingDown = true
      if (this.phase !== 'transmission') this.end()
      else this.maybeFinish()
    }
    return this.closedPromise
  }

  destroy(reason: string): void {
    if (this.closed) return
    this.server.log?.debug('NBD connection destroyed', { reason, export: this.export?.name })
    this.socket.destroy()
  }

  // -------------------------------------------------------------------------------------------
  // Input

  private pump(): void {
    if (this.pumping || this.closed) return
    this.pumping = true
    try {
      while (!this.closed && this.step()) {}
    } finally {
      this.pumping = false
    }
    this.updateFlow()
  }

  /** Handles one unit of input; false when it needs more bytes or must wait. */
  private step(): boolean {
    if (this.payload) return this.fillPayload()
    switch (this.phase) {
      case 'greeting':
        return this.clientFlags()
      case 'options':
        return this.nextOption()
      case 'transmission':
        return this.nextRequest()
      default:
        return false
    }
  }

  private updateFlow(): void {
    if (this.closed) return
    const wantMore =
      this.payload !== undefined ||
      (this.phase === 'transmission'
        ? !this.draining && this.canAdmit(0)
        : this.phase !== 'ending' && this.socket.writableLength <= HANDSHAKE_OUTPUT_LIMIT)
    if (wantMore) this.socket.resume()
    else this.socket.pause()
  }

  private canAdmit(cost: number): boolean {
    if (this.inflight >= this.server.maxInflight) return false
    if (this.inflight === 0 && this.socket.writableLength === 0) return true
    return this.inflightBytes + cost + this.socket.writableLength <= this.server.maxInflightBytes
  }

  private onEnd(): void {
    // The client will send nothing more; answer what is in flight, then close our side too.
    this.draining = true
    if (this.payload) {
      // A write cut short by EOF can never be answered.
      const p = this.payload.request
      this.payload = undefined
      this.inflight--
      this.inflightBytes -= p.cost
      this.server.counters.protocolErrors++
    }
    if (this.phase !== 'transmission') this.end()
    else this.maybeFinish()
  }

  private onClose(): void {
    this.closed = true
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer)
    if (this.phase === 'greeting' || this.phase === 'options') this.server.counters.endedBeforeTransmission++
    if (this.export) this.export.stats.connections--
    this.server.forget(this)
    this.resolveClosed()
  }

  /** Closes after flushing what was written. */
  private end(): void {
    if (this.closed || this.phase === 'ending') return
    if (this.phase !== 'transmission') this.server.counters.endedBeforeTransmission++
    this.phase = 'ending'
    this.draining = true
    this.uncork()
    // Once our last bytes are in the kernel the socket is closed without waiting for the client's
    // EOF (on a unix socket what was written stays readable by the peer).
    this.socket.end(() => this.socket.destroy())
    // A client that never reads would keep the socket (and its unsent replies) forever.
    const timer = setTimeout(() => this.socket.destroy(), 10_000)
    timer.unref()
    this.socket.once('close', () => clearTimeout(timer))
  }

  private violation(message: string): false {
    this.server.counters.protocolErrors++
    this.server.log?.warn('NBD protocol violation; closing the connection', {
      message,
      export: this.export?.name,
    })
    this.draining = true
    if (this.phase === 'transmission') this.maybeFinish()
    else this.end()
    return false
  }

  // -------------------------------------------------------------------------------------------
  // Handshake

  private clientFlags(): boolean {
    if (this.rx.length < 4) return false
    const flags = this.rx.peek(4, this.scratch).readUInt32BE(0)
    this.rx.skip(4)
    if ((flags & ~ALLOWED_CLIENT_FLAGS) !== 0)
      return this.violation(`unknown client flags 0x${flags.toString(16)}`)
    this.fixed = (flags & ClientFlag.FixedNewstyle) !== 0
    this.noZeroes = (flags & ClientFlag.NoZeroes) !== 0
    this.phase = 'options'
    return true
  }

  private nextOption(): boolean {
    if (this.rx.length < OPTION_HEADER_LENGTH) return false
    const header = decodeOptionHeader(this.rx.peek(OPTION_HEADER_LENGTH, this.scratch))
    if (!header) return this.violation('bad option magic')
    if (header.length > NBD_MAX_OPTION_LENGTH)
      return this.violation(`option ${header.option} carries ${header.length} bytes`)
    if (this.rx.length < OPTION_HEADER_LENGTH + header.length) return false
    this.rx.skip(OPTION_HEADER_LENGTH)
    const data = this.rx.take(header.length)
    if (++this.optionCount > NBD_MAX_OPTIONS) return this.violation('too many options')
    if (!this.fixed && header.option !== Option.ExportName)
      return this.violation(`option ${header.option} from a client without fixed newstyle`)
    this.option(header.option, data)
    return true
  }

  private option(option: number, data: Buffer): void {
    const reply = (type: number, payload?: Uint8Array | string) =>
      this.send(encodeOptionReply(option, type, payload))
    if (this.shuttingDown && option !== Option.Abort && option !== Option.ExportName) {
      reply(OptionReply.ErrShutdown, 'the server is shutting down')
      return
    }
    switch (option) {
      case Option.ExportName: {
        const name = decodeString(data)
        const device = name === undefined || this.shuttingDown ? undefined : this.lookup(name)
        if (name === undefined || !device) {
          // EXPORT_NAME cannot carry an error: the spec's answer is to drop the connection.
          this.server.log?.info('NBD client asked for an unknown export', { name })
          this.end()
          return
        }
        const exp = this.describe(name, device)
        this.send(encodeExportNameReply(exp.size, exp.flags, this.noZeroes))
        this.enterTransmission(exp)
        return
      }
      case Option.Abort:
        reply(OptionReply.Ack)
        this.end()
        return
      case Option.List: {
        if (data.length !== 0) {
          reply(OptionReply.ErrInvalid, 'NBD_OPT_LIST takes no data')
          return
        }
        const list = this.server.options.list
        if (!list) {
          reply(OptionReply.ErrPolicy, 'listing exports is disabled on this server')
          return
        }
        let names: string[]
        try {
          names = [...list()]
        } catch (error) {
          this.server.log?.warn('NBD export listing failed', { error })
          reply(OptionReply.ErrPlatform, 'cannot list exports')
          return
        }
        for (const name of names) reply(OptionReply.Server, encodeServerEntry(name))
        reply(OptionReply.Ack)
        return
      }
      case Option.Info:
      case Option.Go: {
        const request = decodeInfoRequest(data)
        if (!request.ok) {
          reply(OptionReply.ErrInvalid, request.message)
          return
        }
        const device = this.lookup(request.name)
        if (!device) {
          reply(OptionReply.ErrUnknown, `no export named ${JSON.stringify(request.name)}`)
          return
        }
        const exp = this.describe(request.name, device)
        reply(OptionReply.Info, encodeInfoExport(exp.size, exp.flags))
        // Sent even when not asked for: clients must ignore what they did not request, and the ones
        // that matter (qemu, libnbd) ask for it anyway.
        reply(
          OptionReply.Info,
          encodeInfoBlockSize(exp.blockSize, Math.max(exp.blockSize, 4096), NBD_MAX_PAYLOAD),
        )
        if (request.requests.includes(InfoType.Name))
          reply(OptionReply.Info, encodeInfoString(InfoType.Name, request.name))
        reply(OptionReply.Ack)
        if (option === Option.Go) this.enterTransmission(exp)
        return
      }
      case Option.StructuredReply:
        if (data.length !== 0) {
          reply(OptionReply.ErrInvalid, 'NBD_OPT_STRUCTURED_REPLY takes no data')
          return
        }
        this.structured = true
        reply(OptionReply.Ack)
        return
      case Option.ListMetaContext:
      case Option.SetMetaContext: {
        if (!this.structured) {
          reply(OptionReply.ErrInvalid, 'structured replies must be negotiated first')
          return
        }
        const request = decodeMetaContextRequest(data)
        if (!request.ok) {
          reply(OptionReply.ErrInvalid, request.message)
          return
        }
        if (!this.lookup(request.name)) {
          reply(OptionReply.ErrUnknown, `no export named ${JSON.stringify(request.name)}`)
          return
        }
        // One context exists: base:allocation. LIST matches it by its full name, by its namespace
        // ('base:') or with no query at all; SET selects it by its full name only. Queries for
        // other namespaces match nothing (they are not errors).
        const set = option === Option.SetMetaContext
        const wanted = request.queries.some((q) =>
          set ? q === BASE_ALLOCATION : q === BASE_ALLOCATION || q === 'base:',
        )
        if (wanted || (!set && request.queries.length === 0))
          reply(OptionReply.MetaContext, encodeMetaContext(set ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION))
        // A SET replaces what an earlier one selected.
        if (set) this.allocationFor = wanted ? request.name : undefined
        reply(OptionReply.Ack)
        return
      }
      case Option.StartTls:
        reply(OptionReply.ErrUnsup, 'TLS is not supported on this unix socket')
        return
      default:
        reply(OptionReply.ErrUnsup, `option ${option} is not supported`)
        return
    }
  }

  private lookup(name: string): BlockDevice | undefined {
    try {
      return this.server.options.lookup(name)
    } catch (error) {
      this.server.log?.warn('NBD export lookup failed', { name, error })
      return undefined
    }
  }

  private describe(name: string, device: BlockDevice): Export {
    const writable = !device.readOnly
    let flags = TransmissionFlag.HasFlags
    if (device.readOnly) flags |= TransmissionFlag.ReadOnly
    if (device.canFlush) flags |= TransmissionFlag.SendFlush
    if (writable && (device.canFua || device.canFlush)) flags |= TransmissionFlag.SendFua
    if (writable && device.canTrim) flags |= TransmissionFlag.SendTrim
    if (writable && device.canWriteZeroes) flags |= TransmissionFlag.SendWriteZeroes
    if (this.structured) flags |= TransmissionFlag.SendDf
    if (this.server.multiConn) flags |= TransmissionFlag.CanMultiConn
    // Cache is a hint: answered after the device's prefetch, or at once when it has none.
    flags |= TransmissionFlag.SendCache
    // An odd-sized device (a backing file whose size is not a multiple of its block size) is
    // served byte-granular, so its tail is reachable: NBD clients round an export down to its
    // minimum block size.
    const blockSize = device.blockSize > 0 && device.size % device.blockSize === 0 ? device.blockSize : 1
    return {
      name,
      device,
      size: device.size,
      blockSize,
      flags,
      stats: this.server.statsFor(name),
    }
  }

  private enterTransmission(exp: Export): void {
    this.export = exp
    this.phase = 'transmission'
    // Contexts are selected for one export: a GO to another one has none.
    this.allocation = this.structured && this.allocationFor === exp.name
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer)
    this.handshakeTimer = undefined
    exp.stats.connections++
    exp.stats.connectionsTotal++
    this.server.counters.handshakesCompleted++
    this.server.log?.debug('NBD client attached', { export: exp.name, structured: this.structured })
  }

  // -------------------------------------------------------------------------------------------
  // Transmission

  private nextRequest(): boolean {
    if (this.draining || this.rx.length < REQUEST_HEADER_LENGTH) return false
    const r = this.header
    if (!decodeRequest(this.rx.peek(REQUEST_HEADER_LENGTH, this.scratch), 0, r))
      return this.violation('bad request magic')
    if (r.type === Command.Disc) {
      this.rx.skip(REQUEST_HEADER_LENGTH)
      this.export!.stats.requests.disconnect++
      this.draining = true
      this.maybeFinish()
      return false
    }
    if (r.type === Command.Write && r.length > NBD_MAX_PAYLOAD)
      return this.violation(`write of ${r.length} bytes exceeds the ${NBD_MAX_PAYLOAD}-byte maximum`)
    const cost = r.type === Command.Read || r.type === Command.Write ? Math.min(r.length, NBD_MAX_PAYLOAD) : 0
    if (!this.canAdmit(cost)) return false
    this.rx.skip(REQUEST_HEADER_LENGTH)

    const p: Pending = {
      type: r.type,
      flags: r.flags,
      cookieHigh: r.cookieHigh,
      cookieLow: r.cookieLow,
      offset: r.offset,
      length: r.length,
      cost,
    }
    const exp = this.export!
    const counts = exp.stats.requests
    const name = commandName(r.type) as keyof NbdRequestCounts
    if (name in counts) counts[name]++
    else counts.other++
    this.inflight++
    this.inflightBytes += cost
    if (this.inflight > exp.stats.inflightHighWater) exp.stats.inflightHighWater = this.inflight

    if (this.shuttingDown) {
      if (p.type === Command.Write) this.startPayload(p, NbdErrno.ESHUTDOWN, 'the server is shutting down')
      else this.fail(p, NbdErrno.ESHUTDOWN, 'the server is shutting down')
      return true
    }
    switch (p.type) {
      case Command.Read:
        this.read(p)
        break
      case Command.Write: {
        const [errno, message] = this.checkWrite(p, CommandFlag.Fua)
        this.startPayload(p, errno, message)
        break
      }
      case Command.Flush:
        this.flush(p)
        break
      case Command.Trim:
        this.trim(p)
        break
      case Command.WriteZeroes:
        this.writeZeroes(p)
        break
      case Command.BlockStatus:
        this.blockStatus(p)
        break
      case Command.Cache:
        this.cache(p)
        break
      default:
        this.fail(p, NbdErrno.EINVAL, `unknown command ${p.type}`)
    }
    return true
  }

  /** [0, ''] when `flags` only holds bits from `allowed` (FUA only when advertised). */
  private checkFlags(p: Pending, allowed: number): [number, string] {
    let ok = allowed
    if (!(this.export!.flags & TransmissionFlag.SendFua)) ok &= ~CommandFlag.Fua
    if (!this.structured) ok &= ~CommandFlag.Df
    if ((p.flags & ~ok) !== 0)
      return [NbdErrno.EINVAL, `flags 0x${p.flags.toString(16)} are not valid for ${commandName(p.type)}`]
    return [0, '']
  }

  /** Checks shared by WRITE and WRITE_ZEROES. */
  private checkWrite(p: Pending, allowedFlags: number): [number, string] {
    const exp = this.export!
    if (exp.device.readOnly) return [NbdErrno.EPERM, 'the export is read-only']
    const flags = this.checkFlags(p, allowedFlags)
    if (flags[0]) return flags
    if (p.offset + p.length > exp.size)
      return [NbdErrno.ENOSPC, 'the request goes past the end of the export']
    if (p.offset % exp.blockSize !== 0 || p.length % exp.blockSize !== 0)
      return [NbdErrno.EINVAL, `the request is not aligned to ${exp.blockSize} bytes`]
    return [0, '']
  }

  private read(p: Pending): void {
    const exp = this.export!
    const [errno, message] = this.checkFlags(p, CommandFlag.Fua | CommandFlag.Df)
    if (errno) {
      this.fail(p, errno, message)
      return
    }
    if (p.length > NBD_MAX_PAYLOAD) {
      this.fail(p, NbdErrno.EINVAL, `reads are limited to ${NBD_MAX_PAYLOAD} bytes`)
      return
    }
    if (p.offset + p.length > exp.size) {
      this.fail(p, NbdErrno.EINVAL, 'the request goes past the end of the export')
      return
    }
    if (p.offset % exp.blockSize !== 0 || p.length % exp.blockSize !== 0) {
      this.fail(p, NbdErrno.EINVAL, `the request is not aligned to ${exp.blockSize} bytes`)
      return
    }
    if (p.length === 0) {
      this.readDone(p, new Uint8Array(0))
      return
    }
    this.call(
      p,
      () => exp.device.read(p.offset, p.length),
      (data: Uint8Array) => this.readDone(p, data),
    )
  }

  private readDone(p: Pending, data: Uint8Array): void {
    if (data.length !== p.length) {
      this.server.log?.error('NBD device returned the wrong amount of data', {
        export: this.export?.name,
        expected: p.length,
        got: data.length,
      })
      this.fail(p, NbdErrno.EIO, 'the device returned a short read')
      return
    }
    this.export!.stats.bytesRead += data.length
    if (this.structured) {
      if (data.length === 0) this.send(encodeStructuredNone(p.cookieHigh, p.cookieLow))
      else {
        this.send(encodeOffsetDataHeader(p.cookieHigh, p.cookieLow, p.offset, data.length, true))
        this.sendRead(data)
      }
    } else {
      this.send(encodeSimpleReply(p.cookieHigh, p.cookieLow, 0))
      if (data.length > 0) this.sendRead(data)
    }
    this.complete(p)
  }

  /** Queues what the device read; once written, a device that pools gets it back (no other does). */
  private sendRead(data: Uint8Array): void {
    const device = this.export!.device
    if (device.release) this.send(data, () => device.release!(data))
    else this.send(data)
  }

  private startPayload(p: Pending, errno: number, message: string): void {
    const payload: Payload = { request: p, buffer: undefined, filled: 0, errno, message }
    if (errno === 0 && p.length > 0) {
      if (this.rx.length >= p.length) {
        // Usually the whole payload is already here, often inside one chunk: take it as a view.
        payload.buffer = this.rx.take(p.length)
        payload.filled = p.length
      } else {
        payload.buffer = Buffer.allocUnsafe(p.length)
      }
    }
    this.payload = payload
  }

  /** Moves received bytes into (or past) the current write payload; true once it is complete. */
  private fillPayload(): boolean {
    const payload = this.payload!
    const p = payload.request
    const missing = p.length - payload.filled
    if (missing > 0) {
      if (this.rx.length === 0) return false
      if (payload.buffer) payload.filled += this.rx.drainInto(payload.buffer, payload.filled, missing)
      else {
        const n = Math.min(missing, this.rx.length)
        this.rx.skip(n)
        payload.filled += n
      }
      if (payload.filled < p.length) return false
    }
    this.payload = undefined
    if (payload.errno) {
      this.fail(p, payload.errno, payload.message)
      return true
    }
    const exp = this.export!
    const data = payload.buffer ?? new Uint8Array(0)
    if (data.length === 0) {
      this.ok(p)
      return true
    }
    const fua = (p.flags & CommandFlag.Fua) !== 0
    this.call(
      p,
      () => this.withFua(fua, (nativeFua) => exp.device.write(p.offset, data, nativeFua)),
      () => {
        exp.stats.bytesWritten += data.length
        this.ok(p)
      },
    )
    return true
  }

  /** Runs `op` with FUA passed through when the device has it, else followed by a flush. */
  private async withFua(fua: boolean, op: (nativeFua: boolean) => Promise<void>): Promise<void> {
    const device = this.export!.device
    if (!fua || device.canFua) return op(fua)
    await op(false)
    if (device.canFlush) await device.flush()
  }

  private flush(p: Pending): void {
    const exp = this.export!
    const [errno, message] = this.checkFlags(p, CommandFlag.Fua)
    if (errno) {
      this.fail(p, errno, message)
      return
    }
    if (!(exp.flags & TransmissionFlag.SendFlush)) {
      this.fail(p, NbdErrno.EINVAL, 'flush is not supported by this export')
      return
    }
    if (p.offset !== 0 || p.length !== 0) {
      this.fail(p, NbdErrno.EINVAL, 'flush offset and length must be zero')
      return
    }
    this.call(
      p,
      () => exp.device.flush(),
      () => this.ok(p),
    )
  }

  private trim(p: Pending): void {
    const exp = this.export!
    if (exp.device.readOnly) {
      this.fail(p, NbdErrno.EPERM, 'the export is read-only')
      return
    }
    if (!(exp.flags & TransmissionFlag.SendTrim)) {
      this.fail(p, NbdErrno.EINVAL, 'trim is not supported by this export')
      return
    }
    const [errno, message] = this.checkFlags(p, CommandFlag.Fua)
    if (errno) {
      this.fail(p, errno, message)
      return
    }
    if (p.offset + p.length > exp.size) {
      this.fail(p, NbdErrno.EINVAL, 'the request goes past the end of the export')
      return
    }
    // Trim is a hint: an unaligned range is shrunk to the whole blocks inside it.
    const bs = exp.blockSize
    const start = Math.ceil(p.offset / bs) * bs
    const end = Math.floor((p.offset + p.length) / bs) * bs
    if (end <= start) {
      this.ok(p)
      return
    }
    const fua = (p.flags & CommandFlag.Fua) !== 0
    this.call(
      p,
      async () => {
        await exp.device.trim(start, end - start)
        if (fua && exp.device.canFlush) await exp.device.flush()
      },
      () => {
        exp.stats.bytesTrimmed += end - start
        this.ok(p)
      },
    )
  }

  private writeZeroes(p: Pending): void {
    const exp = this.export!
    if (!(exp.flags & TransmissionFlag.SendWriteZeroes) && !exp.device.readOnly) {
      this.fail(p, NbdErrno.EINVAL, 'write-zeroes is not supported by this export')
      return
    }
    const [errno, message] = this.checkWrite(p, CommandFlag.Fua | CommandFlag.NoHole)
    if (errno) {
      this.fail(p, errno, message)
      return
    }
    if (p.length === 0) {
      this.ok(p)
      return
    }
    const mayTrim = (p.flags & CommandFlag.NoHole) === 0
    const fua = (p.flags & CommandFlag.Fua) !== 0
    this.call(
      p,
      () => this.withFua(fua, (nativeFua) => exp.device.writeZeroes(p.offset, p.length, mayTrim, nativeFua)),
      () => {
        exp.stats.bytesZeroed += p.length
        this.ok(p)
      },
    )
  }

  /**
   * base:allocation for [offset, offset + length): the device's extents, clipped to the range (one
   * with REQ_ONE); they may cover only a prefix of it, as the protocol allows.
   */
  private blockStatus(p: Pending): void {
    const exp = this.export!
    if (!this.allocation) {
      this.fail(p, NbdErrno.EINVAL, 'no metadata context was negotiated')
      return
    }
    const [errno, message] = this.checkFlags(p, CommandFlag.ReqOne)
    if (errno) {
      this.fail(p, errno, message)
      return
    }
    if (p.length === 0 || p.offset + p.length > exp.size) {
      this.fail(p, NbdErrno.EINVAL, 'the range is empty or goes past the end of the export')
      return
    }
    const one = (p.flags & CommandFlag.ReqOne) !== 0
    this.call(
      p,
      () => deviceExtents(exp.device, p.offset, p.length, one ? 1 : MAX_EXTENTS),
      (extents) => {
        this.send(encodeBlockStatusReply(p.cookieHigh, p.cookieLow, BASE_ALLOCATION_ID, extents))
        this.complete(p)
      },
    )
  }

  /** NBD_CMD_CACHE: the device prefetches the range (a hint; nothing to do without prefetch). */
  private cache(p: Pending): void {
    const exp = this.export!
    const [errno, message] = this.checkFlags(p, 0)
    if (errno) {
      this.fail(p, errno, message)
      return
    }
    if (p.offset + p.length > exp.size) {
      this.fail(p, NbdErrno.EINVAL, 'the request goes past the end of the export')
      return
    }
    const device = exp.device
    if (p.length === 0 || !device.prefetch) {
      this.ok(p)
      return
    }
    this.call(
      p,
      () => device.prefetch!(p.offset, p.length),
      () => this.ok(p),
    )
  }

  /** Runs a device operation; a synchronous throw counts as a failure like a rejection. */
  private call<T>(p: Pending, op: () => Promise<T>, done: (value: T) => void): void {
    let promise: Promise<T>
    try {
      promise = op()
    } catch (error) {
      promise = Promise.reject(error)
    }
    promise
      .then(done, (error: unknown) => this.deviceFailed(p, error))
      .catch((error: unknown) => {
        // A bug in the reply path: this connection's state can no longer be trusted.
        this.server.log?.error('NBD reply failed', { export: this.export?.name, error })
        this.destroy('internal error')
      })
  }

  private deviceFailed(p: Pending, error: unknown): void {
    const errno = nbdErrnoForError(error)
    if (!(error instanceof VrioError))
      this.server.log?.warn('NBD device failed with an unexpected error', {
        export: this.export?.name,
        command: commandName(p.type),
        error,
      })
    const message = error instanceof VrioError ? error.message : 'I/O error in the device'
    this.fail(p, errno, message)
  }

  private ok(p: Pending): void {
    this.send(encodeSimpleReply(p.cookieHigh, p.cookieLow, 0))
    this.complete(p)
  }

  private fail(p: Pending, errno: number, message: string): void {
    const errors = this.export!.stats.errors
    const name = nbdErrnoName(errno)
    errors[name] = (errors[name] ?? 0) + 1
    if (this.structured) this.send(encodeStructuredError(p.cookieHigh, p.cookieLow, errno, message))
    else this.send(encodeSimpleReply(p.cookieHigh, p.cookieLow, errno))
    this.complete(p)
  }

  private complete(p: Pending): void {
    this.inflight--
    this.inflightBytes -= p.cost
    if (this.draining || this.shuttingDown) this.maybeFinish()
    // Called from device callbacks (never from inside pump, since those always settle later): a
    // slot is free, so see whether the socket has more.
    if (!this.pumping) this.pump()
  }

  /** Ends the connection once nothing is in flight, when it is draining or shutting down. */
  private maybeFinish(): void {
    if (this.closed || this.phase === 'ending') return
    if (!this.draining && !this.shuttingDown) return
    if (this.inflight > 0 || this.payload) return
    this.end()
  }

  // -------------------------------------------------------------------------------------------
  // Output

  /** Queues `buf` on the socket; `written` runs once the kernel has it (not if the write fails). */
  private send(buf: Uint8Array, written?: () => void): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return
    if (!this.corked) {
      this.corked = true
      this.socket.cork()
      process.nextTick(() => this.uncork())
    }
    if (written) this.socket.write(buf, (error) => error || written())
    else this.socket.write(buf)
  }

  private uncork(): void {
    if (!this.corked) return
    this.corked = false
    this.socket.uncork()
  }
}
