/**
 * Prefilter groups for the payload rules (Suricata's signature group heads): a flow side only ever
 * meets the payload rules whose transport class, flow direction, ports and application protocol can
 * match its frames, so its bytes go through automata over those rules' fast patterns alone. The
 * whole set's automaton has ET Open's port-bound short patterns (`|ff|SMB` for 445, 2-byte TLS
 * record heads, ...) that hit everywhere and keep the automaton from skipping; a side of an HTTP or
 * iperf3 flow never needs them.
 *
 * Every group is built with the rule set (in the compile worker, whose tables are handed over), none
 * on the data path. To keep their number small, a side's groups are chosen by its **server port**
 * (the destination port going to the server, the source port coming back), Suricata-style:
 *
 * - a **port group** per (transport, direction, port class) holds the rules without an application
 *   protocol. A rule's ports count as matching a side when the rule's field on the server's side
 *   matches the server port (either field for `<>`); the client's port is not looked at, so a group
 *   holds a superset of the rules the side's frames can meet (candidates are verified on the full
 *   header in any case). Server ports with the same rules form a class; the classes of the common
 *   service ports (PREFERRED_PORTS) and the largest others keep their own group, at most
 *   MAX_PORT_CLASSES per transport and direction, the rest share one (the union of their rules).
 *   ICMP and other IP protocols have one class.
 * - an **application group** per (transport, direction, protocol) holds the rules that need that
 *   application protocol, whatever their ports (a superset again), scanned besides the port group
 *   once the flow's protocol is detected.
 */
import { AhoCorasick, type AhoCorasickTables } from './aho-corasick.ts'
import type { AppProto } from './app/buffers.ts'
import type { PortMatcher } from './addresses.ts'

/** Port groups per transport and direction at most (the classes beyond share one). */
export const MAX_PORT_CLASSES = 8
/**
 * Application protocols on their usual server ports whose port and application groups are also
 * built as one automaton, so that such a side's bytes are scanned once, not twice (text protocols:
 * their bytes seldom let the scan skip).
 */
const COMBINED: readonly (readonly [AppProto, readonly number[]])[] = [['http', [80]]]
/** Server ports whose class keeps its own port group first (then the classes with most ports). */
const PREFERRED_PORTS = [80, 443, 53, 445, 139, 21, 25, 22, 3389, 1433, 3306, 8080]

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
const HEAD_LIMIT = 512

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

  /**
   * The automaton over the patterns (undefined when there are none; from `tables` when they were
   * built elsewhere from the same patterns) and the pattern → rules.
   */
  build(tables?: AhoCorasickTables): PrefilterGroup {
    // Tables of other patterns (by count and lengths) are not taken.
    if (
      tables &&
      (tables.patternCount !== this.patterns.length ||
        this.patterns.some((p, k) => tables?.lengths[k] !== p.length))
    )
      tables = undefined
    return {
      automaton: this.patterns.length > 0 ? new AhoCorasick(this.patterns, { tables }) : undefined,
      patternRules: this.rules,
    }
  }
}

/** The groups' built parts, to hand them to the thread that runs the rules (transferable). */
export interface GroupTables {
  /** Port signatures the classes were made with (the tables fit only the same rules). */
  signatures: number
  /** Per port slot (TCP and UDP, each direction): server port → port class. */
  portClasses: Uint8Array[]
  /** Per port slot: port class × port signature → 1 when the class's group holds it. */
  members: Uint8Array[]
  /** Every group's automaton then head automaton, in build order (undefined: none). */
  automata: (AhoCorasickTables | undefined)[]
}

/** Transport classes (the engine's). */
const TCP = 0
const UDP = 1
const CLASSES = 4
const PORTS = 65536

interface PortSignature {
  sourcePorts: PortMatcher
  destinationPorts: PortMatcher
  bidirectional: boolean
}

/** Port slot of a transport class and direction (TCP >, TCP <, UDP >, UDP <), -1: no ports. */
const portSlot = (cls: number, toServer: boolean): number =>
  cls === TCP || cls === UDP ? 2 * cls + (toServer ? 0 : 1) : -1

export class PrefilterGroups {
  readonly #rules: GroupedRule[]
  /** Per rule: its port signature's index, -1 for any ports. */
  readonly #signatureOf: Int32Array
  readonly #signatures: PortSignature[] = []
  /** Per port slot: server port → class, and class × signature membership. */
  readonly #portClasses: Uint8Array[] = []
  readonly #members: Uint8Array[] = []
  /** Port groups per (class × 2 + direction) then port class. */
  readonly #portGroups: PrefilterGroup[][] = []
  /** Application groups per (class × 2 + direction) then protocol. */
  readonly #appGroups: Map<AppProto, PrefilterGroup>[] = []
  /** Per (class × 2 + direction): `${port class} ${protocol}` → the combined group and the protocol's head. */
  readonly #combined: Map<string, readonly [PrefilterGroup, PrefilterGroup | undefined]>[] = []
  /** Tables of the automata built (or adopted), in build order. */
  readonly #automata: (AhoCorasickTables | undefined)[] = []
  /** Groups holding at least one automaton (for counters and tests). */
  built = 0

  /** `tables`: the groups of the same rules built by another thread (see tables()). */
  constructor(rules: GroupedRule[], tables?: GroupTables) {
    this.#rules = rules
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
    // Adopted only for the same rules (same signatures; each automaton's pattern count checked).
    const same = tables !== undefined && tables.signatures === this.#signatures.length
    const given = same ? tables.automata : undefined
    let next = 0
    const headed = (r: GroupedRule): boolean => r.anchor >= 0 && r.anchor <= HEAD_LIMIT
    const automaton = (set: PatternSet): PrefilterGroup => {
      const built = set.build(given?.[next++])
      this.#automata.push(built.automaton?.tables())
      return built
    }
    /** The head automaton over the anchored fast patterns of the rules `keep` selects. */
    const buildHead = (keep: (r: GroupedRule, k: number) => boolean): PrefilterHead | undefined => {
      const set = new PatternSet()
      let length = 0
      rules.forEach((r, k) => {
        if (!headed(r) || !keep(r, k)) return
        set.add(r.pattern, r.rule)
        length = Math.max(length, r.anchor)
      })
      const head = automaton(set)
      return head.automaton && { automaton: head.automaton, patternRules: head.patternRules, length }
    }
    /** A group: the floating fast patterns of the rules `keep` selects, and a head (theirs, or shared). */
    const build = (keep: (r: GroupedRule, k: number) => boolean, shared?: PrefilterHead): PrefilterGroup => {
      const set = new PatternSet()
      rules.forEach((r, k) => {
        if (!headed(r) && keep(r, k)) set.add(r.pattern, r.rule)
      })
      const main = automaton(set)
      const head = shared ?? buildHead(keep)
      if (main.automaton || head) this.built++
      return { ...main, ...(head && { head }) }
    }
    for (let cls = 0; cls < CLASSES; cls++) {
      for (const toServer of [true, false]) {
        const meets = (r: GroupedRule): boolean =>
          (r.classMask & (1 << cls)) !== 0 && (r.toServer === undefined || r.toServer === toServer)
        const slot = portSlot(cls, toServer)
        const groups: PrefilterGroup[] = []
        if (slot < 0) {
          groups.push(build((r) => r.app === undefined && meets(r)))
        } else {
          let portClasses: Uint8Array
          let members: Uint8Array
          if (same) {
            portClasses = (tables as GroupTables).portClasses[slot]
            members = (tables as GroupTables).members[slot]
          } else {
            ;({ portClasses, members } = this.#classify(toServer, (r) => r.app === undefined && meets(r)))
          }
          this.#portClasses[slot] = portClasses
          this.#members[slot] = members
          const n = this.#signatures.length
          const count = n === 0 ? 1 : members.length / n
          // One head for the slot's classes (the union of theirs: it only sees each segment's first
          // bytes, and its candidates are verified on the full header).
          const head = buildHead((r) => r.app === undefined && meets(r))
          for (let c = 0; c < count; c++) {
            groups.push(
              build((r, k) => {
                if (r.app !== undefined || !meets(r)) return false
                const s = this.#signatureOf[k]
                return s < 0 || members[c * n + s] === 1
              }, head),
            )
          }
        }
        this.#portGroups[2 * cls + (toServer ? 0 : 1)] = groups
        const apps = new Map<AppProto, PrefilterGroup>()
        const names = [...new Set(rules.filter((r) => r.app !== undefined && meets(r)).map((r) => r.app))]
        for (const app of (names as AppProto[]).sort())
          apps.set(
            app,
            build((r) => r.app === app && meets(r)),
          )
        this.#appGroups[2 * cls + (toServer ? 0 : 1)] = apps
        const combined = new Map<string, readonly [PrefilterGroup, PrefilterGroup | undefined]>()
        for (const [app, ports] of slot >= 0 ? COMBINED : []) {
          const appGroup = apps.get(app)
          if (!appGroup) continue
          const classes = this.#portClasses[slot]
          const members = this.#members[slot]
          const n = this.#signatures.length
          for (const port of ports) {
            const c = classes[port]
            const key = `${c} ${app}`
            if (combined.has(key)) continue
            const set = new PatternSet()
            rules.forEach((r, k) => {
              if (headed(r) || !meets(r)) return
              const s = this.#signatureOf[k]
              if (r.app === app || (r.app === undefined && (s < 0 || members[c * n + s] === 1)))
                set.add(r.pattern, r.rule)
            })
            const main = automaton(set)
            const portHead = groups[c].head
            const appHead = appGroup.head
            combined.set(key, [
              { ...main, ...(portHead && { head: portHead }) },
              appHead && { automaton: undefined, patternRules: [], head: appHead },
            ])
          }
        }
        this.#combined[2 * cls + (toServer ? 0 : 1)] = combined
      }
    }
  }

  /**
   * Server ports into classes by the signatures (of the rules `keep` selects) their side can meet,
   * at most MAX_PORT_CLASSES (the others merged into one). Membership: class × signature.
   */
  #classify(
    toServer: boolean,
    keep: (r: GroupedRule) => boolean,
  ): { portClasses: Uint8Array; members: Uint8Array } {
    const n = this.#signatures.length
    const used = new Uint8Array(n)
    this.#rules.forEach((r, k) => {
      if (this.#signatureOf[k] >= 0 && keep(r)) used[this.#signatureOf[k]] = 1
    })
    // Per signature: which server ports its side can meet.
    const fields = new Map<string, Uint8Array>()
    const field = (m: PortMatcher): Uint8Array => {
      let bits = fields.get(m.text)
      if (!bits) {
        bits = new Uint8Array(PORTS)
        for (let p = 0; p < PORTS; p++) bits[p] = m.match(p) ? 1 : 0
        fields.set(m.text, bits)
      }
      return bits
    }
    const columns: (Uint8Array | undefined)[] = this.#signatures.map((s, k) => {
      if (used[k] === 0) return undefined
      const server = field(toServer ? s.destinationPorts : s.sourcePorts)
      if (!s.bidirectional) return server
      const other = field(toServer ? s.sourcePorts : s.destinationPorts)
      return server.map((b, p) => b | other[p])
    })
    // Partition refinement: ports stay together while every signature agrees on them.
    const fine = new Int32Array(PORTS)
    let classes = 1
    for (const column of columns) {
      if (!column) continue
      const split = new Int32Array(2 * classes).fill(-1)
      let next = 0
      for (let p = 0; p < PORTS; p++) {
        const key = 2 * fine[p] + column[p]
        if (split[key] < 0) split[key] = next++
        fine[p] = split[key]
      }
      classes = next
    }
    const size = new Int32Array(classes)
    const representative = new Int32Array(classes).fill(-1)
    for (let p = 0; p < PORTS; p++) {
      size[fine[p]]++
      if (representative[fine[p]] < 0) representative[fine[p]] = p
    }
    // Own groups: the preferred ports' classes, then the largest; the rest share the last one.
    const own: number[] = []
    for (const p of PREFERRED_PORTS)
      if (own.length < MAX_PORT_CLASSES - 1 && !own.includes(fine[p])) own.push(fine[p])
    const bySize = Array.from({ length: classes }, (_, c) => c).sort((a, b) => size[b] - size[a] || a - b)
    for (const c of bySize) if (own.length < MAX_PORT_CLASSES - 1 && !own.includes(c)) own.push(c)
    const final = new Int32Array(classes).fill(own.length)
    own.forEach((c, k) => {
      final[c] = k
    })
    const count = own.length + (classes > own.length ? 1 : 0)
    const members = new Uint8Array(Math.max(1, count) * n)
    for (let c = 0; c < classes; c++) {
      const p = representative[c]
      for (let s = 0; s < n; s++) if (columns[s]?.[p] === 1) members[final[c] * n + s] = 1
    }
    const portClasses = new Uint8Array(PORTS)
    for (let p = 0; p < PORTS; p++) portClasses[p] = final[fine[p]]
    return { portClasses, members }
  }

  /** The port group for frames of class `cls` going `toServer` between these ports. */
  ports(cls: number, toServer: boolean, sourcePort: number, destinationPort: number): PrefilterGroup {
    const slot = portSlot(cls, toServer)
    const groups = this.#portGroups[2 * cls + (toServer ? 0 : 1)]
    if (slot < 0) return groups[0]
    return groups[this.#portClasses[slot][toServer ? destinationPort : sourcePort]]
  }

  /** The application group for frames of class `cls` going `toServer` on a flow of protocol `app`. */
  app(cls: number, toServer: boolean, app: AppProto): PrefilterGroup | undefined {
    return this.#appGroups[2 * cls + (toServer ? 0 : 1)].get(app)
  }

  /**
   * The groups of a side once its flow's protocol `app` is known: its port group and the
   * protocol's group, or (COMBINED) one automaton over both with the protocol's head beside it.
   */
  withApp(
    cls: number,
    toServer: boolean,
    sourcePort: number,
    destinationPort: number,
    app: AppProto,
  ): readonly [PrefilterGroup, PrefilterGroup | undefined] {
    const slot = portSlot(cls, toServer)
    if (slot >= 0) {
      const c = this.#portClasses[slot][toServer ? destinationPort : sourcePort]
      const found = this.#combined[2 * cls + (toServer ? 0 : 1)].get(`${c} ${app}`)
      if (found) return found
    }
    return [this.ports(cls, toServer, sourcePort, destinationPort), this.app(cls, toServer, app)]
  }

  /** The built parts, to adopt in another thread (their buffers transferable). */
  tables(): GroupTables {
    return {
      signatures: this.#signatures.length,
      portClasses: this.#portClasses,
      members: this.#members,
      automata: this.#automata,
    }
  }

  /** Bytes of the groups' tables. */
  get tableBytes(): number {
    let bytes = 0
    for (const t of this.#automata)
      if (t) bytes += t.delta.byteLength + t.pairs.byteLength + t.report.byteLength * 4 + t.outputs.byteLength
    for (const b of this.#portClasses) bytes += b.byteLength
    return bytes
  }

  /** States of the groups' automata, all together. */
  get stateCount(): number {
    let states = 0
    for (const t of this.#automata) if (t) states += t.stateCount
    return states
  }
}
