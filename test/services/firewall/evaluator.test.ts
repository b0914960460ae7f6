import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { createFirewall, type Firewall } from '../../../src/services/firewall/index.ts'
import type { NetDirection } from '../../../src/services/net/service.ts'
import { arpFrame, dissect, fakeContext, frame, type Spec } from './frames.ts'

const SYN = 0x02
const ACK = 0x10

function verdicts(fw: Firewall, cases: [Spec | Buffer, NetDirection, boolean][]): void {
  const ctx = fakeContext()
  for (const [spec, direction, expected] of cases) {
    const f = Buffer.isBuffer(spec) ? spec : frame(spec)
    assert.equal(fw.inspect(f, dissect(f), direction, ctx), expected, `${JSON.stringify(spec)} ${direction}`)
  }
}

const v4 = (over: Partial<Spec> = {}): Spec => ({
  src: '10.0.0.1',
  dst: '192.0.2.1',
  proto: 'tcp',
  flags: SYN,
  ...over,
})
const v6 = (over: Partial<Spec> = {}): Spec => ({
  src: '2001:db8::1',
  dst: '2001:db8:1::2',
  proto: 'tcp',
  flags: SYN,
  ...over,
})

describe('firewall evaluator', () => {
  it('first match wins, else the policy of the direction', () => {
    const fw = createFirewall(
      'policy from-guest drop\nfrom-guest tcp dport 80 drop\nfrom-guest tcp dport 80-90 accept\nto-guest tcp dport 22 drop',
    )
    verdicts(fw, [
      [v4({ dport: 80 }), 'from-guest', false],
      [v4({ dport: 81 }), 'from-guest', true],
      [v4({ dport: 91 }), 'from-guest', false],
      [v4({ dport: 22 }), 'to-guest', false],
      [v4({ dport: 23 }), 'to-guest', true],
    ])
  })

  it('tcp, udp and sctp ports with sets and negation, over IPv4 and IPv6', () => {
    const fw = createFirewall(
      [
        'policy from-guest drop',
        'from-guest tcp dport { 22, 8000-8080 } accept',
        'from-guest udp sport != 53 udp dport 53 accept',
        'from-guest sctp dport 9 accept',
      ].join('\n'),
    )
    verdicts(fw, [
      [v4({ dport: 22 }), 'from-guest', true],
      [v6({ dport: 8080 }), 'from-guest', true],
      [v6({ dport: 8081 }), 'from-guest', false],
      [v4({ proto: 'udp', dport: 22 }), 'from-guest', false],
      [v4({ proto: 'udp', sport: 4000, dport: 53 }), 'from-guest', true],
      [v6({ proto: 'udp', sport: 53, dport: 53 }), 'from-guest', false],
      [v6({ proto: 'sctp', dport: 9 }), 'from-guest', true],
      [v4({ proto: 'sctp', dport: 10 }), 'from-guest', false],
    ])
  })

  it('ip and ip6 addresses with prefixes and negation', () => {
    const fw = createFirewall(
      [
        'policy from-guest drop',
        'from-guest ip daddr 10.0.0.0/8 accept',
        'from-guest ip saddr != 192.168.0.0/16 ip daddr 172.16.0.0/12 accept',
        'from-guest ip6 daddr { 2001:db8:1::/48, fe80::1 } accept',
        'from-guest ip6 saddr 2001:db8::/127 ip6 daddr 2001:db8:2::/47 accept',
      ].join('\n'),
    )
    verdicts(fw, [
      [v4({ dst: '10.255.0.1' }), 'from-guest', true],
      [v4({ dst: '11.0.0.1' }), 'from-guest', false],
      [v4({ src: '10.0.0.1', dst: '172.31.255.255' }), 'from-guest', true],
      [v4({ src: '192.168.3.3', dst: '172.16.0.1' }), 'from-guest', false],
      [v6({ dst: '2001:db8:1:ffff::9' }), 'from-guest', true],
      [v6({ dst: 'fe80::1' }), 'from-guest', true],
      [v6({ dst: 'fe80::2' }), 'from-guest', false],
      [v6({ src: '2001:db8::1', dst: '2001:db8:3::1' }), 'from-guest', true],
      [v6({ src: '2001:db8::2', dst: '2001:db8:3::1' }), 'from-guest', false],
      // An IPv4 rule never matches IPv6 (and the reverse): 10.0.0.0/8 is no prefix of ::a00:1.
      [v6({ dst: '::a00:1' }), 'from-guest', false],
    ])
  })

  it('ether type, MAC addresses, vlan id and ARP', () => {
    const fw = createFirewall(
      [
        'policy from-guest drop',
        'from-guest ether saddr != 02:00:00:00:00:01 drop',
        'from-guest ether type arp accept',
        'from-guest vlan id 100 accept',
        'from-guest ether daddr 02:00:00:00:00:09 accept',
        'from-guest ether type 0x86dd ip6 nexthdr udp accept',
      ].join('\n'),
    )
    verdicts(fw, [
      [arpFrame(), 'from-guest', true],
      [arpFrame('02:00:00:00:00:66'), 'from-guest', false],
      [v4({ vlan: 100 }), 'from-guest', true],
      [v4({ vlan: 101 }), 'from-guest', false],
      [v4({ dstMac: '02:00:00:00:00:09' }), 'from-guest', true],
      [v4({ srcMac: '02:00:00:00:00:07', dstMac: '02:00:00:00:00:09' }), 'from-guest', false],
      [v6({ proto: 'udp' }), 'from-guest', true],
      [v6(), 'from-guest', false],
    ])
  })

  it('ip protocol, ip6 nexthdr and meta l4proto, including protocols without ports', () => {
    const fw = createFirewall(
      [
        'policy from-guest drop',
        'from-guest ip protocol { gre, 50 } accept',
        'from-guest ip6 nexthdr esp accept',
        'from-guest meta l4proto udp accept',
        'from-guest meta nfproto ipv6 ip6 nexthdr != tcp drop',
      ].join('\n'),
    )
    verdicts(fw, [
      [v4({ proto: 47 }), 'from-guest', true],
      [v4({ proto: 50 }), 'from-guest', true],
      [v6({ proto: 47 }), 'from-guest', false],
      [v6({ proto: 50 }), 'from-guest', true],
      [v4({ proto: 'udp' }), 'from-guest', true],
      [v6({ proto: 'udp' }), 'from-guest', true],
      [v4({ proto: 'tcp' }), 'from-guest', false],
    ])
  })

  it('tcp flags in all their forms', () => {
    const rules = (m: string) => createFirewall(`policy from-guest drop\nfrom-guest tcp flags ${m} accept`)
    const flags = (fw: Firewall, cases: [number, boolean][]) =>
      verdicts(
        fw,
        cases.map(([f, ok]) => [v4({ flags: f }), 'from-guest', ok]),
      )
    flags(rules('syn'), [
      [SYN, true],
      [SYN | ACK, true],
      [ACK, false],
    ])
    flags(rules('syn / syn,ack'), [
      [SYN, true],
      [SYN | 0x08, true],
      [SYN | ACK, false],
      [ACK, false],
    ])
    flags(rules('== syn'), [
      [SYN, true],
      [SYN | 0x08, false],
    ])
    flags(rules('!= syn,rst'), [
      [ACK, true],
      [0x04, false],
      [SYN | ACK, false],
    ])
    flags(rules('!= syn / syn,ack'), [
      [SYN, false],
      [SYN | ACK, true],
      [ACK, true],
    ])
  })

  it('icmp and icmpv6 type and code', () => {
    const fw = createFirewall(
      [
        'policy from-guest drop',
        'from-guest icmp type echo-request accept',
        'from-guest icmp type destination-unreachable icmp code 3 accept',
        'from-guest icmpv6 type { nd-neighbor-solicit, 136 } accept',
      ].join('\n'),
    )
    verdicts(fw, [
      [v4({ proto: 'icmp', type: 8 }), 'from-guest', true],
      [v4({ proto: 'icmp', type: 13 }), 'from-guest', false],
      [v4({ proto: 'icmp', type: 3, code: 3, payload: Buffer.alloc(28) }), 'from-guest', true],
      [v4({ proto: 'icmp', type: 3, code: 1, payload: Buffer.alloc(28) }), 'from-guest', false],
      [v6({ proto: 'icmp', type: 135 }), 'from-guest', true],
      [v6({ proto: 'icmp', type: 136 }), 'from-guest', true],
      [v6({ proto: 'icmp', type: 128 }), 'from-guest', false],
      // type 8 over IPv6 is not "icmp type echo-request"
      [v6({ proto: 'icmp', type: 8 }), 'from-guest', false],
    ])
  })

  it('drops malformed frames before the rules and counts them', () => {
    const fw = createFirewall('policy from-guest accept\nfrom-guest accept')
    const good = frame(v4())
    const truncated = good.subarray(0, 14 + 20 + 10) // IP total length says more
    const badTcp = Buffer.from(good)
    badTcp[14 + 20 + 12] = 0x20 // TCP data offset 8 bytes
    verdicts(fw, [
      [Buffer.from('0102030405', 'hex'), 'from-guest', false],
      [Buffer.from(truncated), 'from-guest', false],
      [badTcp, 'from-guest', false],
      [good, 'from-guest', true],
    ])
    const c = fw.counters()
    assert.equal(c['from-guest'].malformed, 3)
    assert.equal(c['from-guest'].dropped, 3)
    assert.equal(c['from-guest'].accepted, 1)
    assert.equal(c.rules[0].packets, 1)
  })

  it('counts per rule (packets, bytes), per direction and policy hits', () => {
    const fw = createFirewall(
      'policy from-guest drop\npolicy to-guest accept\nfrom-guest tcp dport 80 counter accept\nfrom-guest udp dport 53 reject',
      'c.rules',
    )
    const ctx = fakeContext()
    const run = (s: Spec, d: NetDirection) => {
      const f = frame(s)
      return [fw.inspect(f, dissect(f), d, ctx), f.length] as const
    }
    const [, a] = run(v4({ dport: 80 }), 'from-guest')
    const [, b] = run(v4({ dport: 80, payload: Buffer.alloc(100) }), 'from-guest')
    run(v4({ dport: 81 }), 'from-guest')
    run(v4({ proto: 'udp', dport: 53 }), 'from-guest')
    run(v4({ dport: 81 }), 'to-guest')
    const c = fw.counters()
    assert.equal(c.file, 'c.rules')
    assert.deepEqual(c.policy, { 'from-guest': 'drop', 'to-guest': 'accept' })
    assert.deepEqual(c.rules, [
      {
        direction: 'from-guest',
        line: 3,
        rule: 'from-guest tcp dport 80 counter accept',
        packets: 2,
        bytes: a + b,
      },
      {
        direction: 'from-guest',
        line: 4,
        rule: 'from-guest udp dport 53 reject',
        packets: 1,
        bytes: 14 + 28,
      },
    ])
    assert.deepEqual(
      [
        c['from-guest'].accepted,
        c['from-guest'].dropped,
        c['from-guest'].rejected,
        c['from-guest'].policyDropped,
      ],
      [2, 1, 1, 1],
    )
    assert.equal(c['from-guest'].rejectRepliesSent, 1)
    assert.deepEqual([c['to-guest'].accepted, c['to-guest'].policyAccepted], [1, 1])
    assert.equal(ctx.replies.length, 1)
    assert.doesNotThrow(() => JSON.stringify(c))
  })
})
