import { fromNative } from './errors.ts'
import type { ReceiveConfig } from './frame-channel.ts'
import { FrameChannel } from './frame-channel.ts'
import { native } from './native.ts'
import { defaultFrameSize } from './packet-socket.ts'

// TUN_F_* from linux/if_tun.h.
const TUN_F_CSUM = 0x01
const TUN_F_TSO4 = 0x02
const TUN_F_TSO6 = 0x04
const TUN_F_TSO_ECN = 0x08
const TUN_F_UFO = 0x10

export interface TapOffloads {
  /** The reader accepts frames with unfinished checksums (NEEDS_CSUM). Required by all others. */
  csum?: boolean
  tso4?: boolean
  tso6?: boolean
  ecn?: boolean
  /** Dropped silently when the kernel does not support UFO; see TapDevice.offloads. */
  ufo?: boolean
}

export interface TapOptions {
  /** Device name (≤ 15 bytes); a '%d' lets the kernel pick a number. Default 'vrio%d'. */
  name?: string
  /** Network namespace to open (and create) the device in, e.g. '/run/netns/NAME'. */
  netns?: string
  /**
   * A macvtap's character device (/dev/tapN, N its ifindex) to open instead of creating or
   * attaching a TAP; `name` is then the macvtap interface's name. See macvtapDevice().
   */
  path?: string
  /** IFF_VNET_HDR: a 10-byte virtio_net_hdr precedes every frame read and written. */
  vnetHdr?: boolean
  /** TUNSETOFFLOAD: what the kernel may hand us unfinished. Needs vnetHdr. */
  offloads?: TapOffloads
  /** IFF_MULTI_QUEUE: open the same name several times to get one queue per TapDevice. */
  multiQueue?: boolean
  /** A device this open creates stays when its last queue closes (TUNSETPERSIST); delete it with `ip link del`. */
  persist?: boolean
  rxBatch?: number
  frameSize?: number
}

/**
 * A TAP device queue (IFF_TAP | IFF_NO_PI) from /dev/net/tun. The kernel transmits to it by
 * handing us frames (read in batches on a native thread); frames we write enter the kernel as if
 * received on the device. A device this call created is not persistent (unless `persist`): it
 * disappears when its last queue closes. One that existed before is left as it was.
 */
export class TapDevice extends FrameChannel {
  /** Actual device name (resolves a '%d' pattern). */
  readonly name: string
  /** Whether this open created the device. */
  readonly created: boolean
  /** The TUN_F_* bits in force. */
  readonly offloads: number

  private constructor(
    opened: ReturnType<ReturnType<typeof native>['openTap']>,
    options: TapOptions,
    rx: ReceiveConfig,
  ) {
    super(opened, rx, { ...options, ifname: opened.name })
    this.name = opened.name
    this.created = opened.created
    this.offloads = opened.offloads
  }

  static open(options: TapOptions = {}): TapDevice {
    const name = options.name ?? 'vrio%d'
    const vnetHdr = options.vnetHdr ?? false
    const offloads = offloadBits(options.offloads ?? {})
    if (offloads !== 0 && !vnetHdr) throw new TypeError('TAP offloads need vnetHdr: true')
    let opened: ReturnType<ReturnType<typeof native>['openTap']>
    try {
      opened = native().openTap({
        name,
        netns: options.netns,
        path: options.path,
        vnetHdr,
        offloads,
        multiQueue: options.multiQueue ?? false,
        persist: options.persist ?? false,
      })
    } catch (e) {
      throw fromNative(e, { ifname: name, netns: options.netns })
    }
    const rx: ReceiveConfig = {
      rxBatch: options.rxBatch ?? 64,
      // A TAP read into a too-small buffer loses the frame, so leave room for MTU changes.
      frameSize: options.frameSize ?? defaultFrameSize(Math.max(opened.mtu, 9000), vnetHdr),
    }
    return new TapDevice(opened, options, rx)
  }
}

function offloadBits(o: TapOffloads): number {
  const bits =
    (o.csum ? TUN_F_CSUM : 0) |
    (o.tso4 ? TUN_F_TSO4 : 0) |
    (o.tso6 ? TUN_F_TSO6 : 0) |
    (o.ecn ? TUN_F_TSO_ECN : 0) |
    (o.ufo ? TUN_F_UFO : 0)
  // The kernel ignores segmentation offloads without checksum offload; refuse instead of pretending.
  if (bits !== 0 && !(bits & TUN_F_CSUM))
    throw new TypeError('TAP offloads tso4/tso6/ecn/ufo need csum: true')
  return bits
}

export const TAP_OFFLOAD_BITS = {
  csum: TUN_F_CSUM,
  tso4: TUN_F_TSO4,
  tso6: TUN_F_TSO6,
  ecn: TUN_F_TSO_ECN,
  ufo: TUN_F_UFO,
} as const
