import { BlockOp } from './protocol.ts'

/**
 * Per-operation counters and a latency histogram of one disk (an IOhyp back-end's service time, a
 * guest front-end's end-to-end time), kept in typed arrays so counting costs a few additions per
 * request; the metrics endpoint reads them at scrape time (src/daemon/metrics.ts).
 */

/** Operation labels, by index (see opIndex). */
export const BLOCK_OP_NAMES = ['read', 'write', 'flush', 'discard', 'write_zeroes', 'other'] as const
export const OP_OTHER = 5

/** Upper bounds (seconds) of the latency buckets: 25 µs to 10 s, fixed. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
  5, 10,
]

/** The index in BLOCK_OP_NAMES of a BlockOp (anything else: 'other'). */
export function opIndex(op: number): number {
  switch (op) {
    case BlockOp.In:
      return 0
    case BlockOp.Out:
      return 1
    case BlockOp.Flush:
      return 2
    case BlockOp.Discard:
      return 3
    case BlockOp.WriteZeroes:
      return 4
    default:
      return OP_OTHER
  }
}

/**
 * A histogram with fixed bucket bounds over a few label rows (here: operations). `buckets` holds
 * per-row, per-bucket counts (not cumulative); values above the last bound only count in `count`.
 */
export class FixedHistogram {
  readonly bounds: readonly number[]
  readonly rows: number
  readonly buckets: Float64Array
  readonly count: Float64Array
  readonly sum: Float64Array

  constructor(rows: number, bounds: readonly number[] = LATENCY_BUCKETS) {
    this.bounds = bounds
    this.rows = rows
    this.buckets = new Float64Array(rows * bounds.length)
    this.count = new Float64Array(rows)
    this.sum = new Float64Array(rows)
  }

  observe(row: number, value: number): void {
    const b = this.bounds
    this.count[row]++
    this.sum[row] += value
    // Linear: most values land in the first few buckets.
    for (let i = 0; i < b.length; i++) {
      if (value <= b[i]) {
        this.buckets[row * b.length + i]++
        return
      }
    }
  }

  /** Cumulative bucket counts of `row`, as the exposition wants them. */
  cumulative(row: number): number[] {
    const n = this.bounds.length
    const out = new Array<number>(n)
    let acc = 0
    for (let i = 0; i < n; i++) {
      acc += this.buckets[row * n + i]
      out[i] = acc
    }
    return out
  }
}

/** Requests and bytes by operation, and their latency. */
export class BlockOpStats {
  readonly requests = new Float64Array(BLOCK_OP_NAMES.length)
  /** Bytes read and written (other operations move no data: their entries stay 0). */
  readonly bytes = new Float64Array(BLOCK_OP_NAMES.length)
  readonly latency = new FixedHistogram(BLOCK_OP_NAMES.length)
  /** Answers with each non-OK status, indexed by the status (BlockStatus, all below 32). */
  readonly errors = new Float64Array(32)

  /** One request of operation index `op`. */
  count(op: number): void {
    this.requests[op]++
  }

  /** Bytes a read or write (operation index `op`) moved, counted once it succeeded. */
  moved(op: number, bytes: number): void {
    if (op <= 1) this.bytes[op] += bytes
  }
}
