/**
 * Answers to rejected packets, built into one reused buffer (the caller's `reply` copies it):
 *
 * - a TCP RST per RFC 9293 section 3.10.7.1: if the offending segment has ACK, the reset's
 *   sequence number is its acknowledgment number (RST alone); otherwise the reset has sequence 0
 *   and acknowledges SEG.SEQ + SEG.LEN (RST+ACK), where SYN and FIN count in SEG.LEN;
 * - an ICMP destination unreachable (RFC 792) quoting the offending IP header and the first 8
 *   bytes of its payload, or an ICMPv6 one (RFC 4443) quoting as much as keeps the answer within
 *   the IPv6 minimum MTU (1280 bytes).
 *
 * Addresses, ports and MACs are swapped; an 802.1Q tag is kept. IP TTL / hop limit 64, IPv4 DF set
 * on RSTs (like Linux's nf_reject) and not on ICMP. Nothing is sent about packets that must not be
 * answered (RFC 1122 3.2.2, RFC 4443 2.4(e)): RSTs, ICMP errors, later fragments, and packets from
 * or to broadcast and multicast addresses; `build*` then return undefined.
 */
import { isGroupMac } from '../../wire/address.ts'
import { finishChecksum, sumWords } from '../../wire/checksum.ts'
import { encodeIPv4, IP_PROTOCOL_ICMP, IP_PROTOCOL_TCP, newIPv4Header } from '../../wire/ipv4.ts'
import type { Packet } from '../../wire/packet.ts'
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../../wire/tcp.ts'

const IPV6_MIN_MTU = 1280
const TTL = 64

const u32 = (b: Uint8Array, at: number): number =>
  ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0

function isIcmpError(version: number, type: number): boolean {
  return version === 4 ? type === 3 || type === 4 || type === 5 || type === 11 || type === 12 : type < 128
}

export class RejectBuilder {
  /** Ethernet (with a VLAN tag) + the largest answer: an ICMPv6 error of 1280 bytes. */
  private readonly buf = new Uint8Array(18 + IPV6_MIN_MTU)
  private readonly ip = newIPv4Header()

  /** Whether a packet may be answered at all. */
  answerable(frame: Uint8Array, p: Packet): boolean {
    if (p.ipVersion === 0 || p.laterFragment || p.error !== undefined) return false
    if (isGroupMac(p.sourceMac) || isGroupMac(p.destinationMac)) return false
    if (p.protocol === 6 && (p.l4Offset < 0 || p.tcpFlags & TCP_RST)) return false
    if ((p.protocol === 1 && p.ipVersion === 4) || (p.protocol === 58 && p.ipVersion === 6))
      if (p.l4Offset < 0 || isIcmpError(p.ipVersion, p.icmpType)) return false
    const s = p.sourceAddressOffset
    const d = p.destinationAddressOffset
    if (p.ipVersion === 4) {
      // Multicast, broadcast, "this network" and the limited broadcast address.
      if (frame[s] >= 224 || frame[d] >= 224 || frame[s] === 0) return false
    } else {
      if (frame[s] === 0xff || frame[d] === 0xff) return false
      let unspecified = true
      for (let i = 0; i < 16; i++) if (frame[s + i] !== 0) unspecified = false
      if (unspecified) return false
    }
    return true
  }

  /** The TCP RST answering the TCP segment in `frame`, or undefined. A view into a reused buffer. */
  tcpReset(frame: Uint8Array, p: Packet): Uint8Array | undefined {
    if (p.protocol !== 6 || !this.answerable(frame, p)) return undefined
    const b = this.buf
    let at = this.ethernet(frame, p)
    const l3 = at
    at = this.ipHeader(frame, p, at, IP_PROTOCOL_TCP, 20, true)
    const flags = p.tcpFlags
    let seq = 0
    let ack = 0
    let ctl = TCP_RST
    if (flags & TCP_ACK) seq = p.tcpAck
    else {
      const segmentLength = p.payloadLength + (flags & TCP_SYN ? 1 : 0) + (flags & TCP_FIN ? 1 : 0)
      ack = (p.tcpSeq + segmentLength) >>> 0
      ctl |= TCP_ACK
    }
    const t = at
    b[t] = p.destinationPort >>> 8
    b[t + 1] = p.destinationPort & 0xff
    b[t + 2] = p.sourcePort >>> 8
    b[t + 3] = p.sourcePort & 0xff
    writeU32(b, t + 4, seq)
    writeU32(b, t + 8, ack)
    b[t + 12] = 5 << 4
    b[t + 13] = ctl
    b.fill(0, t + 14, t + 20) // window, checksum, urgent pointer
    const checksum = finishChecksum(sumWords(b, t, t + 20, this.pseudoHeader(p, l3, IP_PROTOCOL_TCP, 20)))
    b[t + 16] = checksum >>> 8
    b[t + 17] = checksum & 0xff
    return b.subarray(0, t + 20)
  }

  /**
   * The ICMP (IPv4, `code4`) or ICMPv6 (`code6`) destination unreachable answering `frame`, or
   * undefined. A view into a reused buffer.
   */
  unreachable(frame: Uint8Array, p: Packet, code4: number, code6: number): Uint8Array | undefined {
    if (!this.answerable(frame, p)) return undefined
    const code = p.ipVersion === 4 ? code4 : code6
    if (code < 0) return undefined
    const b = this.buf
    let at = this.ethernet(frame, p)
    const l3 = at
    let quote: number
    if (p.ipVersion === 4) {
      const ihl = (frame[p.l3Offset] & 0x0f) * 4
      quote = ihl + Math.min(8, p.end - p.l3Offset - ihl)
    } else {
      quote = Math.min(p.end - p.l3Offset, IPV6_MIN_MTU - 40 - 8)
    }
    const icmpLength = 8 + quote
    at = this.ipHeader(frame, p, at, p.ipVersion === 4 ? IP_PROTOCOL_ICMP : 58, icmpLength, false)
    const t = at
    b[t] = p.ipVersion === 4 ? 3 : 1
    b[t + 1] = code
    b.fill(0, t + 2, t + 8) // checksum, unused
    b.set(frame.subarray(p.l3Offset, p.l3Offset + quote), t + 8)
    const initial = p.ipVersion === 4 ? 0 : this.pseudoHeader(p, l3, 58, icmpLength)
    const checksum = finishChecksum(sumWords(b, t, t + icmpLength, initial))
    b[t + 2] = checksum >>> 8
    b[t + 3] = checksum & 0xff
    return b.subarray(0, t + icmpLength)
  }

  /** Ethernet header with swapped MACs (and the VLAN tag if any); returns the L3 offset. */
  private ethernet(frame: Uint8Array, p: Packet): number {
    const b = this.buf
    b.set(frame.subarray(6, 12), 0)
    b.set(frame.subarray(0, 6), 6)
    // Copies the EtherType, or the 802.1Q tag and the inner EtherType.
    b.set(frame.subarray(12, p.l3Offset), 12)
    return p.l3Offset
  }

  /** The IP header of the answer (addresses swapped); returns the transport offset. */
  private ipHeader(
    frame: Uint8Array,
    p: Packet,
    at: number,
    protocol: number,
    payload: number,
    dontFragment: boolean,
  ): number {
    const b = this.buf
    if (p.ipVersion === 4) {
      const h = this.ip
      h.tos = protocol === IP_PROTOCOL_ICMP ? 0xc0 : 0
      h.totalLength = 20 + payload
      h.identification = 0
      h.dontFragment = dontFragment
      h.ttl = TTL
      h.protocol = protocol
      h.source = u32(frame, p.destinationAddressOffset)
      h.destination = u32(frame, p.sourceAddressOffset)
      return encodeIPv4(b, at, h)
    }
    b[at] = 0x60
    b.fill(0, at + 1, at + 4) // traffic class, flow label
    b[at + 4] = payload >>> 8
    b[at + 5] = payload & 0xff
    b[at + 6] = protocol
    b[at + 7] = TTL
    b.set(frame.subarray(p.destinationAddressOffset, p.destinationAddressOffset + 16), at + 8)
    b.set(frame.subarray(p.sourceAddressOffset, p.sourceAddressOffset + 16), at + 24)
    return at + 40
  }

  /** The pseudo-header sum for the answer whose IP header starts at `l3`. */
  private pseudoHeader(p: Packet, l3: number, protocol: number, length: number): number {
    const b = this.buf
    if (p.ipVersion === 4) return sumWords(b, l3 + 12, l3 + 20) + protocol + length
    return sumWords(b, l3 + 8, l3 + 40) + protocol + length
  }
}

function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24
  b[at + 1] = (v >>> 16) & 0xff
  b[at + 2] = (v >>> 8) & 0xff
  b[at + 3] = v & 0xff
}
