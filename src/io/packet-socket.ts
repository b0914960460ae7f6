import { fromNative } from './errors.ts'
import type { ReceiveConfig } from './frame-channel.ts'
import { FrameChannel, alignUp } from './frame-channel.ts'
import { native } from './native.ts'
import { VIRTIO_NET_HDR_LEN } from '../wire/virtio-net-hdr.ts'
import { flattenFilter, type SockFilter } from './packet-filter.ts'

/** Every protocol (ETH_P_ALL). */
export const ETH_P_ALL = 0x0003
/** Bind with protocol 0 to get a send-only socket: the kernel queues nothing for it. */
export const ETH_P_NONE = 0

const FANOUT_MODES = { hash: 0, lb: 1, cpu: 2 } as const

export type FanoutMode = keyof typeof FANOUT_MODES

export interface PacketSocketOptions {
  /** Interface to bind to. */
  ifname: string
  /** Network namespace to open the socket in, e.g. '/run/netns/NAME'. Default: the process's. */
  netns?: string
  /** EtherType to receive (host order). Default ETH_P_ALL; ETH_P_NONE (0) for send-only. */
  protocol?: number
  /** PACKET_VNET_HDR: a 10-byte virtio_net_hdr precedes every frame, received and sent. */
  vnetHdr?: boolean
  /** Do not receive frames leaving this interface (including our own sends). Default false. */
  ignoreOutgoing?: boolean
  /** PACKET_QDISC_BYPASS: send straight to the driver, skipping the qdisc. Default false. */
  qdiscBypass?: boolean
  /** PACKET_FANOUT: spread the interface's frames over the sockets of one group. */
  fanout?: { group: number; mode: FanoutMode }
  /** SO_RCVBUF/SO_SNDBUF in bytes (set with the FORCE variants when privileged). */
  rcvBuf?: number
  sndBuf?: number
  /** Frames per receive batch (1..1024). Default 64. */
  rxBatch?: number
  /**
   * A classic BPF program (SO_ATTACH_FILTER, e.g. vrioPacketFilter) attached before the socket is
   * bound: frames it refuses are never queued. Default: none, every frame of `protocol`.
   */
  filter?: readonly SockFilter[]
  /** Bytes per frame slot. Default: 64 KiB + header room with vnetHdr (GSO frames), else MTU + 18 rounded up. */
  frameSize?: number
}

/**
 * An AF_PACKET raw socket bound to one interface. Receives in batches on a native thread (see
 * FrameChannel.onBatch) and sends batches with sendmmsg. Non-blocking throughout.
 */
export class PacketSocket extends FrameChannel {
  /** A kernel filter (options.filter) is attached: frames it refuses never reach this socket. */
  readonly filtered: boolean

  private constructor(
    opened: ReturnType<ReturnType<typeof native>['openPacket']>,
    options: PacketSocketOptions,
    rx: ReceiveConfig,
  ) {
    super(opened, rx, options)
    this.filtered = opened.filtered === true
  }

  /** Replaces the kernel filter (atomically: each frame meets the old program or the new one). */
  setFilter(filter: readonly SockFilter[]): void {
    try {
      this.nativeHandle().setFilter(flattenFilter(filter))
    } catch (e) {
      throw fromNative(e, { ifname: this.ifname, netns: this.netns })
    }
  }

  /** Opens and binds the socket; throws an IoError (ENODEV for an unknown interface). */
  static open(options: PacketSocketOptions): PacketSocket {
    const vnetHdr = options.vnetHdr ?? false
    const fanout = options.fanout
    if (fanout && !(fanout.mode in FANOUT_MODES)) throw new TypeError(`unknown fanout mode '${fanout.mode}'`)
    const where = { ifname: options.ifname, netns: options.netns }
    let opened: ReturnType<ReturnType<typeof native>['openPacket']>
    try {
      opened = native().openPacket({
        ifname: options.ifname,
        netns: options.netns,
        protocol: options.protocol ?? ETH_P_ALL,
        vnetHdr,
        ignoreOutgoing: options.ignoreOutgoing ?? false,
        qdiscBypass: options.qdiscBypass ?? false,
        fanoutGroup: fanout ? fanout.group : -1,
        fanoutMode: fanout ? FANOUT_MODES[fanout.mode] : 0,
        rcvBuf: options.rcvBuf ?? 0,
        sndBuf: options.sndBuf ?? 0,
        filter: options.filter && flattenFilter(options.filter),
      })
    } catch (e) {
      throw fromNative(e, where)
    }
    const rx: ReceiveConfig = {
      rxBatch: options.rxBatch ?? 64,
      frameSize: options.frameSize ?? defaultFrameSize(opened.mtu, vnetHdr),
    }
    return new PacketSocket(opened, options, rx)
  }
}

/** Slot size that fits any frame the interface can carry: with virtio-net headers a GSO frame of
 * up to 64 KiB, otherwise MTU + Ethernet header + one VLAN tag. */
export function defaultFrameSize(mtu: number, vnetHdr: boolean): number {
  if (vnetHdr) return alignUp(VIRTIO_NET_HDR_LEN + 18 + 65535, 64)
  return Math.max(alignUp(mtu + 18, 64), 256)
}
