/**
 * struct virtio_net_hdr (10 bytes), the prefix of every frame on a channel opened with
 * `vnetHdr: true`. Multi-byte fields are little-endian: the kernel uses the legacy virtio byte
 * order, which is the host's, and this project runs on little-endian hosts.
 *
 *   0 flags u8 | 1 gso_type u8 | 2 hdr_len u16 | 4 gso_size u16 | 6 csum_start u16 | 8 csum_offset u16
 */

export const VIRTIO_NET_HDR_LEN = 10

/** csum_start/csum_offset are set: the checksum at csum_start+csum_offset is still to be finished. */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
/** The checksum was verified (receive side only). */
export const VIRTIO_NET_HDR_F_DATA_VALID = 2

export const VIRTIO_NET_HDR_GSO_NONE = 0
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1
export const VIRTIO_NET_HDR_GSO_UDP = 3
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5
/** Or'ed into gso_type: the TCP segments carry ECN (CWR must go on the first one only). */
export const VIRTIO_NET_HDR_GSO_ECN = 0x80

export interface VirtioNetHdr {
  flags: number
  gsoType: number
  /** Bytes of Ethernet + IP + TCP/UDP headers (a hint for the receiver; 0 is allowed). */
  hdrLen: number
  /** Payload bytes per segment when gsoType is not NONE. */
  gsoSize: number
  /** Offset from the start of the Ethernet frame (after this header) where checksumming starts. */
  csumStart: number
  /** Where, from csumStart, the 16-bit checksum is stored. */
  csumOffset: number
}

export const NO_OFFLOAD: Readonly<VirtioNetHdr> = Object.freeze({
  flags: 0,
  gsoType: VIRTIO_NET_HDR_GSO_NONE,
  hdrLen: 0,
  gsoSize: 0,
  csumStart: 0,
  csumOffset: 0,
})

function u16(buf: Uint8Array, at: number): number {
  return buf[at] | (buf[at + 1] << 8)
}

function put16(buf: Uint8Array, at: number, value: number): void {
  buf[at] = value & 0xff
  buf[at + 1] = (value >>> 8) & 0xff
}

export function decodeVirtioNetHdr(buf: Uint8Array, offset = 0): VirtioNetHdr {
  if (buf.length - offset < VIRTIO_NET_HDR_LEN)
    throw new RangeError('virtio_net_hdr: buffer shorter than 10 bytes')
  return {
    flags: buf[offset],
    gsoType: buf[offset + 1],
    hdrLen: u16(buf, offset + 2),
    gsoSize: u16(buf, offset + 4),
    csumStart: u16(buf, offset + 6),
    csumOffset: u16(buf, offset + 8),
  }
}

/** Writes `hdr` at `offset` and returns the offset just past it. */
export function encodeVirtioNetHdr(hdr: Readonly<VirtioNetHdr>, buf: Uint8Array, offset = 0): number {
  if (buf.length - offset < VIRTIO_NET_HDR_LEN)
    throw new RangeError('virtio_net_hdr: buffer shorter than 10 bytes')
  buf[offset] = hdr.flags
  buf[offset + 1] = hdr.gsoType
  put16(buf, offset + 2, hdr.hdrLen)
  put16(buf, offset + 4, hdr.gsoSize)
  put16(buf, offset + 6, hdr.csumStart)
  put16(buf, offset + 8, hdr.csumOffset)
  return offset + VIRTIO_NET_HDR_LEN
}
