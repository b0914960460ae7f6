import type { ConnectionOptions } from '../transport/config.ts'
import type { Address, Connection, ConnectionHandlers } from '../transport/connection.ts'
import { Endpoint, type PreAuthOptions } from '../transport/endpoint.ts'
import { TCP_OFFSET } from '../wire/frame.ts'
import { type FastDisk, FastPathHost } from './fast-path.ts'
import type { FrameBatch, FrameChannel } from './frame-channel.ts'
import {
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_LEN,
} from '../wire/virtio-net-hdr.ts'

/** Where the TCP checksum sits inside the TCP header. */
const TCP_CHECKSUM_OFFSET = 16

export interface LinkDriverOptions {
  channel: FrameChannel
  mac: number
  ip: number
  listenPort?: number
  /** See EndpointInit.peerPort. */
  peerPort?: number
  accept?: (remote: Address, connection: Connection) => ConnectionHandlers | undefined
  options?: Partial<ConnectionOptions>
  /** See EndpointInit.key: a sealed listener's key (an opener passes one per connect). */
  key?: Uint8Array
  /** See EndpointInit.modeMismatch. */
  modeMismatch?: (remote: Address, peerSealed: boolean) => void
  /** What the endpoint accepts before a peer authenticates (see EndpointInit). */
  preAuth?: PreAuthOptions
  /**
   * The channel carries a virtio_net_hdr before every frame (opened with vnetHdr): outgoing frames
   * get one written into their headroom (checksum left to the kernel, GSO super-frames marked for
   * segmentation), incoming frames whose header says the checksum is fine skip verification.
   * Implies the transport options checksumOffload, headroom and (unless set) gsoMaxSize.
   */
  vnetHdr?: boolean
}

/** Bytes of outgoing frames one send can carry without a fresh allocation (maxBurst 64 × 64 KiB fits). */
const ARENA_SIZE = 8 * 1024 * 1024

/** Frames queued for one send, at most (then they go out at once, and queuing starts again). */
const MAX_QUEUED = 4096

/** Largest GSO super-frame payload: the IPv4 total length (65535) minus IP and TCP headers. */
export const GSO_MAX_PAYLOAD = 64_000

/**
 * Runs a sans-I/O Endpoint over a real link: received batches go in (one ACK flush per batch),
 * frames the transport emits are collected and handed to the kernel in one sendmmsg per turn of the
 * event loop, and one timer follows the endpoint's next deadline.
 */
export class LinkDriver {
  readonly endpoint: Endpoint
  /** Frames the kernel refused (send buffer full): the transport recovers them like losses. */
  sendRefused = 0
  private readonly channel: FrameChannel
  /**
   * Frames to send: first those in the arena, described by (offset, length) — sent with one
   * sendBatch, no view per frame — then any others (an RST, a burst beyond the arena), in order.
   */
  private readonly queuedOffsets = new Uint32Array(MAX_QUEUED)
  private readonly queuedLengths = new Uint32Array(MAX_QUEUED)
  private queuedCount = 0
  private readonly others: Uint8Array[] = []
  private flushQueued = false
  private timer: NodeJS.Timeout | undefined
  private timerAt = Number.POSITIVE_INFINITY
  private stopped = false
  private readonly vnetHdr: boolean
  /** The native fast path, once enabled (enableFastPath). */
  fastPath: FastPathHost | undefined
  /**
   * Outgoing frames are cut from this arena and sent before it is reused (see flush), instead of
   * a new Buffer per frame: 64 KiB super-frames at GB/s otherwise keep the garbage collector busy.
   */
  private readonly arena = Buffer.allocUnsafeSlow(ARENA_SIZE)
  private arenaUsed = 0
  private readonly allocate = (size: number, headroom: number): Uint8Array => {
    const at = (this.arenaUsed + 7) & ~7
    const end = at + headroom + size
    // A burst larger than the arena:
    if (end > ARENA_SIZE) return Buffer.allocUnsafe(headroom + size).subarray(headroom)
    this.arenaUsed = end
    return this.arena.subarray(at + headroom, end)
  }

  constructor(o: LinkDriverOptions) {
    this.channel = o.channel
    this.vnetHdr = o.vnetHdr ?? false
    const options = this.vnetHdr
      ? { gsoMaxSize: GSO_MAX_PAYLOAD, ...o.options, checksumOffload: true, headroom: VIRTIO_NET_HDR_LEN }
      : o.options
    this.endpoint = new Endpoint({
      mac: o.mac,
      ip: o.ip,
      sink: (frame, gsoSize) => this.enqueue(frame, gsoSize),
      allocate: this.allocate,
      listenPort: o.listenPort,
      peerPort: o.peerPort,
      accept: o.accept,
      options,
      key: o.key,
      modeMismatch: o.modeMismatch,
      ...o.preAuth,
    })
    this.channel.onBatch((batch) => this.onBatch(batch))
  }

  /** See Endpoint.connect; `psk`: the peer's key when sealed; `options` override the link's for this one. */
  connect(
    remote: Address,
    handlers: ConnectionHandlers,
    psk?: Uint8Array,
    options?: Partial<ConnectionOptions>,
  ): Connection {
    const c = this.endpoint.connect(remote, handlers, psk, options)
    this.flush()
    return c
  }

  /**
   * Turns the native fast path on for connections whose peer has disks in `disksFor`: idle
   * connections are lent to it after every batch and timer (src/io/fast-path.ts). False when the
   * addon has none.
   */
  enableFastPath(disksFor: (remote: Address) => readonly FastDisk[] | undefined): boolean {
    this.fastPath ??= FastPathHost.create(this.channel, disksFor)
    return this.fastPath !== undefined
  }

  /** Sends everything queued now and re-arms the timer; call after application sends outside a batch if latency matters. */
  readonly flush = (): void => {
    this.flushQueued = false
    if (this.stopped || this.channel.closed) return
    this.sendQueued()
    // The kernel has copied every frame (or refused it for good): their memory is free again.
    this.arenaUsed = 0
    // After a batch, a timer, or what the application sent: connections quiet now go to the fast path.
    this.fastPath?.lendIdle(this.endpoint.connections())
    this.schedule()
  }

  private sendQueued(): void {
    if (this.queuedCount > 0) {
      const n = this.queuedCount
      this.queuedCount = 0
      const sent = this.channel.sendBatch(this.arena, this.queuedOffsets, this.queuedLengths, n)
      this.sendRefused += n - sent
    }
    if (this.others.length > 0) {
      const sent = this.channel.send(this.others)
      this.sendRefused += this.others.length - sent
      this.others.length = 0
    }
  }

  /**
   * Aborts every connection (peers get RSTs), sends that, stops the timer. With `silent`, nothing
   * is sent: the link just goes quiet, as when a process dies. The channel stays open.
   */
  stop(options: { silent?: boolean } = {}): void {
    this.fastPath?.close()
    this.fastPath = undefined
    if (!options.silent) {
      this.endpoint.close()
      this.flush()
    }
    this.stopped = true
    this.queuedCount = 0
    this.others.length = 0
    if (this.timer) clearTimeout(this.timer)
  }

  private onBatch(batch: FrameBatch): void {
    if (this.stopped) return
    if (this.vnetHdr) {
      // One view per frame, past its virtio_net_hdr (read in the slab).
      const slab = batch.slab
      for (let i = 0; i < batch.count; i++) {
        const start = batch.offsets[i]
        // NEEDS_CSUM (sent by a local stack, never summed) or DATA_VALID (checked by the kernel).
        const verified = (slab[start] & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) !== 0
        this.endpoint.receive(slab.subarray(start + VIRTIO_NET_HDR_LEN, start + batch.lengths[i]), verified)
      }
    } else {
      for (let i = 0; i < batch.count; i++) this.endpoint.receive(batch.frame(i))
    }
    // The batch's ACKs go out in a microtask, still in this event but after the continuations the
    // handlers queued meanwhile: an answer that is ready at once (a block read served from the
    // page cache) then carries the ACK instead of following a pure ACK.
    queueMicrotask(this.afterBatch)
  }

  private readonly afterBatch = (): void => {
    if (this.stopped) return
    this.endpoint.flush()
    this.flush()
  }

  private enqueue(frame: Uint8Array, gsoSize: number): void {
    const hdr = this.vnetHdr ? VIRTIO_NET_HDR_LEN : 0
    if (frame.buffer === this.arena.buffer) {
      // Behind a frame of another kind, or a full table: those go first.
      if (this.others.length > 0 || this.queuedCount === MAX_QUEUED) this.sendQueued()
      const at = frame.byteOffset - this.arena.byteOffset - hdr
      if (hdr > 0) writeVnetHdr(this.arena, at, frame, gsoSize)
      this.queuedOffsets[this.queuedCount] = at
      this.queuedLengths[this.queuedCount] = frame.length + hdr
      this.queuedCount++
    } else if (hdr > 0) {
      const h = new Uint8Array(frame.buffer, frame.byteOffset - hdr, frame.length + hdr)
      writeVnetHdr(h, 0, frame, gsoSize)
      this.others.push(h)
    } else {
      this.others.push(frame)
    }
    if (!this.flushQueued) {
      this.flushQueued = true
      queueMicrotask(this.flush)
    }
  }

  /**
   * Follows the endpoint's next deadline with one timer, re-armed only when the deadline moves
   * earlier: a later one (the retransmission or delayed-ACK deadline pushed back by every
   * exchange) lets the armed timer fire early, find nothing due, and arm for the new deadline —
   * one timer per deadline period instead of one per flush. With no deadline, no timer.
   */
  private schedule(): void {
    const at = this.endpoint.nextDeadline()
    if (at >= this.timerAt && at !== Number.POSITIVE_INFINITY) return
    if (this.timer) clearTimeout(this.timer)
    this.timerAt = at
    // No deadline at all (no connection left): no timer to keep the process alive.
    if (at === Number.POSITIVE_INFINITY) {
      this.timer = undefined
      return
    }
    this.timer = setTimeout(this.onTimer, Math.max(0, Math.ceil(at - performance.now())))
  }

  private readonly onTimer = (): void => {
    this.timer = undefined
    this.timerAt = Number.POSITIVE_INFINITY
    if (this.stopped) return
    // Frames that arrived while the loop was busy (a GC pause, a long batch) are read first: an
    // ACK waiting in the socket must stop a retransmission timeout, not lose the race to it.
    this.channel.drain()
    if (this.stopped) return
    this.endpoint.tick()
    this.flush()
  }
}

/**
 * Writes the virtio_net_hdr for `frame` at `h[at]` (the headroom in front of it): the kernel
 * finishes the TCP checksum and, for a super-frame, cuts it into segments of `gsoSize` payload
 * bytes (each with the same TCP options, so vrio's segment option survives).
 */
function writeVnetHdr(h: Uint8Array, at: number, frame: Uint8Array, gsoSize: number): void {
  const headerLength = TCP_OFFSET + (frame[TCP_OFFSET + 12] >>> 4) * 4
  h[at] = VIRTIO_NET_HDR_F_NEEDS_CSUM
  h[at + 1] = gsoSize > 0 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_NONE
  h[at + 2] = headerLength & 0xff
  h[at + 3] = headerLength >>> 8
  h[at + 4] = gsoSize & 0xff
  h[at + 5] = gsoSize >>> 8
  h[at + 6] = TCP_OFFSET
  h[at + 7] = 0
  h[at + 8] = TCP_CHECKSUM_OFFSET
  h[at + 9] = 0
}
