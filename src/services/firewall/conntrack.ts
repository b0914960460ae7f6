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
 * Lookups allocate nothing: a symmetric hash of the two endpoints, chains compared byte by byte.
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

export const DEFAULT_TIMEOUTS: Readonly<ConntrackTimeouts> = {
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
  /** Originator's address at 0, responder's at 16 (IPv4 uses the first 4 bytes of each). */
  readonly addresses = new Uint8Array(32)
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
  addresses: Uint8Array
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

function endpointHash(frame: Uint8Array, at: number, length: number, port: number): number {
  let h = 0x811c9dc5
  for (let i = 0; i < length; i++) h = Math.imul(h ^ frame[at + i], 0x01000193)
  return Math.imul(h ^ port, 0x01000193)
}

/** The same for (a, b) and (b, a): both ends of a flow find it. */
function flowHash(
  frame: Uint8Array,
  src: number,
  dst: number,
  length: number,
  protocol: number,
  sport: number,
  dport: number,
): number {
  let h = (endpointHash(frame, src, length, sport) + endpointHash(frame, dst, length, dport)) | 0
  h = Math.imul(h ^ (h >>> 16) ^ protocol, 0x45d9f3b)
  return (h ^ (h >>> 16)) >>> 0
}

function sameBytes(a: Uint8Array, aAt: number, frame: Uint8Array, at: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[aAt + i] !== frame[at + i]) return false
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
  private echoId = 0

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
      const flow = this.find(
        frame,
        p.sourceAddressOffset,
        p.destinationAddressOffset,
        p,
        p.sourcePort,
        p.destinationPort,
        ECHO_NONE,
        now,
      )
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
        const flow = this.find(frame, p.sourceAddressOffset, p.destinationAddressOffset, p, id, id, echo, now)
        if (flow === undefined) {
          if (echo === ECHO_REPLY) return CT_INVALID
          this.action = ACT_CREATE
          this.echoId = id
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
  commit(frame: Uint8Array, p: Packet, now: number): void {
    const action = this.action
    this.action = ACT_NONE
    if (action === ACT_NONE) return
    let flow = this.flow
    if (action === ACT_RECREATE && flow !== undefined) {
      this.remove(flow)
      flow = undefined
    }
    if (flow === undefined) {
      flow = this.create(frame, p, now)
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
    if (this.fragmentAllowed(frame, p, now)) return
    const length = p.addressLength
    const hash = this.fragmentHash(frame, p)
    const addresses = new Uint8Array(32)
    addresses.set(frame.subarray(p.sourceAddressOffset, p.sourceAddressOffset + length), 0)
    addresses.set(frame.subarray(p.destinationAddressOffset, p.destinationAddressOffset + length), 16)
    const entry: Fragment = {
      hash,
      version: p.ipVersion,
      protocol: p.protocol,
      id: p.fragmentId,
      addresses,
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
    const hash = this.fragmentHash(frame, p)
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
        sameBytes(f.addresses, 0, frame, p.sourceAddressOffset, p.addressLength) &&
        sameBytes(f.addresses, 16, frame, p.destinationAddressOffset, p.addressLength)
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

  private fragmentHash(frame: Uint8Array, p: Packet): number {
    const h = flowHash(
      frame,
      p.sourceAddressOffset,
      p.destinationAddressOffset,
      p.addressLength,
      p.protocol,
      0,
      0,
    )
    return (Math.imul(h ^ p.fragmentId, 0x01000193) ^ p.ipVersion) >>> 0
  }

  /**
   * The flow of a packet from `src` to `dst` (offsets in `frame`), or undefined; sets `this.reply`
   * when the packet goes from the responder to the originator. Expired flows met here are removed.
   */
  private find(
    frame: Uint8Array,
    src: number,
    dst: number,
    p: { ipVersion: number; protocol: number; addressLength: number },
    sport: number,
    dport: number,
    echo: number,
    now: number,
  ): Flow | undefined {
    const length = p.addressLength
    const hash = flowHash(frame, src, dst, length, p.protocol, sport, dport)
    for (let f = this.buckets[hash & this.mask]; f !== undefined; ) {
      const next = f.bucketNext
      if (f.hash === hash && f.protocol === p.protocol && f.version === p.ipVersion) {
        if (f.expires <= now) {
          this.remove(f)
          this.expired++
        } else if (
          echo !== ECHO_REPLY &&
          f.portA === sport &&
          f.portB === dport &&
          sameBytes(f.addresses, 0, frame, src, length) &&
          sameBytes(f.addresses, 16, frame, dst, length)
        ) {
          this.reply = false
          return f
        } else if (
          echo !== ECHO_REQUEST &&
          f.portA === dport &&
          f.portB === sport &&
          sameBytes(f.addresses, 0, frame, dst, length) &&
          sameBytes(f.addresses, 16, frame, src, length)
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
    const key = { ipVersion: p.ipVersion, protocol, addressLength: length }
    let flow: Flow | undefined
    if (protocol === 6 || protocol === 17 || protocol === 132) {
      flow = this.find(frame, innerSrc, innerDst, key, u16(frame, l4), u16(frame, l4 + 2), ECHO_NONE, now)
    } else if (protocol === (p.ipVersion === 4 ? 1 : 58)) {
      const type = frame[l4]
      const echo =
        type === (p.ipVersion === 4 ? 8 : 128)
          ? ECHO_REQUEST
          : type === (p.ipVersion === 4 ? 0 : 129)
            ? ECHO_REPLY
            : 0
      if (echo === 0) return false
      const id = u16(frame, l4 + 4)
      flow = this.find(frame, innerSrc, innerDst, key, id, id, echo, now)
    }
    return flow !== undefined
  }

  private create(frame: Uint8Array, p: Packet, now: number): Flow {
    if (this.size >= this.max) {
      this.expireSome(now, 8)
      if (this.size >= this.max && this.oldest !== undefined) {
        this.remove(this.oldest)
        this.evicted++
      }
    }
    const echo = p.protocol === 1 || p.protocol === 58
    const sport = echo ? this.echoId : p.sourcePort
    const dport = echo ? this.echoId : p.destinationPort
    const f = new Flow()
    f.hash = flowHash(
      frame,
      p.sourceAddressOffset,
      p.destinationAddressOffset,
      p.addressLength,
      p.protocol,
      sport,
      dport,
    )
    f.version = p.ipVersion
    f.protocol = p.protocol
    f.addresses.set(frame.subarray(p.sourceAddressOffset, p.sourceAddressOffset + p.addressLength), 0)
    f.addresses.set(
      frame.subarray(p.destinationAddressOffset, p.destinationAddressOffset + p.addressLength),
      16,
    )
    f.portA = sport
    f.portB = dport
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
