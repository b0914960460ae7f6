/**
 * Payload keywords beyond content and pcre, with Suricata's semantics (parsing and verification):
 * `byte_test`, `byte_jump`, `byte_extract`, `byte_math`, `isdataat`, `bsize`, `urilen`, and the
 * content modifiers `startswith`/`endswith`. Each is an item of a buffer group, verified in rule
 * order by match.ts on the group's buffer: `prevEnd` is Suricata's `buffer_offset` (where the
 * previous item left off); byte_jump, byte_extract and byte_math move it, the others do not.
 *
 * byte_extract and byte_math store a value in a rule-local variable (at most MAX_VARIABLES per
 * rule) that later keywords and contents (offset, depth, distance, within) can name.
 */

import { createHash } from 'node:crypto'

/** A number given in the rule, or a variable (byte_extract/byte_math name) resolved per match. */
export interface Operand {
  value: number
  /** The variable's slot, or -1 for a constant. */
  slot: number
}

export type Endian = 'big' | 'little'
/** `string,hex|dec|oct`: the bytes are ASCII digits in that base; undefined: binary. */
export type NumberBase = 16 | 10 | 8

interface Extract {
  bytes: number
  offset: Operand
  relative: boolean
  endian: Endian
  base: NumberBase | undefined
  bitmask: number | undefined
}

export interface ByteTestMatch extends Extract {
  kind: 'byte_test'
  negated: boolean
  op: '<' | '>' | '=' | '<=' | '>=' | '&' | '^'
  value: Operand
}

export interface ByteJumpMatch extends Extract {
  kind: 'byte_jump'
  negated: false
  multiplier: number
  align: boolean
  from: 'here' | 'beginning' | 'end'
  postOffset: number
}

export interface ByteExtractMatch extends Extract {
  kind: 'byte_extract'
  negated: false
  multiplier: number
  align: number
  slot: number
}

export interface ByteMathMatch extends Extract {
  kind: 'byte_math'
  negated: false
  oper: '+' | '-' | '*' | '/' | '<<' | '>>'
  rvalue: Operand
  slot: number
}

export interface IsDataAtMatch {
  kind: 'isdataat'
  negated: boolean
  relative: boolean
  offset: Operand
}

/** `bsize` (and `urilen` on http.uri): the buffer's length, in [min, max] (negated: outside). */
export interface SizeMatch {
  kind: 'bsize'
  negated: boolean
  relative: false
  min: number
  max: number
}

/** `base64_decode[:bytes N][,offset O][,relative]`: decodes for a later `base64_data`. */
export interface Base64DecodeMatch {
  kind: 'base64_decode'
  negated: false
  relative: boolean
  /** Input bytes to decode at most (0: to the buffer's end). */
  bytes: number
  offset: number
}

/** `base64_data`: the items after it are matched on the decoded data. */
export interface Base64DataMatch {
  kind: 'base64_data'
  negated: false
  relative: false
}

export type KeywordMatch =
  | Base64DecodeMatch
  | Base64DataMatch
  | ByteTestMatch
  | ByteJumpMatch
  | ByteExtractMatch
  | ByteMathMatch
  | IsDataAtMatch
  | SizeMatch

/** Variables a rule may define (Suricata: 64 per rule; ET uses at most a few). */
export const MAX_VARIABLES = 16

export class KeywordError extends Error {}

const fail = (message: string): never => {
  throw new KeywordError(message)
}

/** Rule-local variable names → slots, for one rule being parsed. */
export class Variables {
  readonly #slots = new Map<string, number>()

  define(name: string): number {
    if (!/^[A-Za-z_][\w-]*$/.test(name)) fail(`invalid variable name '${name}'`)
    const known = this.#slots.get(name)
    if (known !== undefined) return known
    if (this.#slots.size >= MAX_VARIABLES) fail(`more than ${MAX_VARIABLES} byte_extract/byte_math variables`)
    const slot = this.#slots.size
    this.#slots.set(name, slot)
    return slot
  }

  /** A number, or a variable defined earlier in the rule. */
  operand(text: string, what: string, min = -65535, max = 0xffffffff): Operand {
    const t = text.trim()
    if (/^-?\d+$/.test(t) || /^0x[0-9a-f]+$/i.test(t)) {
      const n = Number(t)
      if (n < min || n > max) fail(`${what} ${t} is out of range ${min}..${max}`)
      return { value: n, slot: -1 }
    }
    const slot = this.#slots.get(t)
    if (slot === undefined) fail(`${what}: '${t}' is neither a number nor a byte_extract variable`)
    return { value: 0, slot: slot as number }
  }
}

function integer(text: string | undefined, what: string, min: number, max: number): number {
  const t = (text ?? '').trim()
  if (!/^-?\d+$/.test(t) && !/^0x[0-9a-f]+$/i.test(t)) fail(`invalid ${what} '${t}'`)
  const n = Number(t)
  if (n < min || n > max) fail(`${what} ${t} is out of range ${min}..${max}`)
  return n
}

/** The shared tail options of the byte_* keywords; returns the ones it did not know. */
function extractOptions(e: Extract, words: string[], keyword: string): string[] {
  const rest: string[] = []
  for (const raw of words) {
    const w = raw.trim().toLowerCase()
    if (w === 'relative') e.relative = true
    else if (w === 'big') e.endian = 'big'
    else if (w === 'little') e.endian = 'little'
    else if (w === 'dce')
      e.endian = 'little' // DCE/RPC sets it from the header; little is the common case
    else if (w === 'string') e.base ??= 10
    else if (w === 'hex') e.base = 16
    else if (w === 'dec') e.base = 10
    else if (w === 'oct') e.base = 8
    else if (w.startsWith('bitmask')) {
      const m = /^bitmask\s+(0x[0-9a-f]+|\d+)$/.exec(w)
      if (!m) fail(`invalid ${keyword} bitmask '${raw.trim()}'`)
      e.bitmask = Number((m as RegExpExecArray)[1])
    } else rest.push(raw.trim())
  }
  const maxBytes = e.base !== undefined ? 23 : 8
  // 0 bytes with `string`: the number is the rest of the buffer (Suricata 7).
  if ((e.bytes < 1 && e.base === undefined && keyword !== 'byte_jump') || e.bytes > maxBytes)
    fail(`${keyword}: ${e.bytes} bytes is out of range 1..${maxBytes}`)
  return rest
}

function splitArgs(value: string): string[] {
  return value.split(',').map((s) => s.trim())
}

export function parseByteTest(value: string, vars: Variables): ByteTestMatch {
  const args = splitArgs(value)
  if (args.length < 4) fail(`byte_test needs bytes,op,value,offset: '${value}'`)
  let opText = args[1].replace(/\s+/g, '')
  let negated = false
  if (opText.startsWith('!')) {
    negated = true
    opText = opText.slice(1)
  }
  if (opText === '') opText = '='
  if (!['<', '>', '=', '<=', '>=', '&', '^'].includes(opText)) fail(`invalid byte_test operator '${args[1]}'`)
  const m: ByteTestMatch = {
    kind: 'byte_test',
    bytes: integer(args[0], 'byte_test bytes', 0, 23),
    op: opText as ByteTestMatch['op'],
    negated,
    value: vars.operand(args[2], 'byte_test value', 0, Number.MAX_SAFE_INTEGER),
    offset: vars.operand(args[3], 'byte_test offset'),
    relative: false,
    endian: 'big',
    base: undefined,
    bitmask: undefined,
  }
  const rest = extractOptions(m, args.slice(4), 'byte_test')
  if (rest.length > 0) fail(`unknown byte_test option '${rest[0]}'`)
  return m
}

export function parseByteJump(value: string, vars: Variables): ByteJumpMatch {
  const args = splitArgs(value)
  if (args.length < 2) fail(`byte_jump needs bytes,offset: '${value}'`)
  const m: ByteJumpMatch = {
    kind: 'byte_jump',
    negated: false,
    // 0 bytes: nothing read, the jump is post_offset alone (from_beginning/from_end).
    bytes: integer(args[0], 'byte_jump bytes', 0, 23),
    offset: vars.operand(args[1], 'byte_jump offset'),
    relative: false,
    endian: 'big',
    base: undefined,
    bitmask: undefined,
    multiplier: 1,
    align: false,
    from: 'here',
    postOffset: 0,
  }
  for (const w of extractOptions(m, args.slice(2), 'byte_jump')) {
    const [k, v] = w.split(/\s+/, 2)
    const key = k.toLowerCase()
    if (key === 'align') m.align = true
    else if (key === 'from_beginning') m.from = 'beginning'
    else if (key === 'from_end') m.from = 'end'
    else if (key === 'multiplier') m.multiplier = integer(v, 'byte_jump multiplier', 1, 65535)
    else if (key === 'post_offset') m.postOffset = integer(v, 'byte_jump post_offset', -65535, 65535)
    else fail(`unknown byte_jump option '${w}'`)
  }
  return m
}

export function parseByteExtract(value: string, vars: Variables): ByteExtractMatch {
  const args = splitArgs(value)
  if (args.length < 3) fail(`byte_extract needs bytes,offset,name: '${value}'`)
  const m: ByteExtractMatch = {
    kind: 'byte_extract',
    negated: false,
    bytes: integer(args[0], 'byte_extract bytes', 1, 23),
    offset: { value: integer(args[1], 'byte_extract offset', -65535, 65535), slot: -1 },
    relative: false,
    endian: 'big',
    base: undefined,
    bitmask: undefined,
    multiplier: 1,
    align: 0,
    slot: 0,
  }
  for (const w of extractOptions(m, args.slice(3), 'byte_extract')) {
    const [k, v] = w.split(/\s+/, 2)
    const key = k.toLowerCase()
    if (key === 'multiplier') m.multiplier = integer(v, 'byte_extract multiplier', 1, 65535)
    else if (key === 'align') {
      m.align = integer(v, 'byte_extract align', 2, 4)
      if (m.align === 3) fail('byte_extract align must be 2 or 4')
    } else fail(`unknown byte_extract option '${w}'`)
  }
  m.slot = vars.define(args[2])
  return m
}

const BYTE_MATH_OPERS = new Set(['+', '-', '*', '/', '<<', '>>'])

export function parseByteMath(value: string, vars: Variables): ByteMathMatch {
  const fields = new Map<string, string>()
  const flags: string[] = []
  for (const a of splitArgs(value)) {
    const m = /^(\w+)\s+(.+)$/.exec(a)
    if (m) fields.set(m[1].toLowerCase(), m[2].trim())
    else flags.push(a)
  }
  const need = (k: string): string => fields.get(k) ?? fail(`byte_math needs '${k}'`)
  const oper = need('oper')
  if (!BYTE_MATH_OPERS.has(oper)) fail(`invalid byte_math oper '${oper}'`)
  const m: ByteMathMatch = {
    kind: 'byte_math',
    negated: false,
    bytes: integer(need('bytes'), 'byte_math bytes', 1, 10),
    offset: { value: integer(need('offset'), 'byte_math offset', -65535, 65535), slot: -1 },
    relative: false,
    endian: 'big',
    base: undefined,
    bitmask: undefined,
    oper: oper as ByteMathMatch['oper'],
    rvalue: vars.operand(need('rvalue'), 'byte_math rvalue', 0, 0xffffffff),
    slot: 0,
  }
  const words = [...flags]
  const endian = fields.get('endian')
  if (endian) words.push(endian)
  const str = fields.get('string')
  if (str) words.push(str)
  const bitmask = fields.get('bitmask')
  if (bitmask) words.push(`bitmask ${bitmask}`)
  for (const k of fields.keys()) {
    if (!['oper', 'bytes', 'offset', 'rvalue', 'result', 'endian', 'string', 'bitmask'].includes(k))
      fail(`unknown byte_math option '${k}'`)
  }
  const rest = extractOptions(m, words, 'byte_math')
  if (rest.length > 0) fail(`unknown byte_math option '${rest[0]}'`)
  m.slot = vars.define(need('result'))
  return m
}

export function parseIsDataAt(value: string, vars: Variables): IsDataAtMatch {
  let text = value.trim()
  let negated = false
  if (text.startsWith('!')) {
    negated = true
    text = text.slice(1)
  }
  const args = splitArgs(text)
  const m: IsDataAtMatch = {
    kind: 'isdataat',
    negated,
    relative: false,
    offset: vars.operand(args[0], 'isdataat', 0, 65535),
  }
  for (const w of args.slice(1)) {
    if (w === 'relative') m.relative = true
    else if (w !== 'rawbytes') fail(`unknown isdataat option '${w}'`)
  }
  return m
}

/** `bsize:N`, `<N`, `>N`, `<=N`, `>=N`, `!N`, `A<>B` (exclusive) and `urilen` likewise. */
export function parseSize(value: string, keyword: string): SizeMatch {
  let v = value.replace(/\s+/g, '')
  let negated = false
  if (v.startsWith('!')) {
    negated = true
    v = v.slice(1)
  }
  const num = (s: string): number => integer(s, keyword, 0, 0xffffffff)
  const range = /^(\d+)<>(\d+)$/.exec(v)
  if (range) {
    const [a, b] = [num(range[1]), num(range[2])]
    if (b - a < 2) fail(`empty ${keyword} range '${value}'`)
    return { kind: 'bsize', negated, relative: false, min: a + 1, max: b - 1 }
  }
  const m = /^(<=|>=|<|>|=)?(\d+)$/.exec(v)
  if (!m) return fail(`invalid ${keyword} '${value}'`)
  const n = num(m[2])
  const inf = Number.POSITIVE_INFINITY
  switch (m[1]) {
    case '<':
      return { kind: 'bsize', negated, relative: false, min: 0, max: n - 1 }
    case '<=':
      return { kind: 'bsize', negated, relative: false, min: 0, max: n }
    case '>':
      return { kind: 'bsize', negated, relative: false, min: n + 1, max: inf }
    case '>=':
      return { kind: 'bsize', negated, relative: false, min: n, max: inf }
    default:
      return { kind: 'bsize', negated, relative: false, min: n, max: n }
  }
}

export function parseBase64Decode(value: string | undefined): Base64DecodeMatch {
  const m: Base64DecodeMatch = { kind: 'base64_decode', negated: false, relative: false, bytes: 0, offset: 0 }
  if (value === undefined || value.trim() === '') return m
  for (const a of splitArgs(value)) {
    const [k, v] = a.split(/\s+/, 2)
    if (k === 'relative') m.relative = true
    else if (k === 'bytes') m.bytes = integer(v, 'base64_decode bytes', 1, 65535)
    else if (k === 'offset') m.offset = integer(v, 'base64_decode offset', 0, 65535)
    else fail(`unknown base64_decode option '${a}'`)
  }
  return m
}

const isBase64 = (b: number): boolean =>
  (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || b === 0x2b || b === 0x2f

/** Base64 of data[from, to) decoded up to the first byte that is not base64 (as Suricata, RFC 4648). */
export function decodeBase64(data: Uint8Array, from: number, to: number): Buffer {
  let end = from
  while (end < to && isBase64(data[end])) end++
  const text = Buffer.from(data.buffer, data.byteOffset + from, end - from).toString('latin1')
  return Buffer.from(text.slice(0, text.length - (text.length % 4 === 1 ? 1 : 0)), 'base64')
}

/** Whether a keyword's outcome does not depend on match positions (it never needs backtracking). */
export function positionless(item: { kind: string }): boolean {
  return item.kind === 'bsize'
}

const operand = (o: Operand, vars: Float64Array): number => (o.slot < 0 ? o.value : vars[o.slot])

/**
 * Reads `e.bytes` bytes at `at` as a number (binary in the given byte order, or ASCII digits);
 * NaN when they are not there or not digits.
 */
function read(data: Uint8Array, length: number, at: number, e: Extract): number {
  if (at < 0 || at + e.bytes > length) return Number.NaN
  let v = 0
  if (e.base !== undefined) {
    const base = e.base
    const bytes = e.bytes === 0 ? Math.min(23, length - at) : e.bytes
    let k = 0
    while (k < bytes && data[at + k] === 0x20) k++
    const first = k
    for (; k < bytes; k++) {
      const c = data[at + k]
      let d: number
      if (c >= 0x30 && c <= 0x39) d = c - 0x30
      else if (c >= 0x61 && c <= 0x66) d = c - 0x61 + 10
      else if (c >= 0x41 && c <= 0x46) d = c - 0x41 + 10
      else break
      if (d >= base) break
      v = v * base + d
    }
    if (k === first) return Number.NaN
  } else if (e.endian === 'big') {
    for (let k = 0; k < e.bytes; k++) v = v * 256 + data[at + k]
  } else {
    for (let k = e.bytes - 1; k >= 0; k--) v = v * 256 + data[at + k]
  }
  if (e.bitmask !== undefined) {
    v = Number(BigInt(Math.trunc(v)) & BigInt(e.bitmask))
    if (v !== 0) {
      let shift = e.bitmask
      while (shift > 0 && shift % 2 === 0) {
        v = Math.floor(v / 2)
        shift /= 2
      }
    }
  }
  return v
}

/** The bytes `read` consumed for a string number (digits after leading spaces), else e.bytes. */
function consumed(data: Uint8Array, length: number, at: number, e: Extract): number {
  if (e.base === undefined) return e.bytes
  let k = 0
  const bytes = e.bytes === 0 ? Math.min(23, length - at) : e.bytes
  while (k < bytes && data[at + k] === 0x20) k++
  for (; k < bytes; k++) {
    const c = data[at + k]
    const d =
      c >= 0x30 && c <= 0x39
        ? c - 0x30
        : c >= 0x61 && c <= 0x66
          ? c - 0x57
          : c >= 0x41 && c <= 0x46
            ? c - 0x37
            : 99
    if (d >= e.base) break
  }
  return k
}

/** Where an extraction starts: offset from the buffer's start, or from prevEnd when relative. */
function position(e: Extract, prevEnd: number, vars: Float64Array): number {
  const offset = operand(e.offset, vars)
  return e.relative ? prevEnd + offset : offset
}

function compare(op: ByteTestMatch['op'], v: number, value: number): boolean {
  switch (op) {
    case '<':
      return v < value
    case '>':
      return v > value
    case '=':
      return v === value
    case '<=':
      return v <= value
    case '>=':
      return v >= value
    case '&':
      return (BigInt(Math.trunc(v)) & BigInt(Math.trunc(value))) !== 0n
    default:
      return (BigInt(Math.trunc(v)) ^ BigInt(Math.trunc(value))) !== 0n
  }
}

/**
 * Verifies keyword `item` on data[0, length) with the previous item ending at `prevEnd`; `vars`
 * holds the rule's variables. Returns the new prevEnd, or -1 when the keyword does not hold.
 */
export function verifyKeyword(
  item: KeywordMatch,
  data: Uint8Array,
  length: number,
  prevEnd: number,
  vars: Float64Array,
): number {
  switch (item.kind) {
    case 'base64_decode':
    case 'base64_data':
      // Handled by the matcher (match.ts), which owns the decoded buffer.
      return prevEnd
    case 'bsize': {
      const inside = length >= item.min && length <= item.max
      return inside !== item.negated ? prevEnd : -1
    }
    case 'isdataat': {
      const n = operand(item.offset, vars)
      const holds = item.relative ? prevEnd + n <= length : n < length
      return holds !== item.negated ? prevEnd : -1
    }
    case 'byte_test': {
      if (length === 0) return -1
      const at = position(item, prevEnd, vars)
      if (item.relative && length - at <= 0) return -1
      const v = read(data, length, at, item)
      if (Number.isNaN(v)) return -1
      return compare(item.op, v, operand(item.value, vars)) !== item.negated ? prevEnd : -1
    }
    case 'byte_jump': {
      if (length === 0) return -1
      const at = position(item, prevEnd, vars)
      const v = item.bytes === 0 ? (at >= 0 && at <= length ? 0 : Number.NaN) : read(data, length, at, item)
      if (Number.isNaN(v)) return -1
      let jump = v * item.multiplier
      if (item.align && jump % 4 !== 0) jump += 4 - (jump % 4)
      jump += item.postOffset
      let to: number
      if (item.from === 'beginning') to = jump
      else if (item.from === 'end') to = length + jump
      else to = at + (item.bytes === 0 ? 0 : consumed(data, length, at, item)) + jump
      if (to < 0) to = 0
      return to > length ? -1 : to
    }
    case 'byte_extract': {
      const at = position(item, prevEnd, vars)
      if (item.relative && length - at <= 0) return -1
      let v = read(data, length, at, item)
      if (Number.isNaN(v) || (item.base !== undefined && v === 0 && consumed(data, length, at, item) === 0))
        return -1
      v *= item.multiplier
      if (item.align > 0 && v % item.align !== 0) v += item.align - (v % item.align)
      vars[item.slot] = v
      return at + consumed(data, length, at, item)
    }
    case 'byte_math': {
      const at = position(item, prevEnd, vars)
      if (item.relative && length - at <= 0) return -1
      let v = read(data, length, at, item)
      if (Number.isNaN(v)) return -1
      const r = operand(item.rvalue, vars)
      switch (item.oper) {
        case '+':
          v += r
          break
        case '-':
          v -= r
          break
        case '*':
          v *= r
          break
        case '/':
          if (r === 0) return -1
          v = Math.floor(v / r)
          break
        case '<<':
          v = r < 64 ? v * 2 ** r : 0
          break
        default:
          v = Math.floor(v / 2 ** r)
      }
      vars[item.slot] = v
      return at + consumed(data, length, at, item)
    }
  }
}

/** A transform of a sticky buffer (Suricata's `dotprefix;`, `to_lowercase;`, ...). */
export interface TransformMatch {
  kind: 'transform'
  name: TransformName
  negated: false
  relative: false
}

export type TransformName =
  | 'dotprefix'
  | 'strip_whitespace'
  | 'compress_whitespace'
  | 'to_lowercase'
  | 'to_uppercase'
  | 'url_decode'
  | 'to_md5'
  | 'to_sha1'
  | 'to_sha256'
  | 'header_lowercase'
  | 'strip_pseudo_headers'

const TRANSFORMS: ReadonlySet<string> = new Set<TransformName>([
  'dotprefix',
  'strip_whitespace',
  'compress_whitespace',
  'to_lowercase',
  'to_uppercase',
  'url_decode',
  'to_md5',
  'to_sha1',
  'to_sha256',
  'header_lowercase',
  'strip_pseudo_headers',
])

/** The transform named `key`, or undefined when `key` is not one. */
export function parseTransform(key: string, value: string | undefined): TransformMatch | undefined {
  if (!TRANSFORMS.has(key)) return undefined
  if (value !== undefined) fail(`transform '${key}' takes no value`)
  return { kind: 'transform', name: key as TransformName, negated: false, relative: false }
}

const isSpace = (b: number): boolean => b === 0x20 || (b >= 0x09 && b <= 0x0d)
const hexValue = (b: number): number =>
  b >= 0x30 && b <= 0x39
    ? b - 0x30
    : b >= 0x61 && b <= 0x66
      ? b - 0x57
      : b >= 0x41 && b <= 0x46
        ? b - 0x37
        : -1

/** `data` transformed (a new buffer; `data` is not changed). */
export function applyTransform(name: TransformName, data: Uint8Array): Uint8Array {
  switch (name) {
    case 'dotprefix': {
      const out = new Uint8Array(data.length + 1)
      out[0] = 0x2e
      out.set(data, 1)
      return out
    }
    case 'strip_whitespace':
      return data.filter((b) => !isSpace(b))
    case 'compress_whitespace': {
      const out: number[] = []
      for (const b of data) {
        if (isSpace(b) && out.length > 0 && isSpace(out[out.length - 1])) continue
        out.push(b)
      }
      return Uint8Array.from(out)
    }
    case 'to_lowercase':
    case 'header_lowercase':
      return data.map((b) => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b))
    case 'to_uppercase':
      return data.map((b) => (b >= 0x61 && b <= 0x7a ? b - 0x20 : b))
    case 'url_decode': {
      const out: number[] = []
      for (let i = 0; i < data.length; i++) {
        const b = data[i]
        if (
          b === 0x25 &&
          i + 2 < data.length + 0 &&
          hexValue(data[i + 1]) >= 0 &&
          hexValue(data[i + 2]) >= 0
        ) {
          out.push(hexValue(data[i + 1]) * 16 + hexValue(data[i + 2]))
          i += 2
        } else out.push(b === 0x2b ? 0x20 : b)
      }
      return Uint8Array.from(out)
    }
    case 'to_md5':
    case 'to_sha1':
    case 'to_sha256':
      return createHash(name.slice(3)).update(data).digest()
    case 'strip_pseudo_headers':
      return data
  }
}
