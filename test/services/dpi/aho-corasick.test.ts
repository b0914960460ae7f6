import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { AhoCorasick } from '../../../src/services/dpi/aho-corasick.ts'
import { nativeScan } from '../../../src/services/dpi/native-scan.ts'

const fold = (b: number) => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b)

/** Obviously correct: every (pattern, end) where the folded pattern equals the folded input. */
function naive(patterns: Uint8Array[], input: Uint8Array): string[] {
  const hits: string[] = []
  patterns.forEach((p, id) => {
    if (p.length === 0) return
    for (let end = p.length; end <= input.length; end++) {
      let ok = true
      for (let k = 0; k < p.length && ok; k++) ok = fold(input[end - p.length + k]) === fold(p[k])
      if (ok) hits.push(`${id}@${end}`)
    }
  })
  return hits.sort()
}

function scanAll(ac: AhoCorasick, input: Uint8Array, splits: number[]): string[] {
  const hits: string[] = []
  let state = 0
  let from = 0
  for (const at of [...splits.filter((s) => s <= input.length).sort((a, b) => a - b), input.length]) {
    state = ac.scan(input, from, at, state, (id, end) => hits.push(`${id}@${end}`))
    from = at
  }
  return hits.sort()
}

/** `a` and `b` scanning `input` in the same pieces give the same hits, in order, and states. */
function sameScans(a: AhoCorasick, b: AhoCorasick, input: Uint8Array, splits: number[]): void {
  let stateA = 0
  let stateB = 0
  let from = 0
  for (const at of [...splits.filter((x) => x <= input.length).sort((x, y) => x - y), input.length]) {
    const hitsA: string[] = []
    const hitsB: string[] = []
    stateA = a.scan(input, from, at, stateA, (id, end) => hitsA.push(`${id}@${end}`))
    stateB = b.scan(input, from, at, stateB, (id, end) => hitsB.push(`${id}@${end}`))
    assert.deepEqual(hitsA, hitsB, 'same hits, in the same order')
    assert.equal(stateA, stateB, `same state after [${from}, ${at})`)
    from = at
  }
}

// A small alphabet (with case variants and a high byte) so that patterns overlap and hit often.
const byte = fc.constantFrom(0x41, 0x61, 0x42, 0x62, 0x63, 0x00, 0xff, 0x5b)

describe('Aho–Corasick prefilter', () => {
  it('finds exactly the hits of a naive search, case-insensitively, across buffer splits', () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(byte, { minLength: 0, maxLength: 6 }), { minLength: 0, maxLength: 12 }),
        fc.array(byte, { maxLength: 200 }),
        fc.array(fc.nat(200), { maxLength: 4 }),
        (pats, text, splits) => {
          const patterns = pats.map((p) => Uint8Array.from(p))
          const input = Uint8Array.from(text)
          const ac = new AhoCorasick(patterns)
          assert.deepEqual(scanAll(ac, input, splits), naive(patterns, input))
        },
      ),
      { numRuns: 2000 },
    )
  })

  it('agrees with a naive search on arbitrary bytes and many patterns', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 300 }),
        fc.uint8Array({ maxLength: 2000 }),
        (pats, input) => {
          const ac = new AhoCorasick(pats)
          assert.deepEqual(scanAll(ac, input, []), naive(pats, input))
        },
      ),
      { numRuns: 200 },
    )
  })

  it('skips without missing a hit or changing the state: same hits and states as the byte-by-byte scan', () => {
    // Patterns of 2..10 bytes (so the skip window is 2..8) over inputs mixing bytes in and out of
    // the patterns, split at random places; the state after each buffer must be the same.
    const inputByte = fc.oneof(byte, fc.integer({ min: 0, max: 255 }))
    fc.assert(
      fc.property(
        fc.array(fc.array(byte, { minLength: 2, maxLength: 10 }), { minLength: 1, maxLength: 12 }),
        fc.array(inputByte, { maxLength: 400 }),
        fc.array(fc.nat(400), { maxLength: 6 }),
        (pats, text, splits) => {
          const patterns = pats.map((p) => Uint8Array.from(p))
          const input = Uint8Array.from(text)
          const skipping = new AhoCorasick(patterns)
          const plain = new AhoCorasick(patterns, { skip: false })
          assert.equal(plain.skipWindow, 0)
          assert.deepEqual(scanAll(skipping, input, splits), naive(patterns, input))
          sameScans(skipping, plain, input, splits)
        },
      ),
      { numRuns: 3000 },
    )
  })

  it('skips over bytes that start no pattern (long patterns, binary input)', () => {
    const enc = (s: string) => Buffer.from(s, 'latin1')
    const ac = new AhoCorasick([enc('needle-one'), enc('Haystack!'), enc('zz-top')])
    assert.equal(ac.skipWindow, 6)
    const input = Buffer.alloc(10_000, 0x80)
    enc('..NEEDLE-ONE..').copy(input, 3000)
    enc('haystack!').copy(input, 9991)
    const hits: string[] = []
    const state = ac.scan(input, 0, input.length, 0, (id, end) => hits.push(`${id}@${end}`))
    assert.deepEqual(hits, ['0@3012', '1@10000'])
    assert.equal(new AhoCorasick([enc('a'), enc('needle')]).skipWindow, 0, 'a 1-byte pattern: no skipping')
    assert.equal(
      state,
      new AhoCorasick([enc('needle-one'), enc('Haystack!'), enc('zz-top')], { skip: false }).scan(
        input,
        0,
        input.length,
        0,
        () => {},
      ),
    )
  })

  it('the native scan loop gives the hits (in order) and states of the JavaScript scan, also past its hit records', () => {
    // Built with the addon (npm install runs node-gyp): the native loop must be there.
    assert.ok(nativeScan, 'the addon (build/Release/vrio_io.node) has dpiScan: rebuild it')
    const inputByte = fc.oneof(byte, fc.integer({ min: 0, max: 255 }))
    fc.assert(
      fc.property(
        fc.array(fc.array(byte, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 12 }),
        fc.array(inputByte, { minLength: 128, maxLength: 3000 }),
        fc.array(fc.nat(3000), { maxLength: 4 }),
        fc.boolean(),
        (pats, text, splits, skip) => {
          const patterns = pats.map((p) => Uint8Array.from(p))
          const input = Uint8Array.from(text)
          const native = new AhoCorasick(patterns, { skip })
          const js = new AhoCorasick(patterns, { skip, native: false })
          sameScans(native, js, input, splits)
        },
      ),
      { numRuns: 500 },
    )
    // Long stretches run four ways from guessed states that the scan then corrects: runs of `a`
    // against patterns `a…ab` keep a guess wrong for as long as the pattern (up to 60 bytes), and
    // inputs past 16 KiB cross pieces.
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 60 }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.nat(120), { minLength: 200, maxLength: 600 }),
        fc.array(fc.nat(40_000), { maxLength: 3 }),
        fc.boolean(),
        (lengths, runs, splits, skip) => {
          const patterns = lengths.map((n) => Buffer.from(`${'a'.repeat(n)}b`, 'latin1'))
          const input = Buffer.from(runs.map((n) => `${'a'.repeat(n)}b`).join(''), 'latin1')
          sameScans(
            new AhoCorasick(patterns, { skip }),
            new AhoCorasick(patterns, { skip, native: false }),
            input,
            splits,
          )
        },
      ),
      { numRuns: 60 },
    )
    // More hits than one native call records (1-byte patterns on every byte).
    const enc = (s: string) => Buffer.from(s, 'latin1')
    const input = Buffer.alloc(5000, 0x61)
    const hits: number[] = []
    new AhoCorasick([enc('a'), enc('aa')]).scan(input, 0, input.length, 0, (id) => hits.push(id))
    assert.equal(hits.length, 5000 + 4999)
  })

  it('reports nested and duplicate patterns (worked example)', () => {
    const enc = (s: string) => Buffer.from(s, 'latin1')
    const ac = new AhoCorasick([enc('he'), enc('she'), enc('his'), enc('hers'), enc('HE')])
    const hits: Array<[number, number]> = []
    ac.scan(enc('uSHErs'), 0, 6, 0, (id, end) => hits.push([id, end]))
    assert.deepEqual(
      hits.sort((a, b) => a[1] - b[1] || a[0] - b[0]),
      [
        [0, 4],
        [1, 4],
        [4, 4],
        [3, 6],
      ],
    )
    assert.equal(ac.maxPatternLength, 4)
    // States: root + h,he,her,hers,hi,his + s,sh,she = 10; classes: h,e,s,i,r + other = 6.
    assert.equal(ac.stateCount, 10)
    assert.equal(ac.classCount, 6)
  })
})
