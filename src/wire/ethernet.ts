import { readMac, writeMac } from './address.ts'
import type { DropReason } from './drop-reason.ts'

export const ETHERNET_HEADER_LENGTH = 14
export const ETHERTYPE_IPV4 = 0x0800
export const ETHERTYPE_ARP = 0x0806
export const ETHERTYPE_VLAN = 0x8100
export const ETHERTYPE_IPV6 = 0x86dd

export interface EthernetHeader {
  destination: number
  source: number
  etherType: number
}

export function newEthernetHeader(): EthernetHeader {
  return { destination: 0, source: 0, etherType: 0 }
}

/** Writes the 14-byte Ethernet II header at `offset`; returns the offset after it. */
export function encodeEthernet(buf: Uint8Array, offset: number, h: EthernetHeader): number {
  writeMac(buf, offset, h.destination)
  writeMac(buf, offset + 6, h.source)
  buf[offset + 12] = h.etherType >>> 8
  buf[offset + 13] = h.etherType & 0xff
  return offset + ETHERNET_HEADER_LENGTH
}

/** Reads the Ethernet II header at `offset` of `buf[0, end)` into `out`. */
export function decodeEthernet(
  buf: Uint8Array,
  offset: number,
  end: number,
  out: EthernetHeader,
): DropReason | undefined {
  if (end - offset < ETHERNET_HEADER_LENGTH) return 'truncated-ethernet'
  out.destination = readMac(buf, offset)
  out.source = readMac(buf, offset + 6)
  out.etherType = (buf[offset + 12] << 8) | buf[offset + 13]
  return undefined
}
