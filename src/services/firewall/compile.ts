/**
 * Turns parsed rules into closures over the dissected packet: each match becomes one small
 * function with its constants captured, a rule checks its implied IP version and protocol first
 * (most rules are skipped there), and nothing is allocated per packet.
 */
import type { Packet } from '../../wire/packet.ts'
import type { Match, Prefix, Ranges, Rule, Verdict } from './rules.ts'

/** A compiled match: true when the packet (with ct state bit `ct`) matches. */
export type MatchFn = (frame: Uint8Array, p: Packet, ct: number) => boolean

export interface CompiledRule {
  readonly rule: Rule
  readonly family: number
  readonly protocol: number
  /** Some match reads the transport header (ports, flags, ICMP type). */
  readonly needsL4: boolean
  readonly matches: readonly MatchFn[]
  readonly verdict: Verdict
  /**
   * Prefilters checked inline before any match function is called (most rules fail here): the
   * envelope of a positive port match, and a positive single IPv4 prefix as mask and network
   * (mask 0: no condition). The match functions still decide.
   */
  readonly sportLo: number
  readonly sportHi: number
  readonly dportLo: number
  readonly dportHi: number
  readonly srcMask: number
  readonly srcNet: number
  readonly dstMask: number
  readonly dstNet: number
  packets: number
  bytes: number
}

/** A membership test for a set of inclusive ranges: a comparison for a few, a bitmap for many. */
export function numberSet(ranges: Ranges): (v: number) => boolean {
  if (ranges.length === 2) {
    const lo = ranges[0]
    const hi = ranges[1]
    return lo === hi ? (v) => v === lo : (v) => v >= lo && v <= hi
  }
  if (ranges.length <= 8) {
    const r = Int32Array.from(ranges)
    return (v) => {
      for (let i = 0; i < r.length; i += 2) if (v >= r[i] && v <= r[i + 1]) return true
      return false
    }
  }
  let max = 0
  for (let i = 1; i < ranges.length; i += 2) max = Math.max(max, ranges[i])
  const bits = new Uint8Array((max >> 3) + 1)
  for (let i = 0; i < ranges.length; i += 2)
    for (let v = ranges[i]; v <= ranges[i + 1]; v++) bits[v >> 3] |= 1 << (v & 7)
  return (v) => v >= 0 && v <= max && (bits[v >> 3] & (1 << (v & 7))) !== 0
}

function prefixMatches(frame: Uint8Array, at: number, prefix: Prefix): boolean {
  const bytes = prefix.bytes
  const whole = prefix.length >> 3
  for (let i = 0; i < whole; i++) if (frame[at + i] !== bytes[i]) return false
  const rest = prefix.length & 7
  if (rest === 0) return true
  const mask = (0xff << (8 - rest)) & 0xff
  return (frame[at + whole] & mask) === bytes[whole]
}

function compileMatch(m: Match): MatchFn {
  switch (m.kind) {
    case 'ether-type': {
      const has = numberSet(m.ranges)
      const negate = m.negate
      return (_f, p) => has(p.etherType) !== negate
    }
    case 'ether-addr': {
      const macs = m.macs
      const negate = m.negate
      if (m.field === 'saddr') return (_f, p) => macs.includes(p.sourceMac) !== negate
      return (_f, p) => macs.includes(p.destinationMac) !== negate
    }
    case 'vlan-id': {
      const has = numberSet(m.ranges)
      const negate = m.negate
      return (_f, p) => p.vlan >= 0 && has(p.vlan) !== negate
    }
    case 'l4proto': {
      const has = numberSet(m.ranges)
      const negate = m.negate
      return (_f, p) => p.ipVersion !== 0 && has(p.protocol) !== negate
    }
    case 'address': {
      const prefixes = m.prefixes
      const negate = m.negate
      const source = m.field === 'saddr'
      if (prefixes.length === 1 && prefixes[0].bytes.length === 4) {
        // IPv4, one prefix: a masked 32-bit compare.
        const { bytes, length } = prefixes[0]
        const mask = length === 0 ? 0 : (0xffffffff << (32 - length)) >>> 0
        const net = (((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) & mask) >>> 0
        return (f, p) => {
          const at = source ? p.sourceAddressOffset : p.destinationAddressOffset
          const a = ((f[at] << 24) | (f[at + 1] << 16) | (f[at + 2] << 8) | f[at + 3]) >>> 0
          return ((a & mask) >>> 0 === net) !== negate
        }
      }
      return (f, p) => {
        const at = source ? p.sourceAddressOffset : p.destinationAddressOffset
        for (const prefix of prefixes) if (prefixMatches(f, at, prefix)) return !negate
        return negate
      }
    }
    case 'port': {
      const has = numberSet(m.ranges)
      const negate = m.negate
      if (m.field === 'sport') return (_f, p) => has(p.sourcePort) !== negate
      return (_f, p) => has(p.destinationPort) !== negate
    }
    case 'tcp-flags': {
      const { value, mask, negate } = m
      if (m.test === 'any') return (_f, p) => ((p.tcpFlags & value) !== 0) !== negate
      return (_f, p) => ((p.tcpFlags & mask) === value) !== negate
    }
    case 'icmp-type':
    case 'icmp-code': {
      const has = numberSet(m.ranges)
      const negate = m.negate
      if (m.kind === 'icmp-type') return (_f, p) => has(p.icmpType) !== negate
      return (_f, p) => has(p.icmpCode) !== negate
    }
    case 'ct-state': {
      const { mask, negate } = m
      return (_f, _p, ct) => ((ct & mask) !== 0) !== negate
    }
  }
}

/** The smallest and largest value of a set of ranges. */
function envelope(ranges: Ranges): [number, number] {
  let lo = Number.POSITIVE_INFINITY
  let hi = Number.NEGATIVE_INFINITY
  for (let i = 0; i < ranges.length; i += 2) {
    lo = Math.min(lo, ranges[i])
    hi = Math.max(hi, ranges[i + 1])
  }
  return [lo, hi]
}

/** Cheap matches first: ports and flags, then ct state, then addresses. */
const COST: Record<Match['kind'], number> = {
  port: 0,
  'tcp-flags': 0,
  'icmp-type': 0,
  'icmp-code': 0,
  'ether-type': 1,
  'vlan-id': 1,
  l4proto: 1,
  'ct-state': 1,
  'ether-addr': 2,
  address: 3,
}

export function compileRule(rule: Rule): CompiledRule {
  const ports = { sport: [0, 0xffff], dport: [0, 0xffff] }
  const prefix = { saddr: [0, 0], daddr: [0, 0] }
  for (const m of rule.matches) {
    if (m.kind === 'port' && !m.negate) ports[m.field] = envelope(m.ranges)
    if (m.kind === 'address' && !m.negate && m.prefixes.length === 1 && m.prefixes[0].bytes.length === 4) {
      const { bytes, length } = m.prefixes[0]
      const mask = length === 0 ? 0 : (0xffffffff << (32 - length)) | 0
      prefix[m.field] = [mask, ((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) & mask]
    }
  }
  const ordered = [...rule.matches].sort((a, b) => COST[a.kind] - COST[b.kind])
  return {
    sportLo: ports.sport[0],
    sportHi: ports.sport[1],
    dportLo: ports.dport[0],
    dportHi: ports.dport[1],
    srcMask: prefix.saddr[0],
    srcNet: prefix.saddr[1],
    dstMask: prefix.daddr[0],
    dstNet: prefix.daddr[1],
    rule,
    family: rule.family,
    protocol: rule.protocol,
    needsL4: rule.matches.some(
      (m) => m.kind === 'port' || m.kind === 'tcp-flags' || m.kind === 'icmp-type' || m.kind === 'icmp-code',
    ),
    matches: ordered.map(compileMatch),
    verdict: rule.verdict,
    packets: 0,
    bytes: 0,
  }
}

/**
 * The first rule of `rules` that matches, or undefined. Transport matches are only reached when
 * the rule's protocol check passed, so ports and flags are read from a packet that has them.
 */
export function firstMatch(
  rules: readonly CompiledRule[],
  frame: Uint8Array,
  p: Packet,
  ct: number,
): CompiledRule | undefined {
  const version = p.ipVersion
  const protocol = p.protocol
  const hasL4 = p.l4Offset >= 0
  // Port prefilters only apply to rules with a port match, whose protocol check implies ports.
  const sport = p.sourcePort
  const dport = p.destinationPort
  let src = 0
  let dst = 0
  if (version === 4) {
    const s = p.sourceAddressOffset
    const d = p.destinationAddressOffset
    src = (frame[s] << 24) | (frame[s + 1] << 16) | (frame[s + 2] << 8) | frame[s + 3]
    dst = (frame[d] << 24) | (frame[d + 1] << 16) | (frame[d + 2] << 8) | frame[d + 3]
  }
  next: for (let i = 0; i < rules.length; i++) {
    const r = rules[i]
    if (r.family !== 0 && r.family !== version) continue
    if (r.protocol >= 0 && (version === 0 || r.protocol !== protocol)) continue
    if (r.needsL4 && !hasL4) continue
    if (dport < r.dportLo || dport > r.dportHi || sport < r.sportLo || sport > r.sportHi) continue
    if ((src & r.srcMask) !== r.srcNet || (dst & r.dstMask) !== r.dstNet) continue
    const matches = r.matches
    for (let j = 0; j < matches.length; j++) if (!matches[j](frame, p, ct)) continue next
    return r
  }
  return undefined
}
