/** Per-operation counters and latency histograms of both ends of a remote disk (devices/blk/op-stats.ts). */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import {
  BLOCK_OP_NAMES,
  type BlockOpStats,
  FixedHistogram,
  LATENCY_BUCKETS,
  opIndex,
} from '../../src/devices/blk/op-stats.ts'
import { BlockOp } from '../../src/devices/blk/protocol.ts'
import { BlkPair, pattern } from './blk-harness.ts'

const KiB = 1024
const MiB = 1024 * KiB

/** Counts by op name, non-zero only. */
function byOp(values: Float64Array): Record<string, number> {
  const out: Record<string, number> = {}
  values.forEach((v, i) => {
    if (v !== 0) out[BLOCK_OP_NAMES[i]] = v
  })
  return out
}

describe('block op stats', () => {
  it('a fixed histogram puts each value in the first bucket that holds it; above the last only in count', () => {
    const h = new FixedHistogram(2)
    h.observe(0, 0.000025) // on a bound: that bucket (le)
    h.observe(0, 0.00003)
    h.observe(0, 0.7)
    h.observe(1, 11)
    assert.deepEqual(h.cumulative(0).slice(0, 3), [1, 2, 2])
    assert.equal(h.cumulative(0)[LATENCY_BUCKETS.indexOf(1)], 3)
    assert.equal(h.count[0], 3)
    assert.ok(Math.abs(h.sum[0] - 0.700055) < 1e-12)
    assert.equal(h.cumulative(1).at(-1), 0)
    assert.equal(h.count[1], 1)
  })

  it('maps every BlockOp to its label and anything else to other', () => {
    assert.deepEqual(
      [BlockOp.In, BlockOp.Out, BlockOp.Flush, BlockOp.Discard, BlockOp.WriteZeroes, 99].map(
        (op) => BLOCK_OP_NAMES[opIndex(op)],
      ),
      ['read', 'write', 'flush', 'discard', 'write_zeroes', 'other'],
    )
  })

  it('front-end (calls) and back-end (requests) count every operation and its bytes, and time each', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 8 * MiB }), { frontend: { maxTransfer: 64 * KiB } })
    await h.connect()
    const f = h.front
    await h.settle(f.write(0, pattern(1, 4 * KiB), false))
    await h.settle(f.write(64 * KiB, pattern(2, 128 * KiB), false)) // one call, two requests
    await h.settle(f.read(0, 4 * KiB))
    await h.settle(f.read(0, 4 * KiB))
    await h.settle(f.read(0, 4 * KiB))
    await h.settle(f.flush())
    await h.settle(f.trim(0, 8 * KiB))
    await h.settle(f.writeZeroes(MiB, 4 * KiB, false, false))

    const front: BlockOpStats = f.ops
    assert.deepEqual(byOp(front.requests), { read: 3, write: 2, flush: 1, discard: 1, write_zeroes: 1 })
    assert.deepEqual(byOp(front.bytes), { read: 12 * KiB, write: 132 * KiB })
    assert.deepEqual(byOp(front.latency.count), { read: 3, write: 2, flush: 1, discard: 1, write_zeroes: 1 })

    const back: BlockOpStats = h.backend.ops
    assert.deepEqual(byOp(back.requests), { read: 3, write: 3, flush: 1, discard: 1, write_zeroes: 1 })
    assert.deepEqual(byOp(back.bytes), { read: 12 * KiB, write: 132 * KiB })
    assert.deepEqual(byOp(back.latency.count), { read: 3, write: 3, flush: 1, discard: 1, write_zeroes: 1 })
    assert.equal(f.outstanding, 0)
  })
})
