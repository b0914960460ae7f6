import { finishChecksum, foldSum, sumWords } from './checksum.ts'
import { readU32, writeU32 } from './bytes.ts'
import type { DropReason } from './drop-reason.ts'

export const IPV4_HEADER_LENGTH = 20
export const IP_PROTOCOL_ICMP = 1
export const IP_PROTOCOL_TCP = 6
export const IP_PROTOCOL_UDP = 17

export interface IPv4Header {
  /** Header length in bytes (20 when there are no options). */
  headerLength: number
  tos: number
  totalLength: number
  identification: number
  dontFragment: boolean
  ttl: number
  protocol: number
  checksum: number
  source: number
  destination: number
}

export function newIPv4Header(): IPv4Header {
  return {
    headerLength: IPV4_HEADER_LENGTH,
    tos: 0,
    totalLength: 0,
    identification: 0,
    dontFragment: true,
    ttl: 64,
    protocol: IP_PROTOCOL_TCP,
    checksum: 0,
    source: 0,
    destination: 0,
  }
}

/**
 * Writes a 20-byte IPv4 header (no options) with its checksum at `offset`; returns the offset after
 * it. `headerLength` and `checksum` of `h` are ignored.
 */
export function encodeIPv4(buf: Uint8Array, offset: number, h: IPv4Header): number {
  const o = offset
  buf[o] = 0x45
  buf[o + 1] = h.tos
  buf[o + 2] = h.totalLength >>> 8
  buf[o + 3] = h.totalLength & 0xff
  buf[o + 4] = h.identification >>> 8
  buf[o + 5] = h.identification & 0xff
  buf[o + 6] = h.dontFragment ? 0x40 : 0
  buf[o + 7] = 0
  buf[o + 8] = h.ttl
  buf[o + 9] = h.protocol
  buf[o + 10] = 0
  buf[o + 11] = 0
  writeU32(buf, o + 12, h.source)
  writeU32(buf, o + 16, h.destination)
  const checksum = finishChecksum(sumWords(buf, o, o + IPV4_HEADER_LENGTH))
  buf[o + 10] = checksum >>> 8
  buf[o + 11] = checksum & 0xff
  return o + IPV4_HEADER_LENGTH
}

/**
 * Reads the IPv4 header at `offset` of `buf[0, end)` into `out`. Bytes past the total length
 * (Ethernet padding) are not part of the packet. Fragments are refused: vrio always sets DF.
 */
export function decodeIPv4(
  buf: Uint8Array,
  offset: number,
  end: number,
  out: IPv4Header,
  verifyChecksum: boolean,
): DropReason | undefined {
  const available = end - offset
  if (available < IPV4_HEADER_LENGTH) return 'truncated-ipv4'
  const o = offset
  if (buf[o] >>> 4 !== 4) return 'bad-ipv4-version'
  const headerLength = (buf[o] & 0x0f) * 4
  if (headerLength < IPV4_HEADER_LENGTH || headerLength > available) return 'bad-ipv4-header-length'
  const totalLength = (buf[o + 2] << 8) | buf[o + 3]
  if (totalLength < headerLength || totalLength > available) return 'bad-ipv4-total-length'
  const fragment = ((buf[o + 6] << 8) | buf[o + 7]) & 0x3fff // MF flag and fragment offset
  if (fragment !== 0) return 'ipv4-fragment'
  if (verifyChecksum && foldSum(sumWords(buf, o, o + headerLength)) !== 0xffff) return 'bad-ipv4-checksum'
  out.headerLength = headerLength
  out.tos = buf[o + 1]
  out.totalLength = totalLength
  out.identification = (buf[o + 4] << 8) | buf[o + 5]
  out.dontFragment = (buf[o + 6] & 0x40) !== 0
  out.ttl = buf[o + 8]
  out.protocol = buf[o + 9]
  out.checksum = (buf[o + 10] << 8) | buf[o + 11]
  out.source = readU32(buf, o + 12)
  out.destination = readU32(buf, o + 16)
  return undefined
}
