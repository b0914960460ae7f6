/**
 * Lending a connection's steady state to a native fast path (docs/architecture.md, "Fast path and
 * slow path"). Pure: what a Connection gives and takes back; the fast path itself lives in the
 * addon (native/fastpath.cc) and its host in src/io/fast-path.ts.
 *
 * Exactly one side owns a connection at any time. While lent, the native side alone receives the
 * connection's in-order frames and sends its answers; the Connection keeps its state as it was at
 * the lend and touches nothing until it takes the connection back (`reclaim`), which it does before
 * anything of its own: a frame the fast path left to it, a send, a close, its timer.
 */

/** Offsets of the lend parameters (a Float64Array) — kept in step with native/fastpath.cc. */
export const LEND = {
  localMac: 0,
  remoteMac: 1,
  localIp: 2,
  remoteIp: 3,
  localPort: 4,
  remotePort: 5,
  rcvNxt: 6,
  sndNxt: 7,
  ipId: 8,
  windowField: 9,
  sndWnd: 10,
  sendScale: 11,
  mss: 12,
  sendLimit: 13,
  cipher: 14,
  txEpoch: 15,
  txCounter: 16,
  txBytes: 17,
  rekeyFrames: 18,
  rekeyBytes: 19,
  rxEpoch: 20,
  rxHighest: 21,
  maxPayload: 22,
  checksumOffload: 23,
  diskCount: 24,
  sndUna: 25,
  cwnd: 26,
  /** -1: none yet (infinite). */
  ssthresh: 27,
  sendBuffer: 28,
  /** The smoothed RTT and its variation (ms; srtt -1: no sample yet). */
  srtt: 29,
  rttvar: 30,
  /**
   * A reliable message the connection is receiving (partLength 0: none): the sequence number of
   * its first byte, its length and the bytes received so far (`Connection.lendingPartial`).
   */
  partStart: 31,
  partLength: 32,
  partFilled: 33,
  /** 1: a delayed ACK is owed (the fast path sends it as it takes the lend). */
  ackOwed: 34,
  /** Then per disk: handle high, handle low, fd, size, largest read, writable (1) or not (0). */
  disks: 36,
} as const
export const LEND_DISK_STRIDE = 6

/** What the fast path hands back: wire sequence numbers, and the replies it sent not yet acknowledged. */
export interface LeaseReturn {
  /**
   * How far rcv_nxt and snd_una moved since the lend, in bytes (not as sequence numbers: a lend
   * may last while more than 2^31 bytes go either way, which 32 bits cannot tell from a move back).
   * The sequence numbers below lie within a window of those two.
   */
  rcvAdvance: number
  unaAdvance: number
  sndNxt: number
  /** The end of the replies queued: those past sndNxt wait for the windows. */
  sndMax: number
  ipId: number
  txCounter: number
  txBytes: number
  rxHighest: number
  /** The receive replay window's bits (ReplayWindow.exportTo). */
  rxBits: Uint32Array
  sndWnd: number
  cwnd: number
  wl1: number
  wl2: number
  /** Frames it took and ACKs that advanced snd_una, since the lend. */
  framesTaken: number
  ackProgress: number
  /** RTT samples it took since the lend (on ACKs of its own replies, Karn's rule), and srtt and rttvar (ms) with them folded in. */
  rttSamples: number
  srtt: number
  rttvar: number
  /** Replies sent and not acknowledged, oldest first: sequence number of the first byte, and the whole message (a copy). */
  replySeqs: number[]
  replies: Uint8Array[]
  /**
   * A message the fast path was receiving over several frames (a WRITE) when it handed back: the
   * sequence number of its first byte, its length, and its first bytes as received (rcvNxt is
   * past them); the rest is still to come.
   */
  partialSeq: number
  partialLength: number
  partial: Uint8Array | undefined
  /** Such a message's bytes could not be recovered: the connection cannot go on. */
  partialLost: boolean
}

/** The native side of one lent connection, as the Connection sees it. */
export interface ConnectionLease {
  /** Takes the connection back now: the state goes to `into`, and the slot is free again. */
  reclaim(into: LeaseReturn): void
  /**
   * Sends a reliable message (`head`, then `body`) of the connection's own through the fast path,
   * which keeps it with its replies (a copy) until acknowledged. False, nothing sent, when it
   * cannot now (windows, its store): take the connection back and send it.
   */
  send(head: Uint8Array, body?: Uint8Array): boolean
  /** Frames taken and ACK advances since the lend (read between two timer checks). */
  readonly framesTaken: number
  readonly ackProgress: number
  /** Bytes sent (before the lend or since) and not yet acknowledged. */
  readonly inFlight: number
  /** RTT samples taken since the lend, and the srtt and rttvar (ms) they give. */
  readonly rttSamples: number
  readonly srtt: number
  readonly rttvar: number
}

export function newLeaseReturn(): LeaseReturn {
  return {
    rcvAdvance: 0,
    unaAdvance: 0,
    sndNxt: 0,
    sndMax: 0,
    ipId: 0,
    txCounter: 0,
    txBytes: 0,
    rxHighest: -1,
    rxBits: new Uint32Array(32),
    sndWnd: 0,
    cwnd: 0,
    wl1: 0,
    wl2: 0,
    framesTaken: 0,
    ackProgress: 0,
    rttSamples: 0,
    srtt: -1,
    rttvar: 0,
    replySeqs: [],
    replies: [],
    partialSeq: 0,
    partialLength: 0,
    partial: undefined,
    partialLost: false,
  }
}
