import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { StateTables, type ThresholdSpec } from '../../../src/services/dpi/flowstate.ts'
import { type InspectBuffer, PayloadMatcher } from '../../../src/services/dpi/match.ts'
import { createDpi, parseRules } from '../../../src/services/dpi/index.ts'
import type { NetContext } from '../../../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { tcpConversation } from '../../support/packets.ts'

/** Whether the rule's payload items (options only) match `payload`. */
function matches(options: string, payload: string | Uint8Array): boolean {
  const { rules, errors } = parseRules(`alert tcp any any -> any any (${options} sid:1;)`, 't.rules')
  assert.deepEqual(errors, [], options)
  const group = rules[0].groups.find((g) => g.buffer === 'payload')
  const data = Buffer.from(typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload)
  const buf: InspectBuffer = { data, length: data.length, base: 0, text: undefined }
  return new PayloadMatcher(group?.items ?? []).verify(buf, 0)
}

function errorOf(options: string): string {
  const { errors } = parseRules(`alert tcp any any -> any any (${options} sid:1;)`, 't.rules')
  assert.equal(errors.length, 1, options)
  return errors[0].message
}

const bytes = (...b: number[]) => Uint8Array.from(b)

describe('payload keywords', () => {
  it('byte_test: binary (big/little endian), string bases, operators, negation, relative, bitmask', () => {
    assert.equal(matches('byte_test:2,>,255,0;', bytes(0x01, 0x00)), true)
    assert.equal(matches('byte_test:2,>,256,0;', bytes(0x01, 0x00)), false)
    assert.equal(matches('byte_test:2,=,1,0,little;', bytes(0x01, 0x00)), true)
    assert.equal(matches('byte_test:3,=,123,1,string,dec;', 'x123'), true)
    assert.equal(matches('byte_test:2,=,255,0,string,hex;', 'ff'), true)
    assert.equal(matches('byte_test:2,!=,255,0,string,hex;', 'ff'), false)
    assert.equal(matches('byte_test:1,&,0x80,0;', bytes(0x81)), true)
    assert.equal(matches('byte_test:1,&,0x80,0;', bytes(0x7f)), false)
    assert.equal(matches('byte_test:1,=,2,0,bitmask 0x0c;', bytes(0x08)), true)
    assert.equal(matches('content:"AB"; byte_test:1,=,67,0,relative;', 'xxABC'), true)
    assert.equal(matches('content:"AB"; byte_test:1,=,67,1,relative;', 'xxABC'), false)
    // Beyond the buffer: no match.
    assert.equal(matches('byte_test:4,>,0,0;', bytes(1, 2)), false)
  })

  it('byte_jump: moves the relative position; from_beginning, from_end, multiplier, align, post_offset', () => {
    // Length 3 at 0, then "abc", then "Z" right after.
    const p = bytes(3, 0x61, 0x62, 0x63, 0x5a)
    assert.equal(matches('byte_jump:1,0; content:"Z"; within:1;', p), true)
    assert.equal(matches('byte_jump:1,0; content:"c"; within:1;', p), false)
    assert.equal(matches('byte_jump:1,0,post_offset -1; content:"cZ"; within:2;', p), true)
    assert.equal(matches('byte_jump:1,0,from_beginning; content:"cZ"; within:2;', p), true)
    assert.equal(matches('byte_jump:1,0,multiplier 2; content:"Z"; within:1;', p), false)
    assert.equal(matches('byte_jump:0,0,from_end,post_offset -1; content:"Z"; within:1;', p), true)
    // A jump past the end fails.
    assert.equal(matches('byte_jump:1,0;', bytes(9, 1)), false)
    assert.equal(matches('byte_jump:1,0,align; content:"Z"; within:1;', bytes(1, 0, 0, 0, 0, 0x5a)), true)
  })

  it('byte_extract and byte_math: variables in byte_test, isdataat and content positions', () => {
    const p = bytes(2, 0x41, 0x42, 0x58)
    assert.equal(matches('byte_extract:1,0,len; content:"X"; distance:len; within:1;', p), true)
    assert.equal(matches('byte_extract:1,0,len; content:"B"; distance:len; within:1;', p), false)
    assert.equal(matches('byte_extract:1,0,len; byte_test:1,=,len,0;', p), true)
    assert.equal(matches('byte_extract:1,0,len; isdataat:len,relative;', p), true)
    assert.equal(matches('byte_math:bytes 1,offset 0,oper +,rvalue 1,result n; byte_test:1,=,n,0;', p), false)
    assert.equal(
      matches('byte_math:bytes 1,offset 0,oper *,rvalue 44,result n; byte_test:1,=,88,3;', p),
      true,
    )
    assert.match(errorOf('byte_test:1,=,nope,0;'), /neither a number nor a byte_extract variable/)
  })

  it('isdataat: absolute (offset < length) and relative (prev + n <= length), negated', () => {
    assert.equal(matches('isdataat:3;', 'abcd'), true)
    assert.equal(matches('isdataat:4;', 'abcd'), false)
    assert.equal(matches('isdataat:!4;', 'abcd'), true)
    assert.equal(matches('content:"ab"; isdataat:2,relative;', 'abcd'), true)
    assert.equal(matches('content:"ab"; isdataat:3,relative;', 'abcd'), false)
    assert.equal(matches('content:"ab"; isdataat:!1,relative;', 'ab'), true)
  })

  it('startswith, endswith, bsize', () => {
    assert.equal(matches('content:"GET"; startswith;', 'GET /'), true)
    assert.equal(matches('content:"GET"; startswith;', ' GET /'), false)
    assert.equal(matches('content:".exe"; endswith;', 'a.exe'), true)
    assert.equal(matches('content:".exe"; endswith;', 'a.exe '), false)
    assert.equal(matches('content:!".exe"; endswith;', 'a.exe '), true)
    assert.equal(matches('content:"a"; bsize:5;', 'a.exe'), true)
    assert.equal(matches('content:"a"; bsize:>5;', 'a.exe'), false)
    assert.equal(matches('content:"a"; bsize:4<>6;', 'a.exe'), true)
    // A content modifier after bsize still applies to the content before it.
    assert.equal(matches('content:"A"; bsize:5; nocase;', 'a.exe'), true)
  })

  it('transforms: dotprefix, to_lowercase, url_decode keep the prefilter on untransformed buffers', () => {
    const { rules } = parseRules(
      'alert dns any any -> any any (dns.query; dotprefix; content:".example.com"; endswith; sid:1;)',
      't',
    )
    assert.equal(rules[0].fastPattern, undefined)
    const g = rules[0].groups[0]
    const m = new PayloadMatcher(g.items)
    const buf = (s: string): InspectBuffer => ({
      data: Buffer.from(s),
      length: s.length,
      base: 0,
      text: undefined,
    })
    assert.equal(m.verify(buf('example.com'), 0), true)
    assert.equal(m.verify(buf('www.example.com'), 0), true)
    assert.equal(m.verify(buf('badexample.com'), 0), false)
    assert.equal(matches('to_lowercase; content:"get";', 'GET'), true)
    assert.equal(matches('url_decode; content:"a b/";', 'a%20b%2f'), true)
  })

  it('transforms: matchers on one buffer share the result of each chain, and different chains stay apart', () => {
    const matcher = (options: string): PayloadMatcher => {
      const { rules, errors } = parseRules(
        `alert http any any -> any any (http.host; ${options} sid:1;)`,
        't',
      )
      assert.deepEqual(errors, [], options)
      return new PayloadMatcher(rules[0].groups[0].items)
    }
    const dotted = matcher('dotprefix; content:".the.example"; endswith;')
    const dottedOther = matcher('dotprefix; content:".other.example"; endswith;')
    const lowered = matcher('to_lowercase; content:"www.the.example"; startswith;')
    const dottedLowered = matcher('dotprefix; to_lowercase; content:".www.the"; startswith;')
    const plain = matcher('content:"WWW.The"; startswith;')
    const host: InspectBuffer = { data: Buffer.from('WWW.The.Example'), length: 15, base: 0, text: undefined }
    // In an order where a cached result of the wrong chain would give a wrong answer.
    assert.equal(dotted.verify(host, 0), false) // ".WWW.The.Example": case-sensitive content
    assert.equal(lowered.verify(host, 0), true)
    assert.equal(dottedLowered.verify(host, 0), true)
    assert.equal(dottedOther.verify(host, 0), false)
    assert.equal(plain.verify(host, 0), true)
    assert.deepEqual([...(host.transformed?.keys() ?? [])].sort(), [
      'dotprefix',
      'dotprefix to_lowercase',
      'to_lowercase',
    ])
    assert.equal(host.transformed?.get('dotprefix')?.data.toString(), '.WWW.The.Example')
    // The buffer itself is left as it was.
    assert.equal(host.data.toString(), 'WWW.The.Example')
  })

  it('base64_decode + base64_data: later contents match the decoded bytes', () => {
    const p = `x=${Buffer.from('thisisatest').toString('base64')}&y`
    assert.equal(matches('content:"x="; base64_decode:relative; base64_data; content:"isatest";', p), true)
    assert.equal(
      matches('content:"x="; base64_decode:bytes 8,relative; base64_data; content:"isatest";', p),
      false,
    )
    assert.equal(matches('content:"x="; base64_decode:relative; base64_data; content:"toast";', p), false)
    assert.match(errorOf('base64_data; content:"a";'), /needs a preceding base64_decode/)
    // The decoded contents never feed the prefilter.
    const { rules } = parseRules(
      'alert tcp any any -> any any (base64_decode; base64_data; content:"abc"; sid:1;)',
      't',
    )
    assert.equal(rules[0].fastPattern, undefined)
  })

  it('a relative keyword joins the buffer of the content before it (moved there by a modifier)', () => {
    const { rules } = parseRules(
      'alert http any any -> any any (content:"arg"; http_uri; isdataat:2,relative; sid:1;)',
      't',
    )
    assert.deepEqual(
      rules[0].groups.map((g) => [g.buffer, g.items.map((m) => m.kind)]),
      [['http.uri', ['content', 'isdataat']]],
    )
  })

  it('flow:only_stream / no_stream select tcp-stream / tcp-pkt matching; rawbytes is a no-op', () => {
    const { rules, errors } = parseRules(
      'alert tcp any any -> any any (flow:established,only_stream; content:"a"; sid:1;)\n' +
        'alert tcp any any -> any any (flow:no_stream; content:"a"; rawbytes; sid:2;)\n' +
        'alert tcp-pkt any any -> any any (content:"a"; sid:3;)',
      't',
    )
    assert.deepEqual(errors, [])
    assert.deepEqual(
      rules.map((r) => r.tcpMode),
      ['stream', 'packet', 'packet'],
    )
  })

  it('fast_pattern only and chop are accepted; unknown arguments are not', () => {
    assert.equal(matches('content:"abcdef"; fast_pattern:only;', 'xabcdefx'), true)
    assert.equal(matches('content:"abcdef"; fast_pattern:1,3;', 'xabcdefx'), true)
    assert.match(errorOf('content:"abc"; fast_pattern:x;'), /fast_pattern argument/)
  })
})

describe('threshold trackers', () => {
  const facts = (now: number, source = '10.0.0.1') => ({ now, source, destination: '10.0.0.2', flowId: 1 })
  const run = (t: ThresholdSpec, times: number[], sources?: string[]) => {
    const tables = new StateTables()
    return times.map((now, k) => tables.threshold(t, 1, facts(now, sources?.[k])))
  }

  it('limit: at most count per window, per tracked key', () => {
    const t: ThresholdSpec = { type: 'limit', track: 'by_src', count: 2, seconds: 60 }
    assert.deepEqual(run(t, [0, 1, 2, 61_000]), [true, true, false, true])
    assert.deepEqual(run(t, [0, 1, 2], ['a', 'a', 'b']), [true, true, true])
  })

  it('threshold: every count-th match; both: once per window at the count-th', () => {
    assert.deepEqual(
      run({ type: 'threshold', track: 'by_rule', count: 3, seconds: 60 }, [0, 1, 2, 3, 4, 5]),
      [false, false, true, false, false, true],
    )
    assert.deepEqual(run({ type: 'both', track: 'by_dst', count: 2, seconds: 60 }, [0, 1, 2, 3]), [
      false,
      true,
      false,
      false,
    ])
  })

  it('detection_filter: matches after the first count in the window', () => {
    const t: ThresholdSpec = { type: 'detection_filter', track: 'by_src', count: 2, seconds: 10 }
    assert.deepEqual(run(t, [0, 1, 2, 3, 20_000]), [false, false, true, true, false])
  })
})

describe('flowbits, flowint and noalert in the engine', () => {
  function flow(rules: string): {
    send: (data: string, toServer?: boolean) => number[]
    replace: (rules: string) => void
  } {
    const dpi = createDpi(rules, 't.rules', { strict: true })
    const sids: number[] = []
    const ctx: NetContext = {
      now: 0,
      reply: () => {},
      event: (r) => sids.push((r.alert as { signature_id: number }).signature_id),
    }
    const p = newPacket()
    const next = tcpConversation({
      clientMac: '02:00:00:00:00:02',
      serverMac: '02:00:00:00:00:01',
      clientIp: '10.0.0.2',
      serverIp: '10.0.0.9',
      clientPort: 40000,
      serverPort: 80,
    })
    return {
      send(data, toServer = true) {
        sids.length = 0
        const f = next(Buffer.from(data), toServer)
        dissectPacket(f, p)
        dpi.inspect(f, p, toServer ? 'from-guest' : 'to-guest', ctx)
        return [...sids]
      },
      replace(text) {
        dpi.replaceParsed(parseRules(text, 't.rules'))
      },
    }
  }

  it('set + noalert on one packet, isset on a later one; isnotset; unset; order within a packet', () => {
    const f = flow(
      [
        'alert tcp any any -> any any (content:"LOGIN"; flowbits:set,auth; flowbits:noalert; sid:1;)',
        'alert tcp any any -> any any (content:"DATA"; flowbits:isset,auth; sid:2;)',
        'alert tcp any any -> any any (content:"DATA"; flowbits:isnotset,auth; sid:3;)',
        'alert tcp any any -> any any (content:"LOGOUT"; flowbits:unset,auth; flowbits:noalert; sid:4;)',
      ].join('\n'),
    )
    assert.deepEqual(f.send('DATA'), [3])
    assert.deepEqual(f.send('LOGIN'), [])
    assert.deepEqual(f.send('DATA'), [2])
    assert.deepEqual(f.send('LOGOUT'), [])
    assert.deepEqual(f.send('DATA'), [3])
    // Set and checked in the same packet: the setter runs first.
    assert.deepEqual(f.send('LOGIN DATA'), [2])
  })

  it('flowint: counts and compares', () => {
    const f = flow(
      [
        'alert tcp any any -> any any (content:"FAIL"; flowint:fails,+,1; noalert; sid:1;)',
        'alert tcp any any -> any any (content:"FAIL"; flowint:fails,>=,3; sid:2;)',
      ].join('\n'),
    )
    assert.deepEqual(f.send('FAIL'), [])
    assert.deepEqual(f.send('FAIL'), [])
    assert.deepEqual(f.send('FAIL'), [2])
  })

  it('threshold in a rule: limit by_src', () => {
    const f = flow(
      'alert tcp any any -> any any (content:"x"; threshold:type limit, track by_src, count 1, seconds 60; sid:1;)',
    )
    assert.deepEqual(f.send('x'), [1])
    assert.deepEqual(f.send('x'), [])
  })

  it('header-only rules with IPv4 lists (IP reputation) match through the address index', () => {
    const list = (last: number) =>
      `[${Array.from({ length: 50 }, (_, k) => `192.0.2.${k}`).join(',')},10.0.0.${last}]`
    const f = flow(
      [
        `alert tcp ${list(9)} any -> any any (msg:"from listed"; sid:1;)`,
        `alert tcp any any -> ${list(9)} any (msg:"to listed"; sid:2;)`,
        `alert tcp ${list(7)} any -> any any (msg:"not listed"; sid:3;)`,
        'alert tcp [10.0.0.0/24,192.0.2.0/24,198.51.100.0/24,203.0.113.0/24] any -> any 80 (sid:4;)',
      ].join('\n'),
    )
    assert.deepEqual(f.send('hello').sort(), [2, 4])
    assert.deepEqual(f.send('hello', false), [1])
    // Every packet of the flow, not only the first one of each side (a side's lookups are kept).
    assert.deepEqual(f.send('again').sort(), [2, 4])
    assert.deepEqual(f.send('again', false), [1])
    // New rules on the same flow: the sides look their addresses up again.
    f.replace(
      [
        `alert tcp ${list(7)} any -> any any (msg:"not listed"; sid:3;)`,
        `alert tcp any any -> ${list(2)} any (msg:"client listed now"; sid:5;)`,
      ].join('\n'),
    )
    assert.deepEqual(f.send('more'), [])
    assert.deepEqual(f.send('more', false), [5])
  })

  it('reports bad flowbits/threshold/xbits options', () => {
    assert.match(errorOf('flowbits:frob,x;'), /invalid flowbits operation/)
    assert.match(errorOf('threshold:type limit, count 1, seconds 1;'), /track/)
    assert.match(errorOf('xbits:set,x;'), /track/)
    // ET's named backreferences get the reason, not RE2's parse error.
    assert.match(errorOf('pcre:"/(?P<v>a+)=(?P=v)/";'), /pcre uses backreferences/)
  })
})
