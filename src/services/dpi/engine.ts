/**
 * The DPI/IPS service for a remote NIC: Suricata-style rules matched against every frame that
 * crosses the NIC, TCP matched on the reassembled stream. See docs/services.md, "Deep packet
 * inspection", for the rule subset and the IPS semantics.
 *
 * Per frame: find (or create) the flow; a dropped flow's frames are dropped, a passed flow's let
 * through; header-only rules are checked; payload bytes go through the Aho–Corasick prefilter
 * (TCP: in stream order, with the automaton's state carried across segments), the candidate rules
 * are verified on a window of the stream, and the matches decide: pass (stop inspecting the flow),
 * drop (EVE alert "blocked", the frame and the rest of the flow dropped) or alert (EVE alert).
 */
import type { NetContext, NetDirection, NetService } from '../net/service.ts'
import { type Packet, packetAddress } from '../../wire/packet.ts'
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../../wire/tcp.ts'
import { AddressIndex } from './addresses.ts'
import type { AhoCorasick, AhoCorasickTables } from './aho-corasick.ts'
import { type AppProto, BUFFER_PROTO, type BufferId, RESPONSE_BUFFERS } from './app/buffers.ts'
import { type AppLimits, AppState } from './app/detect.ts'
import type { HttpLimits } from './app/http.ts'
import { type AppTx, BOTH_SIDES } from './app/tx.ts'
import { type EveAlertRecord, eveProto, eveTimestamp } from './eve.ts'
import {
  type GroupedRule,
  type GroupTables,
  PatternSet,
  type PrefilterGroup,
  PrefilterGroups,
} from './groups.ts'
import {
  applyActions,
  conditionsHold,
  FlowVars,
  type PacketFacts,
  StateTables,
  stateOrder,
} from './flowstate.ts'
import { type InspectBuffer, PayloadMatcher } from './match.ts'
import { DEFAULT_REGEX_BUDGET, newRegexBudget } from './regex.ts'
import {
  type ContentMatch,
  type FastPatternRef,
  invalidRules,
  type ParsedRules,
  type PayloadMatch,
  parseRules,
  type Rule,
  type RuleError,
  type RuleParseOptions,
} from './rules.ts'
import { Flow, type FlowKey, FlowTable, flowKey, newFlowKey, Reassembler, type StreamSide } from './stream.ts'

export interface DpiOptions extends RuleParseOptions {
  /** Any rule error fails the load (VrioError 'invalid-rules'); default true. Else bad rules are skipped. */
  strict?: boolean
  /** Flows tracked at once; the least recently used is evicted beyond this. Default 16384. */
  maxFlows?: number
  /** Stream bytes kept per direction for matches spanning segments. Default 4096. */
  streamWindow?: number
  /** Out-of-order bytes queued per direction before a hole is given up. Default 65536. */
  maxOutOfOrderBytes?: number
  /** Flows idle this long are forgotten. Default 300 s. */
  idleTimeoutMs?: number
  /** Closed flows (RST, FIN both ways) are forgotten this long after their last frame. Default 10 s. */
  closedTimeoutMs?: number
  /** A TCP flow picked up mid-stream counts as established (Suricata's stream.midstream). Default true. */
  midstream?: boolean
  /** Wall clock in microseconds since the epoch, for EVE timestamps. */
  wallClock?: () => number
  /** UTC offset of EVE timestamps in minutes; default the local zone's. */
  utcOffsetMinutes?: number
  /** EVE `in_iface` (the NIC's name), omitted when unset. */
  interfaceName?: string
  /**
   * Regex work allowed per frame, in steps (characters searched × program size, see regex.ts).
   * Default DEFAULT_REGEX_BUDGET (1M). A pcre the budget cannot pay for counts as not matching.
   */
  regexBudget?: number
  /**
   * What happens to a frame whose regex budget ran out (`budgetExceeded`): 'pass' (default: its
   * other rules still act; like Suricata at pcre.match-limit) or 'drop' (IPS: the frame is dropped).
   */
  budgetExceeded?: 'pass' | 'drop'
  /** HTTP parser limits (head size, headers, body bytes kept per body: 8 KiB, inspected in steps of 4 KiB); see app/http.ts. */
  http?: Partial<HttpLimits>
}

/**
 * A rule set's prefilter automata built by another thread (the compile worker): the payload
 * groups' and the application buffers' (see DpiService.compiledTables()); structured-cloneable,
 * their buffers transferable.
 */
export interface DpiTables {
  groups?: GroupTables
  /** The application buffers' prefilters, in RuleSet.bufferPrefilters order. */
  buffers?: AhoCorasickTables[]
}

/** Protocol classes a rule can apply to. */
const TCP = 0
const UDP = 1
const ICMP = 2
const OTHER = 3
const CLASSES = 4

function protocolClass(protocol: number): number {
  if (protocol === 6) return TCP
  if (protocol === 17) return UDP
  if (protocol === 1 || protocol === 58) return ICMP
  return OTHER
}

function ruleClassMask(rule: Rule): number {
  switch (rule.protocol) {
    case 'tcp':
    case 'http':
    case 'tls':
    case 'ftp':
    case 'smtp':
    case 'smb':
    case 'ssh':
      return 1 << TCP
    case 'dns':
      return (1 << TCP) | (1 << UDP)
    case 'udp':
      return 1 << UDP
    case 'icmp':
      return 1 << ICMP
    default:
      return (1 << CLASSES) - 1
  }
}

/**
 * The application protocol rule needs: its header's (`alert http`), else its buffers'; null when
 * they disagree (the rule can never match); undefined when none.
 */
function ruleAppProto(rule: Rule): AppProto | null | undefined {
  let app: AppProto | undefined | null = rule.app
  for (const g of rule.groups) {
    const p = BUFFER_PROTO[g.buffer]
    if (p === undefined) continue
    if (app === undefined) app = p
    else if (app !== p) app = null
  }
  return app
}

/** How many IPv4 addresses the blocks hold (overlaps counted twice). */
function blockSpan(blocks: readonly { prefix: number }[]): number {
  let n = 0
  for (const b of blocks) n += 2 ** (32 - b.prefix)
  return n
}

/** Buffers holding the same bytes (a body): one prefilter serves them. */
const BODY_BUFFERS: ReadonlySet<BufferId> = new Set<BufferId>([
  'file.data',
  'http.request_body',
  'http.response_body',
])

/** A prefilter over the fast patterns of one application buffer (or of buffers with the same bytes). */
interface BufferPrefilter {
  parts: {
    id: BufferId
    /** Its place in AppTx.scanned (× 4; + 2 for the response side; count, then bytes). */
    slot: number
    /** The buffer exists only on the response side. */
    responseOnly: boolean
    /** The buffer exists on both sides: the packet's side is seen (AppTx.lookup). */
    bothSides: boolean
  }[]
  automaton: AhoCorasick
  patternRules: readonly (readonly number[])[]
}

/** The items of a rule's 'payload' group (none when it has no such group). */
function payloadItems(rule: Rule): PayloadMatch[] {
  return rule.groups.find((g) => g.buffer === 'payload')?.items ?? []
}

/** What a rule's payload group sees when no payload comes with a transaction's update. */
const EMPTY_BUFFER: InspectBuffer = { data: Buffer.alloc(0), length: 0, base: 0, text: undefined }
/**
 * Whether a payload rule has items bound to the buffer's start (offset/depth, absolute byte_*,
 * isdataat, pcre anchored with `^` or /A): in TCP these hold per packet as well as on the stream (Suricata inspects
 * unbuffered content against both), so they are also verified on each segment alone.
 */
function anchored(items: PayloadMatch[]): boolean {
  return items.some((m) => {
    if (m.kind === 'content')
      return !m.relative && (m.offset > 0 || m.depth >= 0 || m.slots?.offset !== undefined)
    // A pcre found in a segment is found in the stream too, unless it is anchored at the start.
    if (m.kind === 'pcre') return !m.relative && (m.regex.sticky || m.source.startsWith('/^'))
    if (m.kind === 'bsize' || m.kind === 'transform' || m.kind === 'base64_data') return false
    return !m.relative
  })
}

/** For scans that only set an automaton's state (over bytes inspected before). */
const IGNORE_HITS = (): void => {}

/** Most "fast pattern seen, rest not yet" entries kept per stream direction. */
const MAX_PENDING = 64

/** A compiled rule set; replaced whole by `replace()`. */
class RuleSet {
  readonly generation: number
  readonly rules: Rule[]
  readonly matchers: PayloadMatcher[]
  readonly classMask: Uint8Array
  /** Per flow side: the automata over the payload rules its frames can meet (groups.ts). */
  readonly groups: PrefilterGroups
  /** Per rule: its fast pattern's length (0: none). */
  readonly fastLength: Int32Array
  /** Per rule: it has more than its fast pattern, so a hit may complete later (pending). */
  readonly needsContext: Uint8Array
  /** Per rule: payload items bound to the buffer's start (see anchored()). */
  readonly anchored: Uint8Array
  /** Per class: rules with neither content nor pcre (checked per frame on the header). */
  readonly headerOnly: number[][]
  /**
   * Per class: header-only rules checked on IPv6 frames only: those with an address field of IPv6
   * blocks only, and the indexed ones (headerBySource/Destination) whose indexed side has IPv6 too.
   */
  readonly headerOnlyV6: number[][]
  /**
   * Header-only rules whose source (else destination) is a list of IPv4 blocks (IP reputation
   * rules), indexed by those blocks instead of checked one by one on every frame.
   */
  readonly headerBySource = new AddressIndex()
  readonly headerByDestination = new AddressIndex()
  /** Per class: rules with payload matches but no fast pattern (verified on every payload). */
  readonly always: number[][]
  /** Stream bytes to keep per direction. */
  readonly keep: number
  /** Per-rule scratch: candidate marks (by scan) and match marks (by frame). */
  readonly candidateStamp: Uint32Array
  readonly matchedStamp: Uint32Array
  readonly hitEnd: Float64Array
  /** Per rule: the application protocol it needs (header or buffers); null: conflicting ones. */
  readonly ruleApp: (AppProto | null | undefined)[]
  /** Per rule: one matcher per group (rule.groups order); used for rules on application buffers. */
  readonly groupMatchers: PayloadMatcher[][]
  /** Per application buffer: a prefilter over the fast patterns bound to it. */
  readonly bufferPrefilters: BufferPrefilter[] = []
  /** Buffer → the index of the bufferPrefilters entry that scans it. */
  readonly prefilterOf = new Map<BufferId, number>()
  /** Parts of all bufferPrefilters (per transaction: scan progress per part and side). */
  readonly prefilterSlots: number
  /** Per application buffer: rules without a fast pattern in an app buffer, triggered by it. */
  readonly appAlways = new Map<BufferId, number[]>()
  /**
   * Per application buffer: rules on app buffers whose fast pattern is in their payload group,
   * triggered by it when the payload prefilter saw their fast pattern in the same bytes.
   */
  readonly appPayloadFast = new Map<BufferId, number[]>()
  /** Per rule: 1 for those (a payload prefilter hit marks them in payloadFastSeen, by frame). */
  readonly appFast: Uint8Array
  readonly payloadFastSeen: Uint32Array
  /** Per rule: the application buffers its groups read. */
  readonly ruleBuffers: BufferId[][]
  /** Some rule needs the application layer (a protocol in its header, or app buffers). */
  readonly needsApp: boolean
  /** The application buffers some rule reads (the parsers build only those). */
  readonly usedBuffers = new Set<BufferId>()
  /** The application protocols some rule reads a buffer of (parsed; the others only detected). */
  readonly parsedProtos = new Set<AppProto>()
  /** Per rule: its flowbits/flowint/xbits order (flowstate.ts stateOrder); 3 = none. */
  readonly stateOrder: Uint8Array
  /** Some rule has flowbits, flowint, xbits, threshold or noalert. */
  readonly stateful: boolean
  /** Some rule's action is drop. */
  readonly drops: boolean

  constructor(rules: Rule[], generation: number, streamWindow: number, tables?: DpiTables) {
    this.generation = generation
    this.rules = rules
    const n = rules.length
    this.matchers = rules.map((r) => new PayloadMatcher(payloadItems(r)))
    this.classMask = Uint8Array.from(rules, ruleClassMask)
    this.fastLength = new Int32Array(n)
    this.needsContext = new Uint8Array(n)
    // 1: also per segment; 2: per segment only (tcp-pkt); 0: stream only (tcp-stream, unanchored).
    this.anchored = Uint8Array.from(rules, (r) =>
      r.tcpMode === 'packet' ? 2 : r.tcpMode === 'stream' ? 0 : anchored(payloadItems(r)) ? 1 : 0,
    )
    this.headerOnly = Array.from({ length: CLASSES }, () => [])
    this.headerOnlyV6 = Array.from({ length: CLASSES }, () => [])
    this.always = Array.from({ length: CLASSES }, () => [])
    this.candidateStamp = new Uint32Array(n)
    this.matchedStamp = new Uint32Array(n)
    this.hitEnd = new Float64Array(n)
    const grouped: GroupedRule[] = []
    this.appFast = new Uint8Array(n)
    this.payloadFastSeen = new Uint32Array(n)
    /** Rule i's fast pattern goes to the payload prefilters (the whole set's and its groups). */
    const addPayloadFast = (i: number, fast: ContentMatch): void => {
      const rule = rules[i]
      const app = this.ruleApp[i]
      if (app === null) return // never matches
      grouped.push({
        rule: i,
        pattern: fast.folded,
        // Bound to the buffer's start (a fixed offset and depth): scanned over the first bytes only.
        anchor: !fast.relative && fast.depth >= 0 && !fast.slots ? fast.offset + fast.depth : -1,
        classMask: this.classMask[i],
        app,
        toServer: rule.flow.toServer,
        sourcePorts: rule.sourcePorts,
        destinationPorts: rule.destinationPorts,
        bidirectional: rule.bidirectional,
      })
    }
    let maxContent = 0
    let context = false
    this.ruleApp = rules.map(ruleAppProto)
    this.ruleBuffers = rules.map((r) =>
      r.groups.map((g) => g.buffer).filter((b) => b !== 'payload' && b !== 'stream'),
    )
    this.groupMatchers = rules.map((r) =>
      r.groups.some((g) => g.buffer !== 'payload') ? r.groups.map((g) => new PayloadMatcher(g.items)) : [],
    )
    this.stateOrder = Uint8Array.from(rules, (r) => stateOrder(r.state))
    this.stateful = rules.some((r) => r.state !== undefined)
    this.drops = rules.some((r) => r.action === 'drop')
    this.needsApp = rules.some((r) => r.app !== undefined || r.groups.some((g) => g.buffer !== 'payload'))
    for (const r of rules) for (const g of r.groups) this.usedBuffers.add(g.buffer)
    for (const b of this.usedBuffers) {
      const p = BUFFER_PROTO[b]
      if (p !== undefined) this.parsedProtos.add(p)
    }
    const appPatterns = new Map<BufferId, PatternSet>()
    rules.forEach((rule, i) => {
      // Rules on application-layer buffers are matched per transaction.
      if (rule.groups.some((g) => g.buffer !== 'payload')) {
        const app = this.ruleApp[i]
        if (app === null) return // buffers of two protocols: never matches
        const fp = rule.fastPattern
        const group = fp ? rule.groups[fp.group] : undefined
        const fast = fp && group ? group.items[fp.item] : undefined
        if (!group || group.buffer === 'payload' || group.buffer === 'stream' || fast?.kind !== 'content') {
          // Verified when its first application buffer is set or grows (and, with a fast pattern
          // in its payload group, only when the payload prefilter saw it).
          const trigger = this.ruleBuffers[i][0]
          const payloadFast = group?.buffer === 'payload' && fast?.kind === 'content'
          const lists = payloadFast ? this.appPayloadFast : this.appAlways
          const list = lists.get(trigger) ?? []
          list.push(i)
          lists.set(trigger, list)
          if (payloadFast) {
            this.appFast[i] = 1
            addPayloadFast(i, fast)
          }
          return
        }
        let entry = appPatterns.get(group.buffer)
        if (!entry) {
          entry = new PatternSet()
          appPatterns.set(group.buffer, entry)
        }
        entry.add(fast.folded, i)
        return
      }
      const matches = payloadItems(rule)
      for (const m of matches) if (m.kind === 'content') maxContent = Math.max(maxContent, m.pattern.length)
      if (matches.length > 1 || matches.some((m) => m.kind === 'pcre')) context = true
      this.needsContext[i] = matches.length > 1 ? 1 : 0
      const lists =
        matches.length === 0 ? this.headerOnly : rule.fastPattern === undefined ? this.always : undefined
      if (lists === this.headerOnly && (rule.source.ipv6Only || rule.destination.ipv6Only)) {
        // Tor exit lists and the like in IPv6: never an IPv4 frame's.
        for (let c = 0; c < CLASSES; c++) if (this.classMask[i] & (1 << c)) this.headerOnlyV6[c].push(i)
        return
      }
      if (lists === this.headerOnly && !rule.bidirectional) {
        // Indexed by the narrower side (`$HOME_NET -> [reputation list]` by the list).
        const src = rule.source.ipv4Blocks
        const dst = rule.destination.ipv4Blocks
        // IPv4 frames look the rule up by that side; IPv6 ones check it when that side has IPv6.
        const v6 = (hasIpv6: boolean | undefined): void => {
          if (hasIpv6)
            for (let c = 0; c < CLASSES; c++) if (this.classMask[i] & (1 << c)) this.headerOnlyV6[c].push(i)
        }
        if (src && (!dst || blockSpan(src) <= blockSpan(dst))) {
          this.headerBySource.add(i, src)
          v6(rule.source.hasIpv6)
          return
        }
        if (dst) {
          this.headerByDestination.add(i, dst)
          v6(rule.destination.hasIpv6)
          return
        }
      }
      if (lists) {
        for (let c = 0; c < CLASSES; c++) if (this.classMask[i] & (1 << c)) lists[c].push(i)
        return
      }
      const fast = matches[(rule.fastPattern as FastPatternRef).item]
      if (fast.kind !== 'content') return
      this.fastLength[i] = fast.pattern.length
      addPayloadFast(i, fast)
    })
    // The bodies (file_data and http.request_body / http.response_body are the same bytes) share
    // one automaton, so a body is scanned once.
    const bodies = new PatternSet()
    const bodyIds: BufferId[] = []
    for (const [id, e] of appPatterns) {
      if (!BODY_BUFFERS.has(id)) continue
      bodyIds.push(id)
      e.rules.forEach((list, k) => {
        for (const i of list) bodies.add(e.patterns[k], i)
      })
    }
    let slots = 0
    const prefilter = (ids: BufferId[], set: PatternSet): void => {
      const { automaton, patternRules } = set.build(tables?.buffers?.[this.bufferPrefilters.length])
      if (!automaton) return
      for (const id of ids) this.prefilterOf.set(id, this.bufferPrefilters.length)
      const parts = ids.map((id) => ({
        id,
        slot: slots++,
        responseOnly: RESPONSE_BUFFERS.has(id),
        bothSides: BOTH_SIDES.has(id),
      }))
      this.bufferPrefilters.push({ parts, automaton, patternRules })
    }
    if (bodyIds.length > 0) prefilter(bodyIds, bodies)
    for (const [id, e] of appPatterns) if (!BODY_BUFFERS.has(id)) prefilter([id], e)
    this.prefilterSlots = slots
    this.groups = new PrefilterGroups(grouped, tables?.groups)
    this.keep = context ? Math.max(streamWindow, maxContent) : Math.max(0, maxContent - 1)
  }
}

export type DpiCounters = {
  rules: number
  /** On the frames' path (it can drop: see canDrop); false: it inspects frames after they went on. */
  inline: boolean
  packets: number
  bytes: number
  alerts: number
  alertsBySid: Record<string, number>
  /** Frames dropped (by a drop rule, or belonging to a dropped flow). */
  drops: number
  droppedFlows: number
  passedFlows: number
  flowsActive: number
  flowsTracked: number
  flowsEvicted: number
  flowsExpired: number
  reassemblyGaps: number
  outOfOrderSegments: number
  retransmittedBytes: number
  /** Frames let through uninspected: not IP, IP fragments after the first, inconsistent lengths. */
  notInspected: number
  /** Verifications that gave up after their backtracking budget (counted as no match). */
  backtrackExhausted: number
  /** Frames whose regex budget ran out (a pcre not run counts as no match). */
  budgetExceeded: number
  /** Per sid: verifications of the rule cut short by the regex budget (which rules cost most). */
  budgetExceededBySid: Record<string, number>
  /** Regex steps charged in all (characters searched × program size). */
  regexSteps: number
  automatonStates: number
  automatonBytes: number
  /** Flows whose application protocol was detected, by protocol. */
  appFlows: Record<AppProto, number>
  /** Application-layer transactions inspected (HTTP request/response pairs, DNS messages, TLS handshakes). */
  appTransactions: number
}

/** The DPI/IPS NetService. Create with createDpi() (or loadDpi() from a file). */
export class DpiService implements NetService {
  readonly kind = 'dpi'
  #rules: RuleSet
  #errors: RuleError[]
  readonly #options: DpiOptions
  readonly #table: FlowTable
  readonly #reassembler: Reassembler
  readonly #wallClock: () => number
  readonly #flowIdBase: number
  #flowCount = 0
  readonly #key: FlowKey = newFlowKey()
  readonly #alertsBySid = new Map<number, number>()
  readonly #budgetBySid = new Map<number, number>()
  #c = {
    packets: 0,
    bytes: 0,
    alerts: 0,
    drops: 0,
    droppedFlows: 0,
    passedFlows: 0,
    notInspected: 0,
    backtrackExhausted: 0,
    budgetExceeded: 0,
    regexSteps: 0,
    appTransactions: 0,
  }
  readonly #appFlows: Record<AppProto, number> = { http: 0, dns: 0, tls: 0, ftp: 0, smtp: 0, smb: 0, ssh: 0 }
  /** Transactions changed by the bytes being inspected. */
  readonly #updated: AppTx[] = []
  /** The transaction being prefiltered, and the buffer prefilter's pattern → rules. */
  #appTx: AppTx | undefined
  #appPatternRules: readonly (readonly number[])[] = []
  readonly #onAppHit: (pattern: number, end: number) => void
  /** Rules hit by the buffer prefilters in this transaction round (deduplicated by stamp). */
  readonly #hits: number[] = []
  #hitStamp = new Uint32Array(0)
  #hitRound = 0
  /** Per buffer prefilter: the #hitRound in which one of its buffers changed. */
  #prefilterStamp = new Uint32Array(0)
  /** The rules verified on a transaction this round. */
  readonly #round: number[] = []
  /** The inspection buffers made of a transaction's buffers this round (reused). */
  readonly #views = new Map<Buffer, InspectBuffer>()
  /** What each flow's application layer is built with; `wants` follows the rules in force. */
  readonly #appLimits: AppLimits
  readonly #regexBudget = newRegexBudget()
  readonly #regexLimit: number
  /** Host bits (xbits) and threshold trackers, kept across rule swaps. */
  readonly #state = new StateTables()
  /** Matched rules that act but do not alert (noalert, or held back by their threshold). */
  readonly #silent = new Set<number>()
  #scratch = Buffer.allocUnsafe(0)
  #scanId = 0
  #frameId = 0
  /** Rules matched by the frame being inspected. */
  readonly #matched: number[] = []
  /** Candidates of the current scan. */
  readonly #candidates: number[] = []
  // The frame being inspected, for the chunk sink and the hit callback.
  #frame: Uint8Array = new Uint8Array(0)
  #packet: Packet | undefined
  #flow: Flow | undefined
  #toServer = true
  #hitBase = 0
  /** The pattern → rules of the automaton being run (the side's group's). */
  #patternRules: readonly (readonly number[])[] = []
  readonly #onHit: (pattern: number, end: number) => void
  readonly #onHeaderHit = (i: number): void => {
    if (this.#header(i)) this.#addMatch(i)
  }
  readonly #onChunk: (side: StreamSide, data: Uint8Array, start: number, end: number) => void

  /**
   * Use createDpi(); `parsed` is the result of parseRules. `tables`: the prefilter automaton for
   * these rules, built by another thread (see compiledTables()).
   */
  constructor(parsed: ParsedRules, options: DpiOptions = {}, tables?: DpiTables) {
    this.#options = options
    this.#regexLimit = options.regexBudget ?? DEFAULT_REGEX_BUDGET
    if ((options.strict ?? true) && parsed.errors.length > 0) throw invalidRules(parsed.errors)
    this.#errors = parsed.errors
    this.#rules = new RuleSet(parsed.rules, 1, options.streamWindow ?? 4096, tables)
    this.#table = new FlowTable({
      maxFlows: options.maxFlows ?? 16384,
      idleTimeoutMs: options.idleTimeoutMs ?? 300_000,
      closedTimeoutMs: options.closedTimeoutMs ?? 10_000,
    })
    this.#reassembler = new Reassembler(options.maxOutOfOrderBytes ?? 65536)
    this.#wallClock =
      options.wallClock ?? (() => Math.round((performance.timeOrigin + performance.now()) * 1000))
    this.#flowIdBase = Math.floor(Math.random() * 2 ** 20) * 2 ** 32
    this.#onHit = (pattern, end) => this.#hit(pattern, end)
    this.#onChunk = (side, data, start, end) => this.#chunk(side, data, start, end)
    this.#appLimits = {
      http: options.http,
      wants: { has: (id) => this.#rules.usedBuffers.has(id) },
      parses: (proto) => this.#rules.parsedProtos.has(proto),
    }
    this.#onAppHit = (pattern) => {
      const tx = this.#appTx as AppTx
      for (const i of this.#appPatternRules[pattern]) {
        if (this.#hitStamp[i] === this.#hitRound) continue
        this.#hitStamp[i] = this.#hitRound
        this.#hits.push(i)
        tx.candidates.add(i)
      }
    }
  }

  /** The rules in force. */
  get rules(): readonly Rule[] {
    return this.#rules.rules
  }

  /**
   * Whether inspect() can drop a frame: a rule in force drops, an exceeded work budget does
   * (`budgetExceeded: 'drop'`), or a flow was dropped. When not, the chain inspects frames after
   * forwarding them.
   */
  get canDrop(): boolean {
    // A flow dropped once stays dropped, whatever rules replace those that dropped it.
    return this.#rules.drops || this.#options.budgetExceeded === 'drop' || this.#c.droppedFlows > 0
  }

  /** The errors of the last (non-strict) load: the rules they concern were skipped. */
  get errors(): readonly RuleError[] {
    return this.#errors
  }

  /**
   * Swaps the rule set at run time, keeping flow state (reassembly, dropped flows; passed flows
   * are inspected again under the new rules). Strict loads throw and keep the old rules.
   */
  replace(rulesText: string, fileName: string): ParsedRules {
    const parsed = parseRules(rulesText, fileName, this.#options)
    if ((this.#options.strict ?? true) && parsed.errors.length > 0) throw invalidRules(parsed.errors)
    this.replaceParsed(parsed)
    return parsed
  }

  /**
   * Swaps in rules parsed already (all of `parsed.rules`; its errors are kept as `errors`), with
   * the prefilter's tables when another thread built them. Never throws.
   */
  replaceParsed(parsed: ParsedRules, tables?: DpiTables): void {
    this.#rules = new RuleSet(
      parsed.rules,
      this.#rules.generation + 1,
      this.#options.streamWindow ?? 4096,
      tables,
    )
    this.#errors = parsed.errors
    for (const flow of this.#table.flows()) flow.passed = false
  }

  /** The prefilter automata's tables (whole set, groups), to send to the thread that will run these rules. */
  compiledTables(): DpiTables {
    const rs = this.#rules
    return { groups: rs.groups.tables(), buffers: rs.bufferPrefilters.map((b) => b.automaton.tables()) }
  }

  /** Bytes of the prefilters' tables (payload groups, application buffers). */
  #prefilterBytes(): number {
    let bytes = this.#rules.groups.tableBytes
    for (const b of this.#rules.bufferPrefilters) bytes += b.automaton.tableBytes
    return bytes
  }

  /** A rough size of the compiled rules in bytes: the automaton and per-rule structures. */
  compiledBytes(): number {
    let bytes = this.#prefilterBytes()
    for (const rule of this.#rules.rules) {
      bytes += 1024
      for (const m of rule.groups.flatMap((g) => g.items)) {
        bytes +=
          m.kind === 'content'
            ? 64 + 2 * m.pattern.length
            : m.kind === 'pcre'
              ? 256 + 2 * m.source.length + 64 * m.regex.programSize
              : 96
      }
    }
    return bytes
  }

  inspect(frame: Uint8Array, p: Packet, _direction: NetDirection, ctx: NetContext): boolean {
    const c = this.#c
    c.packets++
    c.bytes += frame.length
    if (
      p.ipVersion === 0 ||
      p.laterFragment ||
      p.addressLength === 0 ||
      p.payloadOffset + p.payloadLength > frame.length ||
      p.destinationAddressOffset + p.addressLength > frame.length
    ) {
      c.notInspected++
      return true
    }
    const now = ctx.now
    const table = this.#table
    table.sweep(now)
    flowKey(frame, p, this.#key)
    const { key, fromLow } = this.#key
    const tcp = p.protocol === 6 && p.l4Offset >= 0
    const flags = tcp ? p.tcpFlags : 0
    let flow = table.get(key, now)
    if (flow?.closed && (flags & (TCP_SYN | TCP_ACK)) === TCP_SYN) {
      table.remove(key) // a new connection reusing the ports
      flow = undefined
    }
    if (!flow) {
      flow = new Flow(this.#flowIdBase + ++this.#flowCount, key, p.protocol, now, this.#wallClock())
      // The client is the SYN sender: the receiver of a SYN-ACK, else the sender of the first frame.
      flow.clientIsLow = (flags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK) ? !fromLow : fromLow
      flow.established = tcp && (flags & TCP_SYN) === 0 && (this.#options.midstream ?? true)
      table.add(flow)
    }
    const side = flow.side(fromLow)
    side.packets++
    side.bytes += frame.length
    const toServer = flow.toServer(fromLow)
    if (flow.establishing) {
      flow.established = true
      flow.establishing = false
    }
    if (tcp) this.#trackTcp(flow, side, fromLow, toServer, p)
    else if (!flow.established && flow.side(!fromLow).packets > 0) flow.established = true
    if (flow.dropped) {
      c.drops++
      return false
    }
    if (flow.passed) return true

    const rs = this.#rules
    this.#frame = frame
    this.#packet = p
    this.#flow = flow
    this.#toServer = toServer
    this.#frameId = (this.#frameId + 1) >>> 0 || 1
    const matched = this.#matched
    matched.length = 0
    const budget = this.#regexBudget
    budget.remaining = this.#regexLimit
    budget.used = 0
    budget.exceeded = false
    budget.charged = false
    const cls = protocolClass(p.protocol)
    const payloadEnd = p.payloadOffset + p.payloadLength
    if (p.payloadLength > 0 && (p.l4Offset >= 0 || cls === OTHER)) {
      if (tcp) {
        if (side.generation !== rs.generation) this.#resync(side, rs)
        const seq = (flags & TCP_SYN) !== 0 ? (p.tcpSeq + 1) >>> 0 : p.tcpSeq
        this.#reassembler.segment(side, seq, frame, p.payloadOffset, payloadEnd, this.#onChunk, rs.generation)
        if ((flags & TCP_FIN) !== 0) this.#closeApp(flow, toServer)
      } else {
        this.#inspectPayload(frame, p.payloadOffset, payloadEnd, cls, flow, side)
      }
    }
    if (tcp && p.payloadLength === 0 && (flags & TCP_FIN) !== 0) this.#closeApp(flow, toServer)
    // After the payload: its bytes may have just revealed the flow's application protocol.
    for (const i of rs.headerOnly[cls]) if (this.#header(i)) this.#addMatch(i)
    if (p.addressLength === 16) for (const i of rs.headerOnlyV6[cls]) if (this.#header(i)) this.#addMatch(i)
    if (p.addressLength === 4 && (rs.headerBySource.size > 0 || rs.headerByDestination.size > 0)) {
      if (side.addressGeneration !== rs.generation) {
        const found: number[] = []
        const add = (i: number): void => {
          found.push(i)
        }
        rs.headerBySource.lookup(frame, p.sourceAddressOffset, add)
        rs.headerByDestination.lookup(frame, p.destinationAddressOffset, add)
        side.addressRules = found
        side.addressGeneration = rs.generation
      }
      for (const i of side.addressRules) this.#onHeaderHit(i)
    }
    this.#packet = undefined
    this.#flow = undefined
    c.regexSteps += budget.used
    if (budget.exceeded) {
      c.budgetExceeded++
      if (this.#options.budgetExceeded === 'drop') {
        // The rules that did match still alert (and a drop rule drops the flow).
        if (matched.length > 0 && !this.#act(flow, frame, p, toServer, ctx)) return false
        c.drops++
        return false
      }
    }
    if (matched.length === 0) return true
    return this.#act(flow, frame, p, toServer, ctx)
  }

  counters(): DpiCounters {
    const r = this.#reassembler.counters
    const t = this.#table
    return {
      rules: this.#rules.rules.length,
      inline: this.canDrop,
      ...this.#c,
      alertsBySid: Object.fromEntries([...this.#alertsBySid].map(([sid, n]) => [String(sid), n])),
      budgetExceededBySid: Object.fromEntries([...this.#budgetBySid].map(([sid, n]) => [String(sid), n])),
      flowsActive: t.size,
      flowsTracked: t.created,
      flowsEvicted: t.evicted,
      flowsExpired: t.expired,
      reassemblyGaps: r.gaps,
      outOfOrderSegments: r.outOfOrderSegments,
      retransmittedBytes: r.retransmittedBytes,
      automatonStates: this.#rules.groups.stateCount,
      automatonBytes: this.#prefilterBytes(),
      appFlows: { ...this.#appFlows },
    }
  }

  #trackTcp(flow: Flow, side: StreamSide, fromLow: boolean, toServer: boolean, p: Packet): void {
    const flags = p.tcpFlags
    if ((flags & TCP_SYN) !== 0) {
      if ((flags & TCP_ACK) === 0) flow.synSeen = true
      else flow.synAckSeen = true
      if (!side.started) {
        side.started = true
        side.nextSeq = (p.tcpSeq + 1) >>> 0
      }
    } else if ((flags & TCP_ACK) !== 0 && toServer && flow.synAckSeen && !flow.established) {
      // The handshake's last ACK (a flow picked up at its SYN-ACK counts too): established from
      // the next frame on.
      flow.establishing = true
    }
    if ((flags & TCP_RST) !== 0) flow.closed = true
    if ((flags & TCP_FIN) !== 0) {
      if (fromLow) flow.finLow = true
      else flow.finHigh = true
      if (flow.finLow && flow.finHigh) flow.closed = true
    }
  }

  /** After a rule swap: the new rules' groups are chosen (and their states set) by the next chunk. */
  #resync(side: StreamSide, rs: RuleSet): void {
    side.acState = 0
    side.appAcState = 0
    side.pendingRules.length = 0
    side.pendingEnds.length = 0
    side.generation = rs.generation
    side.group = undefined
    side.appGroup = undefined
  }

  /**
   * The prefilter groups of `side` (frames of class `cls` on `flow`, the current packet's), built
   * with the rules: its port group, chosen once per rule set, and its application group, chosen
   * once the flow's protocol is detected (undefined before, or when no rule needs that protocol;
   * for HTTP on its usual ports, one automaton over both replaces the port group).
   */
  #groups(side: StreamSide, cls: number, flow: Flow): void {
    const rs = this.#rules
    if (side.group === undefined || side.groupGeneration !== rs.generation) {
      const p = this.#packet as Packet
      side.group = rs.groups.ports(cls, this.#toServer, p.sourcePort, p.destinationPort)
      side.groupGeneration = rs.generation
      side.appGroup = undefined
      side.groupApp = undefined
    }
    const app = flow.app?.proto
    if (app !== undefined && side.groupApp !== app) {
      const p = this.#packet as Packet
      const [group, appGroup] = rs.groups.withApp(cls, this.#toServer, p.sourcePort, p.destinationPort, app)
      side.group = group
      side.appGroup = appGroup
      side.groupApp = app
    }
  }

  /** A group's head automaton over the first bytes of data[start, end) from `state`. */
  #scanHead(group: PrefilterGroup, data: Uint8Array, start: number, end: number, state: number): void {
    const head = group.head
    if (!head) return
    this.#patternRules = head.patternRules
    head.automaton.scan(data, start, Math.min(end, start + head.length), state, this.#onHit)
  }

  /** #scanHead on a stream segment: at the stream's start, from its first byte kept on. */
  #streamHead(side: StreamSide, g: PrefilterGroup, data: Uint8Array, start: number, end: number): void {
    const head = g.head
    if (!head) return
    const state =
      side.offset < head.length && side.window
        ? head.automaton.scan(side.window, 0, side.windowLength, 0, IGNORE_HITS)
        : 0
    this.#scanHead(g, data, start, end, state)
  }

  /** Header, flow and dsize conditions of rule `i` on the current frame. */
  #header(i: number): boolean {
    const rs = this.#rules
    const rule = rs.rules[i]
    const p = this.#packet as Packet
    const cls = protocolClass(p.protocol)
    if ((rs.classMask[i] & (1 << cls)) === 0) return false
    const flow = this.#flow as Flow
    const app = rs.ruleApp[i]
    if (app !== undefined && (app === null || flow.app?.proto !== app)) return false
    const f = rule.flow
    if (f.established !== undefined && f.established !== flow.established) return false
    if (f.toServer !== undefined && f.toServer !== this.#toServer) return false
    if (rule.dsize) {
      const d = rule.dsize
      const inside = p.payloadLength >= d.min && p.payloadLength <= d.max
      if (inside === d.negated) return false
    }
    const frame = this.#frame
    const len = p.addressLength
    const src = p.sourceAddressOffset
    const dst = p.destinationAddressOffset
    if (
      rule.source.match(frame, src, len) &&
      rule.destination.match(frame, dst, len) &&
      rule.sourcePorts.match(p.sourcePort) &&
      rule.destinationPorts.match(p.destinationPort)
    ) {
      return true
    }
    return (
      rule.bidirectional &&
      rule.source.match(frame, dst, len) &&
      rule.destination.match(frame, src, len) &&
      rule.sourcePorts.match(p.destinationPort) &&
      rule.destinationPorts.match(p.sourcePort)
    )
  }

  #addMatch(i: number): void {
    const rs = this.#rules
    if (rs.matchedStamp[i] === this.#frameId) return
    rs.matchedStamp[i] = this.#frameId
    this.#matched.push(i)
  }

  #newScan(): void {
    this.#scanId = (this.#scanId + 1) >>> 0 || 1
    this.#candidates.length = 0
  }

  #addCandidate(i: number, hitEnd: number): void {
    const rs = this.#rules
    if (rs.candidateStamp[i] !== this.#scanId) {
      rs.candidateStamp[i] = this.#scanId
      this.#candidates.push(i)
      rs.hitEnd[i] = hitEnd
    } else if (hitEnd > rs.hitEnd[i]) {
      rs.hitEnd[i] = hitEnd
    }
  }

  #hit(pattern: number, end: number): void {
    const base = this.#hitBase + end
    const rs = this.#rules
    for (const i of this.#patternRules[pattern]) {
      // An application rule's payload fast pattern: a trigger for its transaction (see appPayloadFast).
      if (rs.appFast[i] === 1) rs.payloadFastSeen[i] = this.#frameId
      else this.#addCandidate(i, base)
    }
  }

  /** One UDP datagram / ICMP message / other IP payload: inspected on its own. */
  #inspectPayload(
    frame: Uint8Array,
    start: number,
    end: number,
    cls: number,
    flow: Flow,
    side: StreamSide,
  ): void {
    const rs = this.#rules
    const updated = this.#updated
    updated.length = 0
    if (cls === UDP && rs.needsApp) {
      flow.app ??= new AppState(false, this.#appLimits)
      this.#feedApp(flow, this.#toServer, frame, start, end)
    }
    this.#newScan()
    this.#hitBase = -start
    this.#groups(side, cls, flow)
    for (const g of [side.group, side.appGroup] as (PrefilterGroup | undefined)[]) {
      if (!g) continue
      this.#patternRules = g.patternRules
      g.automaton?.scan(frame, start, end, 0, this.#onHit)
      this.#scanHead(g, frame, start, end, 0)
    }
    for (const i of rs.always[cls]) this.#addCandidate(i, -1)
    if (this.#candidates.length === 0 && updated.length === 0) return
    const data = Buffer.from(frame.buffer, frame.byteOffset + start, end - start)
    const buf: InspectBuffer = { data, length: end - start, base: 0, text: undefined }
    for (const i of this.#candidates) this.#verify(i, buf, 0)
    if (updated.length > 0) this.#inspectTransactions(buf)
  }

  /** A FIN: the application parser completes what waited for more of that side's bytes. */
  #closeApp(flow: Flow, toServer: boolean): void {
    if (!flow.app?.parser) return
    this.#updated.length = 0
    flow.app.close(toServer, this.#updated)
    if (this.#updated.length > 0) this.#inspectTransactions(EMPTY_BUFFER)
  }

  #feedApp(flow: Flow, toServer: boolean, data: Uint8Array, start: number, end: number): void {
    const app = flow.app as AppState
    const before = app.proto
    app.feed(toServer, data, start, end, this.#updated)
    if (before === undefined && app.proto !== undefined) this.#appFlows[app.proto]++
  }

  /**
   * The transactions the new bytes changed: their new buffer bytes go through the buffers'
   * prefilters, then candidate rules (and the protocol's rules without an app fast pattern) are
   * verified on the whole transaction. `payload` is what a rule's payload group sees.
   */
  #inspectTransactions(payload: InspectBuffer): void {
    const rs = this.#rules
    const toServer = this.#toServer
    for (const tx of this.#updated) {
      // After a rule swap every buffer is scanned again; else only those that changed.
      let rescan = false
      if (tx.generation !== rs.generation) {
        rescan = true
        tx.generation = rs.generation
        tx.alerted.clear()
        tx.candidates.clear()
        tx.scanned.fill(0)
      }
      if (tx.inspected === tx.version) continue
      tx.inspected = tx.version
      this.#c.appTransactions++
      this.#appTx = tx
      this.#hits.length = 0
      this.#hitRound = (this.#hitRound + 1) >>> 0 || 1
      if (this.#hitStamp.length < rs.rules.length) this.#hitStamp = new Uint32Array(rs.rules.length)
      const prefilters = rs.bufferPrefilters
      // A plain array: a typed one per transaction costs more than it saves.
      if (tx.scanned.length !== 4 * rs.prefilterSlots) tx.scanned = new Array(4 * rs.prefilterSlots).fill(0)
      const scanned = tx.scanned
      const changed = tx.changed
      // The prefilters of the buffers that changed (all of them after a rule swap).
      const stampRound = this.#hitRound
      if (this.#prefilterStamp.length < prefilters.length)
        this.#prefilterStamp = new Uint32Array(prefilters.length)
      const stamp = this.#prefilterStamp
      if (!rescan) {
        for (const id of changed) {
          const k = rs.prefilterOf.get(id)
          if (k !== undefined) stamp[k] = stampRound
        }
      }
      for (let p = 0; p < prefilters.length; p++) {
        if (!rescan && stamp[p] !== stampRound) continue
        const prefilter = prefilters[p]
        const ac = prefilter.automaton
        this.#appPatternRules = prefilter.patternRules
        // The last list scanned by this prefilter, and the progress it was scanned from.
        let done: Buffer[] | undefined
        let doneCount = 0
        let doneBytes = 0
        for (const part of prefilter.parts) {
          // Unchanged since the last round: scanned to its end then.
          if (!rescan && !changed.has(part.id)) continue
          // The instances a packet going this way sees (see AppTx.lookup), and their progress.
          const response = part.responseOnly || (part.bothSides && !toServer)
          const list = (response ? tx.response : tx.request).get(part.id)
          if (!list) continue
          const slot = 4 * part.slot + (response ? 2 : 0)
          const count = scanned[slot]
          const last = list.length > 0 ? list[list.length - 1].length : 0
          if (
            done !== undefined &&
            done.length === list.length &&
            done[done.length - 1] === list[list.length - 1] &&
            count === doneCount &&
            scanned[slot + 1] === doneBytes
          ) {
            // The same bytes as the part just scanned, from the same point (a body): scanned.
            scanned[slot] = list.length
            scanned[slot + 1] = last
            continue
          }
          done = list
          doneCount = count
          doneBytes = scanned[slot + 1]
          for (let k = Math.max(0, count - 1); k < list.length; k++) {
            const b = list[k]
            // The last instance scanned may have grown: rescan its tail, overlapping by a pattern.
            let from = 0
            if (k === count - 1) {
              if (scanned[slot + 1] >= b.length) continue
              from = Math.max(0, scanned[slot + 1] - ac.maxPatternLength + 1)
            }
            ac.scan(b, from, b.length, 0, this.#onAppHit)
          }
          scanned[slot] = list.length
          scanned[slot + 1] = last
        }
      }
      this.#appTx = undefined
      // Verified now: new prefilter hits, earlier candidates whose buffers changed, and the rules
      // without an application fast pattern triggered by a changed buffer.
      const round = this.#round
      round.length = 0
      for (const i of this.#hits) round.push(i)
      for (const i of tx.candidates) {
        if (this.#hitStamp[i] === this.#hitRound) continue
        for (const b of rs.ruleBuffers[i])
          if (tx.changed.has(b)) {
            round.push(i)
            break
          }
      }
      for (const id of tx.changed) {
        const always = rs.appAlways.get(id)
        if (always) for (const i of always) round.push(i)
        const payloadFast = rs.appPayloadFast.get(id)
        if (payloadFast)
          for (const i of payloadFast) if (rs.payloadFastSeen[i] === this.#frameId) round.push(i)
      }
      tx.changed.clear()
      const views = this.#views
      for (const i of round) {
        if (tx.alerted.has(i)) continue
        if (this.#verifyTransaction(i, tx, payload, views)) tx.alerted.add(i)
      }
      // Map.clear() allocates a new table even when empty.
      if (views.size > 0) views.clear()
    }
  }

  /** Rule i (on application buffers) on transaction `tx`: header, then every group on its buffer. */
  #verifyTransaction(
    i: number,
    tx: AppTx,
    payload: InspectBuffer,
    views: Map<Buffer, InspectBuffer>,
  ): boolean {
    if (!this.#header(i)) return false
    const rs = this.#rules
    const rule = rs.rules[i]
    const matchers = rs.groupMatchers[i]
    for (let g = 0; g < rule.groups.length; g++) {
      const matcher = matchers[g]
      const id = rule.groups[g].buffer
      let ok = false
      if (id === 'payload' || id === 'stream') {
        ok = matcher.verify(payload, 0, this.#regexBudget)
      } else {
        const list = tx.lookup(id, this.#toServer)
        if (!list) return false
        for (const b of list) {
          let view = views.get(b)
          if (!view) {
            view = { data: b, length: b.length, base: 0, text: undefined }
            views.set(b, view)
          }
          if (matcher.verify(view, 0, this.#regexBudget)) {
            ok = true
            break
          }
        }
      }
      if (!ok) {
        this.#noteFailure(i, matcher)
        return false
      }
    }
    // One alert per transaction, even for two transactions in one frame (pipelining).
    this.#rules.matchedStamp[i] = this.#frameId
    this.#matched.push(i)
    return true
  }

  /** A new group's automaton (first bytes, rule swap, protocol detected): its state from the window's tail. */
  #tailState(side: StreamSide, ac: AhoCorasick): number {
    if (!side.window) return 0
    return ac.scan(
      side.window,
      Math.max(0, side.windowLength - ac.maxPatternLength + 1),
      side.windowLength,
      0,
      IGNORE_HITS,
    )
  }

  /** In-order stream bytes data[start, end) of `side`, at stream offset side.offset. */
  #chunk(side: StreamSide, data: Uint8Array, start: number, end: number): void {
    const rs = this.#rules
    const length = end - start
    const updated = this.#updated
    updated.length = 0
    if (rs.needsApp) {
      const flow = this.#flow as Flow
      flow.app ??= new AppState(true, this.#appLimits)
      if (side.appOffset !== side.offset) flow.app.gap(this.#toServer, updated)
      this.#feedApp(flow, this.#toServer, data, start, end)
      side.appOffset = side.offset + length
    }
    const windowLength = side.windowLength
    const windowBase = side.offset - windowLength
    this.#newScan()
    const previous = side.group
    const previousApp = side.appGroup
    this.#groups(side, TCP, this.#flow as Flow)
    this.#hitBase = side.offset - start
    const group = side.group as PrefilterGroup
    if (group.automaton) {
      if (group !== previous) side.acState = this.#tailState(side, group.automaton)
      this.#patternRules = group.patternRules
      side.acState = group.automaton.scan(data, start, end, side.acState, this.#onHit)
    }
    const appGroup = side.appGroup as PrefilterGroup | undefined
    if (appGroup?.automaton) {
      if (appGroup !== previousApp) side.appAcState = this.#tailState(side, appGroup.automaton)
      this.#patternRules = appGroup.patternRules
      side.appAcState = appGroup.automaton.scan(data, start, end, side.appAcState, this.#onHit)
    }
    // The heads over the segment's first bytes; at the stream's start, from its first byte kept on.
    this.#streamHead(side, group, data, start, end)
    if (appGroup) this.#streamHead(side, appGroup, data, start, end)
    const pendingRules = side.pendingRules
    const pendingEnds = side.pendingEnds
    for (let k = 0; k < pendingRules.length; k++) this.#addCandidate(pendingRules[k], -1)
    for (const i of rs.always[TCP]) this.#addCandidate(i, -1)
    if (this.#candidates.length > 0) {
      const total = windowLength + length
      if (this.#scratch.length < total)
        this.#scratch = Buffer.allocUnsafe(Math.max(total, 2 * this.#scratch.length))
      if (windowLength > 0) this.#scratch.set((side.window as Uint8Array).subarray(0, windowLength), 0)
      this.#scratch.set(data.subarray(start, end), windowLength)
      const buf: InspectBuffer = {
        data: this.#scratch.subarray(0, total),
        length: total,
        base: windowBase,
        text: undefined,
      }
      const streamEnd = side.offset + length
      let segment: InspectBuffer | undefined
      for (const i of this.#candidates) {
        if (rs.anchored[i] === 2) {
          segment ??= {
            data: this.#scratch.subarray(windowLength, total),
            length,
            base: 0,
            text: undefined,
          }
          this.#verify(i, segment, 0)
          continue
        }
        if (this.#verify(i, buf, windowLength + 1)) continue
        // Items bound to the buffer's start also hold on the segment alone (Suricata's packet
        // payload inspection next to the stream's).
        if (rs.anchored[i] && windowLength > 0) {
          segment ??= {
            data: this.#scratch.subarray(windowLength, total),
            length,
            base: 0,
            text: undefined,
          }
          if (this.#verify(i, segment, 0)) continue
        }
        // The fast pattern is here but the rest is not (yet): retry while it stays in the window.
        const hitEnd = rs.hitEnd[i]
        if (hitEnd >= 0 && rs.needsContext[i] && hitEnd <= streamEnd) {
          if (pendingRules.length >= MAX_PENDING) {
            pendingRules.shift()
            pendingEnds.shift()
          }
          pendingRules.push(i)
          pendingEnds.push(hitEnd)
        }
      }
    }
    if (updated.length > 0) {
      const chunk = Buffer.from(data.buffer, data.byteOffset + start, length)
      this.#inspectTransactions({ data: chunk, length, base: 0, text: undefined })
    }
    side.retain(data, start, end, rs.keep)
    // Forget pending hits whose fast pattern left the window.
    const newBase = side.offset + length - side.windowLength
    let kept = 0
    for (let k = 0; k < pendingRules.length; k++) {
      const i = pendingRules[k]
      if (pendingEnds[k] - rs.fastLength[i] < newBase) continue
      pendingRules[kept] = i
      pendingEnds[kept] = pendingEnds[k]
      kept++
    }
    if (kept !== pendingRules.length) {
      pendingRules.length = kept
      pendingEnds.length = kept
    }
  }

  #verify(i: number, buf: InspectBuffer, minEnd: number): boolean {
    if (!this.#header(i)) return false
    const matcher = this.#rules.matchers[i]
    if (matcher.verify(buf, minEnd, this.#regexBudget)) {
      this.#addMatch(i)
      return true
    }
    this.#noteFailure(i, matcher)
    return false
  }

  /** Counts why rule i's verification by `matcher` failed, when it was for want of budget. */
  #noteFailure(i: number, matcher: PayloadMatcher): void {
    if (matcher.exhausted) this.#c.backtrackExhausted++
    const budget = this.#regexBudget
    if (budget.exceeded && !budget.charged) {
      // The first rule the budget could not pay for on this frame.
      budget.charged = true
      const sid = this.#rules.rules[i].sid
      this.#budgetBySid.set(sid, (this.#budgetBySid.get(sid) ?? 0) + 1)
    }
  }

  /**
   * Flow-level keywords of the matched rules, in Suricata's order (rules that only set state
   * first): drops the rules whose conditions fail, applies the others' actions, and marks those
   * that must not alert (noalert, threshold).
   */
  #settle(flow: Flow, frame: Uint8Array, p: Packet, now: number): void {
    const rs = this.#rules
    const matched = this.#matched
    if (!matched.some((i) => rs.rules[i].state !== undefined)) return
    const order = rs.stateOrder
    const sorted = [...matched].sort((a, b) => order[a] - order[b])
    const facts: PacketFacts = {
      now,
      source: packetAddress(frame, p, 'source'),
      destination: packetAddress(frame, p, 'destination'),
      flowId: flow.id,
    }
    matched.length = 0
    for (const i of sorted) {
      const rule = rs.rules[i]
      const s = rule.state
      if (s) {
        flow.vars ??= new FlowVars()
        if (!conditionsHold(s, flow.vars, this.#state, facts)) continue
        applyActions(s, flow.vars, this.#state, facts)
        if (s.noalert) this.#silent.add(i)
        else if (s.threshold && !this.#state.threshold(s.threshold, rule.sid, facts)) {
          // Held back by its threshold: neither alert nor action (as Suricata).
          continue
        }
      }
      matched.push(i)
    }
  }

  #act(flow: Flow, frame: Uint8Array, p: Packet, toServer: boolean, ctx: NetContext): boolean {
    const rs = this.#rules
    const c = this.#c
    const matched = this.#matched
    this.#silent.clear()
    if (rs.stateful) {
      this.#settle(flow, frame, p, ctx.now)
      if (matched.length === 0) return true
    }
    if (matched.some((i) => rs.rules[i].action === 'pass')) {
      flow.passed = true
      c.passedFlows++
      return true
    }
    const drop = matched.some((i) => rs.rules[i].action === 'drop')
    const timestamp = eveTimestamp(this.#wallClock(), this.#options.utcOffsetMinutes)
    for (const i of matched) {
      if (this.#silent.has(i)) continue
      const rule = rs.rules[i]
      c.alerts++
      this.#alertsBySid.set(rule.sid, (this.#alertsBySid.get(rule.sid) ?? 0) + 1)
      ctx.event(this.#eve(rule, flow, frame, p, toServer, timestamp))
    }
    if (!drop) return true
    flow.dropped = true
    c.droppedFlows++
    c.drops++
    return false
  }

  #eve(
    rule: Rule,
    flow: Flow,
    frame: Uint8Array,
    p: Packet,
    toServer: boolean,
    timestamp: string,
  ): EveAlertRecord {
    const client = flow.clientIsLow ? flow.fromLow : flow.fromHigh
    const server = flow.clientIsLow ? flow.fromHigh : flow.fromLow
    const hasPorts = p.protocol === 6 || p.protocol === 17 || p.protocol === 132
    const icmp = p.protocol === 1 || p.protocol === 58
    const record: EveAlertRecord = {
      timestamp,
      flow_id: flow.id,
      ...(this.#options.interfaceName !== undefined && { in_iface: this.#options.interfaceName }),
      event_type: 'alert',
      ...(p.vlan >= 0 && { vlan: [p.vlan] }),
      src_ip: packetAddress(frame, p, 'source'),
      ...(hasPorts && { src_port: p.sourcePort }),
      dest_ip: packetAddress(frame, p, 'destination'),
      ...(hasPorts && { dest_port: p.destinationPort }),
      proto: eveProto(p.protocol),
      ...(icmp && { icmp_type: p.icmpType, icmp_code: p.icmpCode }),
      direction: toServer ? 'to_server' : 'to_client',
      alert: {
        action: rule.action === 'drop' ? 'blocked' : 'allowed',
        gid: rule.gid,
        signature_id: rule.sid,
        rev: rule.rev,
        signature: rule.msg,
        category: rule.category,
        severity: rule.severity,
      },
      // As Suricata: the flow's detected application protocol.
      ...(flow.app?.proto !== undefined && { app_proto: flow.app.proto }),
      flow: {
        pkts_toserver: client.packets,
        pkts_toclient: server.packets,
        bytes_toserver: client.bytes,
        bytes_toclient: server.bytes,
        start: eveTimestamp(flow.start, this.#options.utcOffsetMinutes),
      },
    }
    return record
  }
}

/**
 * A DPI service from rule text (`fileName` names it in errors). Strict by default: any rule error
 * throws VrioError 'invalid-rules' listing every error as FILE:LINE: message.
 */
export function createDpi(rulesText: string, fileName: string, options: DpiOptions = {}): DpiService {
  return new DpiService(parseRules(rulesText, fileName, options), options)
}
