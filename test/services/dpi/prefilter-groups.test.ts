/**
 * The payload prefilter's groups (src/services/dpi/groups.ts): a group's candidates are those of
 * the naive scan over the rules its side can meet. Through the engine: app-engine.test.ts.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { parsePortField } from '../../../src/services/dpi/addresses.ts'
import { type GroupedRule, PrefilterGroups } from '../../../src/services/dpi/groups.ts'

const fold = (b: number) => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b)

/** Whether folded `p` occurs in `input` ending at or before `until`. */
function occurs(p: Uint8Array, input: Uint8Array, until: number): boolean {
  for (let end = p.length; end <= Math.min(until, input.length); end++) {
    let ok = true
    for (let k = 0; k < p.length && ok; k++) ok = fold(input[end - p.length + k]) === p[k]
    if (ok) return true
  }
  return false
}

const PORTS = ['any', '80', '445', '[80,8080]', '1024:', '!80']
const APPS = [undefined, 'http', 'dns'] as const
const byte = fc.constantFrom(0x61, 0x62, 0x63, 0x00, 0xff, 0x41)

const ruleArb = fc.record({
  pattern: fc.array(byte, { minLength: 1, maxLength: 5 }),
  anchor: fc.oneof(fc.constant(-1), fc.integer({ min: 1, max: 40 }), fc.constant(600)),
  classMask: fc.integer({ min: 1, max: 15 }),
  app: fc.constantFrom(...APPS),
  toServer: fc.constantFrom(undefined, true, false),
  sourcePorts: fc.constantFrom(...PORTS),
  destinationPorts: fc.constantFrom(...PORTS),
  bidirectional: fc.boolean(),
})

describe('DPI prefilter groups', () => {
  it('a group gives the candidates of the naive scan over the rules its side can meet', () => {
    fc.assert(
      fc.property(
        fc.array(ruleArb, { minLength: 1, maxLength: 40 }),
        fc.array(byte, { maxLength: 300 }),
        fc.integer({ min: 0, max: 3 }),
        fc.constantFrom(...APPS),
        fc.boolean(),
        fc.constantFrom(80, 445, 8080, 40000, 53),
        fc.constantFrom(80, 445, 8080, 40000, 53),
        (specs, text, cls, app, toServer, sport, dport) => {
          const rules: GroupedRule[] = specs.map((r, rule) => ({
            rule,
            pattern: Uint8Array.from(r.pattern, fold),
            anchor: r.anchor,
            classMask: r.classMask,
            app: r.app,
            toServer: r.toServer,
            sourcePorts: parsePortField(r.sourcePorts, {}),
            destinationPorts: parsePortField(r.destinationPorts, {}),
            bidirectional: r.bidirectional,
          }))
          const groups = new PrefilterGroups(rules, { automaton: undefined, patternRules: [] })
          const group = groups.find(cls, app, toServer, sport, dport)
          const input = Uint8Array.from(text)
          const found = new Set<number>()
          group.automaton?.scan(input, 0, input.length, 0, (p) => {
            for (const i of group.patternRules[p]) found.add(i)
          })
          const head = group.head
          head?.automaton.scan(input, 0, Math.min(input.length, head.length), 0, (p) => {
            for (const i of head.patternRules[p]) found.add(i)
          })
          const naive = new Set<number>()
          rules.forEach((r, i) => {
            const meets =
              (r.classMask & (1 << cls)) !== 0 &&
              (r.app === undefined || r.app === app) &&
              (r.toServer === undefined || r.toServer === toServer) &&
              ((r.sourcePorts.match(sport) && r.destinationPorts.match(dport)) ||
                (r.bidirectional && r.sourcePorts.match(dport) && r.destinationPorts.match(sport)))
            // A rule bound to the first bytes is a candidate when its pattern ends there.
            if (
              meets &&
              occurs(r.pattern, input, r.anchor >= 0 && r.anchor <= 512 ? (head?.length ?? 0) : Infinity)
            )
              naive.add(i)
          })
          assert.deepEqual(
            [...found].sort((a, b) => a - b),
            [...naive].sort((a, b) => a - b),
          )
          // Cached: the same side finds the same group.
          assert.equal(groups.find(cls, app, toServer, sport, dport), group)
        },
      ),
      { numRuns: 500 },
    )
  })
})
