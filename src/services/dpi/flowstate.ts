/**
 * Flow- and host-level rule keywords (Suricata semantics): `flowbits`, `flowint`, `xbits`,
 * `threshold`/`detection_filter`, `noalert`. Parsing, and the per-packet step that decides which
 * of the rules whose payload matched take effect:
 *
 * - Conditions (flowbits isset/isnotset, flowint comparisons, xbits isset/isnotset) are checked
 *   after the payload, and actions (set/unset/toggle, flowint assignments) applied for each rule
 *   that matched, rules that only write state first (as Suricata orders signatures by flowbits),
 *   so a bit set by one rule is seen by another on the same packet.
 * - `noalert` rules act on state but give no alert; thresholds decide whether a match alerts.
 *
 * All state is bounded: names per flow (MAX_FLOW_VARS), host bits (MAX_HOST_BITS) and threshold
 * trackers (MAX_TRACKERS), the oldest forgotten beyond that (counted).
 */

export class FlowStateError extends Error {}

const fail = (message: string): never => {
  throw new FlowStateError(message)
}

export interface FlowbitsOp {
  op: 'set' | 'unset' | 'toggle' | 'isset' | 'isnotset'
  /** `a|b`: isset holds when any is set, isnotset when any is not set; set ops apply to each. */
  names: string[]
}

export interface FlowintOp {
  name: string
  op: '=' | '+' | '-' | '==' | '!=' | '<' | '>' | '<=' | '>=' | 'isset' | 'notset'
  /** A number, or another flowint's name. */
  value: number | string
}

export interface XbitsOp {
  op: 'set' | 'unset' | 'toggle' | 'isset' | 'isnotset'
  name: string
  track: 'ip_src' | 'ip_dst' | 'ip_pair'
  /** Seconds a set bit lives (default 30, as Suricata's hostbits). */
  expire: number
}

export interface ThresholdSpec {
  /** detection_filter: alert on matches after the first `count` in `seconds`. */
  type: 'limit' | 'threshold' | 'both' | 'detection_filter'
  track: 'by_src' | 'by_dst' | 'by_both' | 'by_rule' | 'by_flow'
  count: number
  seconds: number
}

/** A rule's flow-level keywords (Rule.state; absent when it has none). */
export interface RuleState {
  flowbits: FlowbitsOp[]
  flowints: FlowintOp[]
  xbits: XbitsOp[]
  threshold: ThresholdSpec | undefined
  noalert: boolean
}

export function emptyRuleState(): RuleState {
  return { flowbits: [], flowints: [], xbits: [], threshold: undefined, noalert: false }
}

const NAME = /^[\w.:-]+$/

export function parseFlowbits(value: string | undefined, state: RuleState): void {
  const args = (value ?? '').split(',').map((s) => s.trim())
  const op = args[0].toLowerCase()
  if (op === 'noalert') {
    if (args.length > 1) fail(`flowbits:noalert takes no name`)
    state.noalert = true
    return
  }
  if (!['set', 'unset', 'toggle', 'isset', 'isnotset'].includes(op))
    fail(`invalid flowbits operation '${args[0]}'`)
  if (args.length !== 2) fail(`flowbits:${op} needs one name (a|b for several)`)
  const names = args[1].split(/[|&]/).map((s) => s.trim())
  if (args[1].includes('&')) fail(`flowbits with '&' is not supported (use several flowbits options)`)
  for (const n of names) if (!NAME.test(n)) fail(`invalid flowbit name '${n}'`)
  state.flowbits.push({ op: op as FlowbitsOp['op'], names })
}

export function parseFlowint(text: string | undefined, state: RuleState): void {
  const args = (text ?? '').split(',').map((s) => s.trim())
  const name = args[0]
  if (!name || !NAME.test(name)) fail(`invalid flowint name '${name}'`)
  const op = (args[1] ?? '').toLowerCase()
  if (op === 'isset' || op === 'notset' || op === 'isnotset') {
    if (args.length !== 2) fail(`flowint:${name},${op} takes no value`)
    state.flowints.push({ name, op: op === 'isset' ? 'isset' : 'notset', value: 0 })
    return
  }
  const ops = ['=', '+', '-', '==', '!=', '<', '>', '<=', '>=']
  if (!ops.includes(op)) fail(`invalid flowint operation '${args[1] ?? ''}'`)
  if (args.length !== 3) fail(`flowint:${name},${op} needs a value`)
  const v = args[2]
  const value = /^\d+$/.test(v) ? Number(v) : NAME.test(v) ? v : fail(`invalid flowint value '${v}'`)
  state.flowints.push({ name, op: op as FlowintOp['op'], value })
}

export function parseXbits(value: string | undefined, state: RuleState): void {
  const args = (value ?? '').split(',').map((s) => s.trim())
  const op = args[0].toLowerCase()
  if (op === 'noalert') {
    state.noalert = true
    return
  }
  if (!['set', 'unset', 'toggle', 'isset', 'isnotset'].includes(op))
    fail(`invalid xbits operation '${args[0]}'`)
  const name = args[1]
  if (!name || !NAME.test(name)) fail(`invalid xbits name '${name ?? ''}'`)
  let track: XbitsOp['track'] | undefined
  let expire = 30
  for (const a of args.slice(2)) {
    const [k, v] = a.split(/\s+/, 2)
    if (k === 'track') {
      if (v !== 'ip_src' && v !== 'ip_dst' && v !== 'ip_pair') fail(`unsupported xbits track '${v ?? ''}'`)
      track = v as XbitsOp['track']
    } else if (k === 'expire') {
      if (!/^\d+$/.test(v ?? '')) fail(`invalid xbits expire '${v ?? ''}'`)
      expire = Number(v)
    } else fail(`unknown xbits option '${a}'`)
  }
  if (!track) fail(`xbits needs 'track ip_src|ip_dst|ip_pair'`)
  state.xbits.push({ op: op as XbitsOp['op'], name, track: track as XbitsOp['track'], expire })
}

/** `threshold: type T, track K, count N, seconds S` and `detection_filter: track K, count N, seconds S`. */
export function parseThreshold(value: string | undefined, state: RuleState, keyword: string): void {
  if (state.threshold) fail(`'${keyword}' with another threshold/detection_filter in one rule`)
  const fields = new Map<string, string>()
  for (const part of (value ?? '').split(',')) {
    const m = /^\s*(\w+)\s+(\S+)\s*$/.exec(part)
    if (!m) fail(`invalid ${keyword} option '${part.trim()}'`)
    fields.set((m as RegExpExecArray)[1].toLowerCase(), (m as RegExpExecArray)[2].toLowerCase())
  }
  const type = keyword === 'detection_filter' ? 'detection_filter' : fields.get('type')
  if (type !== 'limit' && type !== 'threshold' && type !== 'both' && type !== 'detection_filter')
    fail(`invalid ${keyword} type '${type ?? ''}'`)
  const track = fields.get('track')
  if (!['by_src', 'by_dst', 'by_both', 'by_rule', 'by_flow'].includes(track ?? ''))
    fail(`invalid ${keyword} track '${track ?? ''}'`)
  const num = (k: string, min: number): number => {
    const v = fields.get(k)
    if (v === undefined || !/^\d+$/.test(v)) fail(`${keyword} needs '${k} N'`)
    const n = Number(v)
    if (n < min || n > 0xffffffff) fail(`${keyword} ${k} ${v} is out of range`)
    return n
  }
  state.threshold = {
    type: type as ThresholdSpec['type'],
    track: track as ThresholdSpec['track'],
    count: num('count', type === 'detection_filter' ? 0 : 1),
    seconds: num('seconds', 0),
  }
}

/** Most flowbits + flowints one flow keeps. */
const MAX_FLOW_VARS = 256
/** Most host bits (xbits) kept in all. */
const MAX_HOST_BITS = 65_536
/** Most threshold trackers kept in all. */
const MAX_TRACKERS = 65_536

/** A flow's bits and ints. */
export class FlowVars {
  readonly bits = new Set<string>()
  readonly ints = new Map<string, number>()

  get size(): number {
    return this.bits.size + this.ints.size
  }
}

/** What the settling step needs to know about the packet. */
export interface PacketFacts {
  /** Monotonic milliseconds. */
  now: number
  source: string
  destination: string
  flowId: number
}

interface Tracker {
  start: number
  count: number
}

/** Host bits and threshold trackers for one DPI service (survives rule swaps, bounded). */
export class StateTables {
  /** `name|key` → expiry (ms). */
  readonly #hostBits = new Map<string, number>()
  readonly #trackers = new Map<string, Tracker>()
  evicted = 0

  hostBit(name: string, key: string, now: number): boolean {
    const k = `${name}|${key}`
    const expiry = this.#hostBits.get(k)
    if (expiry === undefined) return false
    if (expiry <= now) {
      this.#hostBits.delete(k)
      return false
    }
    return true
  }

  setHostBit(name: string, key: string, expiry: number, on: boolean): void {
    const k = `${name}|${key}`
    this.#hostBits.delete(k)
    if (!on) return
    if (this.#hostBits.size >= MAX_HOST_BITS) {
      this.#hostBits.delete(this.#hostBits.keys().next().value as string)
      this.evicted++
    }
    this.#hostBits.set(k, expiry)
  }

  /** Whether a match of rule `sid` alerts under its threshold (Suricata's threshold.c logic). */
  threshold(t: ThresholdSpec, sid: number, facts: PacketFacts): boolean {
    let key: string
    switch (t.track) {
      case 'by_src':
        key = facts.source
        break
      case 'by_dst':
        key = facts.destination
        break
      case 'by_both':
        key = `${facts.source}>${facts.destination}`
        break
      case 'by_flow':
        key = `flow:${facts.flowId}`
        break
      default:
        key = ''
    }
    const k = `${sid}|${key}`
    const now = facts.now
    const window = t.seconds * 1000
    let tr = this.#trackers.get(k)
    if (!tr) {
      if (this.#trackers.size >= MAX_TRACKERS) {
        this.#trackers.delete(this.#trackers.keys().next().value as string)
        this.evicted++
      }
      tr = { start: now, count: 1 }
      this.#trackers.set(k, tr)
      return firstInWindow(t, tr)
    }
    if (now - tr.start >= window) {
      tr.start = now
      tr.count = 1
      return firstInWindow(t, tr)
    }
    tr.count++
    switch (t.type) {
      case 'limit':
        return tr.count <= t.count
      case 'threshold':
        if (tr.count >= t.count) {
          tr.count = 0
          return true
        }
        return false
      case 'both':
        return tr.count === t.count
      default:
        return tr.count > t.count
    }
  }

  get trackers(): number {
    return this.#trackers.size
  }

  get hostBits(): number {
    return this.#hostBits.size
  }
}

/** 0: writes state only, 1: reads and writes, 2: reads only, 3: no state (Suricata's order). */
export function stateOrder(s: RuleState | undefined): number {
  if (!s) return 3
  const reads =
    s.flowbits.some((f) => f.op === 'isset' || f.op === 'isnotset') ||
    s.flowints.some((f) => !['=', '+', '-'].includes(f.op)) ||
    s.xbits.some((x) => x.op === 'isset' || x.op === 'isnotset')
  const writes =
    s.flowbits.some((f) => f.op !== 'isset' && f.op !== 'isnotset') ||
    s.flowints.some((f) => ['=', '+', '-'].includes(f.op)) ||
    s.xbits.some((x) => x.op !== 'isset' && x.op !== 'isnotset')
  if (writes && !reads) return 0
  if (writes) return 1
  if (reads) return 2
  return 3
}

function hostKey(x: XbitsOp, f: PacketFacts): string {
  return x.track === 'ip_src'
    ? f.source
    : x.track === 'ip_dst'
      ? f.destination
      : `${f.source}>${f.destination}`
}

/** Whether the rule's state conditions hold on this flow/packet. */
export function conditionsHold(s: RuleState, vars: FlowVars, tables: StateTables, f: PacketFacts): boolean {
  for (const b of s.flowbits) {
    if (b.op === 'isset' && !b.names.some((n) => vars.bits.has(n))) return false
    if (b.op === 'isnotset' && !b.names.some((n) => !vars.bits.has(n))) return false
  }
  for (const i of s.flowints) {
    const cur = vars.ints.get(i.name)
    if (i.op === 'isset') {
      if (cur === undefined) return false
      continue
    }
    if (i.op === 'notset') {
      if (cur !== undefined) return false
      continue
    }
    if (i.op === '=' || i.op === '+' || i.op === '-') continue
    const v = typeof i.value === 'number' ? i.value : vars.ints.get(i.value)
    if (cur === undefined || v === undefined) return false
    const ok =
      i.op === '=='
        ? cur === v
        : i.op === '!='
          ? cur !== v
          : i.op === '<'
            ? cur < v
            : i.op === '>'
              ? cur > v
              : i.op === '<='
                ? cur <= v
                : cur >= v
    if (!ok) return false
  }
  for (const x of s.xbits) {
    if (x.op !== 'isset' && x.op !== 'isnotset') continue
    const set = tables.hostBit(x.name, hostKey(x, f), f.now)
    if (set !== (x.op === 'isset')) return false
  }
  return true
}

/** Applies the rule's state actions (after its conditions held). */
export function applyActions(s: RuleState, vars: FlowVars, tables: StateTables, f: PacketFacts): void {
  for (const b of s.flowbits) {
    for (const n of b.names) {
      if (b.op === 'set' || (b.op === 'toggle' && !vars.bits.has(n))) {
        if (!vars.bits.has(n) && vars.size >= MAX_FLOW_VARS) continue
        vars.bits.add(n)
      } else if (b.op === 'unset' || b.op === 'toggle') vars.bits.delete(n)
    }
  }
  for (const i of s.flowints) {
    if (i.op !== '=' && i.op !== '+' && i.op !== '-') continue
    const v = typeof i.value === 'number' ? i.value : vars.ints.get(i.value)
    if (v === undefined) continue
    const cur = vars.ints.get(i.name)
    if (cur === undefined && vars.size >= MAX_FLOW_VARS) continue
    if (i.op === '=') vars.ints.set(i.name, v)
    else if (cur !== undefined || i.op === '+') vars.ints.set(i.name, (cur ?? 0) + (i.op === '+' ? v : -v))
  }
  for (const x of s.xbits) {
    if (x.op === 'isset' || x.op === 'isnotset') continue
    const key = hostKey(x, f)
    const on = x.op === 'set' || (x.op === 'toggle' && !tables.hostBit(x.name, key, f.now))
    tables.setHostBit(x.name, key, f.now + x.expire * 1000, on)
  }
}

/** Whether the first match of a new window (its tracker's count at 1) alerts. */
function firstInWindow(t: ThresholdSpec, tr: { count: number }): boolean {
  switch (t.type) {
    case 'limit':
      return true
    case 'threshold':
    case 'both':
      if (t.count === 1) {
        if (t.type === 'threshold') tr.count = 0
        return true
      }
      return false
    default:
      return t.count === 0
  }
}
