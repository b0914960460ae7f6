/**
 * Hand-built frames for the firewall tests: Ethernet (optionally 802.1Q) + IPv4 or IPv6 + TCP, UDP,
 * SCTP, ICMP or ICMPv6, with real checksums, written field by field from the RFCs (no src/wire code).
 */
import { dissectPacket, newPacket, type Packet } from '../../../src/wire/packet.ts'
import type { NetContext } from '../../../src/services/net/service.ts'

export interface Spec {
  src: string
  dst: string
  proto: 'tcp' | 'udp' | 'sctp' | 'icmp' | number
  sport?: number
  dport?: number
  /** TCP flags byte (default ACK). */
  flags?: number
  seq?: number
  ack?: number
  /** ICMP / ICMPv6 type, code and echo identifier. */
  type?: number
  code?: number
  id?: number
  payload?: Uint8Array
  srcMac?: string
  dstMac?: string
  vlan?: number
  ttl?: number
  /** IPv4 identification / IPv6 fragment id, offset in 8-byte units, more fragments. */
  fragment?: { id: number; offset: number; more: boolean }
  /** Bytes placed directly after the IP header instead of a transport header (for later fragments). */
  raw?: Uint8Array
}

export const GUEST_MAC = '02:00:00:00:00:01'
export const WORLD_MAC = '02:00:00:00:00:02'

const macBytes = (m: string) => Buffer.from(m.replaceAll(':', ''), 'hex')

export function ipBytes(a: string): Buffer {
  if (a.includes('.')) return Buffer.from(a.split('.').map(Number))
  const [head, tail] = a.includes('::') ? a.split('::') : [a, undefined]
  const h = head ? head.split(':') : []
  const t = tail ? tail.split(':') : []
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
  const b = Buffer.alloc(16)
  for (let i = 0; i < 8; i++) b.writeUInt16BE(Number.parseInt(groups[i], 16), i * 2)
  return b
}

function sum(buf: Uint8Array, acc = 0): number {
  let s = acc
  for (let i = 0; i + 1 < buf.length; i += 2) s += (buf[i] << 8) | buf[i + 1]
  if (buf.length & 1) s += buf[buf.length - 1] << 8
  return s
}

function csum(buf: Uint8Array, acc = 0): number {
  let s = sum(buf, acc)
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000)
  return ~s & 0xffff
}

const protoNumber = (s: Spec, v6: boolean) =>
  typeof s.proto === 'number' ? s.proto : { tcp: 6, udp: 17, sctp: 132, icmp: v6 ? 58 : 1 }[s.proto]

function transport(s: Spec, proto: number, pseudo: number): Buffer {
  const payload = Buffer.from(s.payload ?? new Uint8Array(0))
  if (s.raw) return Buffer.from(s.raw)
  if (proto === 6) {
    const t = Buffer.alloc(20 + payload.length)
    t.writeUInt16BE(s.sport ?? 40000, 0)
    t.writeUInt16BE(s.dport ?? 80, 2)
    t.writeUInt32BE(s.seq ?? 1000, 4)
    t.writeUInt32BE(s.ack ?? 0, 8)
    t[12] = 5 << 4
    t[13] = s.flags ?? 0x10
    t.writeUInt16BE(65535, 14)
    payload.copy(t, 20)
    t.writeUInt16BE(csum(t, pseudo + t.length), 16)
    return t
  }
  if (proto === 17) {
    const t = Buffer.alloc(8 + payload.length)
    t.writeUInt16BE(s.sport ?? 40000, 0)
    t.writeUInt16BE(s.dport ?? 53, 2)
    t.writeUInt16BE(t.length, 4)
    payload.copy(t, 8)
    t.writeUInt16BE(csum(t, pseudo + t.length) || 0xffff, 6)
    return t
  }
  if (proto === 132) {
    const t = Buffer.alloc(12 + payload.length)
    t.writeUInt16BE(s.sport ?? 40000, 0)
    t.writeUInt16BE(s.dport ?? 9, 2)
    payload.copy(t, 12)
    return t
  }
  if (proto === 1 || proto === 58) {
    const t = Buffer.alloc(8 + payload.length)
    t[0] = s.type ?? (proto === 1 ? 8 : 128)
    t[1] = s.code ?? 0
    t.writeUInt16BE(s.id ?? 7, 4)
    t.writeUInt16BE(1, 6)
    payload.copy(t, 8)
    t.writeUInt16BE(csum(t, proto === 58 ? pseudo + t.length : 0), 2)
    return t
  }
  return payload
}

/** The IP packet (no Ethernet header) of `s`. */
export function ipPacket(s: Spec): Buffer {
  const src = ipBytes(s.src)
  const dst = ipBytes(s.dst)
  const v6 = src.length === 16
  const proto = protoNumber(s, v6)
  const pseudo = sum(src) + sum(dst) + proto
  const l4 = transport(s, proto, pseudo)
  if (!v6) {
    const ip = Buffer.alloc(20)
    ip[0] = 0x45
    ip.writeUInt16BE(20 + l4.length, 2)
    const f = s.fragment
    ip.writeUInt16BE(f ? f.id : 0x1234, 4)
    ip.writeUInt16BE(f ? (f.more ? 0x2000 : 0) | f.offset : 0x4000, 6)
    ip[8] = s.ttl ?? 64
    ip[9] = proto
    src.copy(ip, 12)
    dst.copy(ip, 16)
    ip.writeUInt16BE(csum(ip), 10)
    return Buffer.concat([ip, l4])
  }
  const f = s.fragment
  const ext = f ? Buffer.alloc(8) : Buffer.alloc(0)
  if (f) {
    ext[0] = proto
    ext.writeUInt16BE((f.offset << 3) | (f.more ? 1 : 0), 2)
    ext.writeUInt32BE(f.id, 4)
  }
  const ip = Buffer.alloc(40)
  ip.writeUInt32BE(0x60000000, 0)
  ip.writeUInt16BE(ext.length + l4.length, 4)
  ip[6] = f ? 44 : proto
  ip[7] = s.ttl ?? 64
  src.copy(ip, 8)
  dst.copy(ip, 24)
  return Buffer.concat([ip, ext, l4])
}

export function frame(s: Spec): Buffer {
  const ip = ipPacket(s)
  const v6 = ip[0] >> 4 === 6
  const eth = Buffer.alloc(s.vlan === undefined ? 14 : 18)
  macBytes(s.dstMac ?? WORLD_MAC).copy(eth, 0)
  macBytes(s.srcMac ?? GUEST_MAC).copy(eth, 6)
  let at = 12
  if (s.vlan !== undefined) {
    eth.writeUInt16BE(0x8100, 12)
    eth.writeUInt16BE(s.vlan, 14)
    at = 16
  }
  eth.writeUInt16BE(v6 ? 0x86dd : 0x0800, at)
  return Buffer.concat([eth, ip])
}

/** A broadcast ARP request from the guest. */
export function arpFrame(srcMac = GUEST_MAC): Buffer {
  const f = Buffer.alloc(42)
  macBytes('ff:ff:ff:ff:ff:ff').copy(f, 0)
  macBytes(srcMac).copy(f, 6)
  f.writeUInt16BE(0x0806, 12)
  Buffer.from('0001080006040001', 'hex').copy(f, 14)
  macBytes(srcMac).copy(f, 22)
  Buffer.from([10, 0, 0, 1]).copy(f, 28)
  Buffer.from([10, 0, 0, 2]).copy(f, 38)
  return f
}

export function dissect(f: Uint8Array): Packet {
  const p = newPacket()
  dissectPacket(f, p)
  return p
}

export interface FakeContext extends NetContext {
  replies: Buffer[]
}

/** A chain context with a settable clock that keeps the replies. */
export function fakeContext(now = 1000): FakeContext {
  const replies: Buffer[] = []
  return {
    now,
    replies,
    reply: (f) => replies.push(Buffer.from(f)),
    event: () => {},
  }
}
