import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { createFirewall, type Firewall, type FirewallOptions } from '../../../src/services/firewall/index.ts'
import type { NetDirection } from '../../../src/services/net/service.ts'
import { dissect, type FakeContext, fakeContext, frame, ipPacket, type Spec } from './frames.ts'

const FIN = 0x01
const SYN = 0x02
const RST = 0x04
const ACK = 0x10

/** The guest may open anything; the world may only answer. */
const CLIENT = [
  'policy from-guest drop',
  'policy to-guest drop',
  'from-guest ct state established,related accept',
  'to-guest ct state established,related accept',
  'from-guest ct state new accept',
].join('\n')

class Harness {
  readonly fw: Firewall
  readonly ctx: FakeContext
  constructor(rules = CLIENT, options: FirewallOptions = {}) {
    this.fw = createFirewall(rules, 'ct.rules', options)
    this.ctx = fakeContext(1_000)
  }
  send(s: Spec | Buffer, direction: NetDirection): boolean {
    const f = Buffer.isBuffer(s) ? s : frame(s)
    return this.fw.inspect(f, dissect(f), direction, this.ctx)
  }
  out(s: Spec): boolean {
    return this.send(s, 'from-guest')
  }
  in(s: Spec): boolean {
    return this.send(s, 'to-guest')
  }
  advance(ms: number): void {
    this.ctx.now += ms
  }
}

const GUEST = '10.0.0.1'
const WORLD = '192.0.2.1'
const GUEST6 = '2001:db8::1'
const WORLD6 = '2001:db8:1::2'

const tcpOut = (flags: number, o: Partial<Spec> = {}): Spec => ({
  src: GUEST,
  dst: WORLD,
  proto: 'tcp',
  sport: 40000,
  dport: 443,
  flags,
  ...o,
})
const tcpIn = (flags: number, o: Partial<Spec> = {}): Spec => ({
  src: WORLD,
  dst: GUEST,
  proto: 'tcp',
  sport: 443,
  dport: 40000,
  flags,
  ...o,
})

describe('firewall connection tracking', () => {
  for (const [name, g, w] of [
    ['IPv4', GUEST, WORLD],
    ['IPv6', GUEST6, WORLD6],
  ] as const) {
    it(`${name}: replies of accepted TCP flows pass, unsolicited segments do not`, () => {
      const h = new Harness()
      const o = { src: g, dst: w }
      const i = { src: w, dst: g }
      assert.equal(h.in(tcpIn(SYN, i)), false, 'unsolicited SYN from the world')
      assert.equal(h.in(tcpIn(ACK, i)), false, 'mid-stream ACK with no flow is invalid')
      assert.equal(h.out(tcpOut(SYN, o)), true)
      assert.equal(h.in(tcpIn(SYN | ACK, i)), true, 'the SYN-ACK is established')
      assert.equal(h.out(tcpOut(ACK, o)), true)
      assert.equal(h.in(tcpIn(ACK, { ...i, payload: Buffer.from('hi') })), true)
      assert.equal(h.in(tcpIn(ACK, { ...i, sport: 444 })), false, 'another port is another flow')
      assert.equal(h.in(tcpIn(ACK, { ...i, src: name === 'IPv4' ? '192.0.2.9' : '2001:db8:1::9' })), false)
      assert.deepEqual(
        [...h.fw.flows()].map((f) => [f.protocol, f.state, f.ports]),
        [[6, 'established', [40000, 443]]],
      )
    })

    it(`${name}: UDP and ICMP echo replies pass only for what was sent`, () => {
      const h = new Harness()
      const o = { src: g, dst: w }
      const i = { src: w, dst: g }
      assert.equal(h.in({ ...i, proto: 'udp', sport: 53, dport: 5000 }), false)
      assert.equal(h.out({ ...o, proto: 'udp', sport: 5000, dport: 53 }), true)
      assert.equal(h.in({ ...i, proto: 'udp', sport: 53, dport: 5000 }), true)
      assert.equal(h.in({ ...i, proto: 'udp', sport: 53, dport: 5001 }), false)
      const [request, reply] = name === 'IPv4' ? [8, 0] : [128, 129]
      assert.equal(h.in({ ...i, proto: 'icmp', type: reply, id: 9 }), false, 'a reply to nothing is invalid')
      assert.equal(h.out({ ...o, proto: 'icmp', type: request, id: 9 }), true)
      assert.equal(h.in({ ...i, proto: 'icmp', type: reply, id: 10 }), false, 'another identifier')
      assert.equal(
        h.in({ ...i, proto: 'icmp', type: request, id: 9 }),
        false,
        'a request back is new, not a reply',
      )
      assert.equal(h.in({ ...i, proto: 'icmp', type: reply, id: 9 }), true)
    })
  }

  it('ICMP errors quoting a tracked flow are related; others are invalid', () => {
    const h = new Harness()
    const query: Spec = { src: GUEST, dst: WORLD, proto: 'udp', sport: 5000, dport: 53 }
    const quoted = ipPacket(query).subarray(0, 28)
    /** ICMP destination unreachable (port) to `dst`: 4 unused bytes, then the quote. */
    const icmpError = (q: Buffer, dst = GUEST) => {
      const f = frame({
        src: '198.51.100.1',
        dst,
        proto: 'icmp',
        type: 3,
        code: 3,
        payload: Buffer.alloc(q.length),
      })
      const at = 14 + 20
      f.fill(0, at + 4, at + 8)
      q.copy(f, at + 8)
      return f
    }
    assert.equal(h.send(icmpError(quoted), 'to-guest'), false, 'no flow yet')
    assert.equal(h.out(query), true)
    assert.equal(h.send(icmpError(quoted), 'to-guest'), true, 'related')
    assert.equal(h.send(icmpError(quoted, '10.0.0.99'), 'to-guest'), false, 'sent to someone else')
    const other = ipPacket({ ...query, dport: 54 }).subarray(0, 28)
    assert.equal(h.send(icmpError(other), 'to-guest'), false)

    // ICMPv6 packet too big about a TCP flow, quoting 48 bytes of the offending segment.
    const syn = tcpOut(SYN, { src: GUEST6, dst: WORLD6 })
    assert.equal(h.out(syn), true)
    const q6 = ipPacket(syn)
    const ptb = frame({
      src: '2001:db8:ff::1',
      dst: GUEST6,
      proto: 'icmp',
      type: 2,
      code: 0,
      payload: Buffer.alloc(q6.length - 4),
    })
    q6.copy(ptb, 14 + 40 + 8)
    assert.equal(h.send(ptb, 'to-guest'), true)
  })

  it('evicts the least recently used flow when the table is full', () => {
    const h = new Harness(CLIENT, { maxEntries: 2 })
    assert.equal(h.out(tcpOut(SYN, { sport: 1 })), true)
    assert.equal(h.out(tcpOut(SYN, { sport: 2 })), true)
    assert.equal(h.out(tcpOut(SYN, { sport: 1 })), true) // refreshes flow 1: flow 2 is now the oldest
    assert.equal(h.out(tcpOut(SYN, { sport: 3 })), true)
    assert.equal(h.in(tcpIn(SYN | ACK, { dport: 2 })), false, 'flow 2 was evicted')
    assert.equal(h.in(tcpIn(SYN | ACK, { dport: 1 })), true)
    assert.equal(h.in(tcpIn(SYN | ACK, { dport: 3 })), true)
    const ct = h.fw.counters().conntrack
    assert.deepEqual([ct.entries, ct.maxEntries, ct.created, ct.evicted], [2, 2, 3, 1])
  })

  it('expires flows by state with the clock (fake)', () => {
    const h = new Harness()
    // UDP with no reply: 30 s.
    h.out({ src: GUEST, dst: WORLD, proto: 'udp', sport: 5000, dport: 53 })
    h.advance(30_001)
    assert.equal(h.in({ src: WORLD, dst: GUEST, proto: 'udp', sport: 53, dport: 5000 }), false)
    // UDP with a reply: 120 s from the last packet.
    h.out({ src: GUEST, dst: WORLD, proto: 'udp', sport: 5001, dport: 53 })
    assert.equal(h.in({ src: WORLD, dst: GUEST, proto: 'udp', sport: 53, dport: 5001 }), true)
    h.advance(119_000)
    assert.equal(h.in({ src: WORLD, dst: GUEST, proto: 'udp', sport: 53, dport: 5001 }), true)
    h.advance(119_000)
    assert.equal(h.in({ src: WORLD, dst: GUEST, proto: 'udp', sport: 53, dport: 5001 }), true)
    h.advance(120_001)
    assert.equal(h.in({ src: WORLD, dst: GUEST, proto: 'udp', sport: 53, dport: 5001 }), false)

    // TCP established lives for days; after an RST, 10 s; after a FIN, 120 s.
    h.out(tcpOut(SYN))
    h.in(tcpIn(SYN | ACK))
    h.advance(3 * 24 * 3600_000)
    assert.equal(h.in(tcpIn(ACK)), true)
    h.out(tcpOut(RST))
    h.advance(9_000)
    assert.equal(h.in(tcpIn(ACK)), true, 'still within the RST timeout')
    h.advance(1_001)
    assert.equal(h.in(tcpIn(ACK)), false)

    h.out(tcpOut(SYN, { sport: 41000 }))
    h.in(tcpIn(SYN | ACK, { dport: 41000 }))
    h.in(tcpIn(FIN | ACK, { dport: 41000 }))
    h.advance(119_000)
    assert.equal(h.out(tcpOut(ACK, { sport: 41000 })), true)
    h.advance(120_001)
    assert.equal(h.in(tcpIn(ACK, { dport: 41000 })), false)

    // A SYN with no reply: 120 s.
    h.out(tcpOut(SYN, { sport: 42000 }))
    h.advance(120_001)
    assert.equal(h.in(tcpIn(SYN | ACK, { dport: 42000 })), false)
    const ct = h.fw.counters().conntrack
    assert.equal(ct.entries, 0)
    assert.equal(ct.expired, ct.created)
  })

  it('a new SYN on a closing flow starts a fresh one', () => {
    const h = new Harness()
    h.out(tcpOut(SYN))
    h.in(tcpIn(SYN | ACK))
    h.out(tcpOut(FIN | ACK))
    assert.deepEqual(
      [...h.fw.flows()].map((f) => f.state),
      ['closing'],
    )
    assert.equal(h.out(tcpOut(SYN)), true)
    assert.deepEqual(
      [...h.fw.flows()].map((f) => f.state),
      ['new'],
    )
    assert.equal(h.in(tcpIn(SYN | ACK)), true)
  })

  it('only accepted packets create flows', () => {
    const h = new Harness(
      `${CLIENT.replace('from-guest ct state new accept', '')}\nfrom-guest tcp dport 443 accept`,
    )
    assert.equal(h.out(tcpOut(SYN, { dport: 80 })), false)
    assert.equal(h.in(tcpIn(SYN | ACK, { sport: 80 })), false)
    assert.equal(h.fw.counters().conntrack.entries, 0)
    assert.equal(h.out(tcpOut(SYN)), true)
    assert.equal(h.in(tcpIn(SYN | ACK)), true)
  })

  it('ARP, ND and other protocols are untracked', () => {
    const h = new Harness(`${CLIENT}\nto-guest ct state untracked accept`)
    assert.equal(h.in({ src: WORLD6, dst: GUEST6, proto: 'icmp', type: 135 }), true)
    assert.equal(h.in({ src: WORLD, dst: GUEST, proto: 47 }), true)
    assert.equal(h.fw.counters().conntrack.entries, 0)
  })

  for (const [name, src, dst] of [
    ['IPv4', GUEST, WORLD],
    ['IPv6', GUEST6, WORLD6],
  ] as const) {
    it(`${name}: later fragments follow their first fragment's verdict`, () => {
      const h = new Harness('policy from-guest drop\nfrom-guest udp dport 53 accept')
      const first = (id: number, dport = 53): Spec => ({
        src,
        dst,
        proto: 'udp',
        dport,
        payload: Buffer.alloc(24),
        fragment: { id, offset: 0, more: true },
      })
      const later = (id: number): Spec => ({
        src,
        dst,
        proto: 'udp',
        raw: Buffer.alloc(16, 0xab),
        fragment: { id, offset: 4, more: false },
      })
      assert.equal(h.out(later(1)), false, 'before its first fragment')
      assert.equal(h.out(first(1)), true)
      assert.equal(h.out(later(1)), true)
      assert.equal(h.out(later(2)), false)
      assert.equal(h.out(first(2, 54)), false)
      assert.equal(h.out(later(2)), false, 'its first fragment was dropped')
      h.advance(30_001)
      assert.equal(h.out(later(1)), false, 'too late')
      const c = h.fw.counters()['from-guest']
      assert.deepEqual([c.fragmentsAccepted, c.fragmentsDropped], [1, 4])
    })
  }

  it('replace() keeps the table: established flows survive if the new rules accept them', () => {
    const h = new Harness()
    h.out(tcpOut(SYN))
    h.in(tcpIn(SYN | ACK))
    h.fw.replace(
      'policy to-guest drop\nto-guest ct state established accept\nto-guest tcp dport 22 accept',
      'new.rules',
    )
    assert.equal(h.in(tcpIn(ACK)), true)
    assert.equal(h.fw.counters().file, 'new.rules')
    assert.equal(h.fw.counters().rules[0].packets, 1)
    assert.throws(() => h.fw.replace('to-guest ct state bogus accept'), { code: 'invalid-rules' })
    assert.equal(h.in(tcpIn(ACK)), true, 'a bad file leaves the rules in force')
    h.fw.replace('policy to-guest drop')
    assert.equal(h.in(tcpIn(ACK)), false)
    assert.equal(h.fw.counters().conntrack.entries, 1)
  })

  it('an invalid-state drop rule catches stray segments', () => {
    const h = new Harness(`to-guest ct state invalid drop\n${CLIENT}`)
    assert.equal(h.in(tcpIn(ACK)), false)
    assert.equal(h.fw.counters().rules.find((r) => r.line === 1)?.packets, 1)
  })
})
