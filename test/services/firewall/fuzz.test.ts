import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { isVrioError } from '../../../src/errors.ts'
import { numberSet } from '../../../src/services/firewall/compile.ts'
import { createFirewall } from '../../../src/services/firewall/index.ts'
import { parseRules } from '../../../src/services/firewall/rules.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { arpFrame, fakeContext, frame, type Spec } from './frames.ts'
import { VALID_MATCHES } from './samples.ts'

const WORDS = [
  'from-guest',
  'to-guest',
  'policy',
  'accept',
  'drop',
  'reject',
  'with',
  'tcp',
  'udp',
  'sctp',
  'icmp',
  'icmpv6',
  'reset',
  'type',
  'code',
  'ether',
  'saddr',
  'daddr',
  'sport',
  'dport',
  'flags',
  'ip',
  'ip6',
  'protocol',
  'nexthdr',
  'version',
  'meta',
  'l4proto',
  'nfproto',
  'ipv4',
  'ipv6',
  'vlan',
  'id',
  'ct',
  'state',
  'new',
  'established',
  'related',
  'invalid',
  'counter',
  'syn',
  'ack',
  'fin',
  'rst',
  '{',
  '}',
  ',',
  '/',
  '!=',
  '==',
  '<',
  '>=',
  '-',
  '#',
  '22',
  '0',
  '65535',
  '65536',
  '8000-8080',
  '80-',
  '-5',
  '10.0.0.0',
  '8',
  '33',
  '2001:db8::',
  '::',
  '02:00:00:00:00:01',
  'echo-request',
  'nd-neighbor-solicit',
  'port-unreachable',
  'icmpx',
  'admin-prohibited',
  '0x800',
  'arp',
  'constructor',
  '__proto__',
  'http',
]

function expectParsesOrInvalid(text: string): void {
  try {
    parseRules(text, 'fuzz.rules')
  } catch (e) {
    assert.ok(isVrioError(e, 'invalid-rules'), `threw ${String(e)} for ${JSON.stringify(text)}`)
    for (const line of e.details.errors as string[]) assert.match(line, /^fuzz\.rules:\d+: \S/)
  }
}

describe('firewall fuzzing', () => {
  it('random rule files from the vocabulary: rules or an invalid-rules error, never a crash', () => {
    const line = fc.array(fc.constantFrom(...WORDS), { maxLength: 12 }).map((w) => w.join(' '))
    fc.assert(
      fc.property(fc.array(line, { maxLength: 8 }), (lines) => expectParsesOrInvalid(lines.join('\n'))),
      { numRuns: 3000 },
    )
  })

  it('random text: rules or an invalid-rules error, never a crash', () => {
    fc.assert(fc.property(fc.string({ maxLength: 200, unit: 'binary' }), expectParsesOrInvalid), {
      numRuns: 2000,
    })
  })

  it('rules built from valid matches always parse, one rule per line', () => {
    const rule = fc.tuple(
      fc.constantFrom('from-guest', 'to-guest'),
      fc.constantFrom(...VALID_MATCHES),
      fc.constantFrom('accept', 'drop', 'reject'),
    )
    fc.assert(
      fc.property(fc.array(rule, { minLength: 1, maxLength: 10 }), (rules) => {
        const set = parseRules(rules.map((r) => r.join(' ')).join('\n'))
        assert.equal(set.rules.length, rules.length)
      }),
    )
  })

  it('numberSet agrees with a plain scan, for few and many ranges', () => {
    const ranges = fc.array(
      fc
        .tuple(fc.integer({ min: 0, max: 70000 }), fc.integer({ min: 0, max: 300 }))
        .map(([lo, len]) => [lo, lo + len]),
      { minLength: 1, maxLength: 20 },
    )
    fc.assert(
      fc.property(
        ranges,
        fc.array(fc.integer({ min: -1, max: 71000 }), { maxLength: 50 }),
        (pairs, values) => {
          const has = numberSet(pairs.flat())
          for (const v of values)
            assert.equal(
              has(v),
              pairs.some(([lo, hi]) => v >= lo && v <= hi),
              `${v} in ${JSON.stringify(pairs)}`,
            )
        },
      ),
    )
  })

  it('random and mutated frames never crash the firewall, and every answer is well formed', () => {
    const fw = createFirewall(
      [
        'policy from-guest drop',
        'from-guest ct state established,related accept',
        'to-guest ct state established,related accept',
        'from-guest ip daddr 10.0.0.0/8 tcp dport { 22, 80 } ct state new accept',
        'from-guest ip6 saddr 2001:db8::/32 udp dport 53 accept',
        'from-guest tcp flags syn / syn,ack tcp dport 25 reject',
        'from-guest icmpv6 type echo-request reject with icmpx type admin-prohibited',
        'from-guest ether type arp accept',
        'from-guest vlan id 5 drop',
        'from-guest meta l4proto udp reject',
        'to-guest reject',
        'from-guest tcp dport 443 ct state new accept',
      ].join('\n'),
      'fuzz.rules',
      { maxEntries: 64 },
    )
    const seeds: Buffer[] = [
      frame({ src: '10.0.0.1', dst: '10.0.0.2', proto: 'tcp', flags: 0x02, dport: 22 }),
      frame({ src: '10.0.0.1', dst: '192.0.2.1', proto: 'udp', payload: Buffer.alloc(30) }),
      frame({ src: '2001:db8::1', dst: '2001:db8::2', proto: 'udp', dport: 53, vlan: 5 }),
      frame({ src: '2001:db8::1', dst: '2001:db8::2', proto: 'icmp', type: 128 }),
      frame({ src: '10.0.0.1', dst: '10.0.0.2', proto: 'icmp', type: 3, payload: Buffer.alloc(28) }),
      frame({ src: '10.0.0.1', dst: '10.0.0.2', proto: 'udp', fragment: { id: 3, offset: 0, more: true } }),
      frame({
        src: '2001:db8::1',
        dst: '2001:db8::2',
        proto: 'tcp',
        fragment: { id: 3, offset: 0, more: true },
      }),
      arpFrame(),
    ] satisfies (Buffer | Spec)[]
    const ctx = fakeContext()
    const p = newPacket()
    const answer = newPacket()
    const mutated = fc
      .tuple(
        fc.constantFrom(...seeds),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.nat(),
      )
      .map(([seed, flips, cut]) => {
        const f = Buffer.from(seed)
        for (const [at, v] of flips) f[at % f.length] = v
        return f.subarray(0, Math.max(0, f.length - (cut % 8 === 0 ? cut % f.length : 0)))
      })
    const anyFrame = fc.oneof(
      mutated,
      fc.uint8Array({ maxLength: 120 }).map((a) => Buffer.from(a)),
    )
    fc.assert(
      fc.property(
        anyFrame,
        fc.constantFrom('from-guest', 'to-guest' as const),
        fc.nat(200_000),
        (f, dir, dt) => {
          ctx.now += dt
          ctx.replies.length = 0
          dissectPacket(f, p)
          const ok = fw.inspect(f, p, dir, ctx)
          assert.equal(typeof ok, 'boolean')
          for (const r of ctx.replies) {
            assert.equal(dissectPacket(r, answer), undefined, `answer to ${f.toString('hex')}`)
            assert.ok(answer.ipVersion === 4 || answer.ipVersion === 6)
          }
        },
      ),
      { numRuns: 5000 },
    )
    const c = fw.counters()
    for (const d of ['from-guest', 'to-guest'] as const)
      assert.ok(c[d].accepted + c[d].dropped + c[d].rejected > 0)
    assert.ok(c.conntrack.entries <= 64)
  })
})
