/**
 * Verifies a rule's contents and pcres on an inspection buffer, with Suricata's semantics:
 *
 * - `offset`/`depth`: the content must lie in [offset, offset + depth) of the buffer (for a TCP
 *   stream: of the stream, counted from its first byte).
 * - `distance`/`within`: the content must start at or after (end of previous match + distance)
 *   and end at or before (end of previous match + distance + within); without a previous match,
 *   the previous end is the buffer's start.
 * - A negated content (`!"..."`) must not occur in its window; it does not move the previous end.
 * - `pcre` searches the buffer's latin1 text (from the previous end with /R) on the linear-time
 *   engine (regex.ts), charging the packet's regex budget; a search the budget cannot pay for is
 *   not run and the verification fails (`budgetExceeded`).
 * - When a later relative item fails, earlier positions are retried (backtracking), bounded.
 *
 * `minEnd` makes the matcher report only matches whose last positive item ends at or after it:
 * the stream inspector sets it to the start of the new data, so one occurrence alerts once.
 */
import { applyTransform, decodeBase64, MAX_VARIABLES, positionless, verifyKeyword } from './keywords.ts'
import { newRegexBudget, type RegexBudget } from './regex.ts'
import type { ContentMatch, PayloadMatch, PcreMatch } from './rules.ts'

/** An inspection buffer: `data[0, length)` is the stream from offset `base`. */
export interface InspectBuffer {
  data: Buffer
  length: number
  base: number
  /** The latin1 text of data[0, length), built on first use by a pcre. */
  text: string | undefined
  /**
   * The buffer through each chain of transforms asked for so far (key: the names), built on first
   * use: the rules that transform one buffer alike (ET's `http.host; dotprefix;`) share one copy.
   */
  transformed?: Map<string, InspectBuffer>
}

/** Most positions tried per verification, so a crafted payload cannot make matching quadratic. */
export const BACKTRACK_BUDGET = 2048

export class PayloadMatcher {
  readonly #items: PayloadMatch[]
  /** Index of the last non-negated item, or -1. */
  readonly #lastPositive: number
  /** Per item: whether a later item's window depends on where this one matched. */
  readonly #backtrack: boolean[]
  #budget = 0
  #exhausted = false
  #regexBudget: RegexBudget = newRegexBudget()
  /** byte_extract/byte_math variables of the verification under way. */
  readonly #vars = new Float64Array(MAX_VARIABLES)
  /** What the last base64_decode gave, for base64_data. */
  #decoded: Buffer | undefined
  /** Transforms of the buffer (dotprefix, to_lowercase, ...), applied in order before matching. */
  readonly #transforms: PayloadMatch[]
  /** The transforms' names, the key of their result in InspectBuffer.transformed. */
  readonly #transformKey: string

  constructor(all: PayloadMatch[]) {
    this.#transforms = all.filter((m) => m.kind === 'transform')
    this.#transformKey = this.#transforms.map((t) => (t.kind === 'transform' ? t.name : '')).join(' ')
    const items = all.filter((m) => m.kind !== 'transform')
    this.#items = items
    let last = -1
    items.forEach((m, i) => {
      if (!m.negated && (m.kind === 'content' || m.kind === 'pcre')) last = i
    })
    this.#lastPositive = last
    this.#backtrack = items.map((_, i) => {
      for (let j = i + 1; j < items.length; j++) {
        if (items[j].relative) return true
        if (!items[j].negated && !positionless(items[j])) return false
      }
      return false
    })
  }

  get empty(): boolean {
    return this.#items.length === 0
  }

  /** True when the last verification gave up after BACKTRACK_BUDGET positions. */
  get exhausted(): boolean {
    return this.#exhausted
  }

  /**
   * Whether all items hold in `buf`, the last positive one ending at or after `minEnd`. pcre
   * searches charge `regexBudget` (the packet's); when it runs out, the answer is false and
   * `regexBudget.exceeded` is set.
   */
  verify(buf: InspectBuffer, minEnd: number, regexBudget: RegexBudget = newRegexBudget()): boolean {
    this.#budget = BACKTRACK_BUDGET
    this.#exhausted = false
    this.#regexBudget = regexBudget
    if (this.#transforms.length > 0) {
      let transformed = buf.transformed?.get(this.#transformKey)
      if (!transformed) {
        let data: Uint8Array = buf.data.subarray(0, buf.length)
        for (const t of this.#transforms) if (t.kind === 'transform') data = applyTransform(t.name, data)
        const b = Buffer.from(data.buffer, data.byteOffset, data.length)
        transformed = { data: b, length: b.length, base: 0, text: undefined }
        buf.transformed ??= new Map()
        buf.transformed.set(this.#transformKey, transformed)
      }
      return this.#step(transformed, 0, 0, 0)
    }
    return this.#step(buf, 0, 0, minEnd)
  }

  #step(buf: InspectBuffer, i: number, prevEnd: number, minEnd: number): boolean {
    const items = this.#items
    if (i === items.length) return true
    const item = items[i]
    if (item.kind === 'pcre') return this.#pcre(buf, item, i, prevEnd, minEnd)
    if (item.kind !== 'content') {
      if (item.kind === 'transform') return this.#step(buf, i + 1, prevEnd, minEnd)
      if (item.kind === 'base64_decode') {
        const from = (item.relative ? prevEnd : 0) + item.offset
        if (from >= buf.length) return false
        const to = item.bytes > 0 ? Math.min(buf.length, from + item.bytes) : buf.length
        this.#decoded = decodeBase64(buf.data, from, to)
        return this.#step(buf, i + 1, prevEnd, minEnd)
      }
      if (item.kind === 'base64_data') {
        const d = this.#decoded
        if (!d || d.length === 0) return false
        return this.#step({ data: d, length: d.length, base: 0, text: undefined }, i + 1, 0, 0)
      }
      const next = verifyKeyword(item, buf.data, buf.length, prevEnd, this.#vars)
      return next >= 0 && this.#step(buf, i + 1, next, minEnd)
    }
    const length = item.pattern.length
    let lo: number
    let hi: number
    const slots = item.slots
    if (item.relative) {
      const distance = slots?.distance !== undefined ? this.#vars[slots.distance] : item.distance
      const within = slots?.within !== undefined ? this.#vars[slots.within] : item.within
      lo = prevEnd + distance
      hi = within >= 0 ? lo + within : buf.length
    } else {
      const offset = slots?.offset !== undefined ? this.#vars[slots.offset] : item.offset
      const depth = slots?.depth !== undefined ? this.#vars[slots.depth] : item.depth
      lo = offset - buf.base
      hi = depth >= 0 ? offset + depth - buf.base : buf.length
    }
    if (lo < 0) lo = 0
    if (hi > buf.length) hi = buf.length
    // endswith: the content can only be at the buffer's end.
    if (item.endsWith) {
      if (hi < buf.length) return item.negated && this.#step(buf, i + 1, prevEnd, minEnd)
      if (lo < buf.length - length) lo = buf.length - length
    }
    if (item.negated) {
      if (find(buf.data, lo, hi, item) >= 0) return false
      return this.#step(buf, i + 1, prevEnd, minEnd)
    }
    if (i === this.#lastPositive && lo < minEnd - length) lo = minEnd - length
    const retry = this.#backtrack[i]
    for (let at = find(buf.data, lo, hi, item); at >= 0; at = find(buf.data, at + 1, hi, item)) {
      if (this.#step(buf, i + 1, at + length, minEnd)) return true
      if (!retry) return false
      if (--this.#budget <= 0) {
        this.#exhausted = true
        return false
      }
    }
    return false
  }

  #pcre(buf: InspectBuffer, item: PcreMatch, i: number, prevEnd: number, minEnd: number): boolean {
    buf.text ??= buf.data.toString('latin1', 0, buf.length)
    const text = buf.text
    const regex = item.regex
    const budget = this.#regexBudget
    let start = item.relative ? prevEnd : 0
    if (item.negated) {
      if (regex.search(text, start, budget)) return false
      // Not run for want of budget: no verdict, so the rule does not match.
      if (regex.refused) return false
      return this.#step(buf, i + 1, prevEnd, minEnd)
    }
    const mustEnd = i === this.#lastPositive ? minEnd : 0
    for (;;) {
      if (!regex.search(text, start, budget)) return false
      const index = regex.index
      const end = regex.end
      if (end >= mustEnd && this.#step(buf, i + 1, end, minEnd)) return true
      // Sticky (anchored) patterns have one candidate position.
      if (regex.sticky || (!this.#backtrack[i] && end >= mustEnd)) return false
      if (--this.#budget <= 0) {
        this.#exhausted = true
        return false
      }
      start = index + 1
    }
  }
}

const fold = (b: number): number => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b)

/** The first position p in [lo, hi - length] where `item` occurs in `data`, or -1. */
function find(data: Buffer, lo: number, hi: number, item: ContentMatch): number {
  const length = item.pattern.length
  const last = hi - length
  if (lo > last) return -1
  // Native memmem for long case-sensitive searches; a plain loop for short windows and nocase.
  if (!item.nocase && last - lo > 32) {
    const at = data.indexOf(item.pattern, lo)
    return at >= 0 && at <= last ? at : -1
  }
  const nocase = item.nocase
  const pattern = nocase ? item.folded : item.pattern
  const first = pattern[0]
  outer: for (let p = lo; p <= last; p++) {
    if ((nocase ? fold(data[p]) : data[p]) !== first) continue
    for (let k = 1; k < length; k++) {
      if ((nocase ? fold(data[p + k]) : data[p + k]) !== pattern[k]) continue outer
    }
    return p
  }
  return -1
}
