/**
 * A dissector for the frames a guest's NIC carries (any Ethernet traffic, not only vrio's own):
 * Ethernet II with an optional 802.1Q tag, ARP, IPv4 (options, fragments), IPv6 (extension
 * headers, fragments), and the first bytes of TCP, UDP, SCTP, ICMP and ICMPv6. It fills a reusable
 * `Packet` with offsets into the frame (no copies, no allocation) for the firewall and DPI.
 *
 * Frames may be GSO super-frames (up to 64 KiB, one IP header for many segments) whose L4
 * checksum is still partial; checksums are not verified here.
 */
import { ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN } from './ethernet.ts'
import { readMac } from './address.ts'

const IP_PROTOCOL_ICMPV6 = 58
const IP_PROTOCOL_SCTP = 132

/** Why a frame could not be dissected. Stable strings: they name drop counters. */
export type PacketError =
  | 'truncated-ethernet'
  | 'truncated-ip'
  | 'bad-ip-header'
  | 'truncated-l4'
  | 'bad-l4-header'

export interface Packet {
  /** Destination and source MAC as 48-bit numbers. */
  destinationMac: number
  sourceMac: number
  /** The EtherType after any 802.1Q tag. */
  etherType: number
  /** The 802.1Q VLAN id, or -1 when the frame is untagged. */
  vlan: number
  /** Offset of the L3 header (ARP, IPv4 or IPv6). */
  l3Offset: number
  /** 4 or 6; 0 for non-IP frames (then nothing below is meaningful). */
  ipVersion: 0 | 4 | 6
  /** Offsets of the source and destination addresses in the frame (4 or 16 bytes each). */
  sourceAddressOffset: number
  destinationAddressOffset: number
  addressLength: 0 | 4 | 16
  ttl: number
  /** The transport protocol (IPv4 protocol, or IPv6's last next-header). */
  protocol: number
  /** This is a fragment after the first: it has no transport header. */
  laterFragment: boolean
  /** This is a fragment (first or later). */
  fragment: boolean
  /** The fragment's identification (IPv4: 16 bits, IPv6 fragment header: 32 bits); 0 when not a fragment. */
  fragmentId: number
  /** Offset of the transport header, or -1 (later fragment, or a protocol this does not parse). */
  l4Offset: number
  sourcePort: number
  destinationPort: number
  /** TCP flags byte (TCP_FIN ... TCP_CWR of tcp.ts). */
  tcpFlags: number
  tcpSeq: number
  tcpAck: number
  icmpType: number
  icmpCode: number
  /** The transport payload (TCP/UDP data, or the ICMP body after the 4-byte header). */
  payloadOffset: number
  payloadLength: number
  /** End of the IP packet in the frame (Ethernet padding excluded). */
  end: number
  /** What dissectPacket returned: undefined for a well-formed frame. */
  error: PacketError | undefined
}

export function newPacket(): Packet {
  return {
    destinationMac: 0,
    sourceMac: 0,
    etherType: 0,
    vlan: -1,
    l3Offset: 0,
    ipVersion: 0,
    sourceAddressOffset: 0,
    destinationAddressOffset: 0,
    addressLength: 0,
    ttl: 0,
    protocol: 0,
    laterFragment: false,
    fragment: false,
    fragmentId: 0,
    l4Offset: -1,
    sourcePort: 0,
    destinationPort: 0,
    tcpFlags: 0,
    tcpSeq: 0,
    tcpAck: 0,
    icmpType: 0,
    icmpCode: 0,
    payloadOffset: 0,
    payloadLength: 0,
    end: 0,
    error: undefined,
  }
}

function reset(p: Packet): void {
  p.vlan = -1
  p.ipVersion = 0
  p.addressLength = 0
  p.sourceAddressOffset = 0
  p.destinationAddressOffset = 0
  p.ttl = 0
  p.protocol = 0
  p.laterFragment = false
  p.fragment = false
  p.fragmentId = 0
  p.l4Offset = -1
  p.sourcePort = 0
  p.destinationPort = 0
  p.tcpFlags = 0
  p.tcpSeq = 0
  p.tcpAck = 0
  p.icmpType = 0
  p.icmpCode = 0
  p.payloadOffset = 0
  p.payloadLength = 0
}

const u16 = (b: Uint8Array, at: number): number => (b[at] << 8) | b[at + 1]
const u32 = (b: Uint8Array, at: number): number =>
  ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0

/**
 * Dissects `frame` (an Ethernet frame, no virtio_net_hdr) into `out`. Returns undefined when the
 * frame is well formed as far as it was parsed, else the reason; `out` then holds what was parsed.
 */
export function dissectPacket(frame: Uint8Array, out: Packet): PacketError | undefined {
  const error = dissect(frame, out)
  out.error = error
  return error
}

function dissect(frame: Uint8Array, out: Packet): PacketError | undefined {
  reset(out)
  const length = frame.length
  out.end = length
  if (length < 14) return 'truncated-ethernet'
  out.destinationMac = readMac(frame, 0)
  out.sourceMac = readMac(frame, 6)
  let etherType = u16(frame, 12)
  let at = 14
  if (etherType === ETHERTYPE_VLAN) {
    if (length < 18) return 'truncated-ethernet'
    out.vlan = u16(frame, 14) & 0x0fff
    etherType = u16(frame, 16)
    at = 18
  }
  out.etherType = etherType
  out.l3Offset = at
  if (etherType === ETHERTYPE_IPV4) return dissectIPv4(frame, at, out)
  if (etherType === ETHERTYPE_IPV6) return dissectIPv6(frame, at, out)
  if (etherType === ETHERTYPE_ARP && length - at < 28) return 'truncated-ip'
  return undefined
}

function dissectIPv4(frame: Uint8Array, at: number, out: Packet): PacketError | undefined {
  if (frame.length - at < 20) return 'truncated-ip'
  const ihl = (frame[at] & 0x0f) * 4
  if (frame[at] >> 4 !== 4 || ihl < 20) return 'bad-ip-header'
  const total = u16(frame, at + 2)
  if (total < ihl) return 'bad-ip-header'
  if (at + total > frame.length) return 'truncated-ip'
  out.ipVersion = 4
  out.addressLength = 4
  out.sourceAddressOffset = at + 12
  out.destinationAddressOffset = at + 16
  out.ttl = frame[at + 8]
  out.protocol = frame[at + 9]
  out.end = at + total
  const flagsOffset = u16(frame, at + 6)
  const offset = flagsOffset & 0x1fff
  out.fragment = offset !== 0 || (flagsOffset & 0x2000) !== 0
  out.laterFragment = offset !== 0
  if (out.fragment) out.fragmentId = u16(frame, at + 4)
  if (out.laterFragment) return undefined
  return dissectL4(frame, at + ihl, out)
}

function dissectIPv6(frame: Uint8Array, at: number, out: Packet): PacketError | undefined {
  if (frame.length - at < 40) return 'truncated-ip'
  if (frame[at] >> 4 !== 6) return 'bad-ip-header'
  const payload = u16(frame, at + 4)
  if (at + 40 + payload > frame.length) return 'truncated-ip'
  out.ipVersion = 6
  out.addressLength = 16
  out.sourceAddressOffset = at + 8
  out.destinationAddressOffset = at + 24
  out.ttl = frame[at + 7]
  out.end = at + 40 + payload
  let next = frame[at + 6]
  let p = at + 40
  // Extension headers: hop-by-hop, routing, destination options, fragment, AH.
  for (let hops = 0; hops < 16; hops++) {
    if (next === 0 || next === 43 || next === 60 || next === 51 || next === 44) {
      if (out.end - p < 8) return 'truncated-ip'
      const following = frame[p]
      if (next === 44) {
        const offsetFlags = u16(frame, p + 2)
        out.fragment = true
        out.laterFragment = offsetFlags >> 3 !== 0
        out.fragmentId = u32(frame, p + 4)
        p += 8
      } else if (next === 51) {
        p += (frame[p + 1] + 2) * 4
      } else {
        p += (frame[p + 1] + 1) * 8
      }
      if (p > out.end) return 'truncated-ip'
      next = following
      continue
    }
    break
  }
  out.protocol = next
  if (out.laterFragment) return undefined
  return dissectL4(frame, p, out)
}

function dissectL4(frame: Uint8Array, at: number, out: Packet): PacketError | undefined {
  const end = out.end
  const available = end - at
  switch (out.protocol) {
    case 6: {
      if (available < 20) return 'truncated-l4'
      const dataOffset = (frame[at + 12] >> 4) * 4
      if (dataOffset < 20) return 'bad-l4-header'
      if (dataOffset > available) return 'truncated-l4'
      out.l4Offset = at
      out.sourcePort = u16(frame, at)
      out.destinationPort = u16(frame, at + 2)
      out.tcpSeq = u32(frame, at + 4)
      out.tcpAck = u32(frame, at + 8)
      out.tcpFlags = frame[at + 13]
      out.payloadOffset = at + dataOffset
      out.payloadLength = available - dataOffset
      return undefined
    }
    case 17:
    case IP_PROTOCOL_SCTP: {
      const header = out.protocol === 17 ? 8 : 12
      if (available < header) return 'truncated-l4'
      out.l4Offset = at
      out.sourcePort = u16(frame, at)
      out.destinationPort = u16(frame, at + 2)
      out.payloadOffset = at + header
      out.payloadLength = available - header
      return undefined
    }
    case 1:
    case IP_PROTOCOL_ICMPV6: {
      if (available < 4) return 'truncated-l4'
      out.l4Offset = at
      out.icmpType = frame[at]
      out.icmpCode = frame[at + 1]
      out.payloadOffset = at + 4
      out.payloadLength = available - 4
      return undefined
    }
    default:
      out.payloadOffset = at
      out.payloadLength = available
      return undefined
  }
}

/** The packet's source or destination IP address as text (IPv4 dotted, IPv6 RFC 5952). */
export function packetAddress(frame: Uint8Array, p: Packet, which: 'source' | 'destination'): string {
  const at = which === 'source' ? p.sourceAddressOffset : p.destinationAddressOffset
  if (p.addressLength === 4) return `${frame[at]}.${frame[at + 1]}.${frame[at + 2]}.${frame[at + 3]}`
  if (p.addressLength !== 16) return ''
  return formatIPv6(frame.subarray(at, at + 16))
}

/** RFC 5952 text of a 16-byte IPv6 address: lower case, the longest run of zero groups as '::'. */
export function formatIPv6(bytes: Uint8Array): string {
  const groups: number[] = []
  for (let i = 0; i < 16; i += 2) groups.push(u16(bytes, i))
  let bestStart = -1
  let bestLength = 0
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i
      bestLength = j - i
    }
    i = j
  }
  const hex = groups.map((g) => g.toString(16))
  if (bestStart < 0) return hex.join(':')
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`
}
