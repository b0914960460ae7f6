/** The dashboard's bounded memory: Ring and the aligned History built on it. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { History } from '../../src/dashboard/history.ts'
import { Ring } from '../../src/dashboard/ring.ts'

describe('Ring', () => {
  it('keeps the last `capacity` values, oldest first, whatever was pushed', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.array(fc.integer(), { maxLength: 100 }),
        (cap, values) => {
          const r = new Ring<number>(cap)
          for (const v of values) r.push(v)
          const want = values.slice(-cap)
          assert.deepEqual(r.slice(), want)
          assert.equal(r.length, want.length)
          assert.equal(r.last(), want[want.length - 1])
          assert.equal(r.at(0), want[0])
          assert.equal(r.at(want.length), undefined)
          assert.deepEqual(r.slice(1), want.slice(1))
        },
      ),
    )
  })

  it('refuses a capacity that is not a positive integer', () => {
    assert.throws(() => new Ring(0), RangeError)
    assert.throws(() => new Ring(1.5), RangeError)
  })
})

describe('History', () => {
  const p = (group: string, label: string, value: number | null) => ({ group, label, value })

  it('aligns every series on one time axis; a series that appears later is null before', () => {
    const h = new History(5)
    h.push(1000, [p('iops', 'a', 1)])
    h.push(2000, [p('iops', 'a', 2), p('iops', 'b', 10)])
    h.push(3000, [p('iops', 'b', 11)])
    const all = h.points()
    assert.deepEqual(all.t, [1000, 2000, 3000])
    assert.deepEqual(
      all.series.map((s) => s.label),
      ['a', 'b'],
    )
    assert.deepEqual(all.values, [
      [1, 2, null],
      [null, 10, 11],
    ])
    const later = h.points(2000)
    assert.deepEqual(later.t, [3000])
    assert.deepEqual(later.values, [[null], [11]])
    assert.deepEqual(h.points(3000).t, [])
  })

  it('holds at most `capacity` points and forgets a series absent for the whole window', () => {
    const h = new History(3)
    h.push(1, [p('g', 'gone', 5), p('g', 'stays', 1)])
    for (let t = 2; t <= 10; t++) h.push(t, [p('g', 'stays', t)])
    const all = h.points()
    assert.deepEqual(all.t, [8, 9, 10])
    assert.deepEqual(
      all.series.map((s) => s.label),
      ['stays'],
    )
    assert.deepEqual(all.values, [[8, 9, 10]])
  })

  it('non-finite values are gaps; time must move forward', () => {
    const h = new History(3)
    h.push(1, [p('g', 'x', Number.NaN)])
    h.push(2, [p('g', 'x', 1)])
    assert.deepEqual(h.points().values, [[null, 1]])
    assert.throws(() => h.push(2, []), RangeError)
  })
})
