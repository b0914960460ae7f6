/** Control characters from peers, escaped for terminals: the helper, and the daemons' logger. */
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { createLogger } from '../../src/daemon/log.ts'
import { escapeControl, escapeJsonText } from '../../src/escape.ts'
import { EveFileSink } from '../../src/services/dpi/index.ts'

function isControl(c: number): boolean {
  return (
    c < 0x20 ||
    (c >= 0x7f && c <= 0x9f) ||
    c === 0x2028 ||
    c === 0x2029 ||
    (c >= 0x202a && c <= 0x202e) ||
    (c >= 0x2066 && c <= 0x2069)
  )
}
const hasControl = (s: string) => [...s].some((ch) => isControl(ch.codePointAt(0)!))
/** Strings rich in the characters that matter. */
const peerString = fc.string({
  unit: fc.oneof(
    fc.constantFrom('\x1b', '\r', '\n', '\t', '\x00', '\x07', '\x08', '\x7f', '\u009b', '\u202e', '\u2028'),
    fc.constantFrom('[', ']', '2J', ';', '\\', 'x1b', 'é', '名'),
    fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }),
  ),
  maxLength: 40,
})

describe('escaping control characters', () => {
  it('writes each control character as \\xHH or \\uHHHH and leaves other text alone', () => {
    assert.equal(escapeControl('eth0'), 'eth0')
    assert.equal(escapeControl('a\\b é 名'), 'a\\b é 名')
    assert.equal(escapeControl('\x1b[31mred\r\x00'), '\\x1b[31mred\\x0d\\x00')
    assert.equal(escapeControl('tab\there\nline'), 'tab\\x09here\\x0aline')
    assert.equal(escapeControl('\x7f\u0085\u009b'), '\\x7f\\x85\\x9b')
    assert.equal(escapeControl('abc\u202edcba\u2066\u2028'), 'abc\\u202edcba\\u2066\\u2028')
  })

  it('property: the result holds no control character, and text without any is unchanged', () => {
    fc.assert(
      fc.property(peerString, (s) => {
        const e = escapeControl(s)
        assert.ok(!hasControl(e), JSON.stringify(e))
        if (!hasControl(s)) assert.equal(e, s)
      }),
    )
  })

  it('property: escaped JSON holds no control character and parses back to the same value', () => {
    fc.assert(
      fc.property(peerString, peerString, (k, v) => {
        for (const json of [JSON.stringify({ [k]: v }), JSON.stringify({ [k]: [v] }, null, 2)]) {
          const e = escapeJsonText(json)
          assert.ok(!hasControl(e.replaceAll('\n', '')), e)
          assert.deepEqual(JSON.parse(e), JSON.parse(json))
        }
      }),
    )
  })

  it('the logger writes one line per record, with no control character a peer put in a field', () => {
    const lines: string[] = []
    const write = process.stderr.write
    process.stderr.write = ((chunk: string) => {
      lines.push(chunk)
      return true
    }) as typeof process.stderr.write
    try {
      const log = createLogger('test', 'info')
      log.warn('guest error', { ifname: 'vn\u009b2J\x1b]0;t\x07', error: new Error('bad\r\u202eeman') })
    } finally {
      process.stderr.write = write
    }
    assert.equal(lines.length, 1)
    assert.ok(lines[0].endsWith('\n'))
    const line = lines[0].slice(0, -1)
    assert.ok(!hasControl(line), line)
    const record = JSON.parse(line)
    assert.equal(record.ifname, 'vn\u009b2J\x1b]0;t\x07')
    assert.equal(record.error.message, 'bad\r\u202eeman')
  })

  it('eve.json records (which quote packets) carry C1 and bidi controls as JSON escapes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vrio-eve-'))
    try {
      const sink = new EveFileSink(join(dir, 'eve.json'))
      const host = 'evil\u009b2J\u202eexample\x1b'
      sink.write({ event_type: 'alert', http: { hostname: host } })
      sink.close()
      const text = readFileSync(join(dir, 'eve.json'), 'utf8')
      assert.ok(!hasControl(text.slice(0, -1)), text)
      assert.equal(JSON.parse(text).http.hostname, host)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
