/**
 * Source enforcement for frames a guest sends through its remote NIC (checked on the IOhyp, before
 * the services and the back-end, so one check serves TAP and macvtap alike): the Ethernet source,
 * and the sender hardware address of ARP, must be the NIC's MAC; with an IPv4 range given, the
 * source of IPv4 packets and the sender protocol address of ARP must lie in it. A guest therefore
 * cannot send as another guest's NIC (and steal its traffic on a learning bridge) nor poison ARP
 * caches with an address it was not given.
 */
import { formatIPv4, parseIPv4 } from '../../wire/address.ts'

export type SourceViolation = 'spoofed-mac' | 'spoofed-ip'

/** What a NIC's frames from the guest must carry. */
export interface SourcePolicy {
  mac: number
  /** IPv4 sources allowed: `address` with its low 32 - `prefix` bits free. Undefined: not checked. */
  ip?: { address: number; prefix: number }
}

const ETHERTYPE_IPV4 = 0x0800
const ETHERTYPE_ARP = 0x0806
const ETHERTYPE_VLAN = 0x8100
const ETHERTYPE_QINQ = 0x88a8

/** `a.b.c.d` or `a.b.c.d/n` (n in 0..32; the address's host bits must be zero); undefined if malformed. */
export function parseIPv4Prefix(text: string): { address: number; prefix: number } | undefined {
  const slash = text.indexOf('/')
  const address = parseIPv4(slash < 0 ? text : text.slice(0, slash))
  if (address === undefined) return undefined
  let prefix = 32
  if (slash >= 0) {
    const p = text.slice(slash + 1)
    if (!/^\d{1,2}$/.test(p) || Number(p) > 32) return undefined
    prefix = Number(p)
  }
  if (prefix < 32 && (address & ~prefixMask(prefix)) !== 0) return undefined
  return { address, prefix }
}

export function formatIPv4Prefix(p: { address: number; prefix: number }): string {
  return p.prefix === 32 ? formatIPv4(p.address) : `${formatIPv4(p.address)}/${p.prefix}`
}

function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0
}

function inRange(ip: number, range: { address: number; prefix: number }): boolean {
  const mask = prefixMask(range.prefix)
  return (ip & mask) >>> 0 === (range.address & mask) >>> 0
}

function readMac(f: Uint8Array, at: number): number {
  return (
    f[at] * 2 ** 40 +
    f[at + 1] * 2 ** 32 +
    f[at + 2] * 2 ** 24 +
    ((f[at + 3] << 16) | (f[at + 4] << 8) | f[at + 5])
  )
}

function readIPv4(f: Uint8Array, at: number): number {
  return ((f[at] << 24) | (f[at + 1] << 16) | (f[at + 2] << 8) | f[at + 3]) >>> 0
}

/**
 * Why `frame` (an Ethernet frame from the guest, at least 14 bytes) breaks `policy`, or undefined.
 * IPv4 and ARP inside one or two VLAN tags are checked like untagged ones. With an IPv4 range,
 * source 0.0.0.0 is allowed for DHCP (UDP 68 → 67) and as the sender of an ARP probe (RFC 5227);
 * an IPv4 or ARP header cut short counts as spoofed.
 */
export function checkSource(frame: Uint8Array, policy: SourcePolicy): SourceViolation | undefined {
  if (readMac(frame, 6) !== policy.mac) return 'spoofed-mac'
  let at = 12
  let type = (frame[at] << 8) | frame[at + 1]
  for (let tags = 0; (type === ETHERTYPE_VLAN || type === ETHERTYPE_QINQ) && tags < 2; tags++) {
    at += 4
    if (at + 2 > frame.length) return policy.ip ? 'spoofed-ip' : undefined
    type = (frame[at] << 8) | frame[at + 1]
  }
  const l3 = at + 2
  if (type === ETHERTYPE_ARP) {
    // htype(2) ptype(2) hlen(1) plen(1) op(2) sha(6) spa(4) tha(6) tpa(4)
    if (l3 + 28 > frame.length) return policy.ip ? 'spoofed-ip' : undefined
    const ethernetIPv4 = frame[l3 + 4] === 6 && frame[l3 + 5] === 4
    if (ethernetIPv4 && readMac(frame, l3 + 8) !== policy.mac) return 'spoofed-mac'
    if (!policy.ip) return undefined
    if (!ethernetIPv4) return 'spoofed-ip'
    const spa = readIPv4(frame, l3 + 14)
    return spa === 0 || inRange(spa, policy.ip) ? undefined : 'spoofed-ip'
  }
  if (!policy.ip) return undefined
  if (type === ETHERTYPE_VLAN || type === ETHERTYPE_QINQ) return 'spoofed-ip' // a third tag
  if (type !== ETHERTYPE_IPV4) return undefined
  if (l3 + 20 > frame.length) return 'spoofed-ip'
  const source = readIPv4(frame, l3 + 12)
  if (inRange(source, policy.ip)) return undefined
  if (source === 0) {
    const ihl = (frame[l3] & 0x0f) * 4
    const udp = l3 + ihl
    if (frame[l3 + 9] === 17 && udp + 4 <= frame.length) {
      const sport = (frame[udp] << 8) | frame[udp + 1]
      const dport = (frame[udp + 2] << 8) | frame[udp + 3]
      if (sport === 68 && dport === 67) return undefined
    }
  }
  return 'spoofed-ip'
}
