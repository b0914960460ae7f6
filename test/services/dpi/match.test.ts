import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { BACKTRACK_BUDGET, PayloadMatcher } from '../../../src/services/dpi/match.ts'
import { parseRules } from '../../../src/services/dpi/rules.ts'

function matcher(options: string): PayloadMatcher {
  const { rules, errors } = parseRules(`alert tcp any any -> any any (${options} sid:1;)`, 't')
  assert.deepEqual(errors, [])
  return new PayloadMatcher(rules[0].groups[0].items)
}

function matches(options: string, payload: string, base = 0, minEnd = 0): boolean {
  const data = Buffer.from(payload, 'latin1')
  return matcher(options).verify({ data, length: data.length, base, text: undefined }, minEnd)
}

// Hand-worked from the Suricata payload keyword documentation (docs.suricata.io, "Payload Keywords").
const table: Array<[string, string, boolean]> = [
  ['content:"abc"; depth:3;', 'abcdef', true],
  ['content:"abc"; depth:3;', 'xabc', false],
  ['content:"def"; offset:3;', 'abcdefghi', true],
  ['content:"def"; offset:4;', 'abcdefghi', false],
  ['content:"def"; offset:3; depth:3;', 'abcdefghi', true],
  ['content:"def"; offset:3; depth:3;', 'abcxdefgh', false],
  ['content:"abc"; content:"def"; distance:0;', 'abcdef', true],
  ['content:"abc"; content:"def"; distance:0;', 'defabc', false],
  ['content:"abc"; content:"def"; distance:1;', 'abcdef', false],
  ['content:"abc"; content:"def"; distance:1;', 'abcxdef', true],
  ['content:"abc"; content:"bcd"; distance:-2;', 'abcd', true],
  ['content:"abc"; content:"def"; within:3;', 'abcdef', true],
  ['content:"abc"; content:"def"; within:3;', 'abcxdef', false],
  ['content:"abc"; content:"def"; distance:1; within:3;', 'abcxdef', true],
  ['content:"abc"; content:"def"; distance:1; within:3;', 'abcxxdef', false],
  ['content:"abc"; content:!"xyz"; distance:0; within:5;', 'abc12345xyz', true],
  ['content:"abc"; content:!"xyz"; distance:0; within:5;', 'abc1xyz', false],
  ['content:!"evil";', 'good', true],
  ['content:!"evil";', 'so evil', false],
  // Backtracking: the first "a" has no "b" right after it; the second does.
  ['content:"a"; content:"b"; within:1;', 'axab', true],
  ['content:"a"; content:"b"; within:1;', 'axax', false],
  ['content:"GET"; nocase;', 'get /', true],
  ['content:"GET";', 'get /', false],
  ['content:"|00 01|AB|ff|";', 'x\u0000\u0001AB\u00ffy', true],
  // Absolute contents in any order.
  ['content:"def"; content:"abc";', 'abcdef', true],
  // pcre, alone, relative (R), anchored relative, negated.
  ['pcre:"/user=[a-z]+/i";', 'x USER=Bob', true],
  ['content:"GET"; pcre:"/^ \\/x/R";', 'GET /x', true],
  ['content:"GET"; pcre:"/^ \\/x/R";', 'GET  /x', false],
  ['content:"ab"; pcre:"/cd/R";', 'cdab', false],
  ['content:"ab"; pcre:"/cd/R";', 'cdabcd', true],
  ['content:"ab"; pcre:!"/cd/R";', 'cdab', true],
  ['pcre:"/^GET/";', 'xGET', false],
  ['pcre:"/a.b/s";', 'a\nb', true],
  ['pcre:"/a.b/";', 'a\nb', false],
  ['pcre:"/^b$/m";', 'a\nb\nc', true],
]

describe('content and pcre matching', () => {
  for (const [options, payload, expected] of table) {
    it(`${options} on ${JSON.stringify(payload)} → ${expected}`, () => {
      assert.equal(matches(options, payload), expected)
    })
  }

  it('counts offset/depth from the stream start when the buffer is a later window', () => {
    // The buffer holds stream bytes [100, 106): an offset 0 depth 3 content cannot be there.
    assert.equal(matches('content:"abc"; depth:3;', 'abcdef', 100), false)
    assert.equal(matches('content:"def"; offset:103; depth:3;', 'abcdef', 100), true)
    assert.equal(matches('content:"def"; offset:104;', 'abcdef', 100), false)
  })

  it('only reports matches whose last positive item ends at or after minEnd', () => {
    // "abc" appears at [0,3) and [6,9); new data starts at index 5.
    assert.equal(matches('content:"abc";', 'abcxxxabc', 0, 6), true)
    assert.equal(matches('content:"abc";', 'abcxxxxxx', 0, 6), false)
    // The first content may lie in old data; the relative second one must reach new data.
    assert.equal(matches('content:"ab"; content:"cd"; distance:0;', 'ab__cd', 0, 5), true)
    assert.equal(matches('content:"ab"; content:"cd"; distance:0;', 'abcd__', 0, 5), false)
    assert.equal(matches('pcre:"/a+/";', 'aaa_b_a', 0, 7), true)
    assert.equal(matches('pcre:"/a+/";', 'aaa_b_x', 0, 7), false)
  })

  it('bounds backtracking on crafted payloads', () => {
    const m = matcher('content:"a"; content:"a"; distance:0; content:"b"; distance:0; within:1;')
    const data = Buffer.alloc(20_000, 'a')
    // The work is bounded by the budget (counted positions), not by how fast this machine is.
    assert.equal(m.verify({ data, length: data.length, base: 0, text: undefined }, 0), false)
    assert.equal(m.exhausted, true)
    assert.ok(BACKTRACK_BUDGET > 0)
  })

  it('a single content matches exactly where a naive search finds it (nocase or not)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom('a', 'A', 'b', 'B'), { minLength: 1, maxLength: 4 }),
        fc.array(fc.constantFrom('a', 'A', 'b', 'B', 'c'), { maxLength: 60 }),
        fc.boolean(),
        fc.nat(20),
        (pat, text, nocase, offset) => {
          const p = pat.join('')
          const s = text.join('')
          const hay = nocase ? s.toLowerCase() : s
          const needle = nocase ? p.toLowerCase() : p
          const expected = hay.indexOf(needle, offset) >= 0
          const opts = `content:"${p}"; ${nocase ? 'nocase;' : ''} offset:${offset};`
          assert.equal(matches(opts, s), expected)
        },
      ),
      { numRuns: 1000 },
    )
  })
})
