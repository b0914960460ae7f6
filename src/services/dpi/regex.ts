/**
 * The `pcre` keyword on a linear-time engine: RE2's algorithm (re2js, a pure-JS port of RE2: no
 * backtracking, so no input can make a match take more than O(text × program) steps), plus a work
 * budget per packet that caps even that.
 *
 * PCRE syntax is translated where RE2 spells it differently (`\Z`, `$` outside multiline mode,
 * `\e`, `\h`, `\cX`, `\R`); what RE2 cannot run in linear time (backreferences, lookahead, atomic
 * groups, possessive quantifiers, conditionals, `\G`, `\K`) is refused with a reason, and the rule
 * loader skips the rule. Lookbehind without captures is supported.
 */
import { MatcherInput, RE2JS } from 're2js'

type Input = ReturnType<typeof MatcherInput.utf16>
const EMPTY: Input = MatcherInput.utf16('')
// The engine's view of the text searched last: one per inspection buffer, shared by its pcres.
let lastText: string | undefined
let lastInput: Input = EMPTY

function inputOf(text: string): Input {
  if (text !== lastText) {
    lastText = text
    lastInput = MatcherInput.utf16(text)
  }
  return lastInput
}

/**
 * Regex work allowed per packet, in steps: each search costs (characters searched) × (program
 * size), the most work RE2's NFA simulation can do on it. Default budget: DEFAULT_REGEX_BUDGET.
 */
export interface RegexBudget {
  /** Steps still allowed for the packet being inspected. */
  remaining: number
  /** Steps charged so far (for counters). */
  used: number
  /** A search was refused because it would exceed the budget. */
  exceeded: boolean
  /** The caller has attributed the refusal (to a rule). */
  charged?: boolean
}

/**
 * 1M steps: on this project's 2-core VM, the worst patterns cost ~15–25 ns per step in re2js, so a
 * packet's regexes cannot take more than ~25 ms; a typical ET pcre (program of 20–60) over a
 * 1500-byte packet costs 30k–90k.
 */
export const DEFAULT_REGEX_BUDGET = 1_000_000

export function newRegexBudget(steps = DEFAULT_REGEX_BUDGET): RegexBudget {
  return { remaining: steps, used: 0, exceeded: false }
}

/** Thrown for a pattern the engine cannot run; `message` is the reason. */
export class RegexError extends Error {}

export interface RegexFlags {
  /** i: case-insensitive. */
  caseless: boolean
  /** s: `.` matches newlines. */
  dotAll: boolean
  /** m: `^`/`$` at line boundaries. */
  multiline: boolean
}

/** A compiled pcre: searches latin1 text (one char per byte) from a position, within a budget. */
export class PcreRegex {
  /** The pattern as given to RE2 (after translation). */
  readonly source: string
  /** RE2's program size: the cost of one step over one character. */
  readonly programSize: number
  /** Only a match starting exactly at the search position counts (pcre /A, relative `^`). */
  readonly sticky: boolean
  /** Set by search(): where the last match started and ended. */
  index = 0
  end = 0
  /** Set by search(): the last search was not run, for want of budget. */
  refused = false
  readonly #re: RE2JS
  /** Reused across searches; holds no text between them. */
  readonly #matcher: ReturnType<RE2JS['matcher']>

  constructor(pcreSource: string, flags: RegexFlags, sticky: boolean) {
    this.source = translatePcre(pcreSource, flags.multiline)
    let f = RE2JS.LOOKBEHINDS
    if (flags.caseless) f |= RE2JS.CASE_INSENSITIVE
    if (flags.dotAll) f |= RE2JS.DOTALL
    if (flags.multiline) f |= RE2JS.MULTILINE
    try {
      this.#re = RE2JS.compile(this.source, f)
    } catch (error) {
      throw new RegexError(unsupportedReason(pcreSource, (error as Error).message))
    }
    this.programSize = Math.max(1, this.#re.programSize())
    this.#matcher = this.#re.matcher(EMPTY)
    this.sticky = sticky
  }

  /**
   * Searches `text` from `start`: true with `index`/`end` set, false when there is no match, or when
   * the search would cost more than the budget left (then `budget.exceeded` is set and nothing ran).
   */
  search(text: string, start: number, budget: RegexBudget): boolean {
    this.refused = false
    if (start > text.length) return false
    const cost = (text.length - start + 1) * this.programSize
    if (cost > budget.remaining) {
      budget.exceeded = true
      this.refused = true
      return false
    }
    budget.remaining -= cost
    budget.used += cost
    const m = this.#matcher
    m.resetMatcherInput(inputOf(text))
    const found = m.find(start)
    if (found) {
      this.index = m.start()
      this.end = m.end()
    }
    m.resetMatcherInput(EMPTY) // so that no rule keeps a packet's text alive
    // Leftmost-first: when a match can start at `start`, find() reports that one.
    return found && (!this.sticky || this.index === start)
  }
}

const UNSUPPORTED: [RegExp, string][] = [
  [/(^|[^\\])\(\?[=!]/, 'lookahead'],
  [/(^|[^\\])\(\?>/, 'atomic groups'],
  [/(^|[^\\])\(\?\(/, 'conditionals'],
  [/(^|[^\\])\(\?(R|\d|&|P>)/, 'recursion'],
  [/(^|[^\\])(\\\\)*\\([1-9]|g|k)/, 'backreferences'],
  [/(^|[^\\])\(\?P=/, 'backreferences'],
  [/[*+?}]\+/, 'possessive quantifiers'],
  [/(^|[^\\])(\\\\)*\\G/, '\\G'],
  [/(^|[^\\])(\\\\)*\\K/, '\\K'],
]

function unsupportedReason(source: string, engineMessage: string): string {
  for (const [re, what] of UNSUPPORTED) {
    if (re.test(source)) return `pcre uses ${what}, which the linear-time regex engine does not run`
  }
  return `pcre not supported by the linear-time regex engine: ${engineMessage}`
}

/**
 * PCRE → RE2 syntax: `\Z` and (without /m) `$` become `(?:\n?\z)` (RE2's `$` is `\z`; PCRE's also
 * matches before a final newline, which it then includes in the match), `\e` ESC, `\cX` the
 * control character, `\h`/`\H` horizontal space (tab, space, 0xA0), `\R` any line break. `\A`,
 * `\z`, `\Q..\E`, POSIX classes, `(?P<name>`, octal and `\x{..}` are RE2's already.
 */
export function translatePcre(source: string, multiline: boolean): string {
  let out = ''
  let inClass = false
  for (let i = 0; i < source.length; i++) {
    const c = source[i]
    if (c === '\\') {
      const n = source[i + 1]
      if (n === undefined) return out + c
      i++
      if (n === 'Q') {
        // Quoted text up to \E, copied as is.
        const close = source.indexOf('\\E', i + 1)
        const end = close < 0 ? source.length : close + 2
        out += `\\Q${source.slice(i + 1, end)}`
        if (close < 0) out += '\\E'
        i = end - 1
      } else if (n === 'e') out += '\\x1b'
      else if (n === 'c' && i + 1 < source.length) {
        out += `\\x${((source.charCodeAt(++i) & 0x5f) ^ 0x40).toString(16).padStart(2, '0')}`
      } else if (n === 'h') out += inClass ? '\\t \\xa0' : '[\\t \\xa0]'
      else if (n === 'H' && !inClass) out += '[^\\t \\xa0]'
      else if (n === 'R' && !inClass) out += '(?:\\r\\n|[\\n\\x0b\\f\\r\\x85])'
      else if (n === 'Z' && !inClass) out += '(?:\\n?\\z)'
      else out += c + n
      continue
    }
    if (inClass) {
      if (c === '[' && source[i + 1] === ':') {
        const close = source.indexOf(':]', i + 2)
        if (close > 0) {
          out += source.slice(i, close + 2)
          i = close + 1
          continue
        }
      }
      if (c === ']') inClass = false
      out += c
      continue
    }
    if (c === '[') {
      inClass = true
      out += c
      // A ']' right after '[' or '[^' is a literal.
      if (source[i + 1] === '^') out += source[++i]
      if (source[i + 1] === ']') out += `\\${source[++i]}`
      continue
    }
    if (c === '$' && !multiline) {
      out += '(?:\\n?\\z)'
      continue
    }
    out += c
  }
  return out
}
