import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { IntervalSet } from '../../src/transport/interval-set.ts'

const SEED = Number(process.env.VRIO_FC_SEED ?? 20261202)

/** The same set as a plain byte map: the reference the fast implementation must agree with. */
class Reference {
  readonly bytes = new Set<number>()
  add(s: number, e: number): number {
    let n = 0
    for (let p = s; p < e; p++) if (!this.bytes.has(p)) n += this.bytes.add(p) ? 1 : 0
    return n
  }
  trimBelow(p: number): void {
    for (const b of [...this.bytes]) if (b < p) this.bytes.delete(b)
  }
  covers(s: number, e: number): boolean {
    for (let p = s; p < e; p++) if (!this.bytes.has(p)) return false
    return true
  }
  coveredBytes(s: number, e: number): number {
    let n = 0
    for (let p = s; p < e; p++) if (this.bytes.has(p)) n++
    return n
  }
  nextGap(from: number): number {
    let p = from
    while (this.bytes.has(p)) p++
    return p
  }
  nextCovered(from: number): number {
    let best = Number.POSITIVE_INFINITY
    for (const b of this.bytes) if (b >= from && b < best) best = b
    return best
  }
  ranges(): [number, number][] {
    const sorted = [...this.bytes].sort((a, b) => a - b)
    const out: [number, number][] = []
    for (const b of sorted) {
      const last = out[out.length - 1]
      if (last && last[1] === b) last[1] = b + 1
      else out.push([b, b + 1])
    }
    return out
  }
}

const op = fc.oneof(
  fc.record({ kind: fc.constant('add' as const), s: fc.nat(200), n: fc.integer({ min: 0, max: 30 }) }),
  fc.record({ kind: fc.constant('trim' as const), s: fc.nat(200), n: fc.constant(0) }),
)

describe('IntervalSet', () => {
  it('agrees with a byte-by-byte reference on random operations', () => {
    fc.assert(
      fc.property(
        fc.array(op, { maxLength: 60 }),
        fc.nat(240),
        fc.integer({ min: 1, max: 40 }),
        (ops, q, qn) => {
          const set = new IntervalSet()
          const ref = new Reference()
          for (const o of ops) {
            if (o.kind === 'add') {
              const grows = set.wouldGrow(o.s, o.s + o.n)
              const before = set.count
              assert.equal(set.add(o.s, o.s + o.n), ref.add(o.s, o.s + o.n))
              if (o.n > 0) assert.equal(set.count > before, grows)
            } else {
              set.trimBelow(o.s)
              ref.trimBelow(o.s)
            }
            const ranges: [number, number][] = []
            for (let i = 0; i < set.count; i++) ranges.push([set.start(i), set.end(i)])
            assert.deepEqual(ranges, ref.ranges())
            assert.equal(set.size(), ref.bytes.size)
          }
          assert.equal(set.covers(q, q + qn), ref.covers(q, q + qn))
          assert.equal(set.coveredBytes(q, q + qn), ref.coveredBytes(q, q + qn))
          assert.equal(set.nextGap(q), ref.nextGap(q))
          assert.equal(set.nextCovered(q), ref.nextCovered(q))
        },
      ),
      { seed: SEED, numRuns: 300 },
    )
  })

  it('looks a position up in O(log n) steps however fragmented the set is', () => {
    const set = new IntervalSet()
    const n = 100_000
    // Worst order for a front-to-back walk: every new range after all earlier ones.
    for (let i = 0; i < n; i++) set.add(2 * i, 2 * i + 1)
    assert.equal(set.count, n)
    // Each add costs one binary search (≤ 17 steps for 100k ranges); a linear walk would be ~n²/2.
    assert.ok(set.steps <= n * 18, `steps ${set.steps}`)
    set.steps = 0
    for (let i = 0; i < 1000; i++) {
      set.covers(2 * i * 97, 2 * i * 97 + 1)
      set.nextGap(2 * i * 97)
      set.nextCovered(2 * i * 97 + 1)
    }
    assert.ok(set.steps <= 3000 * 18, `steps ${set.steps}`)
    assert.equal(set.size(), n)
  })
})
