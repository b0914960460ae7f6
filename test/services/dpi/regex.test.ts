/**
 * Bounded work per packet (issue 13): every pcre runs on the linear-time engine, and a packet's
 * regex work is capped by a budget counted in steps (characters searched × program size). The
 * pathological patterns below take a backtracking engine (JS RegExp, PCRE without match-limit)
 * exponential or high-polynomial time on the crafted payloads; here the steps charged stay within
 * the bound and the budget, and running out is counted. Nothing here measures time.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { createDpi, type DpiOptions, parseRules, type PcreMatch } from '../../../src/services/dpi/index.ts'
import { newRegexBudget, PcreRegex, translatePcre } from '../../../src/services/dpi/regex.ts'
import type { NetContext } from '../../../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { TCP_ACK, TCP_SYN } from '../../../src/wire/tcp.ts'
import { ipv4, mac, tcpFrame } from '../../support/packets.ts'

/** Patterns from real rule sets' shapes, each with a payload that makes backtracking explode. */
const PATHOLOGICAL: { pcre: string; payload: string }[] = [
  // Nested quantifiers.
  { pcre: '/(a+)+$/', payload: `${'a'.repeat(3000)}!` },
  { pcre: '/(?:a|aa)+b/', payload: 'a'.repeat(3000) },
  { pcre: '/(\\w+\\s?)*$/', payload: `${'word '.repeat(600)}\u00ff` },
  // ET-style "N fields on the line" (the stalls seen with sid 2038637's shape).
  { pcre: '/^(?:[^\\r\\n]*\\s){20}/', payload: `GET /${'x'.repeat(3000)}` },
  { pcre: '/^(?:[^\\r\\n]*\\x20){15}[^\\r\\n]*evil/i', payload: `POST ${'a '.repeat(1400)}` },
  { pcre: '/(\\d+[,.]?)+x/', payload: '1'.repeat(3000) },
]

const GUEST = mac('02:00:00:00:00:02')
const WORLD = mac('02:00:00:00:00:01')

function frame(payload: string, flags = TCP_ACK, seq = 1001): Buffer {
  return tcpFrame({
    dstMac: WORLD,
    srcMac: GUEST,
    srcIp: ipv4('10.0.0.2'),
    dstIp: ipv4('93.184.216.34'),
    srcPort: 40000,
    dstPort: 80,
    seq,
    ack: 1,
    flags,
    payload: Buffer.from(payload, 'latin1'),
  })
}

function inspect(rules: string, payload: string, options: DpiOptions = {}) {
  const dpi = createDpi(rules, 'patho.rules', options)
  const ctx: NetContext = { now: 0, reply: () => {}, event: () => {} }
  const p = newPacket()
  const send = (f: Buffer) => {
    dissectPacket(f, p)
    return dpi.inspect(f, p, 'from-guest', ctx)
  }
  send(frame('', TCP_SYN, 1000))
  const verdict = send(frame(payload))
  return { dpi, verdict, counters: dpi.counters() }
}

describe('pcre on the linear-time engine', () => {
  it('compiles every pcre to the RE2 engine (no JS RegExp)', () => {
    const { rules, errors } = parseRules(
      PATHOLOGICAL.map((x, i) => `alert tcp any any -> any any (pcre:"${x.pcre}"; sid:${i + 1};)`).join('\n'),
      'patho.rules',
    )
    assert.deepEqual(errors, [])
    for (const r of rules) {
      const m = r.groups[0].items[0] as PcreMatch
      assert.ok(m.regex instanceof PcreRegex, `sid ${r.sid}`)
      assert.ok(!((m.regex as unknown) instanceof RegExp))
    }
  })

  for (const { pcre, payload } of PATHOLOGICAL) {
    it(`${pcre}: steps within (length + 1) × program size, and within the budget`, () => {
      const rule = `alert tcp any any -> any any (pcre:"${pcre}"; sid:1;)`
      const { counters } = inspect(rule, payload)
      const program = ((parseRules(rule, 'x').rules[0].groups[0].items[0] as PcreMatch).regex as PcreRegex)
        .programSize
      assert.ok(counters.regexSteps > 0, 'the pcre ran')
      // One search per rule here (nothing to backtrack over): at most one pass over the buffer.
      assert.ok(counters.regexSteps <= (payload.length + 1) * program, `${counters.regexSteps} steps`)
      assert.equal(counters.budgetExceeded, 0)
    })
  }

  it('a payload over the per-packet budget: the pcre is not run, counted, the packet passes', () => {
    const rules = PATHOLOGICAL.map(
      (x, i) => `drop tcp any any -> any any (pcre:"${x.pcre}"; sid:${i + 1};)`,
    ).join('\n')
    const payload = `GET ${'a1 '.repeat(5000)}`
    const budget = 50_000
    const { counters, verdict } = inspect(rules, payload, { regexBudget: budget })
    assert.equal(verdict, true, 'passes (budgetExceeded: pass)')
    assert.equal(counters.budgetExceeded, 1, 'one frame over budget')
    const bySid = Object.values(counters.budgetExceededBySid)
    assert.deepEqual(bySid, [1], 'charged to the first rule it could not pay for')
    assert.ok(counters.regexSteps <= budget, `${counters.regexSteps} steps charged, budget ${budget}`)
    // IPS: budgetExceeded 'drop' drops the frame instead.
    const ips = inspect(rules, payload, { regexBudget: budget, budgetExceeded: 'drop' })
    assert.equal(ips.verdict, false)
    assert.equal(ips.counters.budgetExceeded, 1)
    assert.equal(ips.counters.drops, 1)
  })

  it('the default budget still runs ordinary pcres over a full-size packet', () => {
    const rule =
      'alert tcp any any -> any any (content:"GET "; pcre:"/^GET \\/[a-z]+\\.php\\?id=\\d+ HTTP\\/1\\.[01]\\r\\n/"; sid:7;)'
    const { counters } = inspect(rule, `GET /index.php?id=42 HTTP/1.1\r\n${'X-Pad: y\r\n'.repeat(140)}\r\n`)
    assert.equal(counters.alerts, 1)
    assert.equal(counters.budgetExceeded, 0)
  })

  it('matches like PCRE where RE2 spells things differently', () => {
    const search = (pcre: string, text: string, multiline = false, start = 0) => {
      const r = new PcreRegex(pcre, { caseless: false, dotAll: false, multiline }, false)
      return r.search(text, start, newRegexBudget()) ? [r.index, r.end] : undefined
    }
    assert.deepEqual(search('abc$', 'xabc\n'), [1, 5]) // $ before a final newline
    assert.equal(search('abc$', 'abc\nx'), undefined)
    assert.deepEqual(search('^b$', 'a\nb\nc', true), [2, 3])
    assert.deepEqual(search('abc\\Z', 'abc'), [0, 3])
    assert.deepEqual(search('\\Aab', 'ab'), [0, 2])
    assert.equal(search('\\Aab', 'xab', false, 1), undefined)
    assert.deepEqual(search('\\e\\cA', '\x1b\x01'), [0, 2])
    assert.deepEqual(search('a\\hb', 'a\tb'), [0, 3])
    assert.deepEqual(search('[\\h]', '\xa0'), [0, 1])
    assert.deepEqual(search('x\\Ry', 'x\r\ny'), [0, 4])
    assert.deepEqual(search('[]a]+', ']a]'), [0, 3])
    assert.deepEqual(search('[^]]', ']x'), [1, 2])
    assert.deepEqual(search('[[:digit:]]+', 'ab12'), [2, 4])
    assert.deepEqual(search('\\Qa.$\\E', 'xa.$'), [1, 4])
    assert.deepEqual(search('(?<=GET )\\/x', 'GET /x'), [4, 6]) // lookbehind is linear-time here
    assert.deepEqual(search('\\xff\\x00', 'a\xff\x00'), [1, 3]) // bytes as latin1 chars
    assert.equal(translatePcre('a$', true), 'a$')
  })

  it('refuses what it cannot run in linear time, with the reason', () => {
    const reasons = [
      ['/(a)\\1/', 'backreferences'],
      ['/a(?=b)/', 'lookahead'],
      ['/a(?!b)/', 'lookahead'],
      ['/(?>a+)b/', 'atomic groups'],
      ['/a++b/', 'possessive quantifiers'],
      ['/(a)?(?(1)b|c)/', 'conditionals'],
      ['/a\\Kb/', '\\K'],
    ]
    const text = reasons
      .map(([p], i) => `alert tcp any any -> any any (pcre:"${p}"; sid:${i + 1};)`)
      .join('\n')
    const { rules, errors } = parseRules(text, 'x.rules')
    assert.equal(rules.length, 0)
    assert.deepEqual(
      errors.map((e) => [e.line, e.message]),
      reasons.map(([, what], i) => [
        i + 1,
        `pcre uses ${what}, which the linear-time regex engine does not run`,
      ]),
    )
  })
})
