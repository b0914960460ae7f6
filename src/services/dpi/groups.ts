/**
 * Prefilter groups for the payload rules (Suricata's signature group heads, built per flow side):
 * a flow side only ever meets the payload rules whose transport class, application protocol,
 * flow direction and ports can match its frames, so its bytes go through an automaton over those
 * rules' fast patterns alone. The whole set's automaton has ET Open's port-bound short patterns
 * (`|ff|SMB` for 445, 2-byte TLS record heads, ...) that hit everywhere and keep the automaton from
 * skipping; a side of an HTTP or iperf3 flow never needs them.
 *
 * A side's group is found once (and again when its flow's protocol is detected): the rules' port
 * fields, deduplicated, are tested against the side's two ports, and the group is cached under
 * (class, protocol, direction, the port fields that matched). Groups are built on first use and
 * their number is capped (MAX_GROUPS); beyond it a side gets the whole set's automaton, which is a
 * superset (candidates are verified on the full header in any case).
 */
import { AhoCorasick } from './aho-corasick.ts'
import type { AppProto } from './app/buffers.ts'
import type { PortMatcher } from './addresses.ts'

/** Groups built per rule set at most; then the whole set's automaton serves. */
export const MAX_GROUPS = 64

/** An automaton and, per pattern id, the rules whose fast pattern it is. */
export interface PrefilterGroup {
  readonly automaton: AhoCorasick | undefined
  readonly patternRules: readonly (readonly number[])[]
  /**
   * The fast patterns bound to a buffer's first bytes (a content with depth, not relative: ET's
   * `content:"|18 03|"; depth:2;`), kept out of `automaton` and scanned over the first `length`
   * bytes of each segment or datagram (and of the stream) only.
   */
  readonly head?: PrefilterHead
}

export interface PrefilterHead {
  readonly automaton: AhoCorasick
  readonly patternRules: readonly (readonly number[])[]
  /** The largest offset + depth among them. */
  readonly length: number
}

/** Anchored fast patterns reaching further than this are scanned everywhere. */
export const HEAD_LIMIT = 512

/** What a payload rule with a fast pattern needs of a flow side's frames. */
export interface GroupedRule {
  rule: number
  /** Folded fast pattern (what the automaton sees). */
  pattern: Uint8Array
  /** Where the fast pattern must end at the latest (offset + depth), -1: anywhere. */
  anchor: number
  /** Bit per transport class (engine's TCP, UDP, ICMP, OTHER). */
  classMask: number
  /** The application protocol it needs, if any. */
  app: AppProto | undefined
  /** flow:to_server (true) / to_client (false); undefined: either. */
  toServer: boolean | undefined
  sourcePorts: PortMatcher
  destinationPorts: PortMatcher
  bidirectional: boolean
}

/** Fast patterns being collected for an automaton: distinct patterns, each with its rules. */
export class PatternSet {
  readonly patterns: Uint8Array[] = []
  readonly rules: number[][] = []
  readonly #ids = new Map<string, number>()

  /** Adds `rule` under the (folded) pattern. */
  add(pattern: Uint8Array, rule: number): void {
    const key = Buffer.from(pattern).toString('latin1')
    let id = this.#ids.get(key)
    if (id === undefined) {
      id = this.patterns.length
      this.#ids.set(key, id)
      this.patterns.push(pattern)
      this.rules.push([])
    }
    this.rules[id].push(rule)
  }

  /** The automaton over the patterns (undefined when there are none) and the pattern → rules. */
  build(): PrefilterGroup {
    return {
      automaton: this.patterns.length > 0 ? new AhoCorasick(this.patterns) : undefined,
      patternRules: this.rules,
    }
  }
}

interface PortSignature {
  sourcePorts: PortMatcher
  destinationPorts: PortMatcher
  bidirectional: boolean
}

export class PrefilterGroups {
  readonly #rules: GroupedRule[]
  /** Per rule: its port signature's index, -1 for any ports. */
  readonly #signatureOf: Int32Array
  readonly #signatures: PortSignature[] = []
  readonly #groups = new Map<string, PrefilterGroup>()
  readonly #fallback: PrefilterGroup
  /** Groups built so far (for counters and tests). */
  built = 0

  /** `fallback`: the whole set's automaton, used once MAX_GROUPS groups exist. */
  constructor(rules: GroupedRule[], fallback: PrefilterGroup) {
    this.#rules = rules
    this.#fallback = fallback
    this.#signatureOf = new Int32Array(rules.length)
    const index = new Map<string, number>()
    rules.forEach((r, k) => {
      if (r.sourcePorts.any && r.destinationPorts.any) {
        this.#signatureOf[k] = -1
        return
      }
      const key = `${r.sourcePorts.text}\n${r.destinationPorts.text}\n${r.bidirectional}`
      let s = index.get(key)
      if (s === undefined) {
        s = this.#signatures.length
        index.set(key, s)
        this.#signatures.push(r)
      }
      this.#signatureOf[k] = s
    })
  }

  /**
   * The group for frames of class `cls` going `toServer` between `sourcePort` and
   * `destinationPort` on a flow whose detected protocol is `app`.
   */
  find(
    cls: number,
    app: AppProto | undefined,
    toServer: boolean,
    sourcePort: number,
    destinationPort: number,
  ): PrefilterGroup {
    let key = `${cls}${app ?? '-'}${toServer ? '>' : '<'}`
    const signatures = this.#signatures
    for (let s = 0; s < signatures.length; s++) {
      const { sourcePorts, destinationPorts, bidirectional } = signatures[s]
      if (
        (sourcePorts.match(sourcePort) && destinationPorts.match(destinationPort)) ||
        (bidirectional && sourcePorts.match(destinationPort) && destinationPorts.match(sourcePort))
      )
        key += `,${s}`
    }
    const found = this.#groups.get(key)
    if (found) return found
    if (this.#groups.size >= MAX_GROUPS) return this.#fallback
    const matching = new Set(key.split(',').slice(1).map(Number))
    const set = new PatternSet()
    const headSet = new PatternSet()
    let headLength = 0
    this.#rules.forEach((r, k) => {
      if ((r.classMask & (1 << cls)) === 0) return
      if (r.app !== undefined && r.app !== app) return
      if (r.toServer !== undefined && r.toServer !== toServer) return
      const s = this.#signatureOf[k]
      if (s >= 0 && !matching.has(s)) return
      if (r.anchor >= 0 && r.anchor <= HEAD_LIMIT) {
        headSet.add(r.pattern, r.rule)
        headLength = Math.max(headLength, r.anchor)
      } else {
        set.add(r.pattern, r.rule)
      }
    })
    const head = headSet.build()
    const group: PrefilterGroup = {
      ...set.build(),
      ...(head.automaton && {
        head: { automaton: head.automaton, patternRules: head.patternRules, length: headLength },
      }),
    }
    this.#groups.set(key, group)
    this.built++
    return group
  }
}
