/**
 * A set of disjoint half-open ranges [start, end) of stream positions, kept sorted and merged.
 * Used for received-out-of-order bytes (receiver) and SACKed bytes (sender).
 *
 * A hostile peer chooses how fragmented these sets get, so every lookup is a binary search
 * (O(log n) comparisons) and the byte total is kept as a running sum; the only linear part left is
 * the memmove of `splice` when a range is inserted or removed, over a count the owner bounds (the
 * connection's `maxIntervals`: see `wouldGrow`). `steps` counts the comparisons made, so tests can
 * check the cost without timing anything.
 */
export class IntervalSet {
  /** Flat pairs: starts at even indexes, ends at odd ones. */
  private readonly edges: number[] = []
  private total = 0
  /** Search steps taken so far (comparisons in the binary searches and merge loops): for tests. */
  steps = 0

  get count(): number {
    return this.edges.length >>> 1
  }

  isEmpty(): boolean {
    return this.edges.length === 0
  }

  start(i: number): number {
    return this.edges[2 * i]
  }

  end(i: number): number {
    return this.edges[2 * i + 1]
  }

  /** Highest end, or -Infinity when empty. */
  max(): number {
    return this.edges.length === 0 ? Number.NEGATIVE_INFINITY : this.edges[this.edges.length - 1]
  }

  clear(): void {
    this.edges.length = 0
    this.total = 0
  }

  /** Index (in ranges) of the first range whose end is ≥ `p` (touching counts); `count` when none. */
  private firstEndingAtOrAfter(p: number): number {
    const e = this.edges
    let lo = 0
    let hi = e.length >>> 1
    while (lo < hi) {
      this.steps++
      const mid = (lo + hi) >>> 1
      if (e[2 * mid + 1] < p) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Index of the first range whose end is > `p` (strictly); `count` when none. Positions are integers. */
  private firstEndingAfter(p: number): number {
    return this.firstEndingAtOrAfter(p + 1)
  }

  /** True when adding [start, end) would make one more range (it touches none that exists). */
  wouldGrow(start: number, end: number): boolean {
    if (end <= start) return false
    const i = this.firstEndingAtOrAfter(start)
    return i === this.count || this.edges[2 * i] > end
  }

  /** Adds [start, end); returns how many of its bytes were not in the set before. */
  add(start: number, end: number): number {
    if (end <= start) return 0
    const e = this.edges
    // First range whose end reaches `start` (touching ranges merge).
    const i = 2 * this.firstEndingAtOrAfter(start)
    let j = i
    let covered = 0
    let newStart = start
    let newEnd = end
    // Every range merged here is removed: the loop's total work is paid for by the ranges it deletes.
    while (j < e.length && e[j] <= end) {
      this.steps++
      covered += e[j + 1] - e[j]
      newStart = Math.min(newStart, e[j])
      newEnd = Math.max(newEnd, e[j + 1])
      j += 2
    }
    if (j === i + 2) {
      e[i] = newStart
      e[i + 1] = newEnd
    } else e.splice(i, j - i, newStart, newEnd)
    const added = newEnd - newStart - covered
    this.total += added
    return added
  }

  /** True when every byte of [start, end) is in the set. */
  covers(start: number, end: number): boolean {
    const i = this.firstEndingAtOrAfter(end)
    return i < this.count && this.edges[2 * i] <= start
  }

  /** Bytes of [start, end) that are in the set. */
  coveredBytes(start: number, end: number): number {
    let n = 0
    const e = this.edges
    for (let i = 2 * this.firstEndingAfter(start); i < e.length && e[i] < end; i += 2) {
      this.steps++
      n += Math.max(0, Math.min(e[i + 1], end) - Math.max(e[i], start))
    }
    return n
  }

  /** Removes everything below `position`. */
  trimBelow(position: number): void {
    const e = this.edges
    const i = 2 * this.firstEndingAfter(position)
    for (let k = 0; k < i; k += 2) this.total -= e[k + 1] - e[k]
    if (i > 0) e.splice(0, i)
    if (e.length > 0 && e[0] < position) {
      this.total -= position - e[0]
      e[0] = position
    }
  }

  /** The first position at or after `from` that is not in the set. */
  nextGap(from: number): number {
    const i = this.firstEndingAfter(from)
    return i < this.count && this.edges[2 * i] <= from ? this.edges[2 * i + 1] : from
  }

  /** The first position at or after `from` that is in the set, or Infinity. */
  nextCovered(from: number): number {
    const i = this.firstEndingAfter(from)
    return i < this.count ? Math.max(this.edges[2 * i], from) : Number.POSITIVE_INFINITY
  }

  /** Total bytes in the set (kept as a running sum). */
  size(): number {
    return this.total
  }
}
