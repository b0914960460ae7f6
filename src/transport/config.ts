import { VrioError } from '../errors.ts'
import type { SealCipherName } from './aead.ts'

/** How a message is delivered. Carried in the low bits of the segment option's flags. */
export const Delivery = {
  /** Retransmitted until acknowledged; delivered exactly once, in the order sent (control). */
  Ordered: 0,
  /** Retransmitted until acknowledged; delivered exactly once, as soon as complete (block I/O). */
  Reliable: 1,
  /** Never retransmitted; delivered whole or not at all (network frames). */
  BestEffort: 2,
} as const
export type Delivery = (typeof Delivery)[keyof typeof Delivery]

/** Flag bits of the vrio segment option. */
export const SEGMENT_DELIVERY_MASK = 0x03
/** The sender gives up on the rest of a best-effort message: see docs/protocol.md, "Skip". */
export const SEGMENT_SKIP = 0x80

export interface ConnectionOptions {
  /** Link MTU in bytes (IP packet size); sets the MSS we announce. Jumbo frames allowed. */
  mtu: number
  /** Largest single message, in bytes. */
  maxMessageSize: number
  /** Receive buffer: the window we advertise. Must hold at least one maximum message. */
  receiveBuffer: number
  /** Bytes of messages queued for sending, including unacknowledged ones. */
  sendBuffer: number
  /**
   * Largest GSO super-frame payload to emit (0: off). When on, one frame carries up to this many
   * payload bytes of one message, and the link splits it into MSS-sized segments (kernel GSO).
   */
  gsoMaxSize: number
  /** Write only the pseudo-header sum into TCP checksums, for links that finish them (offload). */
  checksumOffload: boolean
  /**
   * Bytes left free in front of every emitted frame (inside the same buffer, before the view the
   * sink gets), so the link can prepend its own header — a virtio_net_hdr — without a copy.
   */
  headroom: number
  /** Retransmission timeout bounds and start value (RFC 6298), milliseconds. */
  rtoMin: number
  rtoMax: number
  rtoInitial: number
  /**
   * Delayed acknowledgement (RFC 1122 4.2.3.2, RFC 5681 4.2), milliseconds: in-order data that
   * does not yet add up to two full-sized segments is acknowledged by the next segment we send
   * (an answer), or by a pure ACK once this long has passed since the first of it arrived. 0: a
   * pure ACK at the end of every batch that received data. Out-of-order data, gap fills,
   * duplicates, Skips, FIN and window updates are acknowledged at once, whatever this says.
   * Keep it well below rtoMin: the sender's retransmission timer runs meanwhile.
   */
  ackDelay: number
  /** Give up connecting after this long without an answer, milliseconds. */
  connectTimeout: number
  /** Abort when sent data stays unacknowledged this long (RFC 5482's user timeout), milliseconds. */
  userTimeout: number
  /** Idle time before the first keepalive probe, the interval between probes, and how many may go unanswered. */
  keepaliveIdle: number
  keepaliveInterval: number
  keepaliveProbes: number
  /** Time spent in TIME-WAIT after an active close, milliseconds. */
  timeWait: number
  /** A best-effort message not complete after this long is dropped and its memory freed, milliseconds. */
  reassemblyTimeout: number
  /**
   * When false (default) delivered bytes are returned to the window as soon as the message handler
   * returns; when true the application calls `release(bytes)` when it has consumed them, which is
   * how back-pressure from a slow consumer reaches the sender.
   */
  manualRelease: boolean
  /** Most segments (re)transmitted in response to one event, to keep bursts short. */
  maxBurst: number
  /**
   * Protocol version 1: no SEAL option, payload in the clear, nothing authenticated below the
   * session. Default false: every segment sealed (version 2). Both ends must agree.
   */
  insecurePlaintext: boolean
  /** The AEAD an opener picks ('auto': AES-256-GCM when the CPU has AES instructions); a listener follows the opener. */
  cipher: SealCipherName
  /** A sender moves to the next key epoch after this many frames, or this many payload bytes, in one. */
  rekeyAfterFrames: number
  rekeyAfterBytes: number
  /**
   * Bytes of partly received and out-of-order messages held for reassembly; a segment that would
   * start a message beyond it is dropped (counted as 'receive-memory'). Default: receiveBuffer +
   * maxMessageSize. The IOhyp sets it per guest (its `budgets.reassemblyBytes`).
   */
  maxReassemblyBytes: number
  /**
   * Most disjoint ranges a peer may fragment the receive space into (out-of-order data, Skips,
   * messages in reassembly), and most SACK ranges we keep of its acknowledgements. A segment that
   * would make one more is dropped (counted as 'interval-limit'); one at the next expected
   * position always passes.
   */
  maxIntervals: number
}

export const DEFAULT_CONNECTION_OPTIONS: Readonly<ConnectionOptions> = Object.freeze({
  mtu: 1500,
  maxMessageSize: 4 * 1024 * 1024,
  receiveBuffer: 8 * 1024 * 1024,
  sendBuffer: 16 * 1024 * 1024,
  gsoMaxSize: 0,
  checksumOffload: false,
  headroom: 0,
  rtoMin: 20,
  rtoMax: 2000,
  rtoInitial: 250,
  ackDelay: 2,
  connectTimeout: 5000,
  userTimeout: 15_000,
  keepaliveIdle: 1000,
  keepaliveInterval: 500,
  keepaliveProbes: 6,
  timeWait: 4000,
  reassemblyTimeout: 5000,
  manualRelease: false,
  maxBurst: 64,
  insecurePlaintext: false,
  cipher: 'auto',
  rekeyAfterFrames: 2 ** 30,
  rekeyAfterBytes: 2 ** 36,
  maxReassemblyBytes: 12 * 1024 * 1024,
  maxIntervals: 4096,
})

/** Minimum IPv4 MTU a link must offer for our headers plus a useful payload. */
const MIN_MTU = 576
const MAX_MTU = 65_535
/** Largest window TCP can express: 65535 << 14. */
const MAX_WINDOW = 65_535 * 2 ** 14

/** Fills in defaults and checks every field; a bad one is a `VrioError('invalid-config')` naming it. */
export function resolveConnectionOptions(partial: Partial<ConnectionOptions> = {}): ConnectionOptions {
  const o: ConnectionOptions = { ...DEFAULT_CONNECTION_OPTIONS, ...partial }
  if (partial.maxReassemblyBytes === undefined) o.maxReassemblyBytes = o.receiveBuffer + o.maxMessageSize
  const integer = (field: keyof ConnectionOptions, min: number, max: number): void => {
    const v = o[field]
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw new VrioError(
        'invalid-config',
        `transport option ${field} must be an integer in [${min}, ${max}], got ${String(v)}`,
        {
          field,
        },
      )
    }
  }
  integer('mtu', MIN_MTU, MAX_MTU)
  integer('maxMessageSize', 1, 1024 * 1024 * 1024)
  integer('receiveBuffer', 65_536, MAX_WINDOW)
  integer('sendBuffer', 65_536, 4 * 1024 * 1024 * 1024)
  integer('gsoMaxSize', 0, 65_000)
  integer('headroom', 0, 64)
  integer('rtoMin', 1, 60_000)
  integer('rtoMax', o.rtoMin, 600_000)
  integer('rtoInitial', o.rtoMin, o.rtoMax)
  integer('ackDelay', 0, 500)
  integer('connectTimeout', 1, 3_600_000)
  integer('userTimeout', 1, 3_600_000)
  integer('keepaliveIdle', 1, 3_600_000)
  integer('keepaliveInterval', 1, 3_600_000)
  integer('keepaliveProbes', 1, 1000)
  integer('timeWait', 0, 600_000)
  integer('reassemblyTimeout', 1, 3_600_000)
  integer('maxBurst', 1, 100_000)
  integer('rekeyAfterFrames', 1, 2 ** 32)
  integer('rekeyAfterBytes', 1, 2 ** 48)
  if (typeof o.insecurePlaintext !== 'boolean') {
    throw new VrioError('invalid-config', 'transport option insecurePlaintext is a boolean', {
      field: 'insecurePlaintext',
    })
  }
  if (o.cipher !== 'auto' && o.cipher !== 'aes-256-gcm' && o.cipher !== 'chacha20-poly1305') {
    throw new VrioError(
      'invalid-config',
      'transport option cipher is auto, aes-256-gcm or chacha20-poly1305',
      {
        field: 'cipher',
      },
    )
  }
  integer('maxReassemblyBytes', o.maxMessageSize, 4 * 1024 * 1024 * 1024)
  integer('maxIntervals', 16, 1_000_000)
  if (o.receiveBuffer < o.maxMessageSize) {
    throw new VrioError('invalid-config', 'transport option receiveBuffer must be at least maxMessageSize', {
      field: 'receiveBuffer',
    })
  }
  if (o.sendBuffer < o.maxMessageSize) {
    throw new VrioError('invalid-config', 'transport option sendBuffer must be at least maxMessageSize', {
      field: 'sendBuffer',
    })
  }
  if (typeof o.checksumOffload !== 'boolean' || typeof o.manualRelease !== 'boolean') {
    throw new VrioError(
      'invalid-config',
      'transport options checksumOffload and manualRelease are booleans',
      {
        field: typeof o.checksumOffload !== 'boolean' ? 'checksumOffload' : 'manualRelease',
      },
    )
  }
  return o
}
