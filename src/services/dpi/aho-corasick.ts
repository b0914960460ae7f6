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
 */

const foldByte = (b: number): number => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b)

/** Called for each hit: pattern id and the index just past the hit's last byte. */
export type HitCallback = (pattern: number, end: number) => void

export class AhoCorasick {
  readonly patternCount: number
  readonly stateCount: number
  readonly classCount: number
  /** The length of the longest pattern (0 when there are none). */
  readonly maxPatternLength: number
  /** Byte → class (folded bytes share a class). */
  readonly #classes: Uint8Array
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

  /** Builds the automaton; pattern i's hits report id i. Empty patterns are never reported. */
  constructor(patterns: readonly Uint8Array[]) {
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
    // Renumber for the scan loop: states that report come last, so "does this state report?" is
    // one comparison with a threshold, and transitions hold premultiplied rows (state * classCount)
    // so the loop does no multiplication. Scan states are these premultiplied numbers.
    const renumbered = new Int32Array(states)
    const original = new Int32Array(states)
    let next = 0
    for (let pass = 0; pass < 2; pass++) {
      for (let s = 0; s < states; s++) {
        if ((report[s] >= 0 ? 1 : 0) !== pass) continue
        renumbered[s] = next
        original[next++] = s
      }
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
