import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { isVrioError } from '../../../src/errors.ts'
import { loadFirewall, readRules } from '../../../src/services/firewall/index.ts'
import { type Match, parseRules, type Rule } from '../../../src/services/firewall/rules.ts'

const rule = (body: string, direction = 'from-guest'): Rule => parseRules(`${direction} ${body}`).rules[0]
const match = (body: string): Match => {
  const r = rule(`${body} accept`)
  assert.equal(r.matches.length, 1, body)
  return r.matches[0]
}

/** The error lines of a rules text that must fail. */
function errorsOf(text: string, file = 'fw.rules'): string[] {
  try {
    parseRules(text, file)
  } catch (e) {
    assert.ok(isVrioError(e, 'invalid-rules'), String(e))
    const errors = e.details.errors as string[]
    assert.equal(e.message, `invalid firewall rules:\n${errors.join('\n')}`)
    return errors
  }
  assert.fail(`parsed: ${text}`)
}

describe('firewall rules parser', () => {
  it('reads policies, comments, blank lines and the default accept policy', () => {
    const set = parseRules('# a comment\n\n  policy to-guest drop   # trailing\n', 'x.rules')
    assert.deepEqual(set.policy, { 'from-guest': 'accept', 'to-guest': 'drop' })
    assert.equal(set.file, 'x.rules')
    assert.deepEqual(set.rules, [])
  })

  it('keeps line numbers, direction and text of each rule', () => {
    const set = parseRules(
      'policy from-guest drop\n\n# x\nto-guest   tcp dport 22 accept # ssh\nfrom-guest drop',
    )
    assert.deepEqual(
      set.rules.map((r) => [r.line, r.direction, r.text]),
      [
        [4, 'to-guest', 'to-guest   tcp dport 22 accept'],
        [5, 'from-guest', 'from-guest drop'],
      ],
    )
    assert.deepEqual(set.rules[1].matches, [])
  })

  it('ether type, saddr, daddr (names, numbers, sets, negation)', () => {
    assert.deepEqual(match('ether type arp'), { kind: 'ether-type', negate: false, ranges: [0x806, 0x806] })
    assert.deepEqual(match('ether type != 0x88b5'), {
      kind: 'ether-type',
      negate: true,
      ranges: [0x88b5, 0x88b5],
    })
    assert.equal(rule('ether type ip6 accept').family, 6)
    assert.deepEqual(match('ether saddr 02:00:00:00:00:01'), {
      kind: 'ether-addr',
      field: 'saddr',
      negate: false,
      macs: [0x020000000001],
    })
    assert.deepEqual(match('ether daddr != { ff:ff:ff:ff:ff:ff, 02:00:00:00:00:02 }'), {
      kind: 'ether-addr',
      field: 'daddr',
      negate: true,
      macs: [0xffffffffffff, 0x020000000002],
    })
  })

  it('vlan id, ip/ip6 version, meta nfproto and l4proto', () => {
    assert.deepEqual(match('vlan id 100-200'), { kind: 'vlan-id', negate: false, ranges: [100, 200] })
    const v4 = rule('ip version 4 accept')
    assert.equal(v4.family, 4)
    assert.deepEqual(v4.matches, [])
    assert.equal(rule('ip6 version 6 accept').family, 6)
    assert.equal(rule('meta nfproto ipv6 accept').family, 6)
    const l4 = rule('meta l4proto { tcp, udp } accept')
    assert.deepEqual([l4.family, l4.protocol], [0, -1])
    assert.deepEqual(l4.matches[0], { kind: 'l4proto', negate: false, ranges: [6, 6, 17, 17] })
  })

  it('ip protocol / ip6 nexthdr by name and number, implying the family and protocol', () => {
    const icmp = rule('ip protocol icmp accept')
    assert.deepEqual([icmp.family, icmp.protocol], [4, 1])
    const gre = rule('ip protocol 47 accept')
    assert.equal(gre.protocol, 47)
    const v6 = rule('ip6 nexthdr ipv6-icmp accept')
    assert.deepEqual([v6.family, v6.protocol], [6, 58])
    assert.deepEqual(rule('ip protocol != tcp accept').matches[0], {
      kind: 'l4proto',
      negate: true,
      ranges: [6, 6],
    })
    assert.equal(rule('ip protocol != tcp accept').protocol, -1)
  })

  it('ip and ip6 addresses with prefixes, sets and negation', () => {
    assert.deepEqual(match('ip saddr 10.0.0.0/8'), {
      kind: 'address',
      field: 'saddr',
      negate: false,
      prefixes: [{ bytes: new Uint8Array([10, 0, 0, 0]), length: 8 }],
    })
    const m = match('ip daddr != { 192.168.1.1, 172.16.0.0/12 }')
    assert.ok(m.kind === 'address' && m.negate && m.field === 'daddr')
    assert.deepEqual(
      m.prefixes.map((p) => p.length),
      [32, 12],
    )
    const v6 = rule('ip6 saddr 2001:db8::/32 accept')
    assert.equal(v6.family, 6)
    const p6 = v6.matches[0]
    assert.ok(p6.kind === 'address')
    assert.deepEqual(p6.prefixes[0], {
      bytes: new Uint8Array([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
      length: 32,
    })
    const mapped = match('ip6 daddr ::ffff:10.0.0.1')
    assert.ok(mapped.kind === 'address')
    assert.deepEqual([...mapped.prefixes[0].bytes.subarray(10)], [0xff, 0xff, 10, 0, 0, 1])
  })

  it('tcp, udp and sctp ports: single values, names, ranges, sets, comparisons', () => {
    for (const proto of ['tcp', 'udp', 'sctp'] as const) {
      const r = rule(`${proto} sport 1024-65535 ${proto} dport { 22, http, 8000-8080 } accept`)
      assert.equal(r.protocol, { tcp: 6, udp: 17, sctp: 132 }[proto])
      assert.deepEqual(r.matches, [
        { kind: 'port', field: 'sport', negate: false, ranges: [1024, 65535] },
        { kind: 'port', field: 'dport', negate: false, ranges: [22, 22, 80, 80, 8000, 8080] },
      ])
    }
    assert.deepEqual(match('tcp dport != 0x50'), {
      kind: 'port',
      field: 'dport',
      negate: true,
      ranges: [80, 80],
    })
    assert.deepEqual(match('udp dport < 1024'), {
      kind: 'port',
      field: 'dport',
      negate: false,
      ranges: [0, 1023],
    })
    assert.deepEqual(match('udp dport >= 1024'), {
      kind: 'port',
      field: 'dport',
      negate: false,
      ranges: [1024, 65535],
    })
    assert.deepEqual(match('udp dport 53, 5353'), {
      kind: 'port',
      field: 'dport',
      negate: false,
      ranges: [53, 53, 5353, 5353],
    })
  })

  it('tcp flags: plain (any), ==, !=, and X / MASK', () => {
    assert.deepEqual(match('tcp flags syn'), {
      kind: 'tcp-flags',
      test: 'any',
      value: 2,
      mask: 2,
      negate: false,
    })
    assert.deepEqual(match('tcp flags fin,rst'), {
      kind: 'tcp-flags',
      test: 'any',
      value: 5,
      mask: 5,
      negate: false,
    })
    assert.deepEqual(match('tcp flags != syn'), {
      kind: 'tcp-flags',
      test: 'any',
      value: 2,
      mask: 2,
      negate: true,
    })
    assert.deepEqual(match('tcp flags == syn'), {
      kind: 'tcp-flags',
      test: 'masked',
      value: 2,
      mask: 0xff,
      negate: false,
    })
    assert.deepEqual(match('tcp flags syn / syn,ack'), {
      kind: 'tcp-flags',
      test: 'masked',
      value: 2,
      mask: 0x12,
      negate: false,
    })
    assert.deepEqual(match('tcp flags != syn / syn,ack,rst'), {
      kind: 'tcp-flags',
      test: 'masked',
      value: 2,
      mask: 0x16,
      negate: true,
    })
  })

  it('icmp and icmpv6 type and code by name and number', () => {
    const r = rule('icmp type { echo-request, 13 } icmp code 0 accept')
    assert.deepEqual([r.family, r.protocol], [4, 1])
    assert.deepEqual(r.matches, [
      { kind: 'icmp-type', negate: false, ranges: [8, 8, 13, 13] },
      { kind: 'icmp-code', negate: false, ranges: [0, 0] },
    ])
    const v6 = rule('ip6 nexthdr icmpv6 icmpv6 type { nd-neighbor-solicit, echo-request } accept')
    assert.deepEqual([v6.family, v6.protocol], [6, 58])
    assert.deepEqual(v6.matches[1], { kind: 'icmp-type', negate: false, ranges: [135, 135, 128, 128] })
  })

  it('ct state lists and sets', () => {
    assert.deepEqual(match('ct state established,related'), { kind: 'ct-state', negate: false, mask: 6 })
    assert.deepEqual(match('ct state { new }'), { kind: 'ct-state', negate: false, mask: 1 })
    assert.deepEqual(match('ct state != invalid'), { kind: 'ct-state', negate: true, mask: 8 })
  })

  it('verdicts: accept, drop, counter, reject and its kinds', () => {
    assert.deepEqual(rule('udp dport 53 counter accept').verdict, { kind: 'accept' })
    assert.deepEqual(rule('counter drop').verdict, { kind: 'drop' })
    assert.deepEqual(rule('reject').verdict, { kind: 'reject', with: { kind: 'default' } })
    assert.deepEqual(rule('tcp dport 25 reject with tcp reset').verdict, {
      kind: 'reject',
      with: { kind: 'tcp-reset' },
    })
    const icmp = rule('reject with icmp type host-unreachable')
    assert.deepEqual(icmp.verdict, { kind: 'reject', with: { kind: 'icmp', v4: 1, v6: -1 } })
    assert.equal(icmp.family, 4)
    assert.deepEqual(rule('reject with icmpv6 admin-prohibited').verdict, {
      kind: 'reject',
      with: { kind: 'icmp', v4: -1, v6: 1 },
    })
    assert.deepEqual(rule('reject with icmpx type admin-prohibited').verdict, {
      kind: 'reject',
      with: { kind: 'icmp', v4: 13, v6: 1 },
    })
  })

  it('reports every bad line with FILE:LINE and a reason', () => {
    const text = [
      'policy from-guest drop', // 1 ok
      'policy sideways drop', // 2
      'policy to-guest reject', // 3
      'policy from-guest accept', // 4 second policy
      'both tcp dport 22 accept', // 5
      'from-guest tcp dport 22', // 6 no verdict
      'from-guest tcp dport 70000 accept', // 7
      'from-guest tcp dport 90-80 accept', // 8
      'from-guest tcp dport { } accept', // 9
      'from-guest tcp dport { 22, 23 accept', // 10
      'from-guest tcp port 22 accept', // 11 unknown field
      'from-guest frobnicate accept', // 12 unknown keyword
      'from-guest ip saddr 10.0.0.300 accept', // 13
      'from-guest ip saddr 10.0.0.0/33 accept', // 14
      'from-guest ip saddr 10.0.0.1/8 accept', // 15 host bits
      'from-guest ip6 daddr 2001:db8:::1 accept', // 16
      'from-guest ether saddr 02:00:00:00:00 accept', // 17
      'from-guest tcp dport 22 udp dport 53 accept', // 18 conflict
      'from-guest ip saddr 10.0.0.1 ip6 daddr ::1 accept', // 19 conflict
      'from-guest tcp flags bogus accept', // 20
      'from-guest tcp flags syn,ack / syn accept', // 21 outside mask
      'from-guest icmp type nope accept', // 22
      'from-guest ct state sleepy accept', // 23
      'from-guest accept now', // 24 trailing
      'from-guest udp dport 53 reject with tcp reset', // 25
      'from-guest reject with icmp type bogus', // 26
      'from-guest ip6 saddr ::1 reject with icmp type port-unreachable', // 27
      'from-guest ip version 6 accept', // 28
      'from-guest ether type arp ip saddr 10.0.0.1 accept', // 29
      'from-guest udp dport < 0 accept', // 30
      'from-guest tcp dport 22 = 23 accept', // 31 stray character
      'from-guest meta nfproto ipx accept', // 32
      'from-guest log accept', // 33 unsupported statement
      'to-guest ct state established accept', // 34 ok
    ].join('\n')
    const errors = errorsOf(text)
    const lines = errors.map((e) => Number(/^fw\.rules:(\d+): /.exec(e)?.[1]))
    assert.deepEqual(lines, [...Array.from({ length: 32 }, (_, i) => i + 2)])
    const byLine = (n: number) => errors[n - 2]
    assert.match(byLine(2), /bad policy direction 'sideways'/)
    assert.match(byLine(4), /second policy for from-guest/)
    assert.match(byLine(5), /unknown keyword 'both'/)
    assert.match(byLine(6), /no verdict/)
    assert.match(byLine(7), /bad tcp dport '70000'/)
    assert.match(byLine(8), /empty range '90-80'/)
    assert.match(byLine(9), /empty set/)
    assert.match(byLine(10), /expected ',' or '}'/)
    assert.match(byLine(11), /unknown tcp field 'port'/)
    assert.match(byLine(12), /unknown keyword 'frobnicate'/)
    assert.match(byLine(13), /bad IPv4 address '10.0.0.300'/)
    assert.match(byLine(14), /bad prefix length/)
    assert.match(byLine(15), /host bits set/)
    assert.match(byLine(16), /bad IPv6 address/)
    assert.match(byLine(17), /bad MAC address/)
    assert.match(byLine(18), /conflicting matches/)
    assert.match(byLine(19), /conflicting matches: 'ip6 daddr' is IPv6 but 'ip saddr' is IPv4/)
    assert.match(byLine(20), /bad tcp flag 'bogus'/)
    assert.match(byLine(21), /outside the mask/)
    assert.match(byLine(22), /bad icmp type 'nope'/)
    assert.match(byLine(23), /bad ct state 'sleepy'/)
    assert.match(byLine(24), /unexpected 'now' after the verdict/)
    assert.match(byLine(25), /needs a tcp match/)
    assert.match(byLine(26), /bad icmp reject type 'bogus'/)
    assert.match(byLine(27), /conflicting matches/)
    assert.match(byLine(28), /can never match/)
    assert.match(byLine(29), /conflicting matches/)
    assert.match(byLine(30), /can never match/)
    assert.match(byLine(31), /unknown keyword '='/)
    assert.match(byLine(32), /bad meta nfproto 'ipx'/)
    assert.match(byLine(33), /unknown keyword 'log'/)
  })

  it('names the file in each error and handles CRLF line ends', () => {
    assert.deepEqual(errorsOf('from-guest accept\r\nfrom-guest nope accept\r\n', '/etc/vrio/nic0.rules'), [
      "/etc/vrio/nic0.rules:2: unknown keyword 'nope'",
    ])
  })

  it('treats names of Object.prototype as unknown, not as protocols', () => {
    assert.match(errorsOf('from-guest ip protocol constructor accept')[0], /bad ip protocol 'constructor'/)
    assert.match(errorsOf('from-guest ct state toString accept')[0], /bad ct state/)
  })

  it('parses every example of docs/services.md', () => {
    const doc = readFileSync(new URL('../../../../docs/services.md', import.meta.url), 'utf8')
    const section = doc.slice(doc.indexOf('## Firewall'))
    const blocks = [...section.matchAll(/```nft\n([\s\S]*?)```/g)].map((m) => m[1])
    assert.ok(blocks.length >= 2, 'the Firewall section has nft examples')
    for (const block of blocks) parseRules(block, 'docs/services.md')
  })

  it('loadFirewall and readRules read a file, naming it in errors', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vrio-fw-load-'))
    try {
      const good = join(dir, 'nic0.rules')
      writeFileSync(good, 'policy to-guest drop\nto-guest ct state established accept\n')
      const fw = loadFirewall(good)
      assert.equal(fw.kind, 'firewall')
      assert.equal(fw.rules.file, good)
      assert.equal(readRules(good).rules.length, 1)
      const bad = join(dir, 'bad.rules')
      writeFileSync(bad, 'to-guest ct state maybe accept\n')
      assert.throws(
        () => loadFirewall(bad),
        (e) => isVrioError(e, 'invalid-rules') && e.message.includes(`${bad}:1:`),
      )
      assert.throws(
        () => loadFirewall(join(dir, 'missing.rules')),
        (e) => isVrioError(e, 'invalid-rules') && /cannot read the rules file/.test(e.message),
      )
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
