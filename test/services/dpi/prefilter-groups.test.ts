/**
 * The payload prefilter's groups (src/services/dpi/groups.ts): a group's candidates are those of
 * the naive scan over the rules its side can meet. Through the engine: app-engine.test.ts.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { parsePortField } from '../../../src/services/dpi/addresses.ts'
import { type GroupedRule, MAX_PORT_CLASSES, PrefilterGroups } from '../../../src/services/dpi/groups.ts'

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
  it("a side's groups give every candidate of the naive scan over the rules it can meet, within its server port's superset", () => {
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
          const groups = new PrefilterGroups(rules)
          // Built at once, and the same when adopted from its tables (another thread's).
          const adopted = new PrefilterGroups(rules, structuredClone(groups.tables()))
          const input = Uint8Array.from(text)
          const candidates = (g: PrefilterGroups) => {
            const found = new Set<number>()
            // Before the protocol is known: the port group; then the port and protocol groups, or
            // (HTTP on port 80) one automaton over both.
            const side = app
              ? g.withApp(cls, toServer, sport, dport, app)
              : [g.ports(cls, toServer, sport, dport)]
            for (const group of side) {
              if (!group) continue
              group.automaton?.scan(input, 0, input.length, 0, (p) => {
                for (const i of group.patternRules[p]) found.add(i)
              })
              const head = group.head
              head?.automaton.scan(input, 0, Math.min(input.length, head.length), 0, (p) => {
                for (const i of head.patternRules[p]) found.add(i)
              })
            }
            return [...found].sort((x, y) => x - y)
          }
          const found = candidates(groups)
          assert.deepEqual(candidates(adopted), found)
          rules.forEach((r, i) => {
            const headed = r.anchor >= 0 && r.anchor <= 512
            const side =
              (r.classMask & (1 << cls)) !== 0 &&
              (r.app === undefined || r.app === app) &&
              (r.toServer === undefined || r.toServer === toServer)
            // Every rule the side's frames can meet whose pattern is there is a candidate.
            const meets =
              side &&
              ((r.sourcePorts.match(sport) && r.destinationPorts.match(dport)) ||
                (r.bidirectional && r.sourcePorts.match(dport) && r.destinationPorts.match(sport)))
            if (meets && occurs(r.pattern, input, headed ? r.anchor : Infinity))
              assert.ok(found.includes(i), `rule ${i} missed`)
            // A candidate is at most a rule of the side's class, protocol and direction whose
            // server-side port field matches (the client's port is not looked at; nor are the
            // ports of a rule that needs an application protocol, or of one bound to the first
            // bytes: one head serves every port class).
            if (found.includes(i)) {
              const server = toServer ? dport : sport
              const serverSide =
                cls > 1 ||
                r.app !== undefined ||
                headed ||
                (toServer ? r.destinationPorts : r.sourcePorts).match(server) ||
                (r.bidirectional && (toServer ? r.sourcePorts : r.destinationPorts).match(server))
              assert.ok(side && serverSide, `rule ${i} is no candidate of this side`)
              assert.ok(occurs(r.pattern, input, headed ? 512 : Infinity))
            }
          })
        },
      ),
      { numRuns: 500 },
    )
  })

  it('port groups per transport and direction stay within MAX_PORT_CLASSES, however many ports the rules name', () => {
    const rules: GroupedRule[] = Array.from({ length: 200 }, (_, k) => ({
      rule: k,
      pattern: Buffer.from(`p${k}x`),
      anchor: -1,
      classMask: 1,
      app: undefined,
      toServer: undefined,
      sourcePorts: parsePortField('any', {}),
      destinationPorts: parsePortField(String(1000 + k), {}),
      bidirectional: false,
    }))
    const groups = new PrefilterGroups(rules)
    const distinct = new Set<unknown>()
    for (let port = 0; port < 65536; port++) distinct.add(groups.ports(0, true, 40000, port))
    assert.ok(distinct.size <= MAX_PORT_CLASSES, `${distinct.size} groups`)
    // Port 1005's rule is in the group of port 1005 (superset or not).
    const g = groups.ports(0, true, 40000, 1005)
    let hit = false
    g.automaton?.scan(Buffer.from('p5x'), 0, 3, 0, (p) => {
      hit ||= g.patternRules[p].includes(5)
    })
    assert.ok(hit)
  })

  it('every group is built with the rules: finding a side its groups builds nothing', () => {
    const rules: GroupedRule[] = ['80', '445', '1024:', 'any'].flatMap((port, k) =>
      (['http', undefined] as const).map((app, j) => ({
        rule: 2 * k + j,
        pattern: Buffer.from(`pat${k}${j}`),
        anchor: j === 0 ? -1 : 4,
        classMask: 3,
        app,
        toServer: undefined,
        sourcePorts: parsePortField('any', {}),
        destinationPorts: parsePortField(port, {}),
        bidirectional: false,
      })),
    )
    const groups = new PrefilterGroups(rules)
    const built = groups.built
    assert.ok(built > 0)
    for (const port of [80, 445, 8080, 40000, 53])
      for (const cls of [0, 1, 2, 3])
        for (const toServer of [true, false]) {
          const g = groups.ports(cls, toServer, 40000, port)
          assert.equal(groups.ports(cls, toServer, 40000, port), g)
          groups.withApp(cls, toServer, 40000, port, 'http')
          groups.withApp(cls, toServer, 40000, port, 'dns')
        }
    assert.equal(groups.built, built)
  })
})
