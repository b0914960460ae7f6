/**
 * The firewall I/O service of a remote NIC: nftables-like rules per direction (first match wins,
 * else the direction's policy) over a shared connection-tracking table. Pure: the clock comes from
 * the chain's context, reject answers leave through `ctx.reply`.
 *
 *   const fw = createFirewall(text, 'nic0.rules')          // throws VrioError 'invalid-rules'
 *   chain.push(fw)                                           // a NetService
 *   fw.replace(parseRules(newText, 'nic0.rules'))            // at runtime; flows are kept
 *
 * Frame handling before the rules: a frame the dissector found malformed is dropped (counted);
 * a later IP fragment (no transport header) gets the verdict of its datagram's first fragment:
 * it passes if the first fragment was accepted within the fragment timeout, else it is dropped.
 * A GSO super-frame is one packet: one verdict, one conntrack update.
 */
import type { Packet } from '../../wire/packet.ts'
import type { NetContext, NetDirection, NetService } from '../net/service.ts'
import { type CompiledRule, compileRule, firstMatch } from './compile.ts'
import { Conntrack, type ConntrackCounters, type ConntrackOptions } from './conntrack.ts'
import { RejectBuilder } from './reject.ts'
import { parseRules, type RuleSet, type Verdict } from './rules.ts'

export type FirewallOptions = ConntrackOptions

/** Per-direction counters (packets). */
export interface DirectionCounters {
  accepted: number
  dropped: number
  rejected: number
  /** Packets no rule matched, by the policy's verdict (included in accepted / dropped). */
  policyAccepted: number
  policyDropped: number
  /** Frames the dissector refused (included in dropped). */
  malformed: number
  /** Later fragments passed with their first fragment, and dropped for lack of one. */
  fragmentsAccepted: number
  fragmentsDropped: number
  /** Reject answers sent, and rejects left unanswered (RSTs, ICMP errors, broadcast, ...). */
  rejectRepliesSent: number
  rejectRepliesSuppressed: number
}

export interface RuleCounters {
  direction: NetDirection
  line: number
  rule: string
  packets: number
  bytes: number
}

export interface FirewallCounters extends Record<string, unknown> {
  file: string
  policy: RuleSet['policy']
  'from-guest': DirectionCounters
  'to-guest': DirectionCounters
  rules: RuleCounters[]
  conntrack: ConntrackCounters
}

function newDirectionCounters(): DirectionCounters {
  return {
    accepted: 0,
    dropped: 0,
    rejected: 0,
    policyAccepted: 0,
    policyDropped: 0,
    malformed: 0,
    fragmentsAccepted: 0,
    fragmentsDropped: 0,
    rejectRepliesSent: 0,
    rejectRepliesSuppressed: 0,
  }
}

const ACCEPT: Verdict = { kind: 'accept' }
const DROP: Verdict = { kind: 'drop' }

export class Firewall implements NetService {
  readonly kind = 'firewall'
  private set: RuleSet
  private chains: Record<NetDirection, CompiledRule[]>
  private policies: Record<NetDirection, Verdict>
  private readonly ct: Conntrack
  private readonly answers = new RejectBuilder()
  private readonly stats: Record<NetDirection, DirectionCounters> = {
    'from-guest': newDirectionCounters(),
    'to-guest': newDirectionCounters(),
  }
  private lastNow = 0

  constructor(rules: RuleSet, options: FirewallOptions = {}) {
    this.ct = new Conntrack(options)
    this.set = rules
    this.chains = { 'from-guest': [], 'to-guest': [] }
    this.policies = { 'from-guest': ACCEPT, 'to-guest': ACCEPT }
    this.replace(rules)
  }

  /** The rules in force. */
  get rules(): RuleSet {
    return this.set
  }

  /**
   * Puts new rules in force at once (a string is parsed first, and may throw 'invalid-rules'
   * leaving the old rules in force). The conntrack table is kept: flows accepted before go on
   * if the new rules accept their state. Per-rule counters start again at zero.
   */
  replace(rules: RuleSet | string, file = '<rules>'): void {
    const set = typeof rules === 'string' ? parseRules(rules, file) : rules
    const chains: Record<NetDirection, CompiledRule[]> = { 'from-guest': [], 'to-guest': [] }
    for (const rule of set.rules) chains[rule.direction].push(compileRule(rule))
    this.set = set
    this.chains = chains
    this.policies = {
      'from-guest': set.policy['from-guest'] === 'accept' ? ACCEPT : DROP,
      'to-guest': set.policy['to-guest'] === 'accept' ? ACCEPT : DROP,
    }
  }

  inspect(frame: Uint8Array, p: Packet, direction: NetDirection, ctx: NetContext): boolean {
    const now = ctx.now
    this.lastNow = now
    const d = this.stats[direction]
    if (p.error !== undefined) {
      d.malformed++
      d.dropped++
      return false
    }
    if (p.laterFragment) {
      if (this.ct.fragmentAllowed(frame, p, now)) {
        d.fragmentsAccepted++
        d.accepted++
        return true
      }
      d.fragmentsDropped++
      d.dropped++
      return false
    }
    const ct = this.ct.classify(frame, p, now)
    const rule = firstMatch(this.chains[direction], frame, p, ct)
    let verdict: Verdict
    if (rule !== undefined) {
      rule.packets++
      rule.bytes += frame.length
      verdict = rule.verdict
    } else {
      verdict = this.policies[direction]
      if (verdict === ACCEPT) d.policyAccepted++
      else d.policyDropped++
    }
    if (verdict.kind === 'accept') {
      this.ct.commit(p, now)
      if (p.fragment) this.ct.admitFragments(frame, p, now)
      d.accepted++
      return true
    }
    if (verdict.kind === 'drop') {
      d.dropped++
      return false
    }
    d.rejected++
    const how = verdict.with
    let answer: Uint8Array | undefined
    if (how.kind === 'tcp-reset' || (how.kind === 'default' && p.protocol === 6 && p.ipVersion !== 0))
      answer = this.answers.tcpReset(frame, p)
    else if (how.kind === 'icmp') answer = this.answers.unreachable(frame, p, how.v4, how.v6)
    else answer = this.answers.unreachable(frame, p, 3, 4)
    if (answer === undefined) d.rejectRepliesSuppressed++
    else {
      d.rejectRepliesSent++
      ctx.reply(answer)
    }
    return false
  }

  counters(): FirewallCounters {
    this.ct.expire(this.lastNow)
    const rules: RuleCounters[] = []
    for (const direction of ['from-guest', 'to-guest'] as const)
      for (const r of this.chains[direction])
        rules.push({ direction, line: r.rule.line, rule: r.rule.text, packets: r.packets, bytes: r.bytes })
    return {
      file: this.set.file,
      policy: { ...this.set.policy },
      'from-guest': { ...this.stats['from-guest'] },
      'to-guest': { ...this.stats['to-guest'] },
      rules,
      conntrack: this.ct.counters(),
    }
  }

  /** The tracked flows, oldest first (for diagnostics and tests). */
  flows(): ReturnType<Conntrack['flows']> {
    return this.ct.flows()
  }
}

/** A firewall from the text of a rules file; throws VrioError 'invalid-rules' listing every bad line. */
export function createFirewall(text: string, fileName = '<rules>', options: FirewallOptions = {}): Firewall {
  return new Firewall(parseRules(text, fileName), options)
}
