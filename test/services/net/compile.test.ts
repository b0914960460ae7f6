/**
 * Loading rules files like Suricata, within limits (compile.ts), in a worker (load.ts), and
 * `vrio dpi check` (like `suricata -T`).
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { EXIT, isVrioError } from '../../../src/errors.ts'
import { AhoCorasick } from '../../../src/services/dpi/aho-corasick.ts'
import { createDpi, DpiService, parseRules } from '../../../src/services/dpi/index.ts'
import { compileRules, DEFAULT_LOAD_LIMITS } from '../../../src/services/net/compile.ts'
import { buildNetService, compileInWorker, prepareReplace } from '../../../src/services/net/load.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { TCP_ACK } from '../../../src/wire/tcp.ts'
import { ipv4, mac, tcpFrame } from '../../support/packets.ts'

const dir = mkdtempSync(join(tmpdir(), 'vrio-compile-'))
after(() => rmSync(dir, { recursive: true, force: true }))
const file = (name: string, text: string | Buffer) => {
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}

const GOOD = 'alert tcp any any -> any any (msg:"a"; content:"evil"; sid:1;)'
const MIXED = [
  GOOD,
  'alert tcp any any -> any any (msg:"b"; asn1:oversize_length 10; sid:2;)',
  '# a comment',
  'alert tcp any any -> any any (msg:"c"; pcre:"/(a)\\1/"; sid:3;)',
  'garbage',
  'alert tcp any any -> any any (msg:"d"; content:"more"; sid:4;)',
].join('\n')

const bin = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url))
const vrio = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' })

describe('loading rules files within limits', () => {
  it('skips unusable DPI rules with FILE:LINE, sid and reason', () => {
    const path = file('mixed.rules', MIXED)
    const { report } = compileRules({ kind: 'dpi', files: [path] })
    assert.equal(report.loaded, 2)
    assert.deepEqual(report.skipped, [
      { file: path, line: 2, sid: 2, reason: "unsupported rule option 'asn1'" },
      {
        file: path,
        line: 4,
        sid: 3,
        reason: 'pcre uses backreferences, which the linear-time regex engine does not run',
      },
      { file: path, line: 5, reason: 'a rule is `action proto src sport -> dst dport (options;)`' },
    ])
  })

  it('--strict refuses a set with any skipped rule; a set with no usable rule is refused', () => {
    const path = file('mixed2.rules', MIXED)
    assert.throws(
      () => compileRules({ kind: 'dpi', files: [path], strict: true }),
      (e: unknown) => isVrioError(e, 'invalid-rules') && e.message.includes(`${path}:2: unsupported`),
    )
    const junk = file('junk.rules', 'nonsense\n\x00\x01\x02\n')
    assert.throws(
      () => compileRules({ kind: 'dpi', files: [junk] }),
      (e: unknown) =>
        isVrioError(e, 'invalid-rules') && /no usable rule in .*junk\.rules: 2 skipped/.test(e.message),
    )
    // An empty file (or only comments) is a valid, empty set.
    assert.equal(compileRules({ kind: 'dpi', files: [file('empty.rules', '# nothing\n')] }).report.loaded, 0)
  })

  it('loads several files as one set: a sid reused in another file is skipped, naming the first', () => {
    const a = file('a.rules', GOOD)
    const b = file('b.rules', `${GOOD.replace('"a"', '"again"')}\n${GOOD.replace('sid:1', 'sid:9')}`)
    const { report } = compileRules({ kind: 'dpi', files: [a, b] })
    assert.equal(report.loaded, 2)
    assert.deepEqual(report.skipped, [
      { file: b, line: 1, sid: 1, reason: `duplicate sid 1 (first at ${a}:1)` },
    ])
  })

  it('refuses files over the limits with errors naming the limit', () => {
    const big = file('big.rules', GOOD)
    truncateSync(big, 2048)
    const refused = (limits: object, path: string, message: RegExp, kind: 'dpi' | 'firewall' = 'dpi') =>
      assert.throws(
        () => compileRules({ kind, files: [path], limits }),
        (e: unknown) => isVrioError(e, 'rules-too-large') && message.test(e.message),
      )
    refused({ maxFileBytes: 1024 }, big, /big\.rules is 0\.0 MiB \(the limit is 0\.0 MiB\)/)
    const many = file(
      'many.rules',
      Array.from({ length: 11 }, (_, i) => GOOD.replace('sid:1', `sid:${i + 1}`)).join('\n'),
    )
    refused({ maxRules: 10 }, many, /11 rule lines \(the limit is 10 rules\)/)
    const fw = file('many.fw', 'from-guest tcp dport 1 accept\n'.repeat(11))
    refused({ maxRules: 10 }, fw, /firewall rules: .*11 rule lines/, 'firewall')
    refused({ maxCompiledBytes: 1000 }, many, /would compile to about .* \(the limit is 0\.0 MiB\)/)
    // Rule and content length: the rule is skipped with the reason.
    const long = file(
      'long.rules',
      `${GOOD}\nalert tcp any any -> any any (content:"${'x'.repeat(1000)}"; sid:2;)`,
    )
    const r = compileRules({ kind: 'dpi', files: [long], limits: { maxContentBytes: 100 } }).report
    assert.equal(r.loaded, 1)
    assert.match(r.skipped[0].reason, /content longer than the limit of 100 bytes/)
    const r2 = compileRules({
      kind: 'dpi',
      files: [long],
      limits: { maxContentBytes: 1000, maxRuleBytes: 200 },
    })
    assert.match(r2.report.skipped[0].reason, /the rule is \d+ bytes long, over the limit of 200/)
    const exact = file(
      'exact.rules',
      `alert tcp any any -> any any (content:"${'x'.repeat(101)}"; sid:2;)\n${GOOD}`,
    )
    const r3 = compileRules({ kind: 'dpi', files: [exact], limits: { maxContentBytes: 100 } }).report
    assert.equal(r3.skipped[0].reason, 'content of 101 bytes is over the limit of 100')
    assert.ok(DEFAULT_LOAD_LIMITS.maxRules >= 30_000, 'room for ET Open')
  })

  it('the firewall stays strict: a bad line refuses the file', () => {
    const fw = file('bad.fw', 'from-guest tcp dport 22 accept\nfrom-guest tcp dport 70000 accept\n')
    assert.throws(
      () => compileRules({ kind: 'firewall', files: [fw] }),
      (e: unknown) => isVrioError(e, 'invalid-rules') && e.message.includes(`${fw}:2:`),
    )
  })

  it('compiles in a worker: the automaton comes back, the service matches like one built here', async () => {
    const path = file('w.rules', MIXED)
    const compiled = await compileInWorker({ kind: 'dpi', files: [path] })
    assert.equal(compiled.report.loaded, 2)
    // The prefilter groups come built too (none is built on the data path).
    assert.ok(compiled.tables?.groups?.automata.some((t) => t?.delta instanceof Int32Array))
    const service = (await buildNetService('dpi', compiled, 'nic0', { thread: false })) as DpiService
    // The service adopts the worker's automata (the same tables, not built again on this thread).
    const adopted = service.compiledTables()
    const sent = compiled.tables?.groups?.automata ?? []
    assert.ok(sent.length > 0)
    for (const [k, t] of sent.entries()) assert.equal(adopted.groups?.automata[k]?.delta, t?.delta)
    for (const [k, t] of (compiled.tables?.buffers ?? []).entries())
      assert.equal(adopted.buffers?.[k].delta, t.delta)
    const local = createDpi(MIXED, path, { strict: false })
    assert.deepEqual(service.counters().automatonStates, local.counters().automatonStates)
    const frame = tcpFrame({
      dstMac: mac('02:00:00:00:00:01'),
      srcMac: mac('02:00:00:00:00:02'),
      srcIp: ipv4('10.0.0.2'),
      dstIp: ipv4('10.0.0.3'),
      srcPort: 1000,
      dstPort: 80,
      seq: 1,
      ack: 1,
      flags: TCP_ACK,
      payload: Buffer.from('xx evil and more'),
    })
    const p = newPacket()
    dissectPacket(frame, p)
    const events: unknown[] = []
    service.inspect(frame, p, 'from-guest', { now: 0, reply: () => {}, event: (e) => events.push(e) })
    assert.deepEqual(
      events.map((e) => (e as { alert: { signature_id: number } }).alert.signature_id).sort(),
      [1, 4],
    )
    // A swap prepared from a compiled set applies at once and keeps the service.
    const next = await compileInWorker({ kind: 'dpi', files: [file('w2.rules', GOOD)] })
    const swap = await prepareReplace('dpi', service, next, 'nic0')
    assert.equal(service.rules.length, 2)
    swap()
    assert.equal(service.rules.length, 1)
  })

  it('a worker refusal is the same VrioError; a worker out of memory is rules-too-large', async () => {
    await assert.rejects(
      compileInWorker({ kind: 'dpi', files: [join(dir, 'missing.rules')] }),
      (e: unknown) => isVrioError(e, 'not-found'),
    )
    const lines = Array.from({ length: 30_000 }, (_, i) =>
      GOOD.replace('sid:1', `sid:${i + 1}`).replace('evil', `e${i}vil`),
    )
    const path = file('heavy.rules', lines.join('\n'))
    await assert.rejects(
      compileInWorker({ kind: 'dpi', files: [path], limits: { workerHeapMb: 16 } }),
      (e: unknown) => isVrioError(e, 'rules-too-large') && /more than the limit of 16 MiB/.test(e.message),
    )
  })

  it('an automaton rebuilt from its tables scans the same', () => {
    const patterns = ['evil', 'more', 'ab', 'abc'].map((s) => Buffer.from(s))
    const a = new AhoCorasick(patterns)
    const b = new AhoCorasick([], { tables: structuredClone(a.tables()) })
    const data = Buffer.from('xxabcyy evil more abab')
    const hits = (ac: AhoCorasick) => {
      const out: number[][] = []
      ac.scan(data, 0, data.length, 0, (p, end) => out.push([p, end]))
      return out
    }
    assert.deepEqual(hits(b), hits(a))
    assert.ok(hits(a).length >= 4)
    // Tables for other rules are not used: built afresh.
    const parsed = parseRules(GOOD, 'x')
    const other = new DpiService(parseRules(MIXED, 'y'), { strict: false }).compiledTables()
    const d = new DpiService(parsed, {}, structuredClone(other))
    assert.equal(d.counters().automatonStates, new DpiService(parsed, {}).counters().automatonStates)
  })
})

describe('vrio dpi check', () => {
  it('prints loaded and skipped rules with FILE:LINE and reason; exit 0 when usable', () => {
    const path = file('check.rules', MIXED)
    const r = vrio('dpi', 'check', path)
    assert.equal(r.status, 0, r.stderr)
    assert.equal(
      r.stdout,
      [
        `${path}:2: sid 2: unsupported rule option 'asn1'`,
        `${path}:4: sid 3: pcre uses backreferences, which the linear-time regex engine does not run`,
        `${path}:5: a rule is \`action proto src sport -> dst dport (options;)\``,
        '2 rules loaded, 3 skipped',
        '',
      ].join('\n'),
    )
  })

  it('--json prints {loaded, skipped: [{file, line, sid, reason}]}; --strict exits non-zero', () => {
    const path = file('check2.rules', MIXED)
    const r = vrio('dpi', 'check', path, '--json', '--strict')
    assert.equal(r.status, EXIT.usage)
    const out = JSON.parse(r.stdout)
    assert.equal(out.loaded, 2)
    assert.deepEqual(out.skipped[0], {
      file: path,
      line: 2,
      sid: 2,
      reason: "unsupported rule option 'asn1'",
    })
    assert.equal(out.skipped[2].sid, null)
    const good = vrio('dpi', 'check', file('good.rules', GOOD), '--json', '--strict')
    assert.equal(good.status, 0)
    assert.deepEqual(JSON.parse(good.stdout), { loaded: 1, skipped: [] })
  })

  it('exits non-zero for binary garbage, a missing file and a limit, with one-line reasons', () => {
    const junk = file('junk2.rules', Buffer.from([0, 1, 2, 0xff, 10, 0x80, 0x81, 10, 40, 41]))
    const r = vrio('dpi', 'check', junk)
    assert.equal(r.status, EXIT.usage)
    assert.match(r.stdout, /0 rules loaded, 3 skipped \(refused: no usable rule\)/)
    const missing = vrio('dpi', 'check', join(dir, 'nope.rules'))
    assert.equal(missing.status, EXIT.notFound)
    assert.match(missing.stderr, /dpi rules file .*nope\.rules: does not exist/)
    const huge = file('huge.rules', GOOD)
    truncateSync(huge, 65 * 1024 * 1024)
    const h = vrio('dpi', 'check', huge, '--json')
    assert.equal(h.status, EXIT.usage)
    assert.equal(JSON.parse(h.stdout).error.code, 'rules-too-large')
    rmSync(huge)
  })

  it('takes rule variables', () => {
    const path = file('vars.rules', 'alert tcp $MYNET any -> any any (content:"x"; sid:1;)')
    assert.equal(vrio('dpi', 'check', path).status, EXIT.usage)
    const r = vrio('dpi', 'check', path, '--var', 'MYNET=[10.0.0.0/8]')
    assert.equal(r.status, 0, r.stdout)
    assert.match(r.stdout, /1 rules loaded, 0 skipped/)
  })
})
