/**
 * Best-effort messages the receiver gave up on (a Skip, or the reassembly timeout), by start
 * position, until the stream has moved past them. Lookups are O(1); forgetting the ones below the
 * next expected position is O(log n) each (a min-heap on their ends), so a peer sending many Skips
 * never makes one segment walk every earlier one.
 */
export class AbandonedMessages {
  private readonly byStart = new Map<number, number>()
  /** Flat pairs [end, start], a binary min-heap on end. */
  private readonly heap: number[] = []
  /** Heap steps taken so far: for tests. */
  steps = 0

  get size(): number {
    return this.byStart.size
  }

  has(start: number): boolean {
    return this.byStart.has(start)
  }

  add(start: number, end: number): void {
    // The first end given for a start stays (a peer that names another end is hostile): one heap
    // entry per message, so the heap is as small as the map.
    if (this.byStart.has(start)) return
    this.byStart.set(start, end)
    const h = this.heap
    let i = h.length >>> 1
    h.push(end, start)
    while (i > 0) {
      this.steps++
      const parent = (i - 1) >>> 1
      if (h[2 * parent] <= end) break
      h[2 * i] = h[2 * parent]
      h[2 * i + 1] = h[2 * parent + 1]
      i = parent
    }
    h[2 * i] = end
    h[2 * i + 1] = start
  }

  /** Forgets every message that ends at or below `position`. */
  forgetBelow(position: number): void {
    const h = this.heap
    while (h.length > 0 && h[0] <= position) {
      const end = h[0]
      const start = h[1]
      if (this.byStart.get(start) === end) this.byStart.delete(start)
      this.pop()
    }
  }

  clear(): void {
    this.byStart.clear()
    this.heap.length = 0
  }

  private pop(): void {
    const h = this.heap
    const lastStart = h.pop()!
    const lastEnd = h.pop()!
    const n = h.length >>> 1
    if (n === 0) return
    let i = 0
    for (;;) {
      this.steps++
      let c = 2 * i + 1
      if (c >= n) break
      if (c + 1 < n && h[2 * (c + 1)] < h[2 * c]) c++
      if (h[2 * c] >= lastEnd) break
      h[2 * i] = h[2 * c]
      h[2 * i + 1] = h[2 * c + 1]
      i = c
    }
    h[2 * i] = lastEnd
    h[2 * i + 1] = lastStart
  }
}
