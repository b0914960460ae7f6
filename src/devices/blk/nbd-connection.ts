/**
 * One client connection of the NBD server: its socket, its phases (handshake, transmission,
 * ending), reading under flow control, corked output, and how it ends; its received bytes as a
 * ByteQueue. What is said in each phase is in nbd-negotiation.ts and nbd-transmission.ts.
 */
import { type ConnectOpts, Socket, type SocketConstructorOpts } from 'node:net'
import { Negotiation } from './nbd-negotiation.ts'
import { encodeGreeting, type Export, HandshakeFlag } from './nbd-protocol.ts'
import type { NbdServer } from './nbd-server.ts'
import { Transmission } from './nbd-transmission.ts'

type Phase = 'handshake' | 'transmission' | 'ending'

/** Option replies a client has not read yet; past this the server stops reading its options. */
const HANDSHAKE_OUTPUT_LIMIT = 1024 * 1024

/** @internal */
export class Connection {
  readonly server: NbdServer
  readonly rx = new ByteQueue()
  readonly scratch = Buffer.alloc(32)
  /** No more requests will be read: DISC, client EOF, a protocol violation or shutdown. */
  draining = false
  shuttingDown = false
  private readonly socket: Socket
  private phase: Phase = 'handshake'
  private readonly negotiation = new Negotiation(this)
  private transmission: Transmission | undefined
  private pumping = false
  private corked = false
  private closed = false
  private handshakeTimer: NodeJS.Timeout | undefined
  private readonly closedPromise: Promise<void>
  private resolveClosed: () => void = () => {}

  /** `fd`: the accepted connection (non-blocking), owned from here on. */
  constructor(server: NbdServer, fd: number) {
    this.server = server
    // onread is a constructor option too (nodejs/node#53792), though typed for connect() only.
    const options: SocketConstructorOpts & ConnectOpts = {
      fd,
      readable: true,
      writable: true,
      allowHalfOpen: true,
      onread: { buffer: server.readBuffer, callback: (n, buf) => this.onRead(n, buf) },
    }
    this.socket = new Socket(options)
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve))
  }

  get exportName(): string | undefined {
    return this.transmission?.export.name
  }

  get writableLength(): number {
    return this.socket.writableLength
  }

  start(): void {
    const socket = this.socket
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
    this.server.log?.debug('NBD connection destroyed', { reason, export: this.exportName })
    this.socket.destroy()
  }

  /** The handshake selected `exp`: the transmission phase starts with what was negotiated. */
  enterTransmission(exp: Export, structured: boolean, allocation: boolean): void {
    this.transmission = new Transmission(this, exp, structured, allocation)
    this.phase = 'transmission'
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer)
    this.handshakeTimer = undefined
    exp.stats.connections++
    exp.stats.connectionsTotal++
    this.server.counters.handshakesCompleted++
    this.server.log?.debug('NBD client attached', { export: exp.name, structured })
  }

  /** NBD_CMD_DISC: read nothing more, end once idle. */
  disconnect(): void {
    this.draining = true
    this.maybeFinish()
  }

  /** A request was answered: the connection may end, or read on. */
  replied(): void {
    if (this.draining || this.shuttingDown) this.maybeFinish()
    // Called from device callbacks (never from inside pump, since those always settle later): a
    // slot is free, so see whether the socket has more.
    if (!this.pumping) this.pump()
  }

  // -------------------------------------------------------------------------------------------
  // Input

  /** `n` bytes read into the server's buffer: parsed now; what is left is copied, as the buffer is shared. */
  private onRead(n: number, buf: Uint8Array): boolean {
    this.rx.pushVolatile(Buffer.from(buf.buffer, buf.byteOffset, n))
    this.pump()
    this.rx.settle()
    return true // pump() paused the socket if it must wait
  }

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
    switch (this.phase) {
      case 'handshake':
        return this.negotiation.step()
      case 'transmission':
        return this.transmission!.step()
      default:
        return false
    }
  }

  private updateFlow(): void {
    if (this.closed) return
    const t = this.transmission
    const wantMore =
      t?.payload !== undefined ||
      (this.phase === 'transmission'
        ? !this.draining && t!.canAdmit(0)
        : this.phase !== 'ending' && this.socket.writableLength <= HANDSHAKE_OUTPUT_LIMIT)
    if (wantMore) this.socket.resume()
    else this.socket.pause()
  }

  private onEnd(): void {
    // The client will send nothing more; answer what is in flight, then close our side too.
    this.draining = true
    // A write cut short by EOF can never be answered.
    if (this.transmission?.abandonPayload()) this.server.counters.protocolErrors++
    if (this.phase !== 'transmission') this.end()
    else this.maybeFinish()
  }

  private onClose(): void {
    this.closed = true
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer)
    if (this.phase === 'handshake') this.server.counters.endedBeforeTransmission++
    if (this.transmission) this.transmission.export.stats.connections--
    this.server.forget(this)
    this.resolveClosed()
  }

  /** Closes after flushing what was written. */
  end(): void {
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

  violation(message: string): false {
    this.server.counters.protocolErrors++
    this.server.log?.warn('NBD protocol violation; closing the connection', {
      message,
      export: this.exportName,
    })
    this.draining = true
    if (this.phase === 'transmission') this.maybeFinish()
    else this.end()
    return false
  }

  /** Ends the connection once nothing is in flight, when it is draining or shutting down. */
  private maybeFinish(): void {
    if (this.closed || this.phase === 'ending') return
    if (!this.draining && !this.shuttingDown) return
    const t = this.transmission
    if (t && (t.inflight > 0 || t.payload)) return
    this.end()
  }

  // -------------------------------------------------------------------------------------------
  // Output

  /** Queues `buf` on the socket; `written` runs once the kernel has it (not if the write fails). */
  send(buf: Uint8Array, written?: () => void): void {
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

/**
 * Received bytes as a queue of chunks: nothing is joined unless it must be. The last chunk may be
 * volatile (a view of the read buffer, valid until the read callback returns): no view of it is
 * handed out to keep, and settle() copies what is left of it.
 */
class ByteQueue {
  private bufs: Buffer[] = []
  private head = 0
  private volatile: Buffer | undefined
  length = 0

  pushVolatile(chunk: Buffer): void {
    if (chunk.length === 0) return
    this.bufs.push(chunk)
    this.volatile = chunk
    this.length += chunk.length
  }

  /** The volatile chunk, if any of it is still queued, becomes a copy of its own. */
  settle(): void {
    const v = this.volatile
    if (!v) return
    this.volatile = undefined
    const i = this.bufs.lastIndexOf(v)
    if (i < 0) return
    const from = i === 0 ? this.head : 0
    this.bufs[i] = Buffer.from(v.subarray(from))
    if (i === 0) this.head = 0
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
    const view = this.takeView(n)
    if (view) return view
    const out = Buffer.allocUnsafe(n)
    this.copy(out, 0, n, true)
    return out
  }

  /** Removes and returns the next `n` bytes (n > 0) when they lie in one chunk, as a view of it. */
  takeView(n: number): Buffer | undefined {
    const first = this.bufs[0]
    if (first === undefined || first === this.volatile || first.length - this.head < n) return undefined
    const view = first.subarray(this.head, this.head + n)
    this.skip(n)
    return view
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
