import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { isVrioError } from '../../../src/errors.ts'
import { parseAddressField, parseIPv6Bytes, parsePortField } from '../../../src/services/dpi/addresses.ts'
import { newRegexBudget } from '../../../src/services/dpi/regex.ts'
import {
  type ContentMatch,
  type PcreMatch,
  parseRules,
  parseRulesStrict,
  type Rule,
} from '../../../src/services/dpi/rules.ts'

const one = (text: string, vars?: Record<string, string>): Rule => {
  const { rules, errors } = parseRules(text, 't.rules', { vars })
  assert.deepEqual(errors, [])
  assert.equal(rules.length, 1)
  return rules[0]
}

const errorOf = (text: string): string => {
  const { rules, errors } = parseRules(text, 't.rules')
  assert.equal(rules.length, 0, `expected an error for ${text}`)
  assert.equal(errors.length, 1)
  return errors[0].message
}

const content = (r: Rule, i = 0): ContentMatch => r.groups[0].items[i] as ContentMatch
const ip4 = (s: string) => Uint8Array.from(s.split('.').map(Number))

describe('rule parser', () => {
  it('reads the header and the metadata options', () => {
    const r = one(
      'alert tcp $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS (msg:"ET test \\"quoted\\"\\; semi"; ' +
        'flow:established,to_server; classtype:trojan-activity; reference:url,example.com/x; ' +
        'metadata:created_at 2024_01_01; sid:2000001; rev:3; gid:1;)',
    )
    assert.equal(r.action, 'alert')
    assert.equal(r.protocol, 'tcp')
    assert.equal(r.msg, 'ET test "quoted"; semi')
    assert.equal(r.sid, 2000001)
    assert.equal(r.rev, 3)
    assert.equal(r.classtype, 'trojan-activity')
    assert.equal(r.category, 'A Network Trojan was detected')
    assert.equal(r.severity, 1)
    assert.deepEqual(r.references, ['url,example.com/x'])
    assert.deepEqual(r.metadata, ['created_at 2024_01_01'])
    assert.deepEqual(r.flow, { established: true, toServer: true })
    assert.equal(r.bidirectional, false)
    // Suricata's default HOME_NET is RFC 1918; EXTERNAL_NET is its complement.
    assert.equal(r.source.match(ip4('10.1.2.3'), 0, 4), true)
    assert.equal(r.source.match(ip4('8.8.8.8'), 0, 4), false)
    assert.equal(r.destination.match(ip4('8.8.8.8'), 0, 4), true)
    assert.equal(r.destinationPorts.match(80), true)
    assert.equal(r.destinationPorts.match(8080), false)
    assert.equal(r.sourcePorts.any, true)
  })

  it('takes priority over the classtype and defaults severity to 3', () => {
    assert.equal(
      one('alert tcp any any -> any any (classtype:misc-activity; priority:1; sid:1;)').severity,
      1,
    )
    assert.equal(one('alert tcp any any -> any any (sid:1;)').severity, 3)
    assert.equal(one('alert tcp any any -> any any (classtype:bad-unknown; sid:1;)').severity, 2)
  })

  it('parses content: text, |hex|, escapes, negation and every modifier', () => {
    const r = one(
      'alert tcp any any <> any any (content:"GET |20 2f|a\\;b\\"c\\\\"; nocase; offset:1; depth:40; ' +
        'content:!"evil"; distance:-2; within:10; content:"x"; fast_pattern; sid:7;)',
    )
    assert.equal(r.bidirectional, true)
    const a = content(r, 0)
    assert.deepEqual(Buffer.from(a.pattern).toString('latin1'), 'GET  /a;b"c\\')
    assert.deepEqual(Buffer.from(a.folded).toString('latin1'), 'get  /a;b"c\\')
    assert.equal(a.nocase, true)
    assert.equal(a.offset, 1)
    assert.equal(a.depth, 40)
    assert.equal(a.relative, false)
    const b = content(r, 1)
    assert.equal(b.negated, true)
    assert.equal(b.relative, true)
    assert.equal(b.distance, -2)
    assert.equal(b.within, 10)
    assert.deepEqual(r.fastPattern, { group: 0, item: 2 }) // explicit fast_pattern beats the longer first content
    // Without fast_pattern, the longest positive content.
    assert.deepEqual(
      one('alert tcp any any -> any any (content:"ab"; content:"abcd"; content:"wxyz"; sid:1;)').fastPattern,
      { group: 0, item: 1 },
    )
    assert.equal(one('alert tcp any any -> any any (content:!"abcd"; sid:1;)').fastPattern, undefined)
  })

  it('compiles pcre flags and PCRE anchors for the linear-time engine', () => {
    const r = one(
      'alert tcp any any -> any any (content:"a"; pcre:"/^b\\d+ # digits\\n/Rix"; pcre:!"/\\Afoo\\z/sm"; sid:1;)',
    )
    const p = r.groups[0].items[1] as PcreMatch
    assert.equal(p.relative, true)
    assert.equal(p.regex.sticky, true) // relative ^ anchors at the previous match
    assert.equal(p.regex.source, 'b\\d+')
    assert.equal(p.regex.search('xB12', 1, newRegexBudget()), true) // i
    assert.equal(p.regex.search('xB12', 0, newRegexBudget()), false) // sticky
    const q = r.groups[0].items[2] as PcreMatch
    assert.equal(q.negated, true)
    assert.equal(q.regex.search('foo', 0, newRegexBudget()), true)
    assert.equal(q.regex.search('xfoo', 0, newRegexBudget()), false)
  })

  it('binds contents and pcres to buffers: sticky buffers, content modifiers, pcre flags', () => {
    const r = one(
      'alert http any any -> any any (http.method; content:"POST"; http.uri; content:"/a"; ' +
        'content:"b"; distance:0; pkt_data; content:"raw"; content:"host"; http_host; ' +
        'pcre:"/x+/U"; file_data; content:"body"; sid:1;)',
    )
    assert.equal(r.app, 'http')
    assert.equal(r.protocol, 'http')
    const shape = r.groups.map((g) => [
      g.buffer,
      g.items.map((m) =>
        m.kind === 'content' ? Buffer.from(m.pattern).toString() : m.kind === 'pcre' ? m.source : m.kind,
      ),
    ])
    assert.deepEqual(shape, [
      ['http.method', ['POST']],
      ['http.uri', ['/a', 'b', '/x+/U']],
      ['payload', ['raw']],
      ['http.host', ['host']],
      ['file.data', ['body']],
    ])
    // The relative content stays relative to the previous item of its group.
    assert.equal((r.groups[1].items[1] as ContentMatch).relative, true)
    // An application buffer's content is preferred as the fast pattern, the longest first.
    assert.deepEqual(r.fastPattern, { group: 0, item: 0 })
    assert.deepEqual(
      one('alert http any any -> any any (content:"longer payload"; http.uri; content:"/a"; sid:9;)')
        .fastPattern,
      { group: 1, item: 0 },
    )
    // Legacy sticky forms and protocols.
    const d = one('alert dns any any -> any any (dns_query; content:"evil"; nocase; sid:2;)')
    assert.equal(d.app, 'dns')
    assert.equal(d.groups[0].buffer, 'dns.query')
    assert.equal((d.groups[0].items[0] as ContentMatch).nocase, true)
    const t = one(
      'alert tls any any -> any any (tls.sni; content:"x.example"; ja3.hash; content:"ab"; sid:3;)',
    )
    assert.deepEqual(
      t.groups.map((g) => g.buffer),
      ['tls.sni', 'ja3.hash'],
    )
    assert.match(
      errorOf('alert http any any -> any any (http.uri; content:"a"; http_header; sid:1;)'),
      /'http_header' on a content already in buffer 'http.uri'/,
    )
    assert.match(
      errorOf('alert http any any -> any any (http_uri; sid:1;)'),
      /'http_uri' needs a preceding content/,
    )
    assert.match(
      errorOf('alert http any any -> any any (pcre:"/a/UH"; sid:1;)'),
      /pcre flags for two buffers/,
    )
  })

  it('parses dsize forms with Suricata semantics', () => {
    const d = (s: string) => one(`alert udp any any -> any any (dsize:${s}; sid:1;)`).dsize
    assert.deepEqual(d('10'), { min: 10, max: 10, negated: false })
    assert.deepEqual(d('<10'), { min: 0, max: 9, negated: false })
    assert.deepEqual(d('>10'), { min: 11, max: Number.POSITIVE_INFINITY, negated: false })
    assert.deepEqual(d('10<>20'), { min: 11, max: 19, negated: false })
    assert.deepEqual(d('!5'), { min: 5, max: 5, negated: true })
  })

  it('joins backslash-continued lines, skips comments, and numbers errors by first line', () => {
    const text = [
      '# a comment',
      '',
      'alert tcp any any -> any any (msg:"two \\',
      '  lines"; sid:1;)',
      'alert tcp any any -> any any (asn1:oversize_length 10; sid:2;)',
      '   # indented comment',
      'drop udp any any -> any 53 (content:"x"; sid:1;)',
    ].join('\n')
    const { rules, errors } = parseRules(text, 'local.rules')
    assert.equal(rules.length, 1)
    assert.equal(rules[0].line, 3)
    assert.equal(rules[0].msg, 'two   lines')
    assert.deepEqual(errors, [
      { file: 'local.rules', line: 5, sid: 2, message: "unsupported rule option 'asn1'" },
      { file: 'local.rules', line: 7, sid: 1, message: 'duplicate sid 1 (first at local.rules:3)' },
    ])
  })

  it('reports each kind of error', () => {
    const cases: Array<[string, RegExp]> = [
      ['alert tcp any any -> any any (msg:"x";)', /missing 'sid'/],
      ['reject tcp any any -> any any (sid:1;)', /unsupported action 'reject'/],
      ['log tcp any any -> any any (sid:1;)', /unknown action 'log'/],
      ['alert imap any any -> any any (sid:1;)', /unsupported protocol 'imap'/],
      [
        'alert smtp any any -> any any (file_data; content:"a"; sid:1;)',
        /buffer 'file.data' is not inspected on smtp flows/,
      ],
      ['alert tcp any any => any any (sid:1;)', /invalid direction/],
      ['alert tcp any any -> any (sid:1;)', /6 fields/],
      ['alert tcp any any -> any any sid:1;', /a rule is/],
      ['alert tcp $NOPE any -> any any (sid:1;)', /undefined variable '\$NOPE'/],
      ['alert tcp !any any -> any any (sid:1;)', /'!any' matches nothing/],
      ['alert tcp 10.0.0.300 any -> any any (sid:1;)', /invalid address/],
      ['alert tcp 10.0.0.0/33 any -> any any (sid:1;)', /invalid prefix/],
      ['alert tcp [10.0.0.1 any -> any any (sid:1;)', /fields|unexpected end|expected/],
      ['alert tcp any 70000 -> any any (sid:1;)', /invalid port/],
      ['alert tcp any 2000:1000 -> any any (sid:1;)', /invalid port range/],
      ['alert icmp any 80 -> any any (sid:1;)', /ports must be 'any'/],
      ['alert tcp any any -> any any (nocase; sid:1;)', /'nocase' needs a preceding content/],
      ['alert tcp any any -> any any (content:"abc"; depth:2; sid:1;)', /depth 2 is shorter/],
      ['alert tcp any any -> any any (content:"a"; offset:1; distance:1; sid:1;)', /cannot be mixed/],
      ['alert tcp any any -> any any (content:"a"; within:1; depth:3; sid:1;)', /cannot be mixed/],
      ['alert tcp any any -> any any (content:"|4|"; sid:1;)', /odd number of hex digits/],
      ['alert tcp any any -> any any (content:"|zz|"; sid:1;)', /invalid hex/],
      ['alert tcp any any -> any any (content:"a\\n"; sid:1;)', /invalid escape/],
      ['alert tcp any any -> any any (content:""; sid:1;)', /empty content/],
      ['alert tcp any any -> any any (content:abc; sid:1;)', /quoted string/],
      ['alert tcp any any -> any any (msg:"open; sid:1;)', /unterminated/],
      ['alert tcp any any -> any any (pcre:"/a/J"; sid:1;)', /unsupported pcre flag 'J'/],
      [
        'alert tcp any any -> any any (pcre:"/a++/"; sid:1;)',
        /possessive quantifiers, which the linear-time regex engine does not run/,
      ],
      ['alert tcp any any -> any any (pcre:"abc"; sid:1;)', /pcre must be/],
      ['alert tcp any any -> any any (flow:only_frag; sid:1;)', /unsupported flow option 'only_frag'/],
      ['alert tcp any any -> any any (flow:to_server,to_client; sid:1;)', /conflicting flow/],
      ['alert tcp any any -> any any (classtype:nope; sid:1;)', /unknown classtype 'nope'/],
      ['alert tcp any any -> any any (sid:abc;)', /invalid sid/],
      ['alert tcp any any -> any any (sid:0;)', /out of range/],
      ['alert tcp any any -> any any (priority:0; sid:1;)', /out of range/],
      ['alert tcp any any -> any any (dsize:5<>6; sid:1;)', /empty dsize range/],
      ['alert tcp any any -> any any (content:"a"; fast_pattern:x; sid:1;)', /fast_pattern argument/],
      ['alert tcp any any -> any any (content:"a"; nocase:1; sid:1;)', /takes no value/],
      ['alert tcp any any -> any any (lua:x.lua; sid:1;)', /unsupported rule option 'lua'/],
    ]
    for (const [rule, pattern] of cases) assert.match(errorOf(rule), pattern, rule)
  })

  it('fails a strict load with VrioError invalid-rules listing FILE:LINE for each error', () => {
    const text =
      'alert tcp any any -> any any (sid:1;)\nalert tcp any any -> any any (asn1:bitstring_overflow; sid:2;)\n\nfoo\n'
    assert.throws(
      () => parseRulesStrict(text, '/etc/vrio/dpi.rules'),
      (e: unknown) =>
        isVrioError(e, 'invalid-rules') &&
        e.message.includes("/etc/vrio/dpi.rules:2: unsupported rule option 'asn1'") &&
        e.message.includes('/etc/vrio/dpi.rules:4:') &&
        (e.details.errors as unknown[]).length === 2,
    )
  })

  it('fuzzed rule files yield rules or errors, never an exception', () => {
    const tokens = [
      'alert',
      'drop',
      'pass',
      'tcp',
      'udp',
      'icmp',
      'ip',
      'http',
      'any',
      '$HOME_NET',
      '!',
      '[',
      ']',
      ',',
      '10.0.0.0/8',
      '::1',
      '80',
      '1024:',
      '->',
      '<>',
      '(',
      ')',
      ';',
      ':',
      '"',
      '\\',
      '|',
      'content',
      'msg',
      'sid',
      '1',
      'nocase',
      'depth',
      'distance',
      'within',
      'pcre',
      '/a(b/',
      'flow',
      'dsize',
      ' ',
      '\n',
      '#',
    ]
    const text = fc.oneof(
      fc.string({ maxLength: 300 }),
      fc.array(fc.constantFrom(...tokens), { maxLength: 60 }).map((t) => t.join('')),
      fc.array(fc.constantFrom(...tokens), { maxLength: 60 }).map((t) => t.join(' ')),
    )
    fc.assert(
      fc.property(text, (t) => {
        const { rules, errors } = parseRules(t, 'fuzz.rules')
        for (const e of errors) assert.ok(e.line >= 1 && typeof e.message === 'string')
        for (const r of rules) assert.ok(r.sid > 0)
      }),
      { numRuns: 3000 },
    )
  })
})

describe('rule address and port fields', () => {
  const vars = { HOME_NET: '[10.0.0.0/8,2001:db8::/32]', WEB: '[80,443,8000:8100]' }
  it('matches CIDR, IPv6, lists with negation, and nested lists', () => {
    const m = parseAddressField('[$HOME_NET,![10.1.0.0/16,!10.1.2.3],192.168.1.1]', vars)
    const v4 = (s: string) => m.match(ip4(s), 0, 4)
    assert.equal(v4('10.2.0.1'), true)
    assert.equal(v4('10.1.9.9'), false)
    assert.equal(v4('10.1.2.3'), true) // excluded from the exclusion
    assert.equal(v4('192.168.1.1'), true)
    assert.equal(v4('192.168.1.2'), false)
    const v6 = parseIPv6Bytes('2001:db8:1::5') as Uint8Array
    assert.equal(m.match(v6, 0, 16), true)
    assert.equal(m.match(parseIPv6Bytes('2001:db9::1') as Uint8Array, 0, 16), false)
    const neg = parseAddressField('!192.168.0.0/16', vars)
    assert.equal(neg.match(ip4('192.168.5.5'), 0, 4), false)
    assert.equal(neg.match(ip4('8.8.8.8'), 0, 4), true)
  })

  it('parses IPv6 text forms', () => {
    assert.deepEqual(parseIPv6Bytes('::1'), Uint8Array.from([...new Array(15).fill(0), 1]))
    assert.deepEqual(parseIPv6Bytes('::ffff:1.2.3.4')?.subarray(10), Uint8Array.from([255, 255, 1, 2, 3, 4]))
    assert.equal(parseIPv6Bytes('1::2::3'), undefined)
    assert.equal(parseIPv6Bytes('1:2:3:4:5:6:7'), undefined)
    assert.equal(parseIPv6Bytes('1:2:3:4:5:6:7:8')?.[15], 8)
  })

  it('matches ports, ranges and negated lists', () => {
    const p = parsePortField('[$WEB,!8050,1024:2000]', vars)
    for (const [port, expected] of [
      [80, true],
      [8050, false],
      [8099, true],
      [1500, true],
      [22, false],
    ] as const) {
      assert.equal(p.match(port), expected, String(port))
    }
    assert.equal(parsePortField('1024:', vars).match(65535), true)
    assert.equal(parsePortField(':1023', vars).match(1024), false)
    assert.equal(parsePortField('!80', vars).match(81), true)
  })

  it('makes EXTERNAL_NET any when HOME_NET is any', () => {
    const r = one('alert tcp $EXTERNAL_NET any -> $HOME_NET any (sid:1;)', { HOME_NET: 'any' })
    assert.equal(r.source.any, true)
  })

  it('detects variable cycles', () => {
    const { errors } = parseRules('alert tcp $A any -> any any (sid:1;)', 'x', {
      vars: { A: '$B', B: '[$A]' },
    })
    assert.match(errors[0].message, /nest too deep/)
  })
})
