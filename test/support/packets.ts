/**
 * Hand-built Ethernet/ARP/IPv4/TCP/ICMP frames and checksum checks for the I/O tests; kept here
 * (not in src/wire) so the I/O layer's tests depend on nothing but themselves.
 */

export const ETHERTYPE_IPV4 = 0x0800
export const ETHERTYPE_ARP = 0x0806
/** IEEE 802 local experimental EtherType, for test traffic nothing else sends. */
export const ETHERTYPE_TEST = 0x88b5

export function mac(s: string): Buffer {
  return Buffer.from(s.split(':').map((p) => Number.parseInt(p, 16)))
}

export function ipv4(s: string): Buffer {
  return Buffer.from(s.split('.').map(Number))
}

/** Ones'-complement sum of buf[start, end) added to acc, not folded. */
export function onesSum(buf: Uint8Array, start: number, end: number, acc = 0): number {
  let sum = acc
  let i = start
  for (; i + 1 < end; i += 2) sum += (buf[i] << 8) | buf[i + 1]
  if (i < end) sum += buf[i] << 8
  return sum
}

export function fold(sum: number): number {
  let s = sum
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000)
  return s
}

/** Internet checksum of buf[start, end) (the value to store). */
export function checksum(buf: Uint8Array, start: number, end: number, acc = 0): number {
  return ~fold(onesSum(buf, start, end, acc)) & 0xffff
}

function pseudoHeaderSum(ip: Uint8Array, ipOff: number, proto: number, l4Len: number): number {
  return onesSum(ip, ipOff + 12, ipOff + 20) + proto + l4Len
}

export function ethHeader(dst: Uint8Array, src: Uint8Array, type: number): Buffer {
  const b = Buffer.alloc(14)
  b.set(dst, 0)
  b.set(src, 6)
  b.writeUInt16BE(type, 12)
  return b
}

export interface TcpSpec {
  dstMac: Uint8Array
  srcMac: Uint8Array
  srcIp: Uint8Array
  dstIp: Uint8Array
  srcPort: number
  dstPort: number
  seq: number
  ack?: number
  /** TCP flags byte; default ACK|PSH. */
  flags?: number
  payload: Uint8Array
  /** Leave the TCP checksum as the pseudo-header sum, for CHECKSUM_PARTIAL / NEEDS_CSUM. */
  partialChecksum?: boolean
}

/** The two ends of a TCP connection (client: the guest's side). */
export interface TcpEnds {
  clientMac: string
  serverMac: string
  clientIp: string
  serverIp: string
  clientPort: number
  serverPort: number
}

/**
 * Frames of one established TCP connection in both directions, in sequence (ACK|PSH): each call
 * gives the next segment carrying `payload`, from the client (`toServer`, the default) or the server.
 */
export function tcpConversation(ends: TcpEnds): (payload: Uint8Array, toServer?: boolean) => Buffer {
  const seq = { c: 1000, s: 9000 }
  return (payload, toServer = true) => {
    const frame = tcpFrame({
      srcMac: mac(toServer ? ends.clientMac : ends.serverMac),
      dstMac: mac(toServer ? ends.serverMac : ends.clientMac),
      srcIp: ipv4(toServer ? ends.clientIp : ends.serverIp),
      dstIp: ipv4(toServer ? ends.serverIp : ends.clientIp),
      srcPort: toServer ? ends.clientPort : ends.serverPort,
      dstPort: toServer ? ends.serverPort : ends.clientPort,
      seq: toServer ? seq.c : seq.s,
      ack: toServer ? seq.s : seq.c,
      payload,
    })
    if (toServer) seq.c += payload.length
    else seq.s += payload.length
    return frame
  }
}

/** Ethernet + IPv4 (20 bytes) + TCP (20 bytes) + payload. */
export function tcpFrame(s: TcpSpec): Buffer {
  const tcpLen = 20 + s.payload.length
  const f = Buffer.alloc(14 + 20 + tcpLen)
  f.set(ethHeader(s.dstMac, s.srcMac, ETHERTYPE_IPV4), 0)
  const ip = 14
  f[ip] = 0x45
  f.writeUInt16BE(20 + tcpLen, ip + 2)
  f.writeUInt16BE(0x1234, ip + 4)
  f.writeUInt16BE(0x4000, ip + 6) // DF
  f[ip + 8] = 64
  f[ip + 9] = 6
  f.set(s.srcIp, ip + 12)
  f.set(s.dstIp, ip + 16)
  f.writeUInt16BE(checksum(f, ip, ip + 20), ip + 10)
  const tcp = ip + 20
  f.writeUInt16BE(s.srcPort, tcp)
  f.writeUInt16BE(s.dstPort, tcp + 2)
  f.writeUInt32BE(s.seq >>> 0, tcp + 4)
  f.writeUInt32BE((s.ack ?? 0) >>> 0, tcp + 8)
  f[tcp + 12] = 5 << 4
  f[tcp + 13] = s.flags ?? 0x18
  f.writeUInt16BE(65535, tcp + 14)
  f.set(s.payload, tcp + 20)
  const pseudo = pseudoHeaderSum(f, ip, 6, tcpLen)
  f.writeUInt16BE(s.partialChecksum ? fold(pseudo) : checksum(f, tcp, f.length, pseudo), tcp + 16)
  return f
}

export interface ParsedTcp {
  ipChecksumOk: boolean
  tcpChecksumOk: boolean
  totalLength: number
  seq: number
  flags: number
  payload: Buffer
}

/** Parses an Ethernet/IPv4/TCP frame (no IP options) and verifies both checksums. */
export function parseTcpFrame(frame: Buffer): ParsedTcp {
  const ip = 14
  if (frame.readUInt16BE(12) !== ETHERTYPE_IPV4 || frame[ip + 9] !== 6) throw new Error('not IPv4/TCP')
  const ihl = (frame[ip] & 0x0f) * 4
  const totalLength = frame.readUInt16BE(ip + 2)
  const end = ip + totalLength
  const tcp = ip + ihl
  const dataOff = (frame[tcp + 12] >> 4) * 4
  return {
    ipChecksumOk: fold(onesSum(frame, ip, ip + ihl)) === 0xffff,
    tcpChecksumOk: fold(onesSum(frame, tcp, end, pseudoHeaderSum(frame, ip, 6, end - tcp))) === 0xffff,
    totalLength,
    seq: frame.readUInt32BE(tcp + 4),
    flags: frame[tcp + 13],
    payload: frame.subarray(tcp + dataOff, end),
  }
}

/** Finishes a NEEDS_CSUM checksum in place: sum from csumStart to the end into csumStart+csumOffset. */
export function finishChecksum(frame: Buffer, csumStart: number, csumOffset: number): void {
  frame.writeUInt16BE(checksum(frame, csumStart, frame.length), csumStart + csumOffset)
}

export function arpRequest(srcMac: Uint8Array, srcIp: Uint8Array, targetIp: Uint8Array): Buffer {
  const f = Buffer.alloc(42)
  f.set(ethHeader(mac('ff:ff:ff:ff:ff:ff'), srcMac, ETHERTYPE_ARP), 0)
  f.writeUInt16BE(1, 14) // Ethernet
  f.writeUInt16BE(ETHERTYPE_IPV4, 16)
  f[18] = 6
  f[19] = 4
  f.writeUInt16BE(1, 20) // request
  f.set(srcMac, 22)
  f.set(srcIp, 28)
  f.set(targetIp, 38)
  return f
}

export function arpReply(
  srcMac: Uint8Array,
  srcIp: Uint8Array,
  dstMac: Uint8Array,
  dstIp: Uint8Array,
): Buffer {
  const f = Buffer.alloc(42)
  f.set(ethHeader(dstMac, srcMac, ETHERTYPE_ARP), 0)
  f.writeUInt16BE(1, 14)
  f.writeUInt16BE(ETHERTYPE_IPV4, 16)
  f[18] = 6
  f[19] = 4
  f.writeUInt16BE(2, 20) // reply
  f.set(srcMac, 22)
  f.set(srcIp, 28)
  f.set(dstMac, 32)
  f.set(dstIp, 38)
  return f
}

export interface ParsedArp {
  op: number
  senderMac: Buffer
  senderIp: Buffer
  targetMac: Buffer
  targetIp: Buffer
}

export function parseArp(frame: Buffer): ParsedArp | undefined {
  if (frame.length < 42 || frame.readUInt16BE(12) !== ETHERTYPE_ARP) return undefined
  return {
    op: frame.readUInt16BE(20),
    senderMac: frame.subarray(22, 28),
    senderIp: frame.subarray(28, 32),
    targetMac: frame.subarray(32, 38),
    targetIp: frame.subarray(38, 42),
  }
}

/** Ethernet + IPv4 + ICMP echo request. */
export function icmpEcho(
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  srcIp: Uint8Array,
  dstIp: Uint8Array,
  id: number,
  seq: number,
  data: Uint8Array,
): Buffer {
  const icmpLen = 8 + data.length
  const f = Buffer.alloc(14 + 20 + icmpLen)
  f.set(ethHeader(dstMac, srcMac, ETHERTYPE_IPV4), 0)
  const ip = 14
  f[ip] = 0x45
  f.writeUInt16BE(20 + icmpLen, ip + 2)
  f[ip + 8] = 64
  f[ip + 9] = 1
  f.set(srcIp, ip + 12)
  f.set(dstIp, ip + 16)
  f.writeUInt16BE(checksum(f, ip, ip + 20), ip + 10)
  const icmp = ip + 20
  f[icmp] = 8
  f.writeUInt16BE(id, icmp + 4)
  f.writeUInt16BE(seq, icmp + 6)
  f.set(data, icmp + 8)
  f.writeUInt16BE(checksum(f, icmp, f.length), icmp + 2)
  return f
}

export interface ParsedIcmp {
  type: number
  id: number
  seq: number
  data: Buffer
  checksumOk: boolean
  srcIp: Buffer
}

export function parseIcmp(frame: Buffer): ParsedIcmp | undefined {
  if (frame.length < 42 || frame.readUInt16BE(12) !== ETHERTYPE_IPV4 || frame[23] !== 1) return undefined
  const ip = 14
  const ihl = (frame[ip] & 0x0f) * 4
  const end = ip + frame.readUInt16BE(ip + 2)
  const icmp = ip + ihl
  return {
    type: frame[icmp],
    id: frame.readUInt16BE(icmp + 4),
    seq: frame.readUInt16BE(icmp + 6),
    data: frame.subarray(icmp + 8, end),
    checksumOk: fold(onesSum(frame, icmp, end)) === 0xffff,
    srcIp: frame.subarray(ip + 12, ip + 16),
  }
}
