/**
 * Connection tracking for one NIC (both directions share the table): TCP, UDP and SCTP flows keyed
 * by their 5-tuple, ICMP and ICMPv6 echo by (addresses, identifier), IPv4 and IPv6 alike. A lookup
 * finds a flow from either end, so a reply is recognised as such.
 *
 * The firewall asks `classify` for a packet's ct state before its rules run, and calls `commit`
 * only when it lets the packet through: a dropped packet neither creates nor advances a flow.
 *
 * States: new (only the originator has spoken) → established (a reply was seen) → closing (a FIN
 * or RST was seen), each with its own timeout (Linux's defaults). No TCP window tracking. ICMP
 * errors that quote a tracked flow are `related`; ARP, ND, other ICMP messages and other
 * protocols are `untracked`; a TCP segment that is no SYN with no flow, or an echo reply with no
 * request, is `invalid`.
 *
 * The table is bounded: when full, the least recently used flow is evicted (counted). Expired
 * flows are dropped when met by a lookup and a few at a time from the cold end of the LRU list.
 * Lookups allocate nothing: addresses are read as 32-bit words, hashed symmetrically (both ends
 * find the flow) and compared as numbers.
 */
import type { Packet } from '../../wire/packet.ts'
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../../wire/tcp.ts'
import { CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_RELATED, CT_UNTRACKED } from './names.ts'

/** Timeouts in milliseconds. Defaults: Linux nf_conntrack's. */
export interface ConntrackTimeouts {
  /** TCP after the SYN, before any reply (SYN_SENT). */
  tcpNew: number
  tcpEstablished: number
  /** TCP after a FIN (FIN_WAIT / TIME_WAIT). */
  tcpClosing: number
  /** TCP after an RST (CLOSE). */
  tcpReset: number
  /** UDP and SCTP before a reply, and after one. */
  udpNew: number
  udpEstablished: number
  /** ICMP / ICMPv6 echo. */
  icmp: number
  /** How long the first fragment of a datagram admits its later fragments. */
  fragment: number
}

const DEFAULT_TIMEOUTS: Readonly<ConntrackTimeouts> = {
  tcpNew: 120_000,
  tcpEstablished: 5 * 24 * 3600_000,
  tcpClosing: 120_000,
  tcpReset: 10_000,
  udpNew: 30_000,
  udpEstablished: 120_000,
  icmp: 30_000,
  fragment: 30_000,
}

export interface ConntrackOptions {
  /** Most flows kept (default 65536); the least recently used is evicted beyond. */
  maxEntries?: number
  /** Most fragmented datagrams remembered (default 1024). */
  maxFragments?: number
  timeouts?: Partial<ConntrackTimeouts>
}

const FLOW_NEW = 0
const FLOW_ESTABLISHED = 1
const FLOW_CLOSING = 2
const STATE_NAMES = ['new', 'established', 'closing'] as const

/** What `commit` does with the packet `classify` saw last. */
const ACT_NONE = 0
const ACT_CREATE = 1
const ACT_UPDATE = 2
const ACT_RECREATE = 3

/** ICMP echo direction of a lookup: 0 for port protocols. */
const ECHO_NONE = 0
const ECHO_REQUEST = 1
const ECHO_REPLY = 2

class Flow {
  hash = 0
  version = 4
  protocol = 0
  /** Originator's (a) and responder's (b) address as 32-bit words; IPv4 uses word 0 only. */
  a0 = 0
  a1 = 0
  a2 = 0
  a3 = 0
  b0 = 0
  b1 = 0
  b2 = 0
  b3 = 0
  portA = 0
  portB = 0
  state = FLOW_NEW
  resetSeen = false
  expires = 0
  bucketNext: Flow | undefined = undefined
  older: Flow | undefined = undefined
  newer: Flow | undefined = undefined
}

interface Fragment {
  hash: number
  version: number
  protocol: number
  id: number
  s0: number
  s1: number
  s2: number
  s3: number
  d0: number
  d1: number
  d2: number
  d3: number
  expires: number
  next: Fragment | undefined
}

export interface ConntrackCounters {
  entries: number
  maxEntries: number
  created: number
  evicted: number
  expired: number
  fragmentsTracked: number
  fragmentsEvicted: number
}

const u16 = (b: Uint8Array, at: number): number => (b[at] << 8) | b[at + 1]

const i32 = (b: Uint8Array, at: number): number =>
  (b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]

/** A 32-bit mix of one endpoint (address words and port). */
function endpointHash(w0: number, w1: number, w2: number, w3: number, port: number): number {
  let h = Math.imul(w0 ^ 0x9e3779b9, 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 15) ^ w1, 0xc2b2ae35)
  h = Math.imul(h ^ (h >>> 13) ^ w2, 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 16) ^ w3, 0xc2b2ae35)
  return Math.imul(h ^ (h >>> 15) ^ port, 0x27d4eb2d)
}

function sameBytes(a: Uint8Array, aAt: number, b: Uint8Array, bAt: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[aAt + i] !== b[bAt + i]) return false
  return true
}

function isIcmpError(version: number, type: number): boolean {
  return version === 4
    ? type === 3 || type === 4 || type === 5 || type === 11 || type === 12
    : type >= 1 && type <= 4
}

export class Conntrack {
  private readonly max: number
  private readonly maxFragments: number
  private readonly timeouts: ConntrackTimeouts
  private readonly buckets: (Flow | undefined)[]
  private readonly mask: number
  private oldest: Flow | undefined
  private newest: Flow | undefined
  private size = 0
  private readonly fragments = new Map<number, Fragment>()
  private fragmentCount = 0
  private created = 0
  private evicted = 0
  private expired = 0
  private fragmentsEvicted = 0
  // The last classify's result, for commit.
  private action = ACT_NONE
  private flow: Flow | undefined
  private reply = false
  // The key of the packet being looked up: version, protocol, address words, ports, hash.
  private kVersion = 0
  private kProtocol = 0
  private s0 = 0
  private s1 = 0
  private s2 = 0
  private s3 = 0
  private d0 = 0
  private d1 = 0
  private d2 = 0
  private d3 = 0
  private kSport = 0
  private kDport = 0
  private kHash = 0

  constructor(options: ConntrackOptions = {}) {
    this.max = Math.max(1, options.maxEntries ?? 65_536)
    this.maxFragments = Math.max(1, options.maxFragments ?? 1024)
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts }
    let n = 16
    while (n < this.max) n *= 2
    this.buckets = new Array<Flow | undefined>(n).fill(undefined)
    this.mask = n - 1
  }

  /**
   * The ct state bit (names.ts CT_*) of a well-formed packet that is no later fragment, and what
   * `commit` will do if it is let through.
   */
  classify(frame: Uint8Array, p: Packet, now: number): number {
    this.action = ACT_NONE
    this.flow = undefined
    this.expireSome(now, 2)
    if (p.ipVersion === 0 || p.l4Offset < 0) return CT_UNTRACKED
    const protocol = p.protocol
    if (protocol === 6 || protocol === 17 || protocol === 132) {
      this.loadKey(frame, p.sourceAddressOffset, p.destinationAddressOffset, p.ipVersion, protocol)
      this.kSport = p.sourcePort
      this.kDport = p.destinationPort
      const flow = this.find(ECHO_NONE, now)
      if (protocol === 6) {
        const initialSyn = (p.tcpFlags & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN
        if (flow === undefined) {
          if (!initialSyn) return CT_INVALID
          this.action = ACT_CREATE
          return CT_NEW
        }
        if (flow.state === FLOW_CLOSING && initialSyn) {
          // The port pair is reused for a new connection: start over.
          this.action = ACT_RECREATE
          this.flow = flow
          return CT_NEW
        }
      } else if (flow === undefined) {
        this.action = ACT_CREATE
        return CT_NEW
      }
      const f = flow as Flow
      this.action = ACT_UPDATE
      this.flow = f
      return f.state === FLOW_NEW && !this.reply ? CT_NEW : CT_ESTABLISHED
    }
    if (protocol === 1 || protocol === 58) {
      const type = p.icmpType
      const request = p.ipVersion === 4 ? 8 : 128
      const replyType = p.ipVersion === 4 ? 0 : 129
      if (type === request || type === replyType) {
        if (p.end - p.l4Offset < 8) return CT_INVALID
        const id = u16(frame, p.l4Offset + 4)
        const echo = type === request ? ECHO_REQUEST : ECHO_REPLY
        this.loadKey(frame, p.sourceAddressOffset, p.destinationAddressOffset, p.ipVersion, protocol)
        this.kSport = id
        this.kDport = id
        const flow = this.find(echo, now)
        if (flow === undefined) {
          if (echo === ECHO_REPLY) return CT_INVALID
          this.action = ACT_CREATE
          return CT_NEW
        }
        this.action = ACT_UPDATE
        this.flow = flow
        return flow.state === FLOW_NEW && !this.reply ? CT_NEW : CT_ESTABLISHED
      }
      if (isIcmpError(p.ipVersion, type)) return this.relatedError(frame, p, now) ? CT_RELATED : CT_INVALID
    }
    return CT_UNTRACKED
  }

  /** Records the packet `classify` saw last as let through: creates or advances its flow. */
  commit(p: Packet, now: number): void {
    const action = this.action
    this.action = ACT_NONE
    if (action === ACT_NONE) return
    let flow = this.flow
    if (action === ACT_RECREATE && flow !== undefined) {
      this.remove(flow)
      flow = undefined
    }
    if (flow === undefined) {
      flow = this.create(now)
      this.reply = false
    }
    const t = this.timeouts
    if (p.protocol === 6) {
      const flags = p.tcpFlags
      if (flags & TCP_RST) {
        flow.state = FLOW_CLOSING
        flow.resetSeen = true
        flow.expires = now + t.tcpReset
      } else if (flags & TCP_FIN || flow.state === FLOW_CLOSING) {
        flow.state = FLOW_CLOSING
        if (!flow.resetSeen) flow.expires = now + t.tcpClosing
      } else if (this.reply || flow.state === FLOW_ESTABLISHED) {
        flow.state = FLOW_ESTABLISHED
        flow.expires = now + t.tcpEstablished
      } else {
        flow.expires = now + t.tcpNew
      }
    } else if (p.protocol === 1 || p.protocol === 58) {
      if (this.reply) flow.state = FLOW_ESTABLISHED
      flow.expires = now + t.icmp
    } else {
      if (this.reply) flow.state = FLOW_ESTABLISHED
      flow.expires = now + (flow.state === FLOW_ESTABLISHED ? t.udpEstablished : t.udpNew)
    }
    this.touch(flow)
  }

  /** Remembers that the first fragment of this datagram was let through. */
  admitFragments(frame: Uint8Array, p: Packet, now: number): void {
    if (this.fragmentAllowed(frame, p, now)) return // also loads the key and its hash
    const hash = this.kHash
    const entry: Fragment = {
      hash,
      version: p.ipVersion,
      protocol: p.protocol,
      id: p.fragmentId,
      s0: this.s0,
      s1: this.s1,
      s2: this.s2,
      s3: this.s3,
      d0: this.d0,
      d1: this.d1,
      d2: this.d2,
      d3: this.d3,
      expires: now + this.timeouts.fragment,
      next: this.fragments.get(hash),
    }
    this.fragments.delete(hash)
    this.fragments.set(hash, entry)
    this.fragmentCount++
    while (this.fragmentCount > this.maxFragments) {
      // Map order is insertion order: the first key is the oldest chain.
      const [key, chain] = this.fragments.entries().next().value as [number, Fragment]
      this.fragments.delete(key)
      for (let f: Fragment | undefined = chain; f !== undefined; f = f.next) {
        this.fragmentCount--
        this.fragmentsEvicted++
      }
    }
  }

  /** Whether a later fragment belongs to a datagram whose first fragment was let through. */
  fragmentAllowed(frame: Uint8Array, p: Packet, now: number): boolean {
    this.loadKey(frame, p.sourceAddressOffset, p.destinationAddressOffset, p.ipVersion, p.protocol)
    const hash = (this.keyHash(0, 0) ^ Math.imul(p.fragmentId | 0, 0x27d4eb2d)) >>> 0
    this.kHash = hash
    let previous: Fragment | undefined
    for (let f = this.fragments.get(hash); f !== undefined; previous = f, f = f.next) {
      if (f.expires <= now) {
        // Chains are newest first: this one and all after it are stale.
        if (previous === undefined) this.fragments.delete(hash)
        else previous.next = undefined
        for (let g: Fragment | undefined = f; g !== undefined; g = g.next) this.fragmentCount--
        return false
      }
      if (
        f.id === p.fragmentId &&
        f.version === p.ipVersion &&
        f.protocol === p.protocol &&
        f.s0 === this.s0 &&
        f.s1 === this.s1 &&
        f.s2 === this.s2 &&
        f.s3 === this.s3 &&
        f.d0 === this.d0 &&
        f.d1 === this.d1 &&
        f.d2 === this.d2 &&
        f.d3 === this.d3
      )
        return true
    }
    return false
  }

  /** Drops every expired flow (the table's counters are then exact). */
  expire(now: number): void {
    this.expireSome(now, Number.POSITIVE_INFINITY)
    for (let f = this.oldest; f !== undefined; ) {
      const next = f.newer
      if (f.expires <= now) {
        this.remove(f)
        this.expired++
      }
      f = next
    }
  }

  counters(): ConntrackCounters {
    return {
      entries: this.size,
      maxEntries: this.max,
      created: this.created,
      evicted: this.evicted,
      expired: this.expired,
      fragmentsTracked: this.fragmentCount,
      fragmentsEvicted: this.fragmentsEvicted,
    }
  }

  /** The flows, oldest first, as plain records (for tests and `nic list`). */
  *flows(): Generator<{ protocol: number; state: string; ports: [number, number]; expires: number }> {
    for (let f = this.oldest; f !== undefined; f = f.newer)
      yield {
        protocol: f.protocol,
        state: STATE_NAMES[f.state],
        ports: [f.portA, f.portB],
        expires: f.expires,
      }
  }

  /** Loads the addresses (and version, protocol) of a lookup key; ports are set by the caller. */
  private loadKey(frame: Uint8Array, src: number, dst: number, version: number, protocol: number): void {
    this.kVersion = version
    this.kProtocol = protocol
    this.s0 = i32(frame, src)
    this.d0 = i32(frame, dst)
    if (version === 6) {
      this.s1 = i32(frame, src + 4)
      this.s2 = i32(frame, src + 8)
      this.s3 = i32(frame, src + 12)
      this.d1 = i32(frame, dst + 4)
      this.d2 = i32(frame, dst + 8)
      this.d3 = i32(frame, dst + 12)
    } else {
      this.s1 = this.s2 = this.s3 = 0
      this.d1 = this.d2 = this.d3 = 0
    }
  }

  /** The hash of the loaded key with these ports: the same from either end. */
  private keyHash(sport: number, dport: number): number {
    const h =
      (endpointHash(this.s0, this.s1, this.s2, this.s3, sport) +
        endpointHash(this.d0, this.d1, this.d2, this.d3, dport)) |
      0
    const m = Math.imul(h ^ (h >>> 16) ^ (this.kProtocol << 8) ^ this.kVersion, 0x45d9f3b)
    return (m ^ (m >>> 16)) >>> 0
  }

  /**
   * The flow of the loaded key (kSport/kDport included), or undefined; sets `this.reply` when the
   * packet goes from the responder to the originator. Expired flows met here are removed.
   */
  private find(echo: number, now: number): Flow | undefined {
    const sport = this.kSport
    const dport = this.kDport
    const hash = this.keyHash(sport, dport)
    this.kHash = hash
    const { s0, s1, s2, s3, d0, d1, d2, d3 } = this
    for (let f = this.buckets[hash & this.mask]; f !== undefined; ) {
      const next = f.bucketNext
      if (f.hash === hash && f.protocol === this.kProtocol && f.version === this.kVersion) {
        if (f.expires <= now) {
          this.remove(f)
          this.expired++
        } else if (
          echo !== ECHO_REPLY &&
          f.portA === sport &&
          f.portB === dport &&
          f.a0 === s0 &&
          f.b0 === d0 &&
          f.a1 === s1 &&
          f.a2 === s2 &&
          f.a3 === s3 &&
          f.b1 === d1 &&
          f.b2 === d2 &&
          f.b3 === d3
        ) {
          this.reply = false
          return f
        } else if (
          echo !== ECHO_REQUEST &&
          f.portA === dport &&
          f.portB === sport &&
          f.a0 === d0 &&
          f.b0 === s0 &&
          f.a1 === d1 &&
          f.a2 === d2 &&
          f.a3 === d3 &&
          f.b1 === s1 &&
          f.b2 === s2 &&
          f.b3 === s3
        ) {
          this.reply = true
          return f
        }
      }
      f = next
    }
    return undefined
  }

  /** Whether the ICMP error in `p` quotes a packet of a tracked flow sent by the error's addressee. */
  private relatedError(frame: Uint8Array, p: Packet, now: number): boolean {
    const inner = p.l4Offset + 8
    const end = p.end
    let l4: number
    let protocol: number
    const length = p.addressLength
    if (p.ipVersion === 4) {
      if (end - inner < 20 || frame[inner] >> 4 !== 4) return false
      l4 = inner + (frame[inner] & 0x0f) * 4
      protocol = frame[inner + 9]
      if (((frame[inner + 6] << 8) | frame[inner + 7]) & 0x1fff) return false // a later fragment quoted
    } else {
      if (end - inner < 40 || frame[inner] >> 4 !== 6) return false
      protocol = frame[inner + 6]
      l4 = inner + 40
      for (
        let hops = 0;
        hops < 8 && (protocol === 0 || protocol === 43 || protocol === 60 || protocol === 44);
        hops++
      ) {
        if (end - l4 < 8) return false
        const following = frame[l4]
        l4 += protocol === 44 ? 8 : (frame[l4 + 1] + 1) * 8
        protocol = following
      }
    }
    if (end - l4 < 8) return false
    const innerSrc = inner + (p.ipVersion === 4 ? 12 : 8)
    const innerDst = inner + (p.ipVersion === 4 ? 16 : 24)
    // The error goes back to whoever sent the quoted packet.
    if (!sameBytes(frame, innerSrc, frame, p.destinationAddressOffset, length)) return false
    this.loadKey(frame, innerSrc, innerDst, p.ipVersion, protocol)
    let flow: Flow | undefined
    if (protocol === 6 || protocol === 17 || protocol === 132) {
      this.kSport = u16(frame, l4)
      this.kDport = u16(frame, l4 + 2)
      flow = this.find(ECHO_NONE, now)
    } else if (protocol === (p.ipVersion === 4 ? 1 : 58)) {
      const type = frame[l4]
      const echo =
        type === (p.ipVersion === 4 ? 8 : 128)
          ? ECHO_REQUEST
          : type === (p.ipVersion === 4 ? 0 : 129)
            ? ECHO_REPLY
            : 0
      if (echo === 0) return false
      this.kSport = this.kDport = u16(frame, l4 + 4)
      flow = this.find(echo, now)
    }
    return flow !== undefined
  }

  /** A new flow for the key `classify` loaded (and hashed), its sender as the originator. */
  private create(now: number): Flow {
    if (this.size >= this.max) {
      this.expireSome(now, 8)
      if (this.size >= this.max && this.oldest !== undefined) {
        this.remove(this.oldest)
        this.evicted++
      }
    }
    const f = new Flow()
    f.hash = this.kHash
    f.version = this.kVersion
    f.protocol = this.kProtocol
    f.a0 = this.s0
    f.a1 = this.s1
    f.a2 = this.s2
    f.a3 = this.s3
    f.b0 = this.d0
    f.b1 = this.d1
    f.b2 = this.d2
    f.b3 = this.d3
    f.portA = this.kSport
    f.portB = this.kDport
    const bucket = f.hash & this.mask
    f.bucketNext = this.buckets[bucket]
    this.buckets[bucket] = f
    f.older = this.newest
    if (this.newest !== undefined) this.newest.newer = f
    else this.oldest = f
    this.newest = f
    this.size++
    this.created++
    return f
  }

  private touch(f: Flow): void {
    if (this.newest === f) return
    // Unlink, then append as the newest.
    if (f.older !== undefined) f.older.newer = f.newer
    else this.oldest = f.newer
    if (f.newer !== undefined) f.newer.older = f.older
    f.older = this.newest
    f.newer = undefined
    if (this.newest !== undefined) this.newest.newer = f
    this.newest = f
    if (this.oldest === undefined) this.oldest = f
  }

  private remove(f: Flow): void {
    const bucket = f.hash & this.mask
    let g = this.buckets[bucket]
    if (g === f) this.buckets[bucket] = f.bucketNext
    else {
      while (g !== undefined && g.bucketNext !== f) g = g.bucketNext
      if (g !== undefined) g.bucketNext = f.bucketNext
    }
    if (f.older !== undefined) f.older.newer = f.newer
    else this.oldest = f.newer
    if (f.newer !== undefined) f.newer.older = f.older
    else this.newest = f.older
    f.older = undefined
    f.newer = undefined
    f.bucketNext = undefined
    this.size--
    if (this.flow === f) this.flow = undefined
  }

  /** Removes up to `limit` expired flows from the least recently used end. */
  private expireSome(now: number, limit: number): void {
    for (let i = 0; i < limit; i++) {
      const f = this.oldest
      if (f === undefined || f.expires > now) return
      this.remove(f)
      this.expired++
    }
  }
}
