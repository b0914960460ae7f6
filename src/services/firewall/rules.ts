/**
 * The firewall's rules file: one rule per line in nftables' words (see docs/services.md, section
 * Firewall). `parseRules` turns the text into a `RuleSet` (plain data, compiled by compile.ts) or
 * throws one VrioError 'invalid-rules' that lists every bad line as `FILE:LINE: reason`.
 */
import { VrioError } from '../../errors.ts'
import { parseIPv4, parseIPv6, parseMac } from '../../wire/address.ts'
import type { NetDirection } from '../net/service.ts'
import {
  CT_STATES,
  ETHER_TYPES,
  ICMP_REJECT_CODES,
  ICMP_TYPES,
  ICMPV6_REJECT_CODES,
  ICMPV6_TYPES,
  ICMPX_REJECT_CODES,
  IP_PROTOCOLS,
  lookupName,
  SERVICES,
  TCP_FLAG_NAMES,
} from './names.ts'

/** Inclusive ranges as flat pairs: [lo0, hi0, lo1, hi1, ...]. */
export type Ranges = number[]

/** An address prefix: the address bytes (4 or 16) and how many leading bits must match. */
export interface Prefix {
  bytes: Uint8Array
  length: number
}

export type Match =
  | { kind: 'ether-type'; negate: boolean; ranges: Ranges }
  | { kind: 'ether-addr'; field: 'saddr' | 'daddr'; negate: boolean; macs: number[] }
  | { kind: 'vlan-id'; negate: boolean; ranges: Ranges }
  /** ip protocol, ip6 nexthdr, meta l4proto: the transport protocol after any IPv6 extension headers. */
  | { kind: 'l4proto'; negate: boolean; ranges: Ranges }
  | { kind: 'address'; field: 'saddr' | 'daddr'; negate: boolean; prefixes: Prefix[] }
  | { kind: 'port'; field: 'sport' | 'dport'; negate: boolean; ranges: Ranges }
  /** `any`: some bit of `value` is set (nft's plain `tcp flags syn`); `masked`: (flags & mask) == value. */
  | { kind: 'tcp-flags'; test: 'any' | 'masked'; value: number; mask: number; negate: boolean }
  | { kind: 'icmp-type' | 'icmp-code'; negate: boolean; ranges: Ranges }
  | { kind: 'ct-state'; negate: boolean; mask: number }

/** How a rejected packet is answered; codes are ICMP (v4) and ICMPv6 destination-unreachable codes. */
export type RejectWith =
  | { kind: 'default' }
  | { kind: 'tcp-reset' }
  | { kind: 'icmp'; v4: number; v6: number }

export type Verdict = { kind: 'accept' } | { kind: 'drop' } | { kind: 'reject'; with: RejectWith }

export type PolicyVerdict = 'accept' | 'drop'

export interface Rule {
  direction: NetDirection
  /** 1-based line in the file, and the rule's text without its comment. */
  line: number
  text: string
  /** The IP version every match of the rule implies (0: any, including non-IP frames). */
  family: 0 | 4 | 6
  /** The transport protocol the rule's matches imply, or -1. */
  protocol: number
  matches: Match[]
  verdict: Verdict
}

export interface RuleSet {
  file: string
  /** Default verdict per direction when no rule matches (accept unless the file says otherwise). */
  policy: Record<NetDirection, PolicyVerdict>
  rules: Rule[]
}

class LineError extends Error {}

const fail = (reason: string): never => {
  throw new LineError(reason)
}

const TOKEN_RE = /!=|==|<=|>=|[{},/<>]|[^\s{},/!=<>]+|\S/g
const NUMBER_RE = /^(?:0x[0-9a-f]+|\d+)$/i

function tokenize(text: string): string[] {
  return text.match(TOKEN_RE) ?? []
}

class Cursor {
  i = 0
  readonly tokens: string[]
  constructor(tokens: string[]) {
    this.tokens = tokens
  }

  peek(): string | undefined {
    return this.tokens[this.i]
  }

  /** The next token; fails with "expected WHAT" at the end of the line. */
  take(what: string): string {
    const t = this.tokens[this.i]
    if (t === undefined) fail(`expected ${what} at the end of the line`)
    this.i++
    return t as string
  }

  accept(token: string): boolean {
    if (this.tokens[this.i] !== token) return false
    this.i++
    return true
  }
}

type ValueParser = (token: string) => number | undefined

function numberParser(max: number, names?: Readonly<Record<string, number>>): ValueParser {
  return (token) => {
    const named = names === undefined ? undefined : lookupName(names, token.toLowerCase())
    if (named !== undefined) return named
    if (!NUMBER_RE.test(token)) return undefined
    const value = Number(token)
    return value <= max ? value : undefined
  }
}

const COMPARISONS = new Set(['!=', '==', '<', '>', '<=', '>='])

/**
 * `[op] VALUE`, `[op] { V, V-W, ... }` or `[op] V, W`: a set of numbers as ranges. `<`, `>`, `<=`
 * and `>=` take one value; `!=` negates the set.
 */
function parseNumbers(
  c: Cursor,
  what: string,
  max: number,
  parse: ValueParser,
): { negate: boolean; ranges: Ranges } {
  const op = COMPARISONS.has(c.peek() ?? '') ? c.take(what) : '=='
  const one = (token: string): number => {
    const v = parse(token)
    if (v === undefined) fail(`bad ${what} '${token}' (a number up to ${max}${max > 9 ? ' or a name' : ''})`)
    return v as number
  }
  if (op === '<' || op === '>' || op === '<=' || op === '>=') {
    const v = one(c.take(what))
    const ranges = op === '<' ? [0, v - 1] : op === '<=' ? [0, v] : op === '>' ? [v + 1, max] : [v, max]
    if (ranges[0] > ranges[1]) fail(`'${what} ${op} ${v}' can never match`)
    return { negate: false, ranges }
  }
  const ranges: Ranges = []
  const item = (token: string): void => {
    const named = parse(token)
    if (named !== undefined) {
      ranges.push(named, named)
      return
    }
    const dash = token.indexOf('-', 1)
    if (dash > 0) {
      const lo = one(token.slice(0, dash))
      const hi = one(token.slice(dash + 1))
      if (lo > hi) fail(`empty range '${token}'`)
      ranges.push(lo, hi)
      return
    }
    one(token)
  }
  parseList(c, what, item)
  return { negate: op === '!=', ranges }
}

/** `V`, `V, W, ...` or `{ V, W, ... }`: calls `item` on each element's first token. */
function parseList(c: Cursor, what: string, item: (token: string) => void): void {
  if (c.accept('{')) {
    for (;;) {
      const t = c.take(`'}'`)
      if (t === '}') fail(`empty set of ${what}`)
      if (t === '{' || t === ',') fail(`unexpected '${t}' in a set of ${what}`)
      item(t)
      const sep = c.take(`'}' closing the set`)
      if (sep === '}') return
      if (sep !== ',') fail(`expected ',' or '}' in a set of ${what}, found '${sep}'`)
    }
  }
  for (;;) {
    const t = c.take(what)
    if (t === '{' || t === '}' || t === ',' || t === '/') fail(`expected ${what}, found '${t}'`)
    item(t)
    if (!c.accept(',')) return
  }
}

function parsePrefix(c: Cursor, token: string, version: 4 | 6): Prefix {
  let bytes: Uint8Array | undefined
  if (version === 4) {
    const v = parseIPv4(token)
    if (v !== undefined) bytes = new Uint8Array([v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff])
  } else {
    bytes = parseIPv6(token)
  }
  if (bytes === undefined) fail(`bad IPv${version} address '${token}'`)
  const b = bytes as Uint8Array
  let length = b.length * 8
  if (c.accept('/')) {
    const t = c.take('a prefix length')
    length = NUMBER_RE.test(t) ? Number(t) : -1
    if (length < 0 || length > b.length * 8) fail(`bad prefix length '/${t}' for IPv${version}`)
    for (let bit = length; bit < b.length * 8; bit++)
      if (b[bit >> 3] & (0x80 >> (bit & 7))) fail(`'${token}/${length}' has host bits set`)
  }
  return { bytes: b, length }
}

function parseTcpFlags(c: Cursor): Match {
  const op = c.peek() === '!=' || c.peek() === '==' ? c.take('flags') : ''
  const list = (): number => {
    if (c.peek() === '{') fail(`sets of flag values are not supported: use 'tcp flags X / MASK'`)
    let value = 0
    parseList(c, 'tcp flag', (t) => {
      const v = numberParser(255, TCP_FLAG_NAMES)(t)
      if (v === undefined) fail(`bad tcp flag '${t}' (fin, syn, rst, psh, ack, urg, ecn, cwr)`)
      value |= v as number
    })
    return value
  }
  const value = list()
  if (c.accept('/')) {
    const mask = list()
    if ((value & ~mask) !== 0) fail('tcp flags X / MASK: X has flags outside the mask, it can never match')
    return { kind: 'tcp-flags', test: 'masked', value, mask, negate: op === '!=' }
  }
  // `== syn,ack`: exactly these flags; plain `syn,ack`: any of them (nft's implicit bitmask
  // match); `!= syn,ack`: none of them.
  if (op === '==') return { kind: 'tcp-flags', test: 'masked', value, mask: 0xff, negate: false }
  return { kind: 'tcp-flags', test: 'any', value, mask: value, negate: op === '!=' }
}

interface Builder {
  rule: Rule
  familyWhy: string
  protocolWhy: string
  /** A positive `ether type` match on one non-IP type, or -1. */
  etherType: number
}

function requireFamily(b: Builder, version: 4 | 6, why: string): void {
  if (b.etherType !== -1) fail(`conflicting matches: '${why}' and 'ether type ${b.etherType}'`)
  if (b.rule.family !== 0 && b.rule.family !== version)
    fail(`conflicting matches: '${why}' is IPv${version} but '${b.familyWhy}' is IPv${b.rule.family}`)
  if (b.rule.family === 0) {
    b.rule.family = version
    b.familyWhy = why
  }
}

function requireProtocol(b: Builder, protocol: number, why: string): void {
  if (b.rule.protocol !== -1 && b.rule.protocol !== protocol)
    fail(`conflicting matches: '${why}' and '${b.protocolWhy}' name different protocols`)
  if (b.rule.protocol === -1) {
    b.rule.protocol = protocol
    b.protocolWhy = why
  }
}

/** A positive match on one value: the rule needs that value (for conflict checks and fast skips). */
function single(set: { negate: boolean; ranges: Ranges }): number | undefined {
  return !set.negate && set.ranges.length === 2 && set.ranges[0] === set.ranges[1] ? set.ranges[0] : undefined
}

const ETHER_TYPE = numberParser(0xffff, ETHER_TYPES)
const PROTOCOL = numberParser(255, IP_PROTOCOLS)
const PORT = numberParser(0xffff, SERVICES)

function parseMatch(c: Cursor, b: Builder, keyword: string): void {
  const field = (choices: string[]): string => {
    const f = c.take(`${choices.join(', ')} after '${keyword}'`)
    if (!choices.includes(f)) fail(`unknown ${keyword} field '${f}' (expected ${choices.join(', ')})`)
    return f
  }
  const m = b.rule.matches
  switch (keyword) {
    case 'ether': {
      const f = field(['type', 'saddr', 'daddr'])
      if (f === 'type') {
        const set = parseNumbers(c, 'ether type', 0xffff, ETHER_TYPE)
        const type = single(set)
        if (type === 0x0800) requireFamily(b, 4, 'ether type ip')
        else if (type === 0x86dd) requireFamily(b, 6, 'ether type ip6')
        else if (type !== undefined) {
          if (b.rule.family !== 0) fail(`conflicting matches: 'ether type ${type}' and '${b.familyWhy}'`)
          b.etherType = type
        }
        m.push({ kind: 'ether-type', ...set })
      } else {
        const negate = c.accept('!=')
        const macs: number[] = []
        parseList(c, 'MAC address', (t) => {
          const mac = parseMac(t)
          if (mac === undefined) fail(`bad MAC address '${t}'`)
          macs.push(mac as number)
        })
        m.push({ kind: 'ether-addr', field: f as 'saddr' | 'daddr', negate, macs })
      }
      return
    }
    case 'vlan': {
      field(['id'])
      m.push({ kind: 'vlan-id', ...parseNumbers(c, 'vlan id', 4095, numberParser(4095)) })
      return
    }
    case 'ip':
    case 'ip6': {
      const version = keyword === 'ip' ? 4 : 6
      const f = field(['version', version === 4 ? 'protocol' : 'nexthdr', 'saddr', 'daddr'])
      requireFamily(b, version, `${keyword} ${f}`)
      if (f === 'version') {
        const t = c.take('a version')
        if (t !== String(version)) fail(`'${keyword} version ${t}' can never match (it is ${version})`)
      } else if (f === 'protocol' || f === 'nexthdr') {
        const set = parseNumbers(c, `${keyword} ${f}`, 255, PROTOCOL)
        const p = single(set)
        if (p !== undefined) requireProtocol(b, p, `${keyword} ${f} ${p}`)
        m.push({ kind: 'l4proto', ...set })
      } else {
        const negate = c.accept('!=')
        const prefixes: Prefix[] = []
        parseList(c, `IPv${version} address`, (t) => prefixes.push(parsePrefix(c, t, version)))
        m.push({ kind: 'address', field: f as 'saddr' | 'daddr', negate, prefixes })
      }
      return
    }
    case 'meta': {
      const f = field(['l4proto', 'nfproto'])
      if (f === 'l4proto') {
        const set = parseNumbers(c, 'meta l4proto', 255, PROTOCOL)
        const p = single(set)
        if (p !== undefined) requireProtocol(b, p, `meta l4proto ${p}`)
        m.push({ kind: 'l4proto', ...set })
      } else {
        const t = c.take('ipv4 or ipv6')
        if (t !== 'ipv4' && t !== 'ipv6') fail(`bad meta nfproto '${t}' (ipv4 or ipv6)`)
        requireFamily(b, t === 'ipv4' ? 4 : 6, `meta nfproto ${t}`)
      }
      return
    }
    case 'tcp':
    case 'udp':
    case 'sctp': {
      const f = field(keyword === 'tcp' ? ['sport', 'dport', 'flags'] : ['sport', 'dport'])
      requireProtocol(b, IP_PROTOCOLS[keyword], `${keyword} ${f}`)
      if (f === 'flags') m.push(parseTcpFlags(c))
      else
        m.push({
          kind: 'port',
          field: f as 'sport' | 'dport',
          ...parseNumbers(c, `${keyword} ${f}`, 0xffff, PORT),
        })
      return
    }
    case 'icmp':
    case 'icmpv6': {
      const f = field(['type', 'code'])
      const version = keyword === 'icmp' ? 4 : 6
      requireFamily(b, version, `${keyword} ${f}`)
      requireProtocol(b, version === 4 ? 1 : 58, `${keyword} ${f}`)
      const names = f === 'code' ? undefined : version === 4 ? ICMP_TYPES : ICMPV6_TYPES
      m.push({
        kind: f === 'type' ? 'icmp-type' : 'icmp-code',
        ...parseNumbers(c, `${keyword} ${f}`, 255, numberParser(255, names)),
      })
      return
    }
    case 'ct': {
      field(['state'])
      const negate = c.accept('!=')
      let mask = 0
      parseList(c, 'ct state', (t) => {
        const bit = lookupName(CT_STATES, t)
        if (bit === undefined) fail(`bad ct state '${t}' (new, established, related, invalid, untracked)`)
        mask |= bit as number
      })
      m.push({ kind: 'ct-state', negate, mask })
      return
    }
    default:
      fail(`unknown keyword '${keyword}'`)
  }
}

function parseReject(c: Cursor, b: Builder): RejectWith {
  if (!c.accept('with')) return { kind: 'default' }
  const kind = c.take('tcp, icmp, icmpv6 or icmpx after "with"')
  if (kind === 'tcp') {
    const t = c.take(`'reset'`)
    if (t !== 'reset') fail(`expected 'reset' after 'reject with tcp', found '${t}'`)
    if (b.rule.protocol !== 6)
      fail(`'reject with tcp reset' needs a tcp match (tcp dport, meta l4proto tcp, ...)`)
    return { kind: 'tcp-reset' }
  }
  if (kind !== 'icmp' && kind !== 'icmpv6' && kind !== 'icmpx')
    fail(`unknown reject type '${kind}' (tcp reset, icmp, icmpv6 or icmpx)`)
  c.accept('type')
  const name = c.take('an ICMP code name')
  if (kind === 'icmpx') {
    const codes = lookupName(ICMPX_REJECT_CODES, name)
    if (codes === undefined)
      fail(`bad icmpx reject type '${name}' (${Object.keys(ICMPX_REJECT_CODES).join(', ')})`)
    const [v4, v6] = codes as readonly [number, number]
    return { kind: 'icmp', v4, v6 }
  }
  const table = kind === 'icmp' ? ICMP_REJECT_CODES : ICMPV6_REJECT_CODES
  const code = lookupName(table, name)
  if (code === undefined) fail(`bad ${kind} reject type '${name}' (${Object.keys(table).join(', ')})`)
  requireFamily(b, kind === 'icmp' ? 4 : 6, `reject with ${kind}`)
  return kind === 'icmp'
    ? { kind: 'icmp', v4: code as number, v6: -1 }
    : { kind: 'icmp', v4: -1, v6: code as number }
}

function parseRule(c: Cursor, direction: NetDirection, line: number, text: string): Rule {
  const b: Builder = {
    rule: { direction, line, text, family: 0, protocol: -1, matches: [], verdict: { kind: 'drop' } },
    familyWhy: '',
    protocolWhy: '',
    etherType: -1,
  }
  for (;;) {
    const t = c.peek()
    if (t === undefined) fail('the rule has no verdict (accept, drop or reject)')
    c.i++
    if (t === 'counter') continue
    if (t === 'accept' || t === 'drop') {
      b.rule.verdict = { kind: t }
      break
    }
    if (t === 'reject') {
      b.rule.verdict = { kind: 'reject', with: parseReject(c, b) }
      break
    }
    parseMatch(c, b, t as string)
  }
  const extra = c.peek()
  if (extra !== undefined) fail(`unexpected '${extra}' after the verdict`)
  return b.rule
}

/**
 * Parses a rules file. Throws VrioError 'invalid-rules' (details: file, errors) listing every bad
 * line as `FILE:LINE: reason`.
 */
export function parseRules(text: string, file = '<rules>'): RuleSet {
  const set: RuleSet = { file, policy: { 'from-guest': 'accept', 'to-guest': 'accept' }, rules: [] }
  const errors: string[] = []
  const policySeen = new Set<string>()
  const lines = text.split(/\r?\n/)
  for (let n = 0; n < lines.length; n++) {
    const hash = lines[n].indexOf('#')
    const body = (hash >= 0 ? lines[n].slice(0, hash) : lines[n]).trim()
    if (body === '') continue
    const c = new Cursor(tokenize(body))
    try {
      const first = c.take('a rule')
      if (first === 'policy') {
        const direction = c.take('from-guest or to-guest')
        if (direction !== 'from-guest' && direction !== 'to-guest')
          fail(`bad policy direction '${direction}' (from-guest or to-guest)`)
        const verdict = c.take('accept or drop')
        if (verdict !== 'accept' && verdict !== 'drop') fail(`bad policy '${verdict}' (accept or drop)`)
        if (c.peek() !== undefined) fail(`unexpected '${c.peek()}' after the policy`)
        if (policySeen.has(direction)) fail(`a second policy for ${direction}`)
        policySeen.add(direction)
        set.policy[direction as NetDirection] = verdict as PolicyVerdict
      } else if (first === 'from-guest' || first === 'to-guest') {
        set.rules.push(parseRule(c, first, n + 1, body))
      } else {
        fail(`unknown keyword '${first}' (a line starts with from-guest, to-guest or policy)`)
      }
    } catch (e) {
      if (!(e instanceof LineError)) throw e
      errors.push(`${file}:${n + 1}: ${e.message}`)
    }
  }
  if (errors.length > 0)
    throw new VrioError('invalid-rules', `invalid firewall rules:\n${errors.join('\n')}`, { file, errors })
  return set
}
