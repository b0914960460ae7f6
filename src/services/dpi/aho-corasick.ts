import { nativeScan } from './native-scan.ts'

/**
 * A multi-pattern prefilter: an Aho–Corasick automaton compiled to a full DFA over byte classes.
 *
 * Matching is ASCII case-insensitive (patterns and input are folded), so a hit is a candidate the
 * caller verifies exactly. The transition table is one Int32Array indexed `state * classCount +
 * class`, where bytes that appear in no pattern share class 0: the table stays small (states ×
 * distinct pattern bytes) and a scan is one table load per input byte whatever the pattern count.
 *
 * The automaton is streaming: `scan` takes and returns the state, so a match split across two
 * buffers (two TCP segments) is found when its last byte arrives.
 *
 * Skipping (in the manner of Wu–Manber): with every pattern at least `m` bytes long (m ≥ 2, at
 * most 8 is used), a table marks each byte pair that occurs in the first `m` bytes of a pattern
 * (all case variants). While the automaton is in a shallow state (the root, or one byte deep), no
 * match is in progress beyond the last byte, so the scan leaves the automaton and looks only at the
 * pair ending each window of `m` bytes: a pair in no pattern's first `m` bytes means no pattern
 * starts anywhere in the window's first m − 1 positions, which are skipped whole. Where a pair is
 * marked, the automaton runs again from the root at the window's start (the state it would have
 * been in there, since no match was in progress). Hits and the returned state are exactly those
 * of the byte-by-byte scan; on traffic that looks like no pattern (compressed or encrypted
 * payloads, binary data) it reads one pair per m − 1 bytes instead of a table load per byte.
 */

const foldByte = (b: number): number => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b)

/** Shorter ranges are scanned in JavaScript (a native call costs about what ~100 bytes do). */
const NATIVE_MIN_BYTES = 128
/** The native scan's scalars and hit records (hits are emitted before the next call). */
const nativeIo = new Int32Array(7)
const nativeHits = new Int32Array(2 * 512)

/** Called for each hit: pattern id and the index just past the hit's last byte. */
export type HitCallback = (pattern: number, end: number) => void

/** An automaton's tables, to hand a built automaton to another thread (see AhoCorasick.tables()). */
export interface AhoCorasickTables {
  patternCount: number
  stateCount: number
  classCount: number
  maxPatternLength: number
  skipWindow: number
  shallow: number
  threshold: number
  classes: Uint8Array
  pairs: Uint8Array
  delta: Int32Array
  original: Int32Array
  report: Int32Array
  fail: Int32Array
  outputStart: Int32Array
  outputs: Int32Array
  lengths: Int32Array
}

export class AhoCorasick {
  readonly patternCount: number
  readonly stateCount: number
  readonly classCount: number
  /** The length of the longest pattern (0 when there are none). */
  readonly maxPatternLength: number
  /** Byte → class (folded bytes share a class). */
  readonly #classes: Uint8Array
  /** Skip window (the shortest pattern's length, at most 8); 0: no skipping. */
  readonly skipWindow: number
  /** Byte pair (first | second << 8) → 1 if it occurs in the first skipWindow bytes of a pattern. */
  readonly #pairs: Uint8Array
  /** Scan states below this one are shallow (the root, or one byte deep, not reporting). */
  readonly #shallow: number
  /** Transitions: #delta[state + class], states premultiplied by classCount. */
  readonly #delta: Int32Array
  /** Scan states at or above this one report hits. */
  readonly #threshold: number
  /** Scan state / classCount → the build-time state number (for reporting). */
  readonly #original: Int32Array
  /** The state itself when it ends a pattern, else the nearest suffix state that does, else -1. */
  readonly #report: Int32Array
  readonly #fail: Int32Array
  /** Per state, its own pattern ids: #outputs[#outputStart[s] .. #outputStart[s + 1]). */
  readonly #outputStart: Int32Array
  readonly #outputs: Int32Array
  readonly #lengths: Int32Array
  /** Scans of NATIVE_MIN_BYTES or more go to the native loop when it is built. */
  readonly #native: boolean

  /**
   * Builds the automaton; pattern i's hits report id i. Empty patterns are never reported.
   * `skip: false` turns skipping off (the byte-by-byte scan, for comparison); `native: false` keeps
   * the scan in JavaScript (see native-scan.ts).
   */
  constructor(
    patterns: readonly Uint8Array[],
    options: { skip?: boolean; native?: boolean; tables?: AhoCorasickTables } = {},
  ) {
    this.#native = options.native !== false
    const t = options.tables
    if (t) {
      // Built elsewhere (a worker) from the same patterns: adopt its tables.
      this.patternCount = t.patternCount
      this.stateCount = t.stateCount
      this.classCount = t.classCount
      this.maxPatternLength = t.maxPatternLength
      this.skipWindow = t.skipWindow
      this.#shallow = t.shallow
      this.#threshold = t.threshold
      this.#classes = t.classes
      this.#pairs = t.pairs
      this.#delta = t.delta
      this.#original = t.original
      this.#report = t.report
      this.#fail = t.fail
      this.#outputStart = t.outputStart
      this.#outputs = t.outputs
      this.#lengths = t.lengths
      return
    }
    this.patternCount = patterns.length
    const classes = new Uint8Array(256)
    const classOfFolded = new Map<number, number>()
    for (const p of patterns) {
      for (const b of p) {
        const f = foldByte(b)
        // At most 230 folded byte values, so classes fit a Uint8Array with class 0 to spare.
        if (!classOfFolded.has(f)) classOfFolded.set(f, classOfFolded.size + 1)
      }
    }
    for (let b = 0; b < 256; b++) classes[b] = classOfFolded.get(foldByte(b)) ?? 0
    const classCount = classOfFolded.size + 1
    this.#classes = classes
    this.classCount = classCount

    // The trie, as child maps while building.
    const children: Map<number, number>[] = [new Map()]
    const own: number[][] = [[]]
    const depth: number[] = [0]
    let maxLength = 0
    this.#lengths = new Int32Array(patterns.length)
    patterns.forEach((p, id) => {
      this.#lengths[id] = p.length
      if (p.length === 0) return
      maxLength = Math.max(maxLength, p.length)
      let s = 0
      for (const b of p) {
        const c = classes[b]
        let next = children[s].get(c)
        if (next === undefined) {
          next = children.length
          children.push(new Map())
          own.push([])
          depth.push(depth[s] + 1)
          children[s].set(c, next)
        }
        s = next
      }
      own[s].push(id)
    })
    this.maxPatternLength = maxLength
    const states = children.length
    this.stateCount = states
    const delta = new Int32Array(states * classCount)
    const fail = new Int32Array(states)
    const report = new Int32Array(states).fill(-1)
    // Breadth-first: a state's failure target is shallower, so already complete.
    const queue = new Int32Array(states)
    let head = 0
    let tail = 0
    for (const [c, next] of children[0]) {
      delta[c] = next
      queue[tail++] = next
    }
    while (head < tail) {
      const s = queue[head++]
      const f = fail[s]
      report[s] = own[s].length > 0 ? s : report[f]
      const row = s * classCount
      const failRow = f * classCount
      for (let c = 0; c < classCount; c++) {
        const next = children[s].get(c)
        if (next === undefined) {
          delta[row + c] = delta[failRow + c]
        } else {
          delta[row + c] = next
          fail[next] = delta[failRow + c]
          queue[tail++] = next
        }
      }
    }
    // Renumber for the scan loop: shallow states (depth ≤ 1, not reporting; the root stays 0) come
    // first and states that report last, so "is this state shallow / does it report?" are single
    // comparisons with a threshold; transitions hold premultiplied rows (state * classCount) so the
    // loop does no multiplication. Scan states are these premultiplied numbers.
    const rank = (s: number) => (report[s] >= 0 ? 2 : depth[s] <= 1 ? 0 : 1)
    const renumbered = new Int32Array(states)
    const original = new Int32Array(states)
    let next = 0
    let shallow = 0
    for (let pass = 0; pass < 3; pass++) {
      for (let s = 0; s < states; s++) {
        if (rank(s) !== pass) continue
        renumbered[s] = next
        original[next++] = s
      }
      if (pass === 0) shallow = next
    }
    let firstReporting = states
    for (let n = 0; n < states; n++) {
      if (report[original[n]] >= 0) {
        firstReporting = n
        break
      }
    }
    const table = new Int32Array(states * classCount)
    for (let n = 0; n < states; n++) {
      const row = original[n] * classCount
      for (let c = 0; c < classCount; c++) table[n * classCount + c] = renumbered[delta[row + c]] * classCount
    }
    this.#delta = table
    this.#threshold = firstReporting * classCount
    this.#shallow = shallow * classCount
    let minLength = Number.POSITIVE_INFINITY
    for (const p of patterns) if (p.length > 0) minLength = Math.min(minLength, p.length)
    const window = options.skip === false || !Number.isFinite(minLength) ? 0 : Math.min(minLength, 8)
    this.#pairs = new Uint8Array(window >= 2 ? 65536 : 0)
    this.skipWindow = window >= 2 ? window : 0
    if (this.skipWindow > 0) this.skipWindow = markPairs(this.#pairs, patterns, window)
    this.#original = original
    this.#fail = fail
    this.#report = report
    const outputStart = new Int32Array(states + 1)
    for (let s = 0; s < states; s++) outputStart[s + 1] = outputStart[s] + own[s].length
    const outputs = new Int32Array(outputStart[states])
    for (let s = 0; s < states; s++) outputs.set(own[s], outputStart[s])
    this.#outputStart = outputStart
    this.#outputs = outputs
  }

  /** The tables (shared, not copied): structured-cloneable, their buffers transferable. */
  tables(): AhoCorasickTables {
    return {
      patternCount: this.patternCount,
      stateCount: this.stateCount,
      classCount: this.classCount,
      maxPatternLength: this.maxPatternLength,
      skipWindow: this.skipWindow,
      shallow: this.#shallow,
      threshold: this.#threshold,
      classes: this.#classes,
      pairs: this.#pairs,
      delta: this.#delta,
      original: this.#original,
      report: this.#report,
      fail: this.#fail,
      outputStart: this.#outputStart,
      outputs: this.#outputs,
      lengths: this.#lengths,
    }
  }

  /** Bytes used by the tables (for counters). */
  get tableBytes(): number {
    return this.#delta.byteLength + this.#report.byteLength * 4 + this.#outputs.byteLength
  }

  /**
   * Runs `data[start, end)` from `state` (0 = the start; otherwise a value returned by scan) and
   * returns the state after it. Each occurrence of a pattern ending in the range is reported
   * once, in order of its end.
   */
  scan(data: Uint8Array, start: number, end: number, state: number, onHit: HitCallback): number {
    if (nativeScan && this.#native && end - start >= NATIVE_MIN_BYTES)
      return this.#scanNative(data, start, end, state, onHit)
    if (this.skipWindow === 0) return this.#scanBytes(data, start, end, state, onHit)
    const delta = this.#delta
    const classes = this.#classes
    const threshold = this.#threshold
    const shallow = this.#shallow
    const pairs = this.#pairs
    const m = this.skipWindow
    let s = state
    let i = start
    // The automaton runs at least up to here before it may hand over to skipping (a state from an
    // earlier buffer is one byte deep over a byte that is not in this one).
    let until = s === 0 ? start : start + 1
    // Where skipping keeps failing or skips little (text full of the patterns' pairs), the
    // automaton runs on for longer stretches before it tries again: this many extra bytes,
    // doubling up to 4 KiB, back to 0 after a skip of at least four windows.
    let backoff = 0
    for (;;) {
      // A stretch of plain automaton, then up to m more bytes to reach a shallow state.
      const stop = Math.min(until, end)
      if (i < stop) {
        s = this.#scanBytes(data, i, stop, s, onHit)
        i = stop
      }
      const deep = Math.min(i + m, end)
      while (i < deep && s >= shallow) {
        s = delta[s + classes[data[i]]]
        i++
        if (s >= threshold) this.#emit(s, i, onHit)
      }
      if (i >= end) return s
      if (s >= shallow) {
        backoff = backoff === 0 ? 16 : Math.min(2 * backoff, 4096)
        until = i + backoff
        continue
      }
      // Shallow: nothing in progress but perhaps the last byte (one deep). Skip from there.
      const from = s === 0 ? i : i - 1
      let j = from
      for (let k = j + m - 2; k + 1 < end && pairs[data[k] | (data[k + 1] << 8)] === 0; k += m - 1) j += m - 1
      backoff = j - from >= 4 * (m - 1) ? 0 : backoff === 0 ? 16 : Math.min(2 * backoff, 4096)
      // A pattern may start in [j, j + m - 1): run the automaton from the root past the marked pair.
      s = 0
      i = j
      until = j + m + backoff
    }
  }

  /** scan() in native code: the same hits and state; refilled while its hit records fill up. */
  #scanNative(data: Uint8Array, start: number, end: number, state: number, onHit: HitCallback): number {
    const io = nativeIo
    const hits = nativeHits
    let s = state
    for (let i = start; i < end; ) {
      io[0] = this.#threshold
      io[1] = this.#shallow
      io[2] = this.skipWindow
      io[3] = i
      io[4] = end
      io[5] = s
      io[6] = 0
      ;(nativeScan as NonNullable<typeof nativeScan>).scan(
        this.#delta,
        this.#classes,
        this.#pairs,
        data,
        io,
        hits,
      )
      s = io[5]
      i = io[4]
      const n = io[6]
      for (let k = 0; k < n; k++) this.#emit(hits[2 * k], hits[2 * k + 1], onHit)
      if (n < hits.length / 2) break
    }
    return s
  }

  /** The byte-by-byte scan (no skipping). */
  #scanBytes(data: Uint8Array, start: number, end: number, state: number, onHit: HitCallback): number {
    const delta = this.#delta
    const classes = this.#classes
    const threshold = this.#threshold
    let s = state
    for (let i = start; i < end; i++) {
      s = delta[s + classes[data[i]]]
      if (s >= threshold) this.#emit(s, i + 1, onHit)
    }
    return s
  }

  #emit(scanState: number, end: number, onHit: HitCallback): void {
    const report = this.#report
    const starts = this.#outputStart
    const outputs = this.#outputs
    const state = this.#original[scanState / this.classCount]
    for (let t = report[state]; t > 0; t = report[this.#fail[t]]) {
      for (let k = starts[t]; k < starts[t + 1]; k++) onHit(outputs[k], end)
    }
  }

  /** The length of pattern `id`. */
  patternLength(id: number): number {
    return this.#lengths[id]
  }
}

/**
 * Marks in `pairs` every byte pair (all case variants) at offsets 0 .. window − 2 of each
 * pattern. Returns `window`, or 0 when so many pairs are marked that skipping would not pay.
 */
function markPairs(pairs: Uint8Array, patterns: readonly Uint8Array[], window: number): number {
  const variants: number[][] = Array.from({ length: 256 }, () => [])
  for (let b = 0; b < 256; b++) variants[foldByte(b)].push(b)
  let marked = 0
  for (const p of patterns) {
    for (let o = 0; o + 1 < window && o + 1 < p.length; o++) {
      for (const a of variants[foldByte(p[o])]) {
        for (const b of variants[foldByte(p[o + 1])]) {
          const at = a | (b << 8)
          if (pairs[at] === 0) marked++
          pairs[at] = 1
        }
      }
    }
  }
  return marked > 65536 / 4 ? 0 : window
}
