/**
 * NetFrame messages: one network frame crossing a remote NIC, in either direction, delivered
 * best-effort (a lost frame is lost, as on a wire; the guest's own TCP recovers).
 *
 *   message header (32 bytes, see wire/message-header.ts):
 *     type NetFrame (0x30), flags 0, device = the NIC's handle (high, low), request 0,
 *     replyLength 0, status 0, bodyLength = 10 + frame length
 *   body:
 *     struct virtio_net_hdr (10 bytes, little-endian; see wire/virtio-net-hdr.ts)
 *     the Ethernet frame (no FCS), up to 65 535 + 18 bytes when it is a GSO super-frame
 *
 * The header's checksum and segmentation requests are honoured by the kernel that finally
 * receives the frame (the guest's TAP, or the IOhyp's TAP or macvtap).
 */
import {
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP_L4,
  VIRTIO_NET_HDR_LEN,
} from '../../wire/virtio-net-hdr.ts'
import {
  encodeMessageHeader,
  MESSAGE_HEADER_LENGTH,
  type MessageHeader,
  MessageType,
  newMessageHeader,
} from '../../wire/message-header.ts'

/** Smallest frame: an Ethernet header. */
export const MIN_FRAME = 14
/** Largest frame: a 64 KiB GSO super-frame with an 802.1Q-tagged Ethernet header. */
const MAX_FRAME = 65_535 + 18
/**
 * The GSO size vrio sets on the guest's interface: the kernel then builds super-frames a NetFrame
 * message carries in one transport segment (64 000 payload bytes, see GSO_MAX_PAYLOAD), which
 * the far side takes as a view, without reassembling a second segment into a new buffer. Leaves
 * room for the message and virtio_net headers and the kernel's own header allowance.
 */
export const NET_GSO_MAX_SIZE = 62_000

/** Why a frame did not cross a NIC. Stable strings: they name counters. */
export type NetDropReason =
  /** No session to the other side (guest not connected). */
  | 'not-connected'
  /** The channel's send buffer was full (best-effort frames are dropped, not queued). */
  | 'channel-full'
  /** The body is shorter than a virtio_net_hdr + Ethernet header, or longer than the largest frame. */
  | 'bad-length'
  /** The message header's flags, request, replyLength or status are not the zeros a NetFrame has. */
  | 'bad-message-header'
  /** The virtio_net_hdr asks for something impossible (unknown GSO type, checksum outside the frame). */
  | 'bad-vnet-header'
  /** A frame longer than the MTU that is not a GSO super-frame. */
  | 'oversized'
  /** The message names no NIC of this guest. */
  | 'unknown-device'
  /** The kernel refused to take the frame (the errno is logged once). */
  | 'kernel-refused'
  /** A service (firewall, DPI) dropped it. */
  | 'filtered'
  /** The kernel's TAP queue was full. */
  | 'queue-full'
  /** IOhyp: from the guest with an Ethernet (or ARP sender) source other than the NIC's MAC. */
  | 'spoofed-mac'
  /** IOhyp: from the guest with an IPv4 (or ARP sender) source outside the NIC's `ip` range. */
  | 'spoofed-ip'

const u16le = (b: Uint8Array, at: number): number => b[at] | (b[at + 1] << 8)

/**
 * Checks a NetFrame body (virtio_net_hdr + frame) from the peer before it goes to a kernel: the
 * kernel validates too, but a refusal there costs a system call and tells less. `mtu` bounds
 * frames that are not GSO super-frames (Ethernet payload; a VLAN tag is allowed on top).
 */
export function checkNetBody(body: Uint8Array, mtu: number): NetDropReason | undefined {
  const frameLength = body.length - VIRTIO_NET_HDR_LEN
  if (frameLength < MIN_FRAME || frameLength > MAX_FRAME) return 'bad-length'
  const flags = body[0]
  const gso = body[1] & ~VIRTIO_NET_HDR_GSO_ECN
  if ((flags & ~(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) !== 0) return 'bad-vnet-header'
  if (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
    const start = u16le(body, 6)
    const offset = u16le(body, 8)
    if (start < MIN_FRAME || start + offset + 2 > frameLength) return 'bad-vnet-header'
  }
  if (gso === VIRTIO_NET_HDR_GSO_NONE) {
    return frameLength > mtu + 18 ? 'oversized' : undefined
  }
  if (
    gso !== VIRTIO_NET_HDR_GSO_TCPV4 &&
    gso !== VIRTIO_NET_HDR_GSO_TCPV6 &&
    gso !== VIRTIO_NET_HDR_GSO_UDP_L4
  )
    return 'bad-vnet-header'
  if (u16le(body, 4) === 0 || !(flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) return 'bad-vnet-header'
  return undefined
}

/** Encodes NetFrame messages for one NIC handle (reuses one header object). */
export class NetFrameEncoder {
  private readonly header: MessageHeader = newMessageHeader()

  constructor(handle: { high: number; low: number }) {
    this.setHandle(handle)
    this.header.type = MessageType.NetFrame
  }

  setHandle(handle: { high: number; low: number }): void {
    this.header.deviceHigh = handle.high
    this.header.deviceLow = handle.low
  }

  private readonly head = Buffer.alloc(MESSAGE_HEADER_LENGTH)

  /**
   * The message header for a body (virtio_net_hdr + frame) of `bodyLength` bytes, in one buffer
   * this encoder reuses: send `[header, body]` as a best-effort message at once (the transport
   * reads neither after send returns; see Connection.send).
   */
  headerFor(bodyLength: number): Uint8Array {
    this.header.bodyLength = bodyLength
    encodeMessageHeader(this.head, 0, this.header)
    return this.head
  }
}
