import { VrioError } from '../../errors.ts'
import type { FrameBatch, FrameChannel } from '../../io/frame-channel.ts'
import { VIRTIO_NET_HDR_LEN } from '../../wire/virtio-net-hdr.ts'
import { Delivery } from '../../transport/config.ts'
import type { Lender } from '../../transport/message-buffers.ts'
import type { Session } from '../../session/session.ts'
import { MESSAGE_HEADER_LENGTH, type MessageHeader } from '../../wire/message-header.ts'
import type { NetDirection } from '../../services/net/service.ts'
import { checkNetBody, MIN_FRAME, NetFrameEncoder, type NetDropReason } from './protocol.ts'
import { checkSource, type SourcePolicy } from './source-guard.ts'

/** A policy between the wire and the kernel (the IOhyp's service chain). */
export interface NetFilter {
  /**
   * Inspects one Ethernet frame crossing the NIC; false drops it. `reply` sends a frame back
   * toward the frame's sender (e.g. a TCP RST for a rejected connection).
   */
  inspect(frame: Uint8Array, direction: NetDirection, reply: (frame: Uint8Array) => void): boolean
  /**
   * True when part of the policy only watches (it cannot drop): the port then passes each frame
   * that inspect() let through to observe(), after it has forwarded the frame, so the frame does
   * not wait for that part.
   */
  readonly observing?: boolean
  observe?(frame: Uint8Array, direction: NetDirection): void
}

export interface NetTraffic {
  frames: number
  bytes: number
}

export interface NetCounters {
  /** Frames the guest sent (into the channel on the guest, out to the world on the IOhyp). */
  fromGuest: NetTraffic
  /** Frames for the guest. */
  toGuest: NetTraffic
  /** Frames that did not make it, by reason; only non-zero ones. */
  drops: Partial<Record<NetDropReason, number>>
}

export interface NetPortOptions {
  /** The NIC's kernel side: the guest's TAP, or the IOhyp's TAP / macvtap; opened with vnetHdr. */
  channel: FrameChannel
  handle: { high: number; low: number }
  /** Largest frame payload that is not a GSO super-frame. */
  mtu: number
  /** Which end this is: decides which way frames read from the channel go. */
  side: 'guest' | 'iohyp'
  filter?: NetFilter
  /**
   * IOhyp side: what frames from the guest must carry as their source (see source-guard.ts);
   * others are dropped ('spoofed-mac', 'spoofed-ip') before the filter and the kernel see them.
   * Undefined: not checked (the NIC allows spoofing).
   */
  source?: SourcePolicy
  /** Told once per distinct kernel error (the port keeps counting, never throws). */
  onKernelError?: (error: unknown) => void
}

const EMPTY = new Uint8Array(0)

/** A zero virtio_net_hdr: a plain frame with complete checksums. */
const PLAIN_HDR = new Uint8Array(VIRTIO_NET_HDR_LEN)

/**
 * One end of a remote NIC: frames the kernel hands to `channel` go to the other end as NetFrame
 * messages (best-effort), and NetFrame messages from the other end go into the kernel through
 * `channel`. A frame is dropped and counted, never queued, when the channel to the peer is full
 * or missing: this is a NIC, and the guest's TCP recovers as it would from a busy wire.
 */
export class NetPort {
  private readonly o: NetPortOptions
  private readonly encoder: NetFrameEncoder
  /** The message being sent: [header, body], reused for every frame. */
  private readonly parts: Uint8Array[] = [EMPTY, EMPTY]
  private session: Session | undefined
  private readonly outward: NetDirection
  private readonly inward: NetDirection
  private readonly fromKernel: NetTraffic = { frames: 0, bytes: 0 }
  private readonly toKernel: NetTraffic = { frames: 0, bytes: 0 }
  private readonly drops: Partial<Record<NetDropReason, number>> = {}
  private readonly kernelErrors = new Set<string>()
  private closed = false
  /** The one-frame batch handed to the kernel (reused: no array per frame). */
  private readonly one: Uint8Array[] = [EMPTY]

  constructor(o: NetPortOptions) {
    if (o.source && o.side !== 'iohyp')
      throw new VrioError('invalid-argument', 'source enforcement is for the IOhyp side of a NIC')
    this.o = o
    this.encoder = new NetFrameEncoder(o.handle)
    // On the guest, the kernel's frames leave the guest; on the IOhyp, they come from the world.
    this.outward = o.side === 'guest' ? 'from-guest' : 'to-guest'
    this.inward = o.side === 'guest' ? 'to-guest' : 'from-guest'
    o.channel.onBatch((batch) => this.fromChannel(batch))
    o.channel.onError((error) => this.kernelError(error))
  }

  get handle(): { high: number; low: number } {
    return this.o.handle
  }

  /** Frames go to (and come from) this session; undefined: frames from the kernel are dropped. */
  attach(session: Session | undefined, handle?: { high: number; low: number }): void {
    this.session = session
    if (handle) {
      this.o.handle = handle
      this.encoder.setHandle(handle)
    }
  }

  /**
   * A NetFrame from the peer. A lent message (`lender`: see SessionHandlers.data) goes back to its
   * lender once the frame is written (nothing here keeps a frame: the DPI copies what it
   * reassembles).
   */
  receive(h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    if (h.flags !== 0 || h.requestHigh !== 0 || h.requestLow !== 0 || h.replyLength !== 0 || h.status !== 0)
      this.drop('bad-message-header')
    else this.deliver(message)
    lender?.giveBack(message)
  }

  private deliver(message: Uint8Array): void {
    if (this.closed) return
    const body = message.subarray(MESSAGE_HEADER_LENGTH)
    const bad = checkNetBody(body, this.o.mtu)
    if (bad) {
      this.drop(bad)
      return
    }
    const frame = body.subarray(VIRTIO_NET_HDR_LEN)
    const spoofed = this.o.source && checkSource(frame, this.o.source)
    if (spoofed) {
      this.drop(spoofed)
      return
    }
    const filter = this.o.filter
    if (filter && !filter.inspect(frame, this.inward, this.replyToPeer)) {
      this.drop('filtered')
      return
    }
    if (this.writeToKernel(body)) {
      this.toKernel.frames++
      this.toKernel.bytes += frame.length
    }
    // In the kernel already (the write copies): the watching part of the policy looks at it now.
    if (filter?.observing) filter.observe?.(frame, this.inward)
  }

  counters(): NetCounters {
    const fromGuest = this.o.side === 'guest' ? this.fromKernel : this.toKernel
    const toGuest = this.o.side === 'guest' ? this.toKernel : this.fromKernel
    return { fromGuest: { ...fromGuest }, toGuest: { ...toGuest }, drops: { ...this.drops } }
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.session = undefined
    this.o.channel.close()
  }

  private fromChannel(batch: FrameBatch): void {
    const filter = this.o.filter
    const observing = filter?.observing === true
    for (let i = 0; i < batch.count; i++) {
      const body = batch.frame(i)
      if (body.length < VIRTIO_NET_HDR_LEN + MIN_FRAME) {
        this.drop('bad-length')
        continue
      }
      const frame = body.subarray(VIRTIO_NET_HDR_LEN)
      if (filter && !filter.inspect(frame, this.outward, this.replyToKernel)) {
        this.drop('filtered')
        continue
      }
      if (this.sendToPeer(body)) {
        this.fromKernel.frames++
        this.fromKernel.bytes += frame.length
      }
      if (observing) this.observed.push(frame)
    }
    // The transport sends what sendToPeer queued in a microtask queued already (LinkDriver.flush):
    // the watching part of the policy runs in the next one, after the batch has left. The frames
    // are views of the batch's slab, which is not read into again before the batch's microtasks
    // have run (see FrameBatch: nothing calls drain() on a NIC's channel).
    if (this.observed.length > 0) queueMicrotask(this.observeBatch)
  }

  /** Frames of the last batch from the kernel that the filter watches after forwarding. */
  private readonly observed: Uint8Array[] = []
  private readonly observeBatch = (): void => {
    const observed = this.observed
    const filter = this.o.filter
    try {
      for (let i = 0; i < observed.length; i++) filter?.observe?.(observed[i], this.outward)
    } finally {
      observed.length = 0 // views of this batch's slab only: never carried into the next one
    }
  }

  private sendToPeer(body: Uint8Array): boolean {
    const s = this.session
    if (!s?.authenticated) {
      this.drop('not-connected')
      return false
    }
    // Header and body as they are (the body a view of the TAP's receive slab): the transport
    // reads a best-effort message only while sendData runs, or copies it.
    this.parts[0] = this.encoder.headerFor(body.length)
    this.parts[1] = body
    const sent = s.sendData(this.parts, Delivery.BestEffort)
    this.parts[1] = EMPTY
    if (!sent) {
      this.drop('channel-full')
      return false
    }
    return true
  }

  private writeToKernel(body: Uint8Array): boolean {
    try {
      this.one[0] = body
      const sent = this.o.channel.send(this.one)
      this.one[0] = EMPTY
      if (sent === 1) return true
      this.drop('queue-full')
    } catch (error) {
      this.drop('kernel-refused')
      this.kernelError(error)
    }
    return false
  }

  // Bound once: the filters get these for every frame.
  private readonly replyToPeer = (frame: Uint8Array): void => {
    this.sendToPeer(withPlainHeader(frame))
  }

  private readonly replyToKernel = (frame: Uint8Array): void => {
    this.writeToKernel(withPlainHeader(frame))
  }

  private drop(reason: NetDropReason): void {
    this.drops[reason] = (this.drops[reason] ?? 0) + 1
  }

  private kernelError(error: unknown): void {
    // One report per kind of failure: the errno for a failed system call (IoError), else the code.
    const e = error as { errnoName?: string; code?: string }
    const code = e.errnoName ?? e.code ?? String(error)
    if (this.kernelErrors.has(code)) return
    this.kernelErrors.add(code)
    this.o.onKernelError?.(error)
  }
}

function withPlainHeader(frame: Uint8Array): Uint8Array {
  const body = new Uint8Array(VIRTIO_NET_HDR_LEN + frame.length)
  body.set(PLAIN_HDR, 0)
  body.set(frame, VIRTIO_NET_HDR_LEN)
  return body
}
