import { VrioError } from '../errors.ts'
import {
  encodeTcpFrameHeaders,
  finishTcpFrameChecksum,
  newTcpFrame,
  type TcpFrame,
  tcpFrameHeaderLength,
} from '../wire/frame.ts'
import {
  MAX_SACK_BLOCKS,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  type TcpOptions,
  VRIO_SEAL_OPTION_LENGTH,
  VRIO_SEGMENT_OPTION_LENGTH,
} from '../wire/tcp.ts'
import { resolveSealCipher, SEAL_MAX_CHUNKS } from './aead.ts'
import { type ConnectionOptions, Delivery, SEGMENT_DELIVERY_MASK, SEGMENT_SKIP } from './config.ts'
import { AbandonedMessages } from './abandoned.ts'
import { IntervalSet } from './interval-set.ts'
import { type ConnectionLease, LEND, type LeaseReturn, newLeaseReturn } from './lease.ts'
import { messageBuffers, takePooledMessageBuffer } from './message-buffers.ts'
import { Reassembly } from './reassembly.ts'
import { SealRejoiner } from './rejoin.ts'
import { concatChunks, copyChunks } from './chunks.ts'
import { ChannelSeal, newSealCounters, type SealCounters, type SteadyKeys, sealIdentity } from './seal.ts'
import { positionOf, seqOf } from './seq.ts'

/** vrio protocol version announced in the SYN's hello option when sealed (the default). */
export const VRIO_PROTOCOL_VERSION = 2
/** The version of `insecurePlaintext` connections: no SEAL option, payload in the clear. */
export const VRIO_PLAINTEXT_VERSION = 1

export type ConnectionState =
  | 'syn-sent'
  | 'syn-received'
  | 'established'
  | 'fin-wait-1'
  | 'fin-wait-2'
  | 'closing'
  | 'time-wait'
  | 'close-wait'
  | 'last-ack'
  | 'closed'

/** Why a connection ended. 'normal' is the only clean one: both sides closed and everything was delivered. */
export type CloseReason =
  | 'normal'
  | 'reset'
  | 'refused'
  | 'aborted'
  | 'connect-timeout'
  | 'user-timeout'
  | 'dead-peer'
  | 'protocol-error'

export interface Address {
  mac: number
  ip: number
  port: number
}

export interface ConnectionHandlers {
  /**
   * A whole message. `data` is a view that is valid only until this call returns (it may point into
   * a received frame): copy what you keep — unless `owned` is true: then `data` is a buffer of its
   * own (a message reassembled from several frames) that the transport no longer references, and
   * the handler may keep it without a copy, or give it back to `messageBuffers` (its pool, in
   * message-buffers.ts) once done; the session hands it on as a Lender.
   */
  message(data: Uint8Array, delivery: Delivery, owned: boolean): void
  established?(): void
  /** The peer closed its side (FIN): every message it sent has been delivered. */
  peerClosed?(): void
  closed?(reason: CloseReason): void
  /** Send-buffer space is available again after `send` returned false. */
  writable?(): void
}

/**
 * Where a connection puts frames: `gsoSize` is the segment payload size when the frame is a GSO
 * super-frame, else 0. The `headroom` option's bytes precede `frame` in `frame.buffer`, free for
 * the link to use.
 */
export type FrameSink = (frame: Uint8Array, gsoSize: number) => void

/**
 * Memory for an outgoing frame of exactly `size` bytes, with `headroom` bytes free in front of it
 * in its buffer (one view: no second one cut per frame). The frame is handed to the sink at once
 * and the connection never looks at it again, so a link that sends frames before it hands out
 * more memory may reuse it (LinkDriver does: one arena, reset per send).
 */
export type FrameAllocator = (size: number, headroom: number) => Uint8Array

const allocateFresh: FrameAllocator = (size, headroom) =>
  headroom === 0 ? Buffer.allocUnsafe(size) : Buffer.allocUnsafe(headroom + size).subarray(headroom)

/** Why a received segment was ignored: counters, never exceptions. */
export type SegmentDropReason =
  | 'unacceptable-ack'
  | 'out-of-window'
  | 'missing-segment-option'
  | 'bad-segment-option'
  | 'segment-mismatch'
  | 'bad-skip'
  | 'receive-memory'
  | 'interval-limit'
  | 'not-vrio'
  | 'no-ack-flag'
  | 'unauthenticated'

export interface ConnectionStats extends SealCounters {
  framesSent: number
  framesReceived: number
  bytesSent: number
  bytesReceived: number
  messagesSent: number
  messagesDelivered: number
  retransmits: number
  skipsSent: number
  rtoFirings: number
  fastRecoveries: number
  duplicatesDropped: number
  bestEffortDropped: number
  reassemblyTimeouts: number
  /** Times a reliable message found the send buffer full (the sender then waits for `writable`). */
  windowStalls: number
  drops: Partial<Record<SegmentDropReason, number>>
}

interface OutMessage {
  start: number
  end: number
  flags: number
  chunks: readonly Uint8Array[]
  /** The array `chunks` is when the message was given as one Uint8Array (reused with the object). */
  readonly single: Uint8Array[]
}

/** Acknowledged messages' records kept for reuse, per connection: no object per message sent. */
const SPARE_MESSAGES = 64
/** Send buffer kept for best-effort messages (see reliableLimit): 1 MiB, at most an eighth of it. */
const BEST_EFFORT_RESERVE = 1024 * 1024
const NO_CHUNKS: readonly Uint8Array[] = []
const NO_BYTES = new Uint8Array(0)

export interface ConnectionInit {
  options: ConnectionOptions
  local: Address
  remote: Address
  handlers: ConnectionHandlers
  sink: FrameSink
  /** Where frame memory comes from; default: a new Buffer per frame. */
  allocate?: FrameAllocator
  clock: () => number
  random: () => number
  /** Called once when the connection reaches 'closed', so its owner can forget it. */
  onFinished?: (connection: Connection) => void
  /** Sealed active open: the guest's 32-byte key. */
  psk?: Uint8Array
  /** Sealed passive open: the key state the endpoint verified the SYN with. */
  seal?: ChannelSeal
}

const TIMESTAMP_OPTION_SPACE = 10
const SYN_RETRIES_BACKOFF = 2

/**
 * One vrio connection: a TCP connection on the wire carrying whole messages. Sans-I/O: frames come
 * in through `receive`, time passes through `tick`, frames go out through the sink, and `flush`
 * ends a batch (it sends the ACK owed at once; one for in-order data waits for an answer to ride
 * on, or for `tick` after ackDelay).
 *
 * Inside, bytes are addressed by stream position (see seq.ts): sender positions count from our
 * initial sequence number, receiver positions from the peer's; position 0 is the SYN.
 */
export class Connection {
  readonly local: Address
  readonly remote: Address
  readonly stats: ConnectionStats
  state: ConnectionState
  closeReason: CloseReason | undefined
  /** Smoothed round-trip time in ms, or -1 before the first sample. */
  srtt = -1

  /** The smoothed round-trip time in ms to the microsecond, for status and metrics; null before the first sample. */
  get rttMs(): number | null {
    return this.srtt >= 0 ? Math.round(this.srtt * 1000) / 1000 : null
  }

  private readonly o: ConnectionOptions
  private handlers: ConnectionHandlers
  private readonly sink: FrameSink
  private readonly allocate: FrameAllocator
  private readonly clock: () => number
  private readonly onFinished: ((c: Connection) => void) | undefined
  private readonly tx: TcpFrame = newTcpFrame()
  private readonly startedAt: number
  /** Keys of a sealed connection; undefined with insecurePlaintext. */
  private readonly seal: ChannelSeal | undefined
  /**
   * Before authentication (see requireAuthentication): the most bytes of messages held for
   * reassembly, all together; 0 once authenticated, or for a connection that never needed it.
   */
  private preAuthReceiveBytes = 0
  /**
   * Sealed: where the frame being received was decrypted to (payloadPlacement): the reassembly
   * buffer its bytes belong in, at `placedOffset`.
   */
  private placedBuffer: Uint8Array | undefined
  private placedOffset = 0
  /**
   * placedBuffer came from messageBuffers for a message not open yet: it becomes that message's
   * buffer once the frame verifies and opens it, else it goes back to the pool.
   */
  private placedFresh = false
  /** Sealed: pieces of split GSO records being re-joined. */
  private readonly rejoiner: SealRejoiner | undefined

  // Negotiated at the handshake.
  private peerMss = 536
  private sendScale = 0 // applied to the peer's window field
  private receiveScale = 0 // applied to ours
  private timestamps = false
  private sack = false
  private tsRecent = 0
  private mssPayload = 536

  // Sender.
  private readonly iss: number
  private sndUna = 0
  private sndNxt = 0
  /** End of all queued message bytes (FIN, when sent, sits at this position). */
  private sndMax = 1
  private sndWnd = 0
  private sndWl1 = 0
  private sndWl2 = 0
  private cwnd = 0
  private ssthresh = Number.POSITIVE_INFINITY
  private queuedBytes = 0
  /**
   * Queued messages, out[outHead, outEnd). Arrays here never shrink (V8 gives a shrunk or emptied
   * array a new backing store when it grows again): counts say what is in use.
   */
  private readonly out: (OutMessage | undefined)[] = []
  private outEnd = 0
  private readonly spare: OutMessage[] = []
  private spareCount = 0
  private outHead = 0
  private sendCursor = 0
  private readonly sacked = new IntervalSet()
  private dupAcks = 0
  private inRecovery = false
  private rtoRecovery = false
  private recoveryPoint = 0
  private highRxt = 0
  private rttvar = 0
  private rto: number
  private timingPos = -1
  private timingAt = 0
  private rtoDeadline = Number.POSITIVE_INFINITY
  private lastProgressAt: number
  private closeRequested = false
  private finSent = false
  private writableWanted = false
  private ipId: number

  // Receiver.
  private irs = 0
  private rcvNxt = 0
  private rcvAdvEdge = 0
  private readonly received = new IntervalSet()
  private readonly reassembly = new Reassembly()
  private readonly abandoned = new AbandonedMessages()
  private unreleased = 0
  private peerFinPos = -1
  /** An ACK is owed at once: sent by the next segment we send, else by `flush`. */
  private ackNow = false
  /** When the delayed ACK for in-order data is due (Infinity: none owed); see oweAck. */
  private ackDeadline = Number.POSITIVE_INFINITY
  /** In-order data since the last ACK we sent, each frame counted up to one full segment. */
  private unackedWeight = 0
  /** A message the fast path took part of could not be handed back whole (see reclaim). */
  private partialLost = false
  private lastReceiveAt: number
  private probesSent = 0
  private timeWaitDeadline = Number.POSITIVE_INFINITY

  // Fast path (lease.ts): set while a native fast path holds the steady state.
  private lease: ConnectionLease | undefined
  /** When the timer looks at the lent connection's progress next, and what it saw last time. */
  private leaseCheckAt = Number.POSITIVE_INFINITY
  private leaseFramesSeen = 0
  private leaseAcksSeen = 0
  private leaseUnackedSeen = false
  private leaseFramesAt = 0
  /** RTT samples of the lent connection already folded in (see adoptRtt). */
  private leaseRttSeen = 0

  constructor(init: ConnectionInit, syn?: TcpFrame) {
    this.o = init.options
    this.local = init.local
    this.remote = init.remote
    this.handlers = init.handlers
    this.sink = init.sink
    this.allocate = init.allocate ?? allocateFresh
    this.clock = init.clock
    this.onFinished = init.onFinished
    const now = this.clock()
    this.startedAt = now
    this.lastProgressAt = now
    this.lastReceiveAt = now
    this.iss = Math.floor(init.random() * 0x1_0000_0000) >>> 0
    this.ipId = Math.floor(init.random() * 0x1_0000) & 0xffff
    this.rto = this.o.rtoInitial
    this.stats = {
      framesSent: 0,
      framesReceived: 0,
      bytesSent: 0,
      bytesReceived: 0,
      messagesSent: 0,
      messagesDelivered: 0,
      retransmits: 0,
      skipsSent: 0,
      rtoFirings: 0,
      fastRecoveries: 0,
      duplicatesDropped: 0,
      bestEffortDropped: 0,
      reassemblyTimeouts: 0,
      windowStalls: 0,
      drops: {},
      ...newSealCounters(),
    }
    if (!this.o.insecurePlaintext) {
      if (syn) {
        if (!init.seal) throw new VrioError('internal', 'a sealed passive open needs the SYN key state')
        this.seal = init.seal
        this.seal.bindListenerIss(this.iss)
      } else {
        if (!init.psk)
          throw new VrioError('invalid-argument', 'a sealed connection needs the key of its guest')
        const identity = sealIdentity(
          this.local.ip,
          this.remote.ip,
          this.local.port,
          this.remote.port,
          this.iss,
        )
        this.seal = new ChannelSeal({
          role: 'opener',
          psk: init.psk,
          cipher: resolveSealCipher(this.o.cipher),
          identity,
          rekeyAfterFrames: this.o.rekeyAfterFrames,
          rekeyAfterBytes: this.o.rekeyAfterBytes,
        })
      }
      this.seal.bindCounters(this.stats)
      this.rejoiner = new SealRejoiner(this.seal, this.stats)
    }
    let scale = 0
    while (scale < 14 && this.o.receiveBuffer / 2 ** scale > 65_535) scale++
    this.receiveScale = scale
    const t = this.tx
    t.ethernet.source = this.local.mac
    t.ethernet.destination = this.remote.mac
    t.ip.source = this.local.ip
    t.ip.destination = this.remote.ip
    t.tcp.sourcePort = this.local.port
    t.tcp.destinationPort = this.remote.port

    this.state = syn ? 'syn-received' : 'syn-sent'
    if (syn) this.acceptSyn(syn)
  }

  /** Sends the SYN (active open) or SYN-ACK (passive open). Separate from construction so a refused peer gets only an RST. */
  start(): void {
    this.sndUna = 0
    this.sndNxt = 1
    this.sendSyn(this.state === 'syn-received')
    this.rtoDeadline = this.clock() + this.rto
  }

  /** Whether segments are sealed (protocol version 2), and under which cipher number (1, 2), or 0. */
  get sealCipher(): number {
    return this.seal?.cipher ?? 0
  }

  /** The key epochs in use (sending, receiving); -1 each when plaintext. */
  get sealEpochs(): { send: number; receive: number } {
    return { send: this.seal?.sendEpoch ?? -1, receive: this.seal?.receiveEpoch ?? -1 }
  }

  /**
   * Derives the traffic keys (epoch 1) from the session's nonces: the listener when it sends its
   * Auth, the opener when it has verified the listener's. No-op when plaintext.
   */
  installTrafficKeys(nonceO: Uint8Array, nonceL: Uint8Array): void {
    this.seal?.installTrafficKeys(nonceO, nonceL)
  }

  /**
   * Until `authenticate()`, accept only what an authentication handshake needs: ordered messages
   * (no best-effort data, no Skip) of at most `receiveBytes` bytes held for reassembly, all
   * together; anything else is dropped ('unauthenticated', 'receive-memory') without allocating.
   * An Endpoint that requires authentication calls this for every connection a peer opens.
   */
  requireAuthentication(receiveBytes: number): void {
    this.preAuthReceiveBytes = Math.max(1, receiveBytes)
  }

  /** The layer above has verified the peer: lifts the limits of `requireAuthentication`. */
  authenticate(): void {
    this.preAuthReceiveBytes = 0
  }

  /** False while `requireAuthentication`'s limits apply. */
  get authenticated(): boolean {
    return this.preAuthReceiveBytes === 0
  }

  /** A SYN with this sequence number is the one that opened this connection, sent again. */
  isRetransmittedSyn(seq: number): boolean {
    return this.state === 'syn-received' && seq === this.irs
  }

  /** Replaces the event handlers (an accepting owner installs its own after the SYN arrived). */
  setHandlers(handlers: ConnectionHandlers): void {
    this.handlers = handlers
  }

  get closed(): boolean {
    return this.state === 'closed'
  }

  get isOpen(): boolean {
    return !this.closed && !this.closeRequested
  }

  /** Bytes that may still be queued by `send` before it refuses a reliable message. */
  get sendSpace(): number {
    return this.reliableLimit - this.queuedBytes
  }

  /**
   * How far reliable messages may fill the send buffer: the rest (BEST_EFFORT_RESERVE, at most an
   * eighth of it) is kept for best-effort ones, so that a disk's burst of replies, which waits
   * for room, never leaves a NIC's frames, which are dropped when there is none, without any.
   */
  private get reliableLimit(): number {
    return this.o.sendBuffer - Math.min(BEST_EFFORT_RESERVE, Math.floor(this.o.sendBuffer / 8))
  }

  /** The window we would advertise now, in bytes. */
  get receiveWindow(): number {
    return Math.max(0, this.o.receiveBuffer - this.unreleased)
  }

  /** Bytes held for reassembly (bounded by the maxReassemblyBytes option). */
  get reassemblyMemory(): number {
    return this.reassembly.bytes
  }

  /**
   * Ranges held now: out-of-order received ones, abandoned messages, messages in reassembly and
   * SACKed ones (each kind bounded by the maxIntervals option).
   */
  get heldRanges(): number {
    return this.received.count + this.abandoned.size + this.reassembly.size + this.sacked.count
  }

  /** Search steps spent on those ranges so far: the per-segment cost, for tests (never timed). */
  get rangeSteps(): number {
    return this.received.steps + this.sacked.steps + this.abandoned.steps
  }

  /** When the delayed ACK for data received in order is due (Infinity: none is owed). */
  get ackDue(): number {
    return this.ackDeadline
  }

  /** Bytes queued and not yet acknowledged. */
  get unacknowledged(): number {
    return this.queuedBytes
  }

  // ---------------------------------------------------------------- application side

  /**
   * Queues one message. Returns false, queuing nothing, when the send buffer cannot take it (wait
   * for the `writable` handler; a best-effort message is simply counted as dropped) or when the
   * connection is closing or closed. The chunks of a reliable or ordered message are referenced,
   * not copied, until acknowledged: do not change them. Those of a best-effort message may be
   * reused as soon as send returns (it copies what it could not send at once).
   */
  send(data: Uint8Array | readonly Uint8Array[], delivery: Delivery): boolean {
    let length = 0
    if (data instanceof Uint8Array) length = data.length
    else for (const c of data) length += c.length
    if (length === 0 || length > this.o.maxMessageSize) {
      throw new VrioError(
        'message-size',
        `message of ${length} bytes is outside 1..${this.o.maxMessageSize}`,
        {
          length,
          maxMessageSize: this.o.maxMessageSize,
        },
      )
    }
    if (this.lease) {
      if (delivery === Delivery.Reliable && this.sendThrough(data)) return true
      this.reclaim(false)
    }
    if (
      this.closeRequested ||
      !(this.state === 'established' || this.state === 'close-wait' || this.isHandshaking())
    ) {
      return false
    }
    const limit = delivery === Delivery.BestEffort ? this.o.sendBuffer : this.reliableLimit
    // An empty queue takes any message (maxMessageSize ≤ sendBuffer).
    if (this.queuedBytes + length > limit && this.queuedBytes > 0) {
      if (delivery === Delivery.BestEffort) this.stats.bestEffortDropped++
      else if (!this.writableWanted) {
        this.writableWanted = true
        this.stats.windowStalls++
      }
      return false
    }
    const start = this.sndMax
    const m =
      this.spareCount > 0
        ? this.spare[--this.spareCount]
        : { start: 0, end: 0, flags: 0, chunks: NO_CHUNKS, single: [NO_BYTES] }
    m.start = start
    m.end = start + length
    m.flags = delivery
    if (data instanceof Uint8Array) {
      m.single[0] = data
      m.chunks = m.single
    } else {
      m.chunks = data
    }
    if (this.outEnd === this.out.length) this.out.push(m)
    else this.out[this.outEnd] = m
    this.outEnd++
    this.sndMax += length
    this.queuedBytes += length
    this.stats.messagesSent++
    if (!this.isHandshaking()) this.pump()
    // A best-effort message sent whole is never read again (a loss is skipped, not resent), so
    // its buffers are the caller's again when send returns; one that could not go out at once
    // (window, congestion window, handshake) is copied now.
    if (delivery === Delivery.BestEffort && this.sndNxt < m.end) m.chunks = [concatChunks(m.chunks, length)]
    return true
  }

  /**
   * While lent, a reliable message goes out through the lease when the fast path can send it as
   * one of its own replies (then it is the fast path's to retransmit until the connection comes
   * back): the answers to requests the transport took do not end the lend, so a stream of
   * requests that began in the transport moves to the fast path. True when it went.
   */
  private sendThrough(data: Uint8Array | readonly Uint8Array[]): boolean {
    if (data instanceof Uint8Array) return this.lease!.send(data)
    if (data.length > 2) return false
    return this.lease!.send(data[0], data[1])
  }

  /** Gives delivered bytes back to the receive window (only with the manualRelease option). */
  release(bytes: number): void {
    if (!this.o.manualRelease || bytes <= 0) return
    if (this.lease) this.reclaim(false)
    const before = this.receiveWindow
    this.unreleased = Math.max(0, this.unreleased - bytes)
    // Tell the peer at once when the window reopens from (nearly) closed: it may be stalled on it.
    if (before < this.mssPayload && this.receiveWindow >= this.mssPayload) {
      this.ackNow = true
      this.flush()
    }
  }

  /** Graceful close: queued messages are still delivered, then FIN. */
  close(): void {
    if (this.closeRequested || this.closed) return
    if (this.lease) this.reclaim(false)
    this.closeRequested = true
    if (this.state === 'syn-sent') {
      this.finish('aborted')
      return
    }
    if (this.state === 'established' || this.state === 'close-wait' || this.state === 'syn-received')
      this.pump()
  }

  /** Abortive close: RST now (unless `sendReset` is false: forgotten silently), everything queued is dropped. */
  abort(reason: CloseReason = 'aborted', sendReset = true): void {
    if (this.closed) return
    if (this.lease) this.reclaim(false)
    if (sendReset && this.state !== 'syn-sent' && this.state !== 'time-wait')
      this.sendControl(TCP_RST | TCP_ACK, this.sndNxt)
    this.finish(reason)
  }

  // ---------------------------------------------------------------- link side

  /** Handles one decoded segment addressed to this connection. `buf` is the whole frame. */
  receive(buf: Uint8Array, f: TcpFrame): void {
    if (this.closed) return
    if (this.lease) this.reclaim(false)
    if (!this.seal) {
      this.receiveOpened(buf, f)
      return
    }
    try {
      this.receiveSealed(buf, f)
    } finally {
      this.releasePlaced()
    }
  }

  /** Forgets where the frame was decrypted to; a fresh buffer no message adopted goes back. */
  private releasePlaced(): void {
    if (this.placedFresh) messageBuffers.giveBack(this.placedBuffer!)
    this.placedFresh = false
    this.placedBuffer = undefined
  }

  private receiveSealed(buf: Uint8Array, f: TcpFrame): void {
    // Sealed: nothing of a frame that does not verify is looked at, not even to note the peer is
    // alive. A data segment whose bytes go into a reassembly buffer is decrypted straight into it
    // (the cipher pass is the copy out of the frame), else in place.
    const seal = this.seal!
    const why =
      f.payloadLength > 0 && this.payloadPlacement(f)
        ? seal.tryOpenInto(buf, f, this.placedBuffer!, this.placedOffset)
        : seal.tryOpen(buf, f, f.payloadLength > 0)
    if (why) {
      // Out of place, a refused frame is still ciphertext, as staging needs it.
      this.releasePlaced()
      // A piece of a GSO record a link split: staged until the record re-joins (rejoin.ts).
      const whole = why === 'authFailed' && f.payloadLength > 0 ? this.rejoiner!.stage(buf, f) : undefined
      if (!whole) {
        if (why !== 'authFailed' || f.payloadLength === 0) this.stats[why]++
        return
      }
      buf = whole.frame
      f = whole.f
    }
    this.receiveOpened(buf, f)
  }

  /**
   * Sealed, before the frame is verified: whether its payload goes into the reassembly buffer of a
   * message already being reassembled, at a place that holds nothing yet (no received byte, none
   * below rcvNxt), so that it can be decrypted straight there — bytes written there by a frame that
   * then fails are harmless, since the place is filled only by a frame that verifies. Changes no
   * state but the placed* fields. A message's first frame (no reassembly buffer yet) goes into a
   * buffer the pool has free, which becomes the message's if the frame verifies and is taken
   * (else it goes back); with none free, it is decrypted in place and copied (a frame not yet
   * verified must not cost an allocation).
   */
  private payloadPlacement(f: TcpFrame): boolean {
    const opt = f.tcp.options.vrio
    if (
      !opt.present ||
      opt.flags & SEGMENT_SKIP ||
      this.preAuthReceiveBytes > 0 ||
      (this.state !== 'established' && this.state !== 'fin-wait-1' && this.state !== 'fin-wait-2')
    )
      return false
    const length = f.payloadLength
    const delivery = opt.flags & SEGMENT_DELIVERY_MASK
    const segStart = positionOf(this.irs, f.tcp.seq, this.rcvNxt)
    const msgStart = positionOf(this.irs, opt.messageStart, this.rcvNxt)
    const msgEnd = msgStart + opt.messageLength
    if (
      length === opt.messageLength || // whole in this frame: delivered as a view of it
      opt.messageLength > this.o.maxMessageSize ||
      delivery > Delivery.BestEffort ||
      segStart < msgStart ||
      segStart < this.rcvNxt ||
      segStart + length > msgEnd ||
      segStart + length > Math.max(this.rcvAdvEdge, this.rcvNxt + this.receiveWindow) ||
      this.received.coveredBytes(segStart, segStart + length) > 0 ||
      this.abandoned.has(msgStart)
    )
      return false
    const m = this.reassembly.get(msgStart)
    this.placedOffset = segStart - msgStart
    if (m) {
      if (m.end !== msgEnd || m.flags !== delivery) return false
      this.placedBuffer = m.buffer
      return true
    }
    // As receiveOpened would open it (the pre-authentication budget is excluded above).
    if (
      this.reassembly.bytes + opt.messageLength > this.o.maxReassemblyBytes ||
      this.reassembly.size >= this.o.maxIntervals
    )
      return false
    this.placedBuffer = takePooledMessageBuffer(opt.messageLength)
    this.placedFresh = this.placedBuffer !== undefined
    return this.placedFresh
  }

  private receiveOpened(buf: Uint8Array, f: TcpFrame): void {
    const now = this.clock()
    this.stats.framesReceived++
    this.stats.bytesReceived += buf.length
    this.lastReceiveAt = now
    this.probesSent = 0
    const tcp = f.tcp
    const flags = tcp.flags

    if (this.state === 'syn-sent') {
      this.receiveInSynSent(f)
      return
    }
    // A retransmitted SYN: our SYN-ACK was lost.
    if (flags & TCP_SYN && !(flags & TCP_ACK) && this.state === 'syn-received' && tcp.seq === this.irs) {
      this.sendSyn(true)
      return
    }

    const payloadLength = f.payloadLength
    const segStart = positionOf(this.irs, tcp.seq, this.rcvNxt)
    const isSkip = tcp.options.vrio.present && (tcp.options.vrio.flags & SEGMENT_SKIP) !== 0
    if (!this.acceptable(segStart, payloadLength + (flags & TCP_FIN ? 1 : 0), isSkip, tcp.options)) {
      if (!(flags & TCP_RST)) {
        this.stats.duplicatesDropped++
        this.ackNow = true
      }
      return
    }
    if (flags & TCP_RST) {
      // RFC 5961: only an exact match resets; anything else in the window gets a challenge ACK.
      // In TIME-WAIT, or in LAST-ACK with every byte acknowledged, the exchange was complete: the
      // peer already forgot the connection and answers a late segment with an RST.
      if (segStart === this.rcvNxt)
        this.finish(this.state === 'syn-received' ? 'refused' : this.resetReason())
      else this.ackNow = true
      return
    }
    if (flags & TCP_SYN) {
      this.ackNow = true // challenge ACK (RFC 5961 §4)
      return
    }
    if (!(flags & TCP_ACK)) {
      this.drop('no-ack-flag')
      return
    }
    if (this.state === 'syn-received') {
      if (positionOf(this.iss, tcp.ack, this.sndUna) !== 1) {
        this.sendReset(tcp.ack)
        return
      }
      this.sndUna = 1
      this.state = 'established'
      this.rtoDeadline = Number.POSITIVE_INFINITY
      this.rto = this.o.rtoInitial
      this.updateWindow(f, true)
      this.handlers.established?.()
      if (this.state !== 'established') return
    }
    if (!this.processAck(f, now)) return

    if (payloadLength > 0 || isSkip) {
      if (this.state === 'established' || this.state === 'fin-wait-1' || this.state === 'fin-wait-2') {
        this.processPayload(buf, f, segStart, now)
        if (this.closed) return
      }
    }
    if (flags & TCP_FIN) {
      const finPos = segStart + payloadLength
      if (this.peerFinPos < 0) this.peerFinPos = finPos
      this.ackNow = true
      this.maybeConsumeFin()
    } else if (this.state === 'time-wait') {
      this.ackNow = true
    }
    if (!this.closed) this.pump()
  }

  /**
   * Sends what a batch of input owes at once: an ACK for out-of-order data, duplicates, Skips, FIN,
   * or two full segments (see oweAck). Call after each batch of `receive` calls, once the answers
   * the batch's messages got at once have been sent. A delayed ACK is left to `tick`.
   */
  flush(): void {
    if (this.lease) return // nothing was owed at the lend, and nothing happened here since
    if (this.ackNow && !this.closed && this.state !== 'syn-sent') {
      this.sendControl(TCP_ACK, this.sndNxt)
    }
  }

  /** The next time `tick` has work, in clock milliseconds (Infinity: none). */
  nextDeadline(): number {
    if (this.closed) return Number.POSITIVE_INFINITY
    if (this.lease) return this.leaseCheckAt
    let d = Math.min(this.rtoDeadline, this.reassembly.expiresAt, this.timeWaitDeadline, this.ackDeadline)
    if (this.state === 'established' || this.state === 'close-wait' || this.state.startsWith('fin')) {
      d = Math.min(d, this.keepaliveDeadline())
    }
    return d
  }

  /** Runs the timers that are due. */
  tick(): void {
    if (this.closed) return
    const now = this.clock()
    if (this.lease && !this.checkLease(now)) return
    if (this.partialLost) {
      this.abort('aborted')
      return
    }
    if (now >= this.timeWaitDeadline) {
      this.finish('normal')
      return
    }
    if (now >= this.ackDeadline) this.sendControl(TCP_ACK, this.sndNxt)
    if (now >= this.rtoDeadline) this.onRetransmitTimeout(now)
    if (this.closed) return
    if (now >= this.reassembly.expiresAt)
      this.reassembly.expire(now, this.o.reassemblyTimeout, this.abandoned, this.stats)
    if (
      (this.state === 'established' || this.state === 'close-wait' || this.state.startsWith('fin')) &&
      now >= this.keepaliveDeadline()
    ) {
      if (this.probesSent >= this.o.keepaliveProbes) {
        this.abort('dead-peer')
        return
      }
      this.probesSent++
      this.sendProbe()
    }
    if (this.sndUna < this.sndNxt && now - this.lastProgressAt > this.o.userTimeout)
      this.abort('user-timeout')
  }

  // ---------------------------------------------------------------- fast path (lease.ts)

  /**
   * Lends the steady state to a fast path, when the connection is in it: established, sealed and
   * authenticated, everything sent acknowledged, nothing held out of order, no ACK owed, steady
   * keys. Fills `p` (LEND offsets below `disks`) and the receive replay window into `bits`, and
   * returns the keys; undefined (nothing lent) otherwise. `cancelLend` undoes it when the fast
   * path refuses.
   */
  lendTo(lease: ConnectionLease, p: Float64Array, bits: Uint32Array): SteadyKeys | undefined {
    if (
      this.lease ||
      this.state !== 'established' ||
      !this.seal ||
      this.preAuthReceiveBytes > 0 ||
      this.closeRequested ||
      this.sndNxt !== this.sndMax ||
      !this.received.isEmpty() ||
      (this.reassembly.size > 0 && !this.lendablePartial()) ||
      this.abandoned.size > 0 ||
      this.sacked.count > 0 ||
      this.inRecovery ||
      this.ackNow ||
      this.peerFinPos >= 0 ||
      this.timestamps ||
      this.writableWanted ||
      this.o.manualRelease
    )
      return undefined
    const keys = this.seal.steady(bits)
    if (!keys) return undefined
    const part = this.reassembly.sole()
    p[LEND.partStart] = part ? seqOf(this.irs, part.start) : 0
    p[LEND.partLength] = part ? part.end - part.start : 0
    p[LEND.partFilled] = part ? part.filled : 0
    // A delayed ACK owed: the fast path sends it as it takes the lend (it has no timer for the
    // delay; acknowledging sooner is always allowed, RFC 1122 4.2.3.2).
    p[LEND.ackOwed] = this.ackDeadline !== Number.POSITIVE_INFINITY ? 1 : 0
    p[LEND.localMac] = this.local.mac
    p[LEND.remoteMac] = this.remote.mac
    p[LEND.localIp] = this.local.ip >>> 0
    p[LEND.remoteIp] = this.remote.ip >>> 0
    p[LEND.localPort] = this.local.port
    p[LEND.remotePort] = this.remote.port
    p[LEND.rcvNxt] = seqOf(this.irs, this.rcvNxt)
    p[LEND.sndNxt] = seqOf(this.iss, this.sndNxt)
    p[LEND.sndUna] = seqOf(this.iss, this.sndUna)
    p[LEND.ipId] = this.ipId
    p[LEND.windowField] = this.windowField()
    p[LEND.sndWnd] = this.sndWnd
    p[LEND.sendScale] = this.sendScale
    p[LEND.mss] = this.mssPayload
    // The send buffer's room (the fast path's replies count against it as the connection's would).
    p[LEND.sendLimit] = this.reliableLimit - this.queuedBytes + (this.sndNxt - this.sndUna)
    p[LEND.cwnd] = this.cwnd
    p[LEND.sendBuffer] = this.o.sendBuffer
    p[LEND.ssthresh] = this.ssthresh === Number.POSITIVE_INFINITY ? -1 : this.ssthresh
    p[LEND.cipher] = this.seal.cipher
    p[LEND.txEpoch] = keys.txEpoch
    p[LEND.txCounter] = keys.txCounter
    p[LEND.txBytes] = keys.txBytes
    p[LEND.rekeyFrames] = keys.rekeyAfterFrames
    p[LEND.rekeyBytes] = keys.rekeyAfterBytes
    p[LEND.rxEpoch] = keys.rxEpoch
    p[LEND.rxHighest] = keys.rxHighest
    // A message up to this size leaves as one frame (see pump).
    p[LEND.maxPayload] =
      this.o.gsoMaxSize > this.mssPayload
        ? this.o.gsoMaxSize - (this.o.gsoMaxSize % this.mssPayload)
        : this.mssPayload
    p[LEND.checksumOffload] = this.o.checksumOffload ? 1 : 0
    p[LEND.srtt] = this.srtt
    p[LEND.rttvar] = this.rttvar
    this.lease = lease
    this.leaseRttSeen = 0
    const now = this.clock()
    this.leaseFramesSeen = 0
    this.leaseAcksSeen = 0
    this.leaseFramesAt = now
    // Our own data in flight keeps its retransmission deadline: checked then.
    this.leaseUnackedSeen = this.sndUna < this.sndNxt
    this.leaseCheckAt = this.leaseUnackedSeen ? Math.min(this.rtoDeadline, now + this.rto) : now + this.rto
    return keys
  }

  /** Takes the connection back from the fast path now, if lent (its host lets go of it). */
  takeBack(): void {
    if (this.lease) this.reclaim(false)
  }

  /**
   * Whether the one message in reassembly may go to the fast path with the connection: reliable,
   * received in order from its start up to rcv_nxt (nothing else is held), not whole yet. The fast
   * path takes it only when it would have taken its first frame (a WRITE of a lent disk).
   */
  private lendablePartial(): boolean {
    const m = this.reassembly.sole()
    return (
      m !== undefined &&
      m.flags === Delivery.Reliable &&
      m.start < this.rcvNxt &&
      this.rcvNxt < m.end &&
      m.filled === this.rcvNxt - m.start
    )
  }

  /** The bytes received so far of the message lent with the connection (LEND.partLength > 0). */
  get lendingPartial(): Uint8Array | undefined {
    const m = this.lease ? this.reassembly.sole() : undefined
    return m?.buffer.subarray(0, m.filled)
  }

  /**
   * The fast path took the lend `lendTo` prepared: the message partly received that went with it
   * is its now (its buffer goes back to the pool), and so is the delayed ACK owed (it sent it).
   */
  lendTaken(): void {
    const m = this.reassembly.sole()
    if (m) {
      // Its bytes so far are on the disk already (the fast path wrote them as it took the lend).
      this.reassembly.free(m)
      messageBuffers.giveBack(m.buffer)
    }
    this.ackDeadline = Number.POSITIVE_INFINITY
    this.unackedWeight = 0
  }

  /** The fast path refused the lend that `lendTo` prepared: nothing changed hands. */
  cancelLend(): void {
    this.lease = undefined
    this.leaseCheckAt = Number.POSITIVE_INFINITY
  }

  /** Whether the connection is lent to a fast path now. */
  get lent(): boolean {
    return this.lease !== undefined
  }

  /**
   * The timer of a lent connection, every RTO: takes it back when replies stayed unacknowledged
   * through a whole period (to retransmit them), or nothing arrived for keepaliveIdle (to probe).
   * True when `tick` goes on with the connection taken back.
   */
  private checkLease(now: number): boolean {
    const lease = this.lease!
    if (now < this.leaseCheckAt) return false
    // The fast path's RTT samples first: the period below is the RTO they give.
    this.adoptRtt(lease.rttSamples, lease.srtt, lease.rttvar)
    const frames = lease.framesTaken
    const acks = lease.ackProgress
    const unacked = lease.inFlight > 0
    if (unacked && this.leaseUnackedSeen && acks === this.leaseAcksSeen) {
      this.reclaim(true)
      return true
    }
    if (frames !== this.leaseFramesSeen) this.leaseFramesAt = now
    else if (now - this.leaseFramesAt >= this.o.keepaliveIdle) {
      this.reclaim(false)
      return true
    }
    this.leaseFramesSeen = frames
    this.leaseAcksSeen = acks
    this.leaseUnackedSeen = unacked
    this.leaseCheckAt = now + this.rto
    return false
  }

  /**
   * The fast path samples the RTT on ACKs of its own replies (sent once: Karn's rule) and folds
   * them into the srtt and rttvar it was lent: when it took new samples, they are the
   * connection's, and so is the RTO they give.
   */
  private adoptRtt(samples: number, srtt: number, rttvar: number): void {
    if (samples <= this.leaseRttSeen) return
    this.leaseRttSeen = samples
    this.srtt = srtt
    this.rttvar = rttvar
    this.rto = this.computedRto()
  }

  /**
   * Takes the connection back from the fast path: its scalars, and the replies it sent and that
   * are not acknowledged yet, queued as sent messages (retransmitted like any). With `timedOut`,
   * those are due for retransmission now.
   */
  private reclaim(timedOut: boolean): void {
    const lease = this.lease!
    this.lease = undefined
    this.leaseCheckAt = Number.POSITIVE_INFINITY
    const r = leaseReturn
    lease.reclaim(r)
    this.adoptRtt(r.rttSamples, r.srtt, r.rttvar)
    const now = this.clock()
    // The positions by how far they moved (the connection's own stayed as they were at the lend);
    // everything else lies within a window of them.
    this.rcvNxt += r.rcvAdvance
    this.sndUna += r.unaAdvance
    // What the fast path saw acknowledged of our own messages (sent before the lend). Without
    // progress, duplicate ACKs counted before the lend and the retransmission deadline stand.
    this.freeAcked()
    if (r.ackProgress > 0) this.dupAcks = 0
    if (this.timingPos >= 0 && this.timingPos <= this.sndUna) this.timingPos = -1
    for (let i = 0; i < r.replies.length; i++) {
      const data = r.replies[i]
      const m =
        this.spareCount > 0
          ? this.spare[--this.spareCount]
          : { start: 0, end: 0, flags: 0, chunks: NO_CHUNKS, single: [NO_BYTES] }
      m.start = positionOf(this.iss, r.replySeqs[i], this.sndUna)
      m.end = m.start + data.length
      m.flags = Delivery.Reliable
      m.single[0] = data
      m.chunks = m.single
      if (this.outEnd === this.out.length) this.out.push(m)
      else this.out[this.outEnd] = m
      this.outEnd++
      this.queuedBytes += data.length
      this.stats.messagesSent++
    }
    this.sndNxt = positionOf(this.iss, r.sndNxt, this.sndUna)
    this.sndMax = positionOf(this.iss, r.sndMax, this.sndUna)
    this.sendCursor = this.outHead
    this.sndWnd = r.sndWnd
    this.cwnd = r.cwnd
    this.sndWl1 = positionOf(this.irs, r.wl1, this.rcvNxt)
    this.sndWl2 = positionOf(this.iss, r.wl2, this.sndUna)
    this.ipId = r.ipId
    this.seal!.adoptSteady(r.txCounter, r.txBytes, r.rxHighest, r.rxBits)
    if (r.framesTaken > 0) {
      this.lastReceiveAt = now
      this.probesSent = 0
    }
    if (r.ackProgress > 0) this.lastProgressAt = now
    // A WRITE the fast path was receiving over several frames: reassembled from here on.
    if (r.partial) {
      const start = positionOf(this.irs, r.partialSeq, this.rcvNxt)
      const m = this.reassembly.open(
        start,
        start + r.partialLength,
        Delivery.Reliable,
        now,
        this.o.reassemblyTimeout,
      )
      m.buffer.set(r.partial, 0)
      m.filled = r.partial.length
      r.partial = undefined
    } else if (r.partialLost) {
      // Its bytes (acknowledged already) could not be read back: only a reset makes the peer send
      // it again (on its next connection).
      this.partialLost = true
      this.ackDeadline = now
    }
    if (this.sndUna >= this.sndNxt) this.rtoDeadline = Number.POSITIVE_INFINITY
    else if (timedOut) this.rtoDeadline = now
    else if (r.ackProgress > 0 || this.rtoDeadline === Number.POSITIVE_INFINITY)
      this.rtoDeadline = now + this.rto
  }

  // ---------------------------------------------------------------- handshake

  private isHandshaking(): boolean {
    return this.state === 'syn-sent' || this.state === 'syn-received'
  }

  private acceptSyn(syn: TcpFrame): void {
    const opt = syn.tcp.options
    this.irs = syn.tcp.seq
    this.rcvNxt = 1
    this.peerMss = opt.mss > 0 ? opt.mss : 536
    this.sack = opt.sackPermitted
    this.timestamps = opt.hasTimestamp
    if (opt.hasTimestamp) this.tsRecent = opt.tsValue
    if (opt.windowScale >= 0) this.sendScale = opt.windowScale
    else this.receiveScale = 0 // scaling needs both sides (RFC 7323)
    this.sndWnd = syn.tcp.window // unscaled in SYN segments
    this.sndWl1 = 0
    this.computeMss()
  }

  private computeMss(): void {
    const ownMss = this.o.mtu - 40
    const optionSpace =
      VRIO_SEGMENT_OPTION_LENGTH +
      (this.timestamps ? TIMESTAMP_OPTION_SPACE : 0) +
      (this.seal ? VRIO_SEAL_OPTION_LENGTH : 0)
    this.mssPayload = Math.min(this.peerMss, ownMss) - ((optionSpace + 3) & ~3)
    this.cwnd = 10 * this.mssPayload
  }

  private receiveInSynSent(f: TcpFrame): void {
    const tcp = f.tcp
    const flags = tcp.flags
    if (flags & TCP_ACK && tcp.ack !== seqOf(this.iss, 1)) {
      if (!(flags & TCP_RST)) this.sendReset(tcp.ack)
      this.drop('unacceptable-ack')
      return
    }
    if (flags & TCP_RST) {
      if (flags & TCP_ACK) this.finish('refused')
      return
    }
    if (!(flags & TCP_SYN) || !(flags & TCP_ACK)) return // simultaneous open is not part of vrio
    if (
      tcp.options.vrioVersion !== (this.seal ? VRIO_PROTOCOL_VERSION : VRIO_PLAINTEXT_VERSION) ||
      (this.seal !== undefined && tcp.options.vrioCipher !== this.seal.cipher)
    ) {
      this.drop('not-vrio')
      this.sendReset(tcp.ack)
      this.finish('protocol-error')
      return
    }
    this.acceptSyn(f)
    this.sndUna = 1
    this.sndWl1 = 0
    this.sndWl2 = 1
    this.state = 'established'
    this.rtoDeadline = Number.POSITIVE_INFINITY
    this.rto = this.o.rtoInitial
    this.sendControl(TCP_ACK, this.sndNxt)
    this.handlers.established?.()
    if (this.state === 'established') this.pump()
  }

  private sendSyn(ack: boolean): void {
    const opts = this.tx.tcp.options
    this.resetOptions(opts)
    opts.mss = this.o.mtu - 40
    opts.sackPermitted = true
    // Sealed: no room for timestamps next to SEAL, so they are not negotiated.
    opts.hasTimestamp = !this.seal
    opts.tsValue = this.tsNow()
    opts.tsEcho = ack ? this.tsRecent : 0
    opts.windowScale = this.receiveScale
    opts.vrioVersion = this.seal ? VRIO_PROTOCOL_VERSION : VRIO_PLAINTEXT_VERSION
    opts.vrioCipher = this.seal ? this.seal.cipher : -1
    if (ack) {
      // Echo only what the peer offered (RFC 7323, RFC 2018).
      if (!this.sack) opts.sackPermitted = false
      if (!this.timestamps) opts.hasTimestamp = false
      if (this.sendScale === 0 && this.receiveScale === 0) opts.windowScale = -1
    }
    const window = Math.min(this.receiveWindow, 65_535)
    this.emit(TCP_SYN | (ack ? TCP_ACK : 0), 0, window, undefined, 0, 0)
  }

  // ---------------------------------------------------------------- receiving

  private acceptable(segStart: number, segLength: number, isSkip: boolean, opts: TcpOptions): boolean {
    const right = Math.max(this.rcvAdvEdge, this.rcvNxt + this.receiveWindow)
    if (isSkip) {
      const msgStart = positionOf(this.irs, opts.vrio.messageStart, this.rcvNxt)
      const end = msgStart + opts.vrio.messageLength
      return end > this.rcvNxt && segStart < right
    }
    if (segLength === 0) return segStart >= this.rcvNxt && segStart <= right
    return segStart + segLength > this.rcvNxt && segStart < right
  }

  private processPayload(buf: Uint8Array, f: TcpFrame, segStart: number, now: number): void {
    const opt = f.tcp.options.vrio
    if (!opt.present) {
      this.drop('missing-segment-option')
      return
    }
    const msgStart = positionOf(this.irs, opt.messageStart, this.rcvNxt)
    const msgEnd = msgStart + opt.messageLength
    const delivery = opt.flags & SEGMENT_DELIVERY_MASK
    if (this.preAuthReceiveBytes > 0 && (delivery !== Delivery.Ordered || opt.flags & SEGMENT_SKIP)) {
      this.drop('unauthenticated')
      return
    }
    if (opt.flags & SEGMENT_SKIP) {
      this.processSkip(segStart, msgStart, msgEnd, delivery)
      return
    }
    const length = f.payloadLength
    if (
      opt.messageLength === 0 ||
      opt.messageLength > this.o.maxMessageSize ||
      delivery > Delivery.BestEffort ||
      segStart < msgStart ||
      segStart + length > msgEnd
    ) {
      this.drop('bad-segment-option')
      return
    }
    const right = Math.max(this.rcvAdvEdge, this.rcvNxt + this.receiveWindow)
    if (segStart + length > right) {
      this.drop('out-of-window')
      this.ackNow = true
      return
    }
    const start = Math.max(segStart, this.rcvNxt)
    const end = segStart + length
    if (start >= end || this.received.covers(start, end)) {
      this.stats.duplicatesDropped++
      this.ackNow = true
      return
    }
    // Owed before anything is delivered: an answer the handler sends at once carries the ACK.
    // Out of order, or filling a hole: at once, with SACK blocks (RFC 5681 4.2).
    if (start === this.rcvNxt && this.received.isEmpty()) this.oweAck(end - start, now)
    else this.ackNow = true
    if (this.fragmentsTooMuch(start, end)) return
    if (this.abandoned.has(msgStart)) {
      this.received.add(start, end)
      this.advance()
      return
    }
    const payload = f.payloadOffset

    // Fast path: the whole message in this frame, deliverable now: hand out a view, copy nothing.
    if (
      segStart === msgStart &&
      length === opt.messageLength &&
      (delivery !== Delivery.Ordered || segStart === this.rcvNxt)
    ) {
      const held = this.reassembly.get(msgStart)
      if (held) this.reassembly.free(held)
      this.markReceived(start, end)
      this.deliver(buf.subarray(payload, payload + length), delivery as Delivery, false)
      this.deliverPassed()
      return
    }

    let m = this.reassembly.get(msgStart)
    if (!m) {
      const limit = this.preAuthReceiveBytes > 0 ? this.preAuthReceiveBytes : this.o.maxReassemblyBytes
      if (this.reassembly.bytes + opt.messageLength > limit) {
        this.drop('receive-memory')
        return
      }
      if (this.reassembly.size >= this.o.maxIntervals) {
        this.drop('interval-limit')
        return
      }
      // Sealed, its first frame may have been decrypted into a fresh buffer already (payloadPlacement).
      const fresh = this.placedFresh ? this.placedBuffer : undefined
      this.placedFresh = false
      m = this.reassembly.open(msgStart, msgEnd, delivery, now, this.o.reassemblyTimeout, fresh)
    } else if (m.end !== msgEnd || m.flags !== delivery) {
      this.drop('segment-mismatch')
      return
    }
    if (this.placedBuffer) {
      // Decrypted out of the frame already (payloadPlacement): in place unless m changed meanwhile.
      const from = this.placedOffset + (start - segStart)
      if (this.placedBuffer !== m.buffer || from !== start - msgStart) {
        m.buffer.set(this.placedBuffer.subarray(from, this.placedOffset + length), start - msgStart)
      }
    } else {
      m.buffer.set(buf.subarray(payload + (start - segStart), payload + length), start - msgStart)
    }
    m.filled += this.markReceived(start, end)
    if (delivery !== Delivery.Ordered && this.isResolved(m.start, m.end)) {
      this.reassembly.free(m)
      if (m.filled === m.end - m.start) this.deliver(m.buffer, delivery as Delivery, true)
      else this.drop('segment-mismatch')
    }
    this.deliverPassed()
  }

  private processSkip(segStart: number, msgStart: number, msgEnd: number, delivery: number): void {
    const right = Math.max(this.rcvAdvEdge, this.rcvNxt + this.receiveWindow)
    if (
      delivery !== Delivery.BestEffort ||
      segStart < msgStart ||
      segStart >= msgEnd ||
      msgEnd - msgStart > this.o.maxMessageSize ||
      msgEnd > right
    ) {
      this.drop('bad-skip')
      return
    }
    const m = this.reassembly.get(msgStart)
    if (m && (m.flags !== Delivery.BestEffort || m.end !== msgEnd)) {
      this.drop('bad-skip')
      return
    }
    const from = Math.max(segStart, this.rcvNxt)
    const resolved = this.isResolved(msgStart, msgEnd)
    if (!resolved && !this.abandoned.has(msgStart) && this.abandoned.size >= this.o.maxIntervals) {
      this.drop('interval-limit')
      return
    }
    if (this.fragmentsTooMuch(from, msgEnd)) return
    if (m) this.reassembly.free(m)
    if (!resolved) {
      this.abandoned.add(msgStart, msgEnd)
      this.stats.bestEffortDropped++
    }
    this.received.add(from, msgEnd)
    this.ackNow = true
    this.advance()
  }

  /**
   * True (and the segment counted as dropped) when marking [start, end) received would split the
   * receive space into more than maxIntervals ranges. Data at the next expected position always
   * passes: it moves the stream on at once.
   */
  private fragmentsTooMuch(start: number, end: number): boolean {
    const r = this.received
    if (start <= this.rcvNxt || r.count < this.o.maxIntervals || !r.wouldGrow(start, end)) return false
    this.drop('interval-limit')
    return true
  }

  /** True when every byte of [start, end) was received (or released by a Skip). */
  private isResolved(start: number, end: number): boolean {
    return this.rcvNxt >= end || this.received.covers(Math.max(start, this.rcvNxt), end)
  }

  /** Moves rcvNxt over everything received contiguously and delivers ordered messages it passed. */
  private advance(): void {
    this.moveAckPoint()
    this.deliverPassed()
  }

  /**
   * Marks [start, end) (start ≥ rcvNxt) received and moves rcvNxt on (before a message is
   * delivered, so that an answer sent from its handler acknowledges it); returns the bytes newly
   * received. Header prediction: data at rcvNxt with no hole above it just moves rcvNxt, without
   * the range set (whose arrays would grow and empty again every segment).
   */
  private markReceived(start: number, end: number): number {
    if (start === this.rcvNxt && this.received.isEmpty()) {
      this.rcvNxt = end
      if (this.abandoned.size > 0) this.abandoned.forgetBelow(end)
      return end - start
    }
    const added = this.received.add(start, end)
    this.moveAckPoint()
    return added
  }

  /** Moves rcvNxt over everything received contiguously. */
  private moveAckPoint(): void {
    const r = this.received
    while (!r.isEmpty() && r.start(0) <= this.rcvNxt) {
      if (r.end(0) > this.rcvNxt) this.rcvNxt = r.end(0)
      r.trimBelow(this.rcvNxt)
    }
    if (this.abandoned.size > 0) this.abandoned.forgetBelow(this.rcvNxt)
  }

  /** Delivers the ordered messages rcvNxt has passed, then consumes the FIN if it is next. */
  private deliverPassed(): void {
    while (!this.closed) {
      const m = this.reassembly.takeOrderedBelow(this.rcvNxt)
      if (!m) break
      if (m.filled === m.end - m.start) this.deliver(m.buffer, Delivery.Ordered, true)
      else this.drop('segment-mismatch')
    }
    this.maybeConsumeFin()
  }

  /**
   * In-order data of `bytes` arrived in one frame: delayed acknowledgement (RFC 1122 4.2.3.2, RFC
   * 5681 4.2). At once when the data since the last ACK adds up to two full-sized segments (a
   * frame counts for at most one: a GSO super-frame travels as one), else by the next segment we
   * send or, at the latest, ackDelay after the first of it. PSH changes nothing (every sealed data
   * segment carries it).
   */
  private oweAck(bytes: number, now: number): void {
    this.unackedWeight += Math.min(bytes, this.mssPayload)
    if (this.unackedWeight >= 2 * this.mssPayload || this.o.ackDelay === 0) this.ackNow = true
    else if (this.ackDeadline === Number.POSITIVE_INFINITY) this.ackDeadline = now + this.o.ackDelay
  }

  private maybeConsumeFin(): void {
    if (this.peerFinPos < 0 || this.rcvNxt !== this.peerFinPos) return
    this.rcvNxt = this.peerFinPos + 1
    this.ackNow = true
    switch (this.state) {
      case 'established':
        this.state = 'close-wait'
        this.handlers.peerClosed?.()
        break
      case 'fin-wait-1':
        // Our FIN is not acknowledged yet: simultaneous close.
        this.state = 'closing'
        break
      case 'fin-wait-2':
        this.enterTimeWait()
        break
    }
  }

  private deliver(data: Uint8Array, delivery: Delivery, owned: boolean): void {
    if (this.closed) return
    this.stats.messagesDelivered++
    if (this.o.manualRelease) this.unreleased += data.length
    this.handlers.message(data, delivery, owned)
  }

  // ---------------------------------------------------------------- acknowledgements

  /** Processes the ACK field and SACK blocks; false when the segment must go no further. */
  private processAck(f: TcpFrame, now: number): boolean {
    const tcp = f.tcp
    const ackPos = positionOf(this.iss, tcp.ack, this.sndUna)
    if (ackPos > this.sndNxt) {
      // Acknowledges something never sent: answer with an ACK and ignore (RFC 793).
      this.drop('unacceptable-ack')
      this.ackNow = true
      return false
    }
    if (tcp.options.hasTimestamp && this.timestamps) this.tsRecent = tcp.options.tsValue

    const windowBefore = this.sndWnd
    this.updateWindow(f, false)
    if (ackPos > this.sndUna) {
      this.onAckAdvance(ackPos, now)
    } else if (
      ackPos === this.sndUna &&
      f.payloadLength === 0 &&
      !(tcp.flags & TCP_FIN) &&
      this.sndWnd === windowBefore &&
      this.sndNxt > this.sndUna
    ) {
      this.dupAcks++
    }
    if (this.sack && tcp.options.sackCount > 0) this.recordSack(tcp.options)
    if (this.sndUna < this.sndNxt) {
      if (!this.inRecovery && (this.dupAcks >= 3 || this.sackedAboveUna() >= 3 * this.mssPayload))
        this.enterRecovery()
      if (this.inRecovery) this.retransmitHoles(now)
    }
    return !this.closed
  }

  private updateWindow(f: TcpFrame, fromHandshake: boolean): void {
    const tcp = f.tcp
    const seqPos = positionOf(this.irs, tcp.seq, this.rcvNxt)
    const ackPos = positionOf(this.iss, tcp.ack, this.sndUna)
    if (fromHandshake || this.sndWl1 < seqPos || (this.sndWl1 === seqPos && this.sndWl2 <= ackPos)) {
      this.sndWnd = tcp.window * 2 ** this.sendScale
      this.sndWl1 = seqPos
      this.sndWl2 = ackPos
    }
  }

  private onAckAdvance(ackPos: number, now: number): void {
    // Karn's algorithm: only a segment sent once gives an RTT sample.
    if (this.timingPos >= 0 && ackPos >= this.timingPos) {
      this.sampleRtt(now - this.timingAt)
      this.timingPos = -1
    }
    const acked = Math.min(ackPos, this.sndMax) - Math.min(this.sndUna, this.sndMax)
    this.sndUna = ackPos
    this.lastProgressAt = now
    this.dupAcks = 0
    this.sacked.trimBelow(ackPos)
    if (this.highRxt < ackPos) this.highRxt = ackPos
    this.freeAcked()
    if (this.inRecovery && ackPos >= this.recoveryPoint) {
      this.inRecovery = false
      this.rtoRecovery = false
      this.cwnd = Math.max(this.ssthresh, 4 * this.mssPayload)
    } else if (!this.inRecovery && acked > 0) {
      // Slow start below ssthresh, then about one MSS per round trip.
      this.cwnd +=
        this.cwnd < this.ssthresh ? acked : Math.max(1, Math.floor((this.mssPayload * acked) / this.cwnd))
      this.cwnd = Math.min(this.cwnd, this.o.sendBuffer)
    }
    this.rto = this.computedRto()
    this.rtoDeadline = this.sndUna < this.sndNxt ? now + this.rto : Number.POSITIVE_INFINITY

    if (this.finSent && ackPos === this.sndMax + 1) this.onFinAcked()
    if (this.writableWanted && this.queuedBytes < this.o.sendBuffer / 2) {
      this.writableWanted = false
      this.handlers.writable?.()
    }
  }

  private resetReason(): CloseReason {
    if (this.state === 'time-wait') return 'normal'
    return this.state === 'last-ack' && this.sndUna >= this.sndMax ? 'normal' : 'reset'
  }

  private onFinAcked(): void {
    switch (this.state) {
      case 'fin-wait-1':
        this.state = 'fin-wait-2'
        break
      case 'closing':
        this.enterTimeWait()
        break
      case 'last-ack':
        this.finish('normal')
        break
    }
  }

  private enterTimeWait(): void {
    this.state = 'time-wait'
    this.rtoDeadline = Number.POSITIVE_INFINITY
    this.timeWaitDeadline = this.clock() + this.o.timeWait
  }

  private recordSack(opts: TcpOptions): void {
    for (let i = 0; i < opts.sackCount; i++) {
      const left = positionOf(this.iss, opts.sackBlocks[2 * i], this.sndUna)
      const right = positionOf(this.iss, opts.sackBlocks[2 * i + 1], this.sndUna)
      // Ignore blocks that are not within what we sent (RFC 2018 gives the receiver no authority beyond it).
      if (!(left < right && left >= this.sndUna && right <= this.sndNxt)) continue
      // A peer fragmenting its SACKs without end gets the extra blocks ignored (a loss is then
      // found by the retransmission timer instead).
      if (this.sacked.count >= this.o.maxIntervals && this.sacked.wouldGrow(left, right)) {
        this.drop('interval-limit')
        continue
      }
      this.sacked.add(left, right)
    }
  }

  private sackedAboveUna(): number {
    return this.sacked.size()
  }

  private freeAcked(): void {
    const out = this.out
    while (this.outHead < this.outEnd) {
      const m = out[this.outHead]!
      if (m.end > this.sndUna) break
      this.queuedBytes -= m.end - m.start
      out[this.outHead] = undefined
      this.outHead++
      // Nothing refers to an acknowledged message any more (the send cursor and retransmissions
      // only look at and above sndUna): its record is reused, without the caller's buffers.
      if (this.spareCount < SPARE_MESSAGES) {
        m.chunks = NO_CHUNKS
        m.single[0] = NO_BYTES
        this.spare[this.spareCount++] = m
      }
    }
    // Move what is left to the front: at once when nothing is (the usual case at low depth),
    // else once the acknowledged part is the larger one and large.
    const head = this.outHead
    if (head > 0 && (head === this.outEnd || (head > 1024 && head * 2 > this.outEnd))) {
      out.copyWithin(0, head, this.outEnd)
      out.fill(undefined, this.outEnd - head, this.outEnd)
      this.outEnd -= head
      this.sendCursor -= head
      this.outHead = 0
    }
    if (this.sendCursor < this.outHead) this.sendCursor = this.outHead
  }

  private sampleRtt(sample: number): void {
    const r = Math.max(sample, 0)
    if (this.srtt < 0) {
      this.srtt = r
      this.rttvar = r / 2
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - r)
      this.srtt = 0.875 * this.srtt + 0.125 * r
    }
  }

  private computedRto(): number {
    if (this.srtt < 0) return this.o.rtoInitial
    return Math.min(this.o.rtoMax, Math.max(this.o.rtoMin, this.srtt + Math.max(1, 4 * this.rttvar)))
  }

  // ---------------------------------------------------------------- sending

  /** Sends new data as far as the peer's window and the congestion window allow, then FIN if asked. */
  private pump(): void {
    if (!(this.state === 'established' || this.state === 'close-wait')) return
    const now = this.clock()
    let burst = 0
    while (this.sndNxt < this.sndMax && burst < this.o.maxBurst) {
      const flight = this.sndNxt - this.sndUna - this.sacked.size()
      const room = Math.min(this.sndUna + this.sndWnd - this.sndNxt, this.cwnd - flight)
      if (room <= 0) break
      while (this.out[this.sendCursor]!.end <= this.sndNxt) this.sendCursor++
      const m = this.out[this.sendCursor]!
      const remaining = m.end - this.sndNxt
      const limit =
        this.o.gsoMaxSize > this.mssPayload
          ? this.o.gsoMaxSize - (this.o.gsoMaxSize % this.mssPayload)
          : this.mssPayload
      const length = Math.min(limit, remaining, room)
      // Silly-window avoidance: no runt segments while earlier data is still in flight.
      if (length < Math.min(this.mssPayload, remaining) && this.sndNxt > this.sndUna) break
      if (this.sndNxt === this.sndUna) this.lastProgressAt = now
      this.sendData(this.sndNxt, length, m)
      this.sndNxt += length
      burst++
      if (this.timingPos < 0) {
        this.timingPos = this.sndNxt
        this.timingAt = now
      }
      if (this.rtoDeadline === Number.POSITIVE_INFINITY) this.rtoDeadline = now + this.rto
    }
    if (this.closeRequested && !this.finSent && this.sndNxt === this.sndMax) {
      if (this.sndNxt === this.sndUna) this.lastProgressAt = now
      this.finSent = true
      this.sndNxt = this.sndMax + 1
      this.state = this.state === 'close-wait' ? 'last-ack' : 'fin-wait-1'
      this.sendControl(TCP_FIN | TCP_ACK, this.sndMax)
      if (this.rtoDeadline === Number.POSITIVE_INFINITY) this.rtoDeadline = now + this.rto
    }
  }

  private enterRecovery(): void {
    this.stats.fastRecoveries++
    this.inRecovery = true
    this.rtoRecovery = false
    this.recoveryPoint = this.sndNxt
    this.highRxt = this.sndUna
    const flight = this.sndNxt - this.sndUna
    this.ssthresh = Math.max(Math.floor(flight * 0.7), 4 * this.mssPayload)
    this.cwnd = this.ssthresh
    this.timingPos = -1
  }

  private onRetransmitTimeout(now: number): void {
    this.stats.rtoFirings++
    this.rto = Math.min(this.rto * SYN_RETRIES_BACKOFF, this.o.rtoMax)
    this.rtoDeadline = now + this.rto
    if (this.isHandshaking()) {
      if (now - this.startedAt > this.o.connectTimeout) {
        this.finish('connect-timeout')
        return
      }
      this.sendSyn(this.state === 'syn-received')
      return
    }
    if (this.sndUna >= this.sndNxt) {
      this.rtoDeadline = Number.POSITIVE_INFINITY
      return
    }
    const flight = this.sndNxt - this.sndUna
    this.ssthresh = Math.max(Math.floor(flight / 2), 2 * this.mssPayload)
    this.cwnd = 2 * this.mssPayload
    this.inRecovery = true
    this.rtoRecovery = true
    this.recoveryPoint = this.sndNxt
    this.highRxt = this.sndUna
    this.timingPos = -1
    this.retransmitHoles(now)
  }

  /**
   * Retransmits the holes the peer has not acknowledged or SACKed, from highRxt on: up to the
   * highest SACKed byte in fast recovery, up to sndNxt after a timeout. A hole in a best-effort
   * message that was sent whole is not resent: a Skip tells the receiver to give up on it.
   */
  private retransmitHoles(now: number): void {
    const limitEnd = this.rtoRecovery ? this.sndNxt : Math.max(this.sacked.max(), this.sndUna + 1)
    let p = Math.max(this.highRxt, this.sndUna)
    let n = 0
    while (n < this.o.maxBurst) {
      p = this.sacked.nextGap(p)
      if (p >= limitEnd || p >= this.sndNxt) break
      n++
      if (this.finSent && p === this.sndMax) {
        this.sendControl(TCP_FIN | TCP_ACK, this.sndMax)
        p++
        continue
      }
      const m = this.findMessage(p)
      if (m.flags === Delivery.BestEffort && this.sndNxt >= m.end) {
        this.sendSkip(p, m)
        p = m.end
        continue
      }
      const end = Math.min(p + this.mssPayload, m.end, this.sacked.nextCovered(p), this.sndNxt)
      this.sendData(p, end - p, m)
      this.stats.retransmits++
      p = end
    }
    this.highRxt = p
    if (n > 0 && this.rtoDeadline === Number.POSITIVE_INFINITY) this.rtoDeadline = now + this.rto
  }

  private findMessage(position: number): OutMessage {
    let lo = this.outHead
    let hi = this.outEnd - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.out[mid]!.end <= position) lo = mid + 1
      else hi = mid
    }
    return this.out[lo]!
  }

  private sendData(position: number, length: number, m: OutMessage): void {
    const opts = this.tx.tcp.options
    this.resetOptions(opts)
    this.setSegmentOption(opts, m, m.flags)
    // Sealed: PSH on every data frame, so that the receiver can re-join split GSO pieces (rejoin.ts).
    const last = position + length === m.end || this.seal !== undefined
    this.emit(TCP_ACK | (last ? TCP_PSH : 0), position, this.windowField(), m, position - m.start, length)
  }

  private sendSkip(position: number, m: OutMessage): void {
    this.stats.skipsSent++
    const opts = this.tx.tcp.options
    this.resetOptions(opts)
    this.setSegmentOption(opts, m, m.flags | SEGMENT_SKIP)
    this.emit(TCP_ACK, position, this.windowField(), undefined, 0, 0)
  }

  private setSegmentOption(opts: TcpOptions, m: OutMessage, flags: number): void {
    opts.vrio.present = true
    opts.vrio.flags = flags
    opts.vrio.messageStart = seqOf(this.iss, m.start)
    opts.vrio.messageLength = m.end - m.start
  }

  /** A segment without payload (ACK, FIN, RST) at sender position `position`, with SACK blocks when we have holes. */
  private sendControl(flags: number, position: number): void {
    const opts = this.tx.tcp.options
    this.resetOptions(opts)
    if (this.sack && !(flags & TCP_RST)) this.fillSackBlocks(opts)
    this.emit(flags, position, this.windowField(), undefined, 0, 0)
  }

  /** Keepalive and zero-window probe: an old sequence number the peer must answer with an ACK. */
  private sendProbe(): void {
    this.sendControl(TCP_ACK, this.sndUna - 1)
  }

  private sendReset(ackField: number): void {
    const opts = this.tx.tcp.options
    this.resetOptions(opts)
    opts.hasTimestamp = false
    const t = this.tx.tcp
    t.seq = ackField
    t.ack = 0
    t.flags = TCP_RST
    t.window = 0
    this.emitPrepared(0, undefined, 0, 0)
  }

  private fillSackBlocks(opts: TcpOptions): void {
    const r = this.received
    // Sealed: SEAL (22 bytes) leaves 18, two blocks without aligning NOPs.
    const space = 40 - (opts.hasTimestamp ? 12 : 0) - (this.seal ? VRIO_SEAL_OPTION_LENGTH + 2 : 4)
    const count = Math.min(r.count, MAX_SACK_BLOCKS, Math.floor(space / 8))
    for (let i = 0; i < count; i++) {
      opts.sackBlocks[2 * i] = seqOf(this.irs, r.start(i))
      opts.sackBlocks[2 * i + 1] = seqOf(this.irs, r.end(i))
    }
    opts.sackCount = count
  }

  private resetOptions(opts: TcpOptions): void {
    opts.mss = -1
    opts.windowScale = -1
    opts.sackPermitted = false
    opts.vrioVersion = -1
    opts.vrioCipher = -1
    opts.sackCount = 0
    opts.vrio.present = false
    opts.hasTimestamp = this.timestamps || (this.isHandshaking() && !this.seal)
    opts.tsValue = this.tsNow()
    opts.tsEcho = this.tsRecent
  }

  private windowField(): number {
    const field = Math.min(Math.floor(this.receiveWindow / 2 ** this.receiveScale), 65_535)
    const edge = this.rcvNxt + field * 2 ** this.receiveScale
    if (edge > this.rcvAdvEdge) this.rcvAdvEdge = edge
    return field
  }

  private emit(
    flags: number,
    position: number,
    window: number,
    m: OutMessage | undefined,
    offset: number,
    length: number,
  ): void {
    const t = this.tx.tcp
    t.seq = seqOf(this.iss, position)
    t.ack = flags & TCP_ACK ? seqOf(this.irs, this.rcvNxt) : 0
    t.flags = flags
    t.window = window
    if (flags & TCP_ACK) {
      // This ACK covers everything received in order; only SACK blocks (pure ACKs carry them)
      // may still be owed.
      this.ackNow = this.ackNow && !this.received.isEmpty() && length > 0
      this.ackDeadline = Number.POSITIVE_INFINITY
      this.unackedWeight = 0
    }
    this.emitPrepared(length, m, offset, length)
  }

  private emitPrepared(
    payloadLength: number,
    m: OutMessage | undefined,
    offset: number,
    length: number,
  ): void {
    if (this.seal) this.seal.prepare(this.tx.tcp.options, payloadLength)
    const headerLength = tcpFrameHeaderLength(this.tx.tcp.options)
    const headroom = this.o.headroom
    const frame = this.allocate(headerLength + payloadLength, headroom)
    // Sealed, the payload is encrypted from the message's chunks straight into the frame (the
    // cipher pass is the copy, however many chunks the payload spans); plaintext, it is copied.
    let sealFrom: readonly Uint8Array[] | undefined
    if (m && length > 0) {
      if (this.seal && m.chunks.length <= SEAL_MAX_CHUNKS) sealFrom = m.chunks
      else copyChunks(m.chunks, offset, frame, headerLength, length)
    }
    this.tx.ip.identification = this.ipId
    this.ipId = (this.ipId + 1) & 0xffff
    const frameLength = encodeTcpFrameHeaders(frame, this.tx, payloadLength)
    // The checksum covers the sealed result.
    if (sealFrom) {
      // A range inside one chunk (most frames of a header-and-body message) goes as that chunk.
      let i = 0
      let at = offset
      while (at >= sealFrom[i].length) at -= sealFrom[i++].length
      if (at + length <= sealFrom[i].length) this.seal!.seal(frame, this.tx, headerLength, sealFrom[i], at)
      else this.seal!.seal(frame, this.tx, headerLength, sealFrom, offset)
    } else if (this.seal) this.seal.seal(frame, this.tx, headerLength)
    finishTcpFrameChecksum(frame, this.tx, frameLength, this.o.checksumOffload)
    this.stats.framesSent++
    this.stats.bytesSent += frame.length
    this.sink(frame, payloadLength > this.mssPayload ? this.mssPayload : 0)
  }

  private tsNow(): number {
    return Math.floor(this.clock()) >>> 0
  }

  private keepaliveDeadline(): number {
    return this.lastReceiveAt + this.o.keepaliveIdle + this.probesSent * this.o.keepaliveInterval
  }

  private drop(reason: SegmentDropReason): void {
    this.stats.drops[reason] = (this.stats.drops[reason] ?? 0) + 1
  }

  private finish(reason: CloseReason): void {
    if (this.closed) return
    this.state = 'closed'
    this.closeReason = reason
    this.rtoDeadline = Number.POSITIVE_INFINITY
    this.timeWaitDeadline = Number.POSITIVE_INFINITY
    this.ackDeadline = Number.POSITIVE_INFINITY
    this.out.length = 0
    this.outHead = 0
    this.outEnd = 0
    this.queuedBytes = 0
    this.reassembly.clear()
    this.abandoned.clear()
    this.received.clear()
    this.sacked.clear()
    this.rejoiner?.destroy()
    this.seal?.destroy()
    this.onFinished?.(this)
    this.handlers.closed?.(reason)
  }
}

/** What a fast path hands back goes here (one connection reclaims at a time). */
const leaseReturn: LeaseReturn = newLeaseReturn()
