import type { DropReason } from './drop-reason.ts'
import {
  decodeEthernet,
  ETHERNET_HEADER_LENGTH,
  ETHERTYPE_IPV4,
  type EthernetHeader,
  encodeEthernet,
  newEthernetHeader,
} from './ethernet.ts'
import {
  decodeIPv4,
  encodeIPv4,
  IP_PROTOCOL_TCP,
  IPV4_HEADER_LENGTH,
  type IPv4Header,
  newIPv4Header,
} from './ipv4.ts'
import {
  decodeTcpHeader,
  encodeTcpHeader,
  newTcpHeader,
  setTcpChecksum,
  TCP_HEADER_LENGTH,
  type TcpHeader,
  type TcpOptions,
  tcpOptionsLength,
  verifyTcpChecksum,
} from './tcp.ts'

/** Offset of the IPv4 header in a frame. */
export const IP_OFFSET = ETHERNET_HEADER_LENGTH
/** Offset of the TCP header in a frame we build (our IPv4 headers carry no options). */
export const TCP_OFFSET = ETHERNET_HEADER_LENGTH + IPV4_HEADER_LENGTH

/** The headers of one Ethernet/IPv4/TCP frame, decoded or to be encoded. Reused, never per-frame. */
export interface TcpFrame {
  ethernet: EthernetHeader
  ip: IPv4Header
  tcp: TcpHeader
  /** Set by decoding: where the TCP header and its payload lie in the frame. */
  tcpOffset: number
  payloadOffset: number
  payloadLength: number
}

export function newTcpFrame(): TcpFrame {
  const ethernet = newEthernetHeader()
  ethernet.etherType = ETHERTYPE_IPV4
  return {
    ethernet,
    ip: newIPv4Header(),
    tcp: newTcpHeader(),
    tcpOffset: TCP_OFFSET,
    payloadOffset: 0,
    payloadLength: 0,
  }
}

/** Bytes from the start of a frame we build to its TCP payload, for the given options. */
export function tcpFrameHeaderLength(options: TcpOptions): number {
  return TCP_OFFSET + TCP_HEADER_LENGTH + tcpOptionsLength(options)
}

/**
 * Writes the Ethernet, IPv4 and TCP headers of `f` at the start of `buf`, whose payload of
 * `payloadLength` bytes must already sit at `tcpFrameHeaderLength(f.tcp.options)`, and fills in both
 * checksums (the TCP one partial when `partialChecksum`, for checksum offload). Returns the frame's
 * length. `f.ip.totalLength` is set here.
 */
export function encodeTcpFrame(
  buf: Uint8Array,
  f: TcpFrame,
  payloadLength: number,
  partialChecksum = false,
): number {
  const length = encodeTcpFrameHeaders(buf, f, payloadLength)
  finishTcpFrameChecksum(buf, f, length, partialChecksum)
  return length
}

/**
 * encodeTcpFrame without the TCP checksum (left zero), for a frame to be sealed first; sets
 * `f.tcpOffset` and `f.payloadOffset`. Returns the frame's length.
 */
export function encodeTcpFrameHeaders(buf: Uint8Array, f: TcpFrame, payloadLength: number): number {
  encodeEthernet(buf, 0, f.ethernet)
  const payloadOffset = encodeTcpHeader(buf, TCP_OFFSET, f.tcp)
  const tcpLength = payloadOffset - TCP_OFFSET + payloadLength
  f.ip.totalLength = IPV4_HEADER_LENGTH + tcpLength
  encodeIPv4(buf, IP_OFFSET, f.ip)
  f.tcpOffset = TCP_OFFSET
  f.payloadOffset = payloadOffset
  f.payloadLength = payloadLength
  return payloadOffset + payloadLength
}

/** Fills in the TCP checksum of a frame encoded by encodeTcpFrameHeaders (`length`: the frame's). */
export function finishTcpFrameChecksum(buf: Uint8Array, f: TcpFrame, length: number, partial = false): void {
  setTcpChecksum(buf, TCP_OFFSET, length - TCP_OFFSET, f.ip.source, f.ip.destination, partial)
}

/**
 * Decodes an Ethernet/IPv4/TCP frame into `out`. Never throws: anything else, or anything malformed,
 * yields the reason to count the drop under. With `verifyChecksums` false the checksums are taken
 * as already verified (by the kernel or NIC, which says so per frame).
 */
export function decodeTcpFrame(
  buf: Uint8Array,
  out: TcpFrame,
  verifyChecksums = true,
): DropReason | undefined {
  const end = buf.length
  let reason = decodeEthernet(buf, 0, end, out.ethernet)
  if (reason) return reason
  if (out.ethernet.etherType !== ETHERTYPE_IPV4) return 'not-ipv4'
  reason = decodeIPv4(buf, IP_OFFSET, end, out.ip, verifyChecksums)
  if (reason) return reason
  if (out.ip.protocol !== IP_PROTOCOL_TCP) return 'not-tcp'
  const tcpOffset = IP_OFFSET + out.ip.headerLength
  const packetEnd = IP_OFFSET + out.ip.totalLength
  reason = decodeTcpHeader(buf, tcpOffset, packetEnd, out.tcp)
  if (reason) return reason
  if (
    verifyChecksums &&
    !verifyTcpChecksum(buf, tcpOffset, packetEnd - tcpOffset, out.ip.source, out.ip.destination)
  ) {
    return 'bad-tcp-checksum'
  }
  out.tcpOffset = tcpOffset
  out.payloadOffset = tcpOffset + out.tcp.headerLength
  out.payloadLength = packetEnd - out.payloadOffset
  return undefined
}
