/**
 * A parser for the common subset of Suricata/Snort rules:
 *
 *   action proto src_addr src_port direction dst_addr dst_port (option; option:value; ...)
 *
 * with line numbers, `\` line continuation and `#` comments. Anything outside the subset is an
 * error for that rule (named, located), never silently ignored; see docs/services.md.
 */
import { VrioError } from '../../errors.ts'
import {
  type AddressMatcher,
  FieldError,
  type PortMatcher,
  parseAddressField,
  parsePortField,
} from './addresses.ts'
import {
  type Classification,
  DEFAULT_CLASSIFICATIONS,
  DEFAULT_PRIORITY,
  resolveVars,
} from './classification.ts'
import {
  APP_PROTOCOLS,
  type AppProto,
  BUFFER_PROTO,
  type BufferId,
  CONTENT_MODIFIERS,
  PCRE_BUFFER_FLAGS,
  STICKY_BUFFERS,
} from './app/buffers.ts'
import {
  emptyRuleState,
  FlowStateError,
  parseFlowbits,
  parseFlowint,
  parseThreshold,
  parseXbits,
  type RuleState,
} from './flowstate.ts'
import {
  KeywordError,
  type KeywordMatch,
  parseByteExtract,
  parseByteJump,
  parseByteMath,
  parseByteTest,
  parseBase64Decode,
  parseIsDataAt,
  parseSize,
  parseTransform,
  type TransformMatch,
  Variables,
} from './keywords.ts'
import { PcreRegex, RegexError, type RegexFlags } from './regex.ts'

export type { AppProto, BufferId } from './app/buffers.ts'

export type RuleAction = 'alert' | 'drop' | 'pass'
/**
 * Transport protocols, and application protocols (`http`, `dns`, `tls`): those match only flows
 * whose protocol was detected as that by content (app/detect.ts), on any port.
 */
export type RuleProtocol = 'tcp' | 'udp' | 'icmp' | 'ip' | AppProto

/** One `content` with its modifiers (Suricata semantics; see match.ts). */
export interface ContentMatch {
  kind: 'content'
  /** The bytes to find; `folded` is their ASCII lower case (what the prefilter sees). */
  pattern: Uint8Array
  folded: Uint8Array
  nocase: boolean
  negated: boolean
  /** Absolute window: [offset, offset + depth) from the buffer's start; depth -1 = unbounded. */
  offset: number
  depth: number
  /** Relative window: [prev + distance, prev + distance + within) after the previous match. */
  relative: boolean
  distance: number
  within: number
  fastPattern: boolean
  /** endswith: the content must end where the buffer ends. */
  endsWith: boolean
  /** byte_extract variables (slots, see keywords.ts) given for offset/depth/distance/within. */
  slots?: { offset?: number; depth?: number; distance?: number; within?: number }
}

/** One `pcre`, on the linear-time engine (regex.ts) over the buffer's latin1 text. */
export interface PcreMatch {
  kind: 'pcre'
  source: string
  regex: PcreRegex
  negated: boolean
  /** /R: the search starts at the end of the previous match. */
  relative: boolean
}

/** content, pcre, and the keywords of keywords.ts (byte_*, isdataat, bsize, transforms). */
export type PayloadMatch = ContentMatch | PcreMatch | KeywordMatch | TransformMatch

/**
 * A rule's payload items bound to one inspection buffer, in rule order. Relative items
 * (distance/within, pcre /R) are relative to the previous item of the same group, and
 * offset/depth count from the start of the group's buffer (Suricata's per-buffer lists).
 */
export interface BufferGroup {
  buffer: BufferId
  items: PayloadMatch[]
}

/** Where a rule's prefilter content is: `rule.groups[group].items[item]`. */
export interface FastPatternRef {
  group: number
  item: number
}

export interface FlowConstraint {
  /** true: established only; false: not_established only; undefined: either. */
  established?: boolean
  /** true: client→server only; false: server→client only; undefined: either. */
  toServer?: boolean
  /** only_stream: payload on the stream only; no_stream: per segment only. */
  stream?: 'stream' | 'packet'
}

export interface DsizeConstraint {
  min: number
  max: number
  negated: boolean
}

export interface Rule {
  file: string
  line: number
  action: RuleAction
  protocol: RuleProtocol
  source: AddressMatcher
  sourcePorts: PortMatcher
  destination: AddressMatcher
  destinationPorts: PortMatcher
  /** `<>`: the header matches either way round. */
  bidirectional: boolean
  gid: number
  sid: number
  rev: number
  msg: string
  classtype?: string
  /** The EVE `alert.category` (the classtype's description), '' when none. */
  category: string
  /** The EVE `alert.severity`: `priority`, else the classtype's, else 3. */
  severity: number
  references: string[]
  metadata: string[]
  /** The application protocol the header names (`alert http ...`), if any. */
  app?: AppProto
  /** content and pcre, grouped by buffer (one group per buffer, in order of first use). */
  groups: BufferGroup[]
  /** The content the prefilter uses; undefined when the rule has no positive content. */
  fastPattern: FastPatternRef | undefined
  flow: FlowConstraint
  dsize?: DsizeConstraint
  /** flowbits, flowint, xbits, threshold, noalert (flowstate.ts); absent when none. */
  state?: RuleState
  /** `tcp-pkt`: payload matched per segment only; `tcp-stream`: on the stream only. */
  tcpMode?: 'packet' | 'stream'
}

export interface RuleError {
  file: string
  line: number
  /** The rule's sid, when its text has one. */
  sid?: number
  message: string
}

export interface ParsedRules {
  rules: Rule[]
  errors: RuleError[]
}

export interface RuleParseOptions {
  /** Rule variables without the `$` (HOME_NET, HTTP_PORTS, ...), over Suricata's defaults. */
  vars?: Readonly<Record<string, string>>
  /** Extra or replaced classtypes. */
  classifications?: Readonly<Record<string, Classification>>
  /** Longest rule (logical line) parsed, in bytes; longer ones are errors. Default MAX_RULE_BYTES. */
  maxRuleBytes?: number
  /** Longest `content`, in bytes; longer ones are errors. Default MAX_CONTENT_BYTES. */
  maxContentBytes?: number
}

/** 64 KiB: ET Open's longest rules are a few KiB. */
export const MAX_RULE_BYTES = 65_536
/** 8 KiB: longer than any content in ET Open or Suricata's rules (the longest are a few hundred bytes). */
export const MAX_CONTENT_BYTES = 8192

const ACTIONS = new Set(['alert', 'drop', 'pass'])
const PROTOCOLS = new Set(['tcp', 'udp', 'icmp', 'ip'])

class RuleSyntaxError extends Error {}

const fail = (message: string): never => {
  throw new RuleSyntaxError(message)
}

/**
 * Parses a rule file. Never throws: each bad rule yields an error with its first line, and the
 * good rules are returned. A later rule reusing a sid is an error ("duplicate sid").
 */
export function parseRules(text: string, file: string, options: RuleParseOptions = {}): ParsedRules {
  const parser = new RuleParser(options)
  parser.parse(text, file)
  return parser.result()
}

/** `sid:N` in a rule's text, for errors about rules that did not parse. */
function sidOf(text: string): number | undefined {
  const m = /[(;]\s*sid\s*:\s*(\d{1,10})\s*;/.exec(text)
  return m ? Number(m[1]) : undefined
}

/**
 * Parses one or more rule files into one set (sids unique across them), a rule at a time:
 * `steps()` yields after each rule, so a caller can spread a big file over several turns of the
 * event loop.
 */
export class RuleParser {
  readonly #vars: Record<string, string>
  readonly #classes: Record<string, Classification>
  readonly #limits: { rule: number; content: number }
  readonly #rules: Rule[] = []
  readonly #errors: RuleError[] = []
  readonly #seen = new Map<string, string>()

  constructor(options: RuleParseOptions = {}) {
    this.#vars = resolveVars(options.vars)
    this.#classes = { ...DEFAULT_CLASSIFICATIONS, ...options.classifications }
    this.#limits = {
      rule: options.maxRuleBytes ?? MAX_RULE_BYTES,
      content: options.maxContentBytes ?? MAX_CONTENT_BYTES,
    }
  }

  parse(text: string, file: string): void {
    for (const _ of this.steps(text, file));
  }

  /** Parses `text`, yielding after each rule. */
  *steps(text: string, file: string): Generator<void> {
    for (const { line, text: ruleText } of logicalLines(text)) {
      try {
        if (ruleText.length > this.#limits.rule)
          fail(`the rule is ${ruleText.length} bytes long, over the limit of ${this.#limits.rule}`)
        const rule = parseRule(ruleText, file, line, this.#vars, this.#classes, this.#limits.content)
        const key = `${rule.gid}:${rule.sid}`
        const first = this.#seen.get(key)
        if (first !== undefined) fail(`duplicate sid ${rule.sid} (first at ${first})`)
        this.#seen.set(key, `${file}:${line}`)
        this.#rules.push(rule)
      } catch (error) {
        const message =
          error instanceof RuleSyntaxError ||
          error instanceof FieldError ||
          error instanceof KeywordError ||
          error instanceof FlowStateError
            ? error.message
            : String(error)
        const sid = sidOf(ruleText.length > this.#limits.rule ? ruleText.slice(0, 4096) : ruleText)
        this.#errors.push({ file, line, ...(sid !== undefined && { sid }), message })
      }
      yield
    }
  }

  result(): ParsedRules {
    return { rules: this.#rules, errors: this.#errors }
  }
}

/** Like parseRules, but any error fails: VrioError 'invalid-rules' listing every error. */
export function parseRulesStrict(text: string, file: string, options: RuleParseOptions = {}): Rule[] {
  const { rules, errors } = parseRules(text, file, options)
  if (errors.length > 0) throw invalidRules(errors)
  return rules
}

export function invalidRules(errors: RuleError[]): VrioError {
  const lines = errors.map((e) => `${e.file}:${e.line}: ${e.message}`)
  return new VrioError('invalid-rules', `invalid rules:\n${lines.join('\n')}`, { errors })
}

/** Joins `\`-continued lines and drops comments and blank lines; `line` is each rule's first line. */
function* logicalLines(text: string): Generator<{ line: number; text: string }> {
  const lines = text.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const start = i
    // The pieces are joined once at the end: joining as we go (and testing the end of the growing
    // string) is quadratic in a file of many continued lines.
    const parts: string[] = []
    let tail = lines[i]
    while (tail.endsWith('\\') && i + 1 < lines.length) {
      tail = tail.slice(0, -1)
      const next = lines[++i]
      if (next === '') continue // the joined text still ends with tail
      parts.push(tail)
      tail = next
    }
    parts.push(tail)
    const trimmed = (parts.length === 1 ? tail : parts.join('')).trim()
    if (trimmed === '' || trimmed.startsWith('#')) continue
    yield { line: start + 1, text: trimmed }
  }
}

/** Splits the header into its 7 fields; brackets may contain spaces. */
function splitHeader(header: string): string[] {
  const fields: string[] = []
  let current = ''
  let depth = 0
  for (const c of header) {
    if (c === '[') depth++
    if (c === ']') depth--
    if ((c === ' ' || c === '\t') && depth === 0) {
      if (current !== '') fields.push(current)
      current = ''
    } else {
      current += c
    }
  }
  if (current !== '') fields.push(current)
  return fields
}

interface RawOption {
  name: string
  value: string | undefined
}

/** Splits `name:value; name; ...`; `;` inside quotes or after `\` does not end an option. */
function splitOptions(body: string): RawOption[] {
  const options: RawOption[] = []
  let i = 0
  const n = body.length
  while (i < n) {
    while (i < n && /\s/.test(body[i])) i++
    if (i >= n) break
    let name = ''
    while (i < n && body[i] !== ':' && body[i] !== ';') name += body[i++]
    name = name.trim()
    if (name === '') fail('empty rule option')
    let value: string | undefined
    if (body[i] === ':') {
      i++
      let v = ''
      let quoted = false
      for (; i < n; i++) {
        const c = body[i]
        if (c === '\\' && i + 1 < n) {
          v += c + body[++i]
          continue
        }
        if (c === '"') quoted = !quoted
        if (c === ';' && !quoted) break
        v += c
      }
      if (quoted) fail(`unterminated quoted string in option '${name}'`)
      value = v.trim()
    }
    i++ // the ';'
    options.push({ name, value })
  }
  return options
}

function parseRule(
  text: string,
  file: string,
  line: number,
  vars: Record<string, string>,
  classes: Record<string, Classification>,
  maxContent: number,
): Rule {
  const open = text.indexOf('(')
  if (open < 0 || !text.endsWith(')')) fail('a rule is `action proto src sport -> dst dport (options;)`')
  const fields = splitHeader(text.slice(0, open))
  if (fields.length !== 7) fail(`the rule header has ${fields.length} fields, not 7`)
  const [action, protoText, src, sport, direction, dst, dport] = fields
  if (!ACTIONS.has(action)) {
    fail(
      action === 'reject' || action.startsWith('reject')
        ? `unsupported action '${action}' (use drop)`
        : `unknown action '${action}'`,
    )
  }
  let protoWord = protoText.toLowerCase()
  // tcp-pkt / tcp-stream: tcp rules whose payload is matched per packet only / on the stream only.
  const tcpMode = protoWord === 'tcp-pkt' ? 'packet' : protoWord === 'tcp-stream' ? 'stream' : undefined
  if (tcpMode) protoWord = 'tcp'
  const app = APP_PROTOCOLS.get(protoWord)
  const protocol = app ?? protoWord
  if (!app && !PROTOCOLS.has(protocol)) fail(`unsupported protocol '${protoText}'`)
  if (direction !== '->' && direction !== '<>') fail(`invalid direction '${direction}' (-> or <>)`)
  const sourcePorts = parsePortField(sport, vars)
  const destinationPorts = parsePortField(dport, vars)
  if ((protocol === 'icmp' || protocol === 'ip') && !(sourcePorts.any && destinationPorts.any)) {
    fail(`ports must be 'any' for protocol ${protocol}`)
  }
  const rule: Rule = {
    file,
    line,
    action: action as RuleAction,
    protocol: protocol as RuleProtocol,
    source: parseAddressField(src, vars),
    sourcePorts,
    destination: parseAddressField(dst, vars),
    destinationPorts,
    bidirectional: direction === '<>',
    ...(app && { app }),
    ...(tcpMode && { tcpMode }),
    gid: 1,
    sid: 0,
    rev: 0,
    msg: '',
    category: '',
    severity: DEFAULT_PRIORITY,
    references: [],
    metadata: [],
    groups: [],
    fastPattern: undefined,
    flow: {},
  }
  let priority: number | undefined
  let flowSeen = false
  const variables = new Variables()
  const state = emptyRuleState()
  /** The sticky buffer in force: where the next content or pcre goes. */
  let sticky: BufferId = 'payload'
  /** The last content or pcre added, and its group. */
  let lastItem: PayloadMatch | undefined
  let lastGroup: BufferGroup | undefined
  const groupOf = (buffer: BufferId): BufferGroup => {
    let g = rule.groups.find((x) => x.buffer === buffer)
    if (!g) {
      g = { buffer, items: [] }
      rule.groups.push(g)
    }
    return g
  }
  const add = (item: PayloadMatch, buffer: BufferId): void => {
    const g = groupOf(buffer)
    g.items.push(item)
    lastItem = item
    lastGroup = g
  }
  /** A keyword item: content modifiers after it still apply to the content before it. */
  const addKeyword = (item: PayloadMatch, buffer: BufferId): void => {
    // A relative keyword belongs to the buffer of the content it follows (Suricata), also when
    // that content was moved there by a modifier (`content:"x"; http_uri; isdataat:1,relative;`).
    const g = item.relative && lastGroup ? lastGroup : groupOf(buffer)
    g.items.push(item)
  }
  /** After base64_data: contents go to the decoded data of the group's base64_decode. */
  let decodedGroup: BufferGroup | undefined
  for (const { name, value } of splitOptions(text.slice(open + 1, -1))) {
    const key = name.toLowerCase()
    const need = (): string => {
      if (value === undefined || value === '') fail(`option '${name}' needs a value`)
      return value as string
    }
    const last = (): ContentMatch => {
      if (lastItem?.kind !== 'content') fail(`'${name}' needs a preceding content`)
      return lastItem as ContentMatch
    }
    const stickyBuffer = STICKY_BUFFERS.get(key)
    if (stickyBuffer !== undefined) {
      noValue(name, value)
      sticky = stickyBuffer
      continue
    }
    const transform = parseTransform(key, value)
    if (transform) {
      // A transform applies to the whole sticky buffer, before its contents.
      const g = groupOf(sticky)
      if (g.items.some((m) => m.kind !== 'transform'))
        fail(`transform '${name}' after a content of its buffer`)
      g.items.push(transform)
      continue
    }
    const modifier = CONTENT_MODIFIERS.get(key)
    if (modifier !== undefined) {
      noValue(name, value)
      const c = last()
      const from = lastGroup as BufferGroup
      if (from.buffer === modifier) continue
      if (from.buffer !== 'payload') fail(`'${name}' on a content already in buffer '${from.buffer}'`)
      from.items.pop()
      if (from.items.length === 0) rule.groups.splice(rule.groups.indexOf(from), 1)
      add(c, modifier)
      continue
    }
    switch (key) {
      case 'msg':
        rule.msg = unescapeText(unquote(need(), name))
        break
      case 'sid':
        rule.sid = integer(need(), name, 1, 0xffffffff)
        break
      case 'gid':
        rule.gid = integer(need(), name, 1, 0xffffffff)
        break
      case 'rev':
        rule.rev = integer(need(), name, 0, 0xffffffff)
        break
      case 'priority':
        priority = integer(need(), name, 1, 255)
        break
      case 'classtype': {
        const c = classes[need()]
        if (!c) fail(`unknown classtype '${value}'`)
        rule.classtype = value
        rule.category = c.description
        break
      }
      case 'reference':
        rule.references.push(need())
        break
      case 'metadata':
        rule.metadata.push(need())
        break
      case 'content':
        if (decodedGroup) {
          const c = parseContent(need(), maxContent)
          decodedGroup.items.push(c)
          lastItem = c
          lastGroup = decodedGroup
        } else add(parseContent(need(), maxContent), sticky)
        break
      case 'nocase':
        noValue(name, value)
        last().nocase = true
        break
      case 'offset':
      case 'depth': {
        const c = last()
        if (c.relative) fail(`'${name}' cannot be mixed with distance/within on one content`)
        if (isVariable(need())) {
          c.slots = { ...c.slots, [key]: variables.operand(need(), name).slot }
          if (key === 'depth') c.depth = 0
          break
        }
        const n = integer(need(), name, key === 'offset' ? 0 : 1, 65535)
        if (key === 'offset') c.offset = n
        else if (n < c.pattern.length) fail(`depth ${n} is shorter than the content (${c.pattern.length})`)
        else c.depth = n
        break
      }
      case 'distance':
      case 'within': {
        const c = last()
        if (c.offset !== 0 || c.depth >= 0) fail(`'${name}' cannot be mixed with offset/depth on one content`)
        c.relative = true
        if (isVariable(need())) {
          c.slots = { ...c.slots, [key]: variables.operand(need(), name).slot }
          if (key === 'within') c.within = 0
          break
        }
        const n = integer(need(), name, key === 'distance' ? -65535 : 1, 65535)
        if (key === 'distance') c.distance = n
        else if (n < c.pattern.length) fail(`within ${n} is shorter than the content (${c.pattern.length})`)
        else c.within = n
        break
      }
      case 'fast_pattern': {
        const c = last()
        // `only` and `offset,length` (chop) only tune the prefilter: the whole content is used.
        if (value !== undefined && value !== 'only' && !/^\d+\s*,\s*\d+$/.test(value))
          fail(`unsupported fast_pattern argument '${value}'`)
        if (c.negated) fail('fast_pattern on a negated content is not supported')
        if (rule.groups.some((g) => g.items.some((m) => m.kind === 'content' && m.fastPattern)))
          fail('fast_pattern used twice')
        c.fastPattern = true
        break
      }
      case 'tls.version': {
        // `tls.version:1.2`: the handshake's version, as an exact match on the tls.version buffer.
        const v = need().trim()
        if (!/^1\.[0-3]$/.test(v)) fail(`unsupported tls.version '${v}' (1.0 to 1.3)`)
        const c = parseContent(`"${v}"`, maxContent)
        c.depth = v.length
        add(c, 'tls.version')
        lastItem = undefined // not a content the content modifiers apply to
        break
      }
      case 'pcre': {
        const { match, buffer } = parsePcre(need())
        add(match, buffer ?? sticky)
        break
      }
      case 'flow':
        if (flowSeen) fail("'flow' used twice")
        flowSeen = true
        rule.flow = parseFlow(need())
        // only_stream / no_stream: the payload on the stream only / per segment only (tcp-stream, tcp-pkt).
        if (rule.flow.stream) rule.tcpMode ??= rule.flow.stream
        break
      case 'startswith': {
        noValue(name, value)
        const c = last()
        if (c.relative || c.offset !== 0 || c.depth >= 0)
          fail("'startswith' with offset/depth/distance/within")
        c.depth = c.pattern.length
        break
      }
      case 'endswith':
        noValue(name, value)
        last().endsWith = true
        break
      case 'byte_test':
        addKeyword(parseByteTest(need(), variables), sticky)
        break
      case 'byte_jump':
        addKeyword(parseByteJump(need(), variables), sticky)
        break
      case 'byte_extract':
        addKeyword(parseByteExtract(need(), variables), sticky)
        break
      case 'byte_math':
        addKeyword(parseByteMath(need(), variables), sticky)
        break
      case 'isdataat':
        addKeyword(parseIsDataAt(need(), variables), sticky)
        break
      case 'base64_decode': {
        const item = parseBase64Decode(value)
        addKeyword(item, sticky)
        break
      }
      case 'base64_data': {
        noValue(name, value)
        const g = rule.groups.find((x) => x.items.some((m) => m.kind === 'base64_decode'))
        if (!g) fail("'base64_data' needs a preceding base64_decode")
        const group = g as BufferGroup
        if (group.items.some((m) => m.kind === 'base64_data')) fail("'base64_data' used twice")
        group.items.push({ kind: 'base64_data', negated: false, relative: false })
        decodedGroup = group
        break
      }
      case 'bsize':
        addKeyword(parseSize(need(), 'bsize'), sticky)
        break
      case 'urilen': {
        const [size, form] = need()
          .split(',')
          .map((x) => x.trim())
        if (form !== undefined && form !== 'norm' && form !== 'raw') fail(`invalid urilen form '${form}'`)
        addKeyword(parseSize(size, 'urilen'), form === 'raw' ? 'http.uri.raw' : 'http.uri')
        break
      }
      case 'flowbits':
        parseFlowbits(value, state)
        break
      case 'flowint':
        parseFlowint(value, state)
        break
      case 'xbits':
        parseXbits(value, state)
        break
      case 'threshold':
      case 'detection_filter':
        parseThreshold(value, state, key)
        break
      case 'noalert':
        noValue(name, value)
        state.noalert = true
        break
      // Harmless for matching, as in Suricata: target names the EVE source/target sides, tag
      // logs the packets after an alert (not done here).
      case 'target':
      case 'tag':
      case 'rawbytes': // a no-op in Suricata too
        break
      case 'dsize':
        if (rule.dsize) fail("'dsize' used twice")
        rule.dsize = parseDsize(need())
        break
      default:
        fail(`unsupported rule option '${name}'`)
    }
  }
  if (rule.sid === 0) fail("missing 'sid'")
  // Buffers belong to one application protocol; vrio parses file_data etc. for HTTP only.
  let bufferApp = rule.app
  for (const g of rule.groups) {
    const p = BUFFER_PROTO[g.buffer]
    if (p === undefined) continue
    if (bufferApp !== undefined && p !== bufferApp)
      fail(`buffer '${g.buffer}' is not inspected on ${bufferApp} flows`)
    bufferApp = p
  }
  if (
    state.noalert ||
    state.threshold ||
    state.flowbits.length + state.flowints.length + state.xbits.length > 0
  )
    rule.state = state
  rule.severity = priority ?? (rule.classtype ? classes[rule.classtype].priority : DEFAULT_PRIORITY)
  rule.fastPattern = chooseFastPattern(rule.groups)
  return rule
}

function noValue(name: string, value: string | undefined): void {
  if (value !== undefined) fail(`option '${name}' takes no value`)
}

function integer(text: string, name: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(text)) fail(`invalid ${name} '${text}'`)
  const n = Number(text)
  if (n < min || n > max) fail(`${name} ${text} is out of range ${min}..${max}`)
  return n
}

function unquote(text: string, name: string): string {
  if (text.length < 2 || !text.startsWith('"') || !text.endsWith('"'))
    fail(`option '${name}' needs a quoted string`)
  return text.slice(1, -1)
}

/** msg text: `\x` stands for x. */
function unescapeText(text: string): string {
  return text.replace(/\\(.)/g, '$1')
}

const HEX_PAIR = /^[0-9a-fA-F]{2}$/

/** `"text|41 42|\"more"` or `!"..."` → bytes. Escapes: \" \\ \; \: \|; hex between pipes. */
function parseContent(value: string, maxContent: number): ContentMatch {
  // Every byte takes at least one character (hex: two), so this bounds the work before it starts.
  if (value.length > 8 * maxContent + 8) fail(`content longer than the limit of ${maxContent} bytes`)
  let text = value
  let negated = false
  if (text.startsWith('!')) {
    negated = true
    text = text.slice(1).trim()
  }
  const body = unquote(text, 'content')
  const bytes: number[] = []
  let inHex = false
  let hex = ''
  for (let i = 0; i < body.length; i++) {
    const c = body[i]
    if (inHex) {
      if (c === '|') {
        if (hex !== '') fail(`odd number of hex digits in content '${body}'`)
        inHex = false
      } else if (c !== ' ') {
        hex += c
        if (hex.length === 2) {
          if (!HEX_PAIR.test(hex)) fail(`invalid hex '${hex}' in content '${body}'`)
          bytes.push(Number.parseInt(hex, 16))
          hex = ''
        }
      }
      continue
    }
    if (c === '|') {
      inHex = true
    } else if (c === '\\') {
      const next = body[++i]
      if (next === undefined || !'"\\;:|'.includes(next)) fail(`invalid escape '\\${next ?? ''}' in content`)
      bytes.push(next.charCodeAt(0))
    } else if (c === '"' || c === ';') {
      fail(`unescaped '${c}' in content`)
    } else {
      const code = c.charCodeAt(0)
      if (code > 0xff) fail(`non-latin1 character in content (use |hex|)`)
      bytes.push(code)
    }
  }
  if (inHex) fail(`unterminated hex in content '${body}'`)
  if (bytes.length === 0) fail('empty content')
  if (bytes.length > maxContent) fail(`content of ${bytes.length} bytes is over the limit of ${maxContent}`)
  const pattern = Uint8Array.from(bytes)
  return {
    kind: 'content',
    pattern,
    folded: foldBytes(pattern),
    nocase: false,
    negated,
    offset: 0,
    depth: -1,
    relative: false,
    distance: 0,
    within: -1,
    fastPattern: false,
    endsWith: false,
  }
}

/** A byte_extract/byte_math variable name where a number could be. */
function isVariable(text: string): boolean {
  return /^[A-Za-z_]/.test(text.trim())
}

/** ASCII lower case of `bytes` (a copy). */
function foldBytes(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.length)
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]
    out[i] = b >= 0x41 && b <= 0x5a ? b + 0x20 : b
  }
  return out
}

/**
 * The explicit fast_pattern, else the longest positive content (the first of equals; an
 * application buffer's before the payload's, as Suricata prefers them), else undefined.
 */
function chooseFastPattern(groups: BufferGroup[]): FastPatternRef | undefined {
  let best: FastPatternRef | undefined
  let bestLength = 0
  let bestApp = false
  for (let g = 0; g < groups.length; g++) {
    const app = groups[g].buffer !== 'payload' && groups[g].buffer !== 'stream'
    const items = groups[g].items
    // The prefilter sees buffers untransformed: a transformed buffer's contents cannot feed it.
    if (items[0]?.kind === 'transform') continue
    for (let i = 0; i < items.length; i++) {
      const m = items[i]
      // Contents after base64_data are in decoded data, which the prefilter does not see.
      if (m.kind === 'base64_data') break
      if (m.kind !== 'content' || m.negated) continue
      if (m.fastPattern) return { group: g, item: i }
      const length = m.pattern.length
      if (!best || (app && !bestApp) || (app === bestApp && length > bestLength)) {
        best = { group: g, item: i }
        bestLength = length
        bestApp = app
      }
    }
  }
  return best
}

/**
 * `"/re/flags"`: i s m x (extended) R (relative) A (anchored), and the HTTP buffer flags (U I P Q
 * H D M C K S Y V W Z, see app/buffers.ts) giving the pcre's buffer; other flags are errors.
 */
function parsePcre(value: string): { match: PcreMatch; buffer: BufferId | undefined } {
  let text = value
  let negated = false
  if (text.startsWith('!')) {
    negated = true
    text = text.slice(1).trim()
  }
  const body = unquote(text, 'pcre')
  const end = body.lastIndexOf('/')
  if (!body.startsWith('/') || end < 1) fail(`pcre must be "/regex/flags", not '${body}'`)
  let source = body.slice(1, end)
  const flags: RegexFlags = { caseless: false, dotAll: false, multiline: false }
  let relative = false
  let anchored = false
  let extended = false
  let buffer: BufferId | undefined
  for (const f of body.slice(end + 1)) {
    const b = PCRE_BUFFER_FLAGS.get(f)
    if (b !== undefined) {
      if (buffer !== undefined && buffer !== b) fail(`pcre flags for two buffers in '${body}'`)
      buffer = b
    } else if (f === 'i') flags.caseless = true
    else if (f === 's') flags.dotAll = true
    else if (f === 'm') flags.multiline = true
    else if (f === 'R') relative = true
    else if (f === 'A') anchored = true
    else if (f === 'x') extended = true
    else fail(`unsupported pcre flag '${f}'`)
  }
  if (extended) source = stripExtended(source)
  // A relative `^` means "right at the previous match": a sticky search from there.
  if (relative && source.startsWith('^') && !flags.multiline) {
    source = source.slice(1)
    anchored = true
  }
  let regex: PcreRegex
  try {
    regex = new PcreRegex(source, flags, anchored)
  } catch (error) {
    return fail(error instanceof RegexError ? error.message : `pcre: ${(error as Error).message}`)
  }
  return { match: { kind: 'pcre', source: body, regex, negated, relative }, buffer }
}

/** PCRE /x: drops unescaped whitespace and `#` comments outside character classes. */
function stripExtended(source: string): string {
  let out = ''
  let inClass = false
  for (let i = 0; i < source.length; i++) {
    const c = source[i]
    if (c === '\\') {
      out += c + (source[i + 1] ?? '')
      i++
    } else if (inClass) {
      if (c === ']') inClass = false
      out += c
    } else if (c === '[') {
      inClass = true
      out += c
    } else if (c === '#') {
      while (i < source.length && source[i] !== '\n') i++
    } else if (!/\s/.test(c)) {
      out += c
    }
  }
  return out
}

function parseFlow(value: string): FlowConstraint {
  const flow: FlowConstraint = {}
  for (const raw of value.split(',')) {
    const word = raw.trim().toLowerCase()
    const set = (field: 'established' | 'toServer', v: boolean): void => {
      if (flow[field] !== undefined && flow[field] !== v) fail(`conflicting flow options in '${value}'`)
      flow[field] = v
    }
    if (word === 'established') set('established', true)
    else if (word === 'not_established') set('established', false)
    else if (word === 'to_server' || word === 'from_client') set('toServer', true)
    else if (word === 'to_client' || word === 'from_server') set('toServer', false)
    else if (word === 'only_stream') flow.stream = 'stream'
    else if (word === 'no_stream') flow.stream = 'packet'
    else if (word !== 'stateless') fail(`unsupported flow option '${word}'`)
  }
  return flow
}

/** `n`, `<n`, `>n`, `<=n`, `>=n`, `!n`, `a<>b` (exclusive, as Suricata). */
function parseDsize(value: string): DsizeConstraint {
  const v = value.replace(/\s+/g, '')
  const num = (s: string): number => integer(s, 'dsize', 0, 65535)
  const range = /^(\d+)<>(\d+)$/.exec(v)
  if (range) {
    const [a, b] = [num(range[1]), num(range[2])]
    if (b - a < 2) fail(`empty dsize range '${value}'`)
    return { min: a + 1, max: b - 1, negated: false }
  }
  const m = /^(<=|>=|<|>|!|=)?(\d+)$/.exec(v)
  if (!m) return fail(`invalid dsize '${value}'`)
  const n = num(m[2])
  switch (m[1]) {
    case '<':
      if (n === 0) fail(`dsize '${value}' never matches`)
      return { min: 0, max: n - 1, negated: false }
    case '<=':
      return { min: 0, max: n, negated: false }
    case '>':
      return { min: n + 1, max: Number.POSITIVE_INFINITY, negated: false }
    case '>=':
      return { min: n, max: Number.POSITIVE_INFINITY, negated: false }
    case '!':
      return { min: n, max: n, negated: true }
    default:
      return { min: n, max: n, negated: false }
  }
}
