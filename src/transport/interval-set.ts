/**
 * A set of disjoint half-open ranges [start, end) of stream positions, kept sorted and merged.
 * Used for received-out-of-order bytes (receiver) and SACKed bytes (sender). The sets stay small
 * (bounded by the window in segments, and in practice by the number of holes), so a flat array with
 * linear scans beats a tree.
 */
export class IntervalSet {
  /** Flat pairs: starts at even indexes, ends at odd ones. */
  private readonly edges: number[] = []

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
  }

  /** Adds [start, end); returns how many of its bytes were not in the set before. */
  add(start: number, end: number): number {
    if (end <= start) return 0
    const e = this.edges
    // First range whose end reaches `start` (touching ranges merge).
    let i = 0
    while (i < e.length && e[i + 1] < start) i += 2
    let j = i
    let covered = 0
    let newStart = start
    let newEnd = end
    while (j < e.length && e[j] <= end) {
      covered += Math.max(0, Math.min(e[j + 1], end) - Math.max(e[j], start))
      newStart = Math.min(newStart, e[j])
      newEnd = Math.max(newEnd, e[j + 1])
      j += 2
    }
    e.splice(i, j - i, newStart, newEnd)
    return end - start - covered
  }

  /** True when every byte of [start, end) is in the set. */
  covers(start: number, end: number): boolean {
    const e = this.edges
    for (let i = 0; i < e.length; i += 2) {
      if (e[i] > start) return false
      if (e[i + 1] >= end) return true
    }
    return false
  }

  /** Bytes of [start, end) that are in the set. */
  coveredBytes(start: number, end: number): number {
    let n = 0
    const e = this.edges
    for (let i = 0; i < e.length && e[i] < end; i += 2)
      n += Math.max(0, Math.min(e[i + 1], end) - Math.max(e[i], start))
    return n
  }

  /** Removes everything below `position`. */
  trimBelow(position: number): void {
    const e = this.edges
    let i = 0
    while (i < e.length && e[i + 1] <= position) i += 2
    if (i > 0) e.splice(0, i)
    if (e.length > 0 && e[0] < position) e[0] = position
  }

  /** The first position at or after `from` that is not in the set. */
  nextGap(from: number): number {
    const e = this.edges
    let p = from
    for (let i = 0; i < e.length; i += 2) {
      if (e[i] > p) break
      if (e[i + 1] > p) p = e[i + 1]
    }
    return p
  }

  /** The first position at or after `from` that is in the set, or Infinity. */
  nextCovered(from: number): number {
    const e = this.edges
    for (let i = 0; i < e.length; i += 2) {
      if (e[i + 1] > from) return Math.max(e[i], from)
    }
    return Number.POSITIVE_INFINITY
  }

  /** Total bytes in the set. */
  size(): number {
    let n = 0
    for (let i = 0; i < this.edges.length; i += 2) n += this.edges[i + 1] - this.edges[i]
    return n
  }
}
