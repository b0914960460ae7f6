/**
 * The application-layer parsers on their own: buffers as Suricata names and shapes them, the same
 * result however the bytes are split, bounds, and no exception on garbage (fast-check).
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { deflateRawSync, deflateSync, gzipSync } from 'node:zlib'
import { describe, it } from 'node:test'
import dnsPacket from 'dns-packet'
import fc from 'fast-check'
import { AppState, detect } from '../../../src/services/dpi/app/detect.ts'
import { DnsParser, parseDnsMessage } from '../../../src/services/dpi/app/dns.ts'
import { HttpParser, normalizeHost, normalizeUri } from '../../../src/services/dpi/app/http.ts'
import { parseClientHello, TlsParser, ja3String } from '../../../src/services/dpi/app/tls.ts'
import type { AppParser, AppTx } from '../../../src/services/dpi/app/tx.ts'

const enc = (s: string) => Buffer.from(s, 'latin1')

/** Every buffer of every transaction, as text, after feeding `chunks`. */
function run(parser: AppParser, chunks: Array<[boolean, Uint8Array]>): Array<Record<string, string[]>> {
  const seen: AppTx[] = []
  for (const [toServer, data] of chunks) {
    const updated: AppTx[] = []
    parser.feed(toServer, data, 0, data.length, updated)
    for (const tx of updated) if (!seen.includes(tx)) seen.push(tx)
  }
  // The streams end (a body running to the close is complete).
  for (const toServer of [true, false]) {
    const updated: AppTx[] = []
    parser.close?.(toServer, updated)
    for (const tx of updated) if (!seen.includes(tx)) seen.push(tx)
  }
  return seen.map((tx) => {
    const out: Record<string, string[]> = {}
    for (const [side, map] of [
      ['>', tx.request],
      ['<', tx.response],
    ] as const)
      for (const [id, list] of map) out[`${side}${id}`] = list.map((b) => b.toString('latin1'))
    return out
  })
}

/** `data` cut at the given points (sorted, deduplicated, in range). */
function split(data: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b)
  const out: Uint8Array[] = []
  let from = 0
  for (const p of points) {
    out.push(data.subarray(from, p))
    from = p
  }
  out.push(data.subarray(from))
  return out.filter((c) => c.length > 0)
}

const HTTP_REQUEST =
  'GET http://Example.com:8080/a//b/./c/../d%41?q=%41+1 HTTP/1.1\r\nHost: header.example\r\n' +
  'User-Agent: agent/1\r\nCookie: a=1\r\nAccept: */*\r\nX-Folded: one\r\n two\r\nReferer: http://r/\r\n\r\n' +
  'POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n'
const HTTP_RESPONSE =
  'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 301 Moved Permanently\r\nLocation: /new\r\nSet-Cookie: s=2\r\nContent-Length: 4\r\n\r\nbody' +
  'HTTP/1.1 200 OK\r\nServer: test\r\n\r\nto the end'

describe('HTTP parser', () => {
  it('fills Suricata buffers: raw and normalised URI, host, headers, cookies, bodies, status', () => {
    const [a, b] = run(new HttpParser(), [
      [true, enc(HTTP_REQUEST)],
      [false, enc(HTTP_RESPONSE)],
    ])
    assert.deepEqual(a['>http.uri'], ['/a/b/dA?q=A+1'])
    assert.deepEqual(a['>http.uri.raw'], ['http://Example.com:8080/a//b/./c/../d%41?q=%41+1'])
    assert.deepEqual(a['>http.method'], ['GET'])
    assert.deepEqual(a['>http.host'], ['example.com'])
    assert.deepEqual(a['>http.host.raw'], ['header.example'])
    assert.deepEqual(a['>http.user_agent'], ['agent/1'])
    assert.deepEqual(a['>http.cookie'], ['a=1'])
    assert.deepEqual(a['>http.accept'], ['*/*'])
    assert.deepEqual(a['>http.referer'], ['http://r/'])
    assert.deepEqual(a['>http.request_line'], [
      'GET http://Example.com:8080/a//b/./c/../d%41?q=%41+1 HTTP/1.1',
    ])
    assert.deepEqual(a['>http.header'], [
      'Host: header.example\r\nUser-Agent: agent/1\r\nAccept: */*\r\nX-Folded: one two\r\nReferer: http://r/\r\n',
    ])
    assert.equal(a['>http.header.raw'][0].endsWith('Referer: http://r/\r\n\r\n'), true)
    assert.deepEqual(a['>http.header_names'], [
      '\r\nHost\r\nUser-Agent\r\nCookie\r\nAccept\r\nX-Folded\r\nReferer\r\n\r\n',
    ])
    assert.deepEqual(a['<http.stat_code'], ['301'])
    assert.deepEqual(a['<http.stat_msg'], ['Moved Permanently'])
    assert.deepEqual(a['<http.location'], ['/new'])
    assert.deepEqual(a['<http.cookie'], ['s=2'])
    assert.deepEqual(a['<http.response_body'], ['body'])
    assert.deepEqual(a['<file.data'], ['body'])
    assert.deepEqual(b['>http.method'], ['POST'])
    assert.deepEqual(b['>http.request_body'], ['hello world'])
    assert.deepEqual(b['<http.stat_code'], ['200'])
    assert.deepEqual(b['<http.server'], ['test'])
    assert.deepEqual(b['<http.response_body'], ['to the end'])
  })

  it('http.header and the per-header buffers are "Name: value" whatever the spacing, line ends and stray lines', () => {
    // Heads whose lines read exactly "Name: value\r\n" are served as views of the head; any other
    // shape is built: both must give the same buffers.
    const line = fc.record({
      name: fc.constantFrom('Host', 'Accept', 'X-A', 'Cookie', 'User-Agent'),
      value: fc.stringMatching(/^[a-z0-9/=.]{0,12}$/),
      before: fc.constantFrom(' ', ' ', ' ', '', '  ', '\t'),
      after: fc.constantFrom('', '', '', ' ', '\t'),
      end: fc.constantFrom('\r\n', '\r\n', '\r\n', '\n'),
      stray: fc.boolean(),
    })
    fc.assert(
      fc.property(fc.array(line, { minLength: 1, maxLength: 8 }), (lines) => {
        let head = 'GET / HTTP/1.1\r\n'
        for (const l of lines)
          head += `${l.name}:${l.before}${l.value}${l.after}${l.end}${l.stray ? 'stray\r\n' : ''}`
        const [tx] = run(new HttpParser(), [[true, enc(`${head}\r\n`)]])
        const normal = lines
          .filter((l) => l.name !== 'Cookie')
          .map((l) => `${l.name}: ${l.value}\r\n`)
          .join('')
        assert.deepEqual(tx['>http.header'], [normal])
        assert.deepEqual(
          tx['>http.request_header'],
          lines.map((l) => `${l.name}: ${l.value}`),
        )
      }),
      { numRuns: 300 },
    )
  })

  it('hands a body to inspection in steps: every bodyInspectStep bytes, at its end, its limit, a FIN, a gap', () => {
    const bodies = (parser: HttpParser, chunks: Array<[boolean, string | 'fin' | 'gap']>): string[] => {
      const out: string[] = []
      for (const [toServer, c] of chunks) {
        const updated: AppTx[] = []
        if (c === 'fin') parser.close(toServer, updated)
        else if (c === 'gap') parser.gap(toServer, updated)
        else parser.feed(toServer, enc(c), 0, c.length, updated)
        for (const tx of updated) {
          const body = tx.request.get('http.request_body')?.[0]
          if (body && tx.changed.has('http.request_body')) out.push(`${body.length}`)
          tx.changed.clear()
        }
      }
      return out
    }
    const head = (length: number) => `POST /u HTTP/1.1\r\nContent-Length: ${length}\r\n\r\n`
    const kb = 'x'.repeat(1024)
    const limits = { bodyLimit: 8192, bodyInspectStep: 4096 }
    // 10 KiB in 1 KiB segments: at 4 KiB, at the 8 KiB limit (nothing kept beyond).
    assert.deepEqual(
      bodies(new HttpParser(limits), [
        [true, head(10240)],
        ...Array.from({ length: 10 }, () => [true, kb] as [boolean, string]),
      ]),
      ['4096', '8192'],
    )
    // 3 KiB: once, complete.
    assert.deepEqual(
      bodies(new HttpParser(limits), [
        [true, head(3072)],
        [true, kb],
        [true, kb],
        [true, kb],
      ]),
      ['3072'],
    )
    // Cut short: what came is inspected at the FIN, or at a hole.
    assert.deepEqual(
      bodies(new HttpParser(limits), [
        [true, head(3072)],
        [true, kb],
        [true, 'fin'],
      ]),
      ['1024'],
    )
    assert.deepEqual(
      bodies(new HttpParser(limits), [
        [true, head(3072)],
        [true, kb],
        [true, 'gap'],
      ]),
      ['1024'],
    )
    // Step 1: every segment.
    assert.deepEqual(
      bodies(new HttpParser({ ...limits, bodyInspectStep: 1 }), [
        [true, head(2048)],
        [true, kb],
        [true, kb],
      ]),
      ['1024', '2048'],
    )
  })

  it('gives the same buffers however the streams are split', () => {
    const whole = run(new HttpParser(), [
      [true, enc(HTTP_REQUEST)],
      [false, enc(HTTP_RESPONSE)],
    ])
    fc.assert(
      fc.property(fc.array(fc.nat(), { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 12 }), (c1, c2) => {
        const chunks: Array<[boolean, Uint8Array]> = [
          ...split(enc(HTTP_REQUEST), c1).map((c): [boolean, Uint8Array] => [true, c]),
          ...split(enc(HTTP_RESPONSE), c2).map((c): [boolean, Uint8Array] => [false, c]),
        ]
        assert.deepEqual(run(new HttpParser(), chunks), whole)
      }),
      { numRuns: 300 },
    )
  })

  it('keeps bodies within bodyLimit, heads within maxHead, and a bounded transaction queue', () => {
    const p = new HttpParser({ bodyLimit: 100, maxTransactions: 4 })
    const [tx] = run(p, [
      [true, enc(`POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n${'x'.repeat(100000)}`)],
    ])
    assert.equal(tx['>http.request_body'][0].length, 100)
    assert.equal(p.skippedBodyBytes, 99_900)
    run(p, [[true, enc('GET / HTTP/1.1\r\n\r\n'.repeat(50))]])
    assert.ok(p.pending <= 4)
    // Memory: many pipelined requests with big heads, no responses: the oldest are dropped.
    const m = new HttpParser({ maxFlowBytes: 64 * 1024 })
    run(m, [[true, enc(`GET / HTTP/1.1\r\nX: ${'a'.repeat(8000)}\r\n\r\n`.repeat(20))]])
    assert.ok(m.pending <= 2, `${m.pending} transactions held`)
    assert.ok(m.droppedTransactions >= 18)
    const q = new HttpParser({ maxHead: 1024 })
    run(q, [[true, enc(`GET / HTTP/1.1\r\nX: ${'a'.repeat(5000)}`)]])
    assert.equal(q.errors, 1)
  })

  it('never throws on garbage and stays bounded', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.uint8Array({ maxLength: 300 })), { maxLength: 20 }),
        fc.constantFrom('', 'GET / HTTP/1.1\r\n', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'),
        (chunks, prefix) => {
          const p = new HttpParser({ maxTransactions: 8 })
          run(p, [[true, enc(prefix)], [false, enc(prefix)], ...chunks])
          assert.ok(p.pending <= 8)
        },
      ),
      { numRuns: 500 },
    )
  })

  it('decodes gzip and deflate bodies (bounded: a bomb gives bodyLimit bytes), split anywhere', () => {
    const page = `<html>${'hello gzip world '.repeat(50)}MARKER</html>`
    for (const [encoding, body] of [
      ['gzip', gzipSync(page)],
      ['deflate', deflateSync(page)],
      ['deflate', deflateRawSync(page)],
    ] as const) {
      const resp = Buffer.concat([
        enc(`HTTP/1.1 200 OK\r\nContent-Encoding: ${encoding}\r\nContent-Length: ${body.length}\r\n\r\n`),
        body,
      ])
      fc.assert(
        fc.property(fc.array(fc.nat(), { maxLength: 6 }), (cuts) => {
          const [tx] = run(new HttpParser(), [
            [true, enc('GET / HTTP/1.1\r\n\r\n')],
            ...split(resp, cuts).map((c): [boolean, Uint8Array] => [false, c]),
          ])
          assert.deepEqual(tx['<file.data'], [page])
        }),
        { numRuns: 50 },
      )
    }
    const bomb = gzipSync(Buffer.alloc(20_000_000))
    const p = new HttpParser({ bodyLimit: 4096 })
    const [tx] = run(p, [
      [true, enc('GET / HTTP/1.1\r\n\r\n')],
      [false, enc(`HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: ${bomb.length}\r\n\r\n`)],
      [false, bomb],
    ])
    // The longest decodable prefix within the limit (a compressed byte of zeros is ~1 KiB).
    const n = tx['<file.data'][0].length
    assert.ok(n <= 4096 && n > 2048, `${n} bytes decoded`)
    assert.equal(p.skippedBodyBytes > 0, true)
  })

  it('normalises URIs and hosts like libhtp', () => {
    assert.equal(normalizeUri('/a/%2e%2e/b'), '/b')
    assert.equal(normalizeUri('/a/b/..'), '/a/')
    assert.equal(normalizeUri('//x///y'), '/x/y')
    assert.equal(normalizeUri('/p?x=%2F%zz'), '/p?x=/%zz')
    assert.equal(normalizeUri('https://h/x#frag'), '/x')
    assert.equal(normalizeUri('*'), '*')
    assert.equal(normalizeHost('WWW.Ex.COM:80'), 'www.ex.com')
    assert.equal(normalizeHost('[::1]:80'), '[::1]')
  })
})

describe('DNS parser', () => {
  const query = dnsPacket.encode({
    type: 'query',
    id: 42,
    questions: [
      { type: 'A', name: 'a.example' },
      { type: 'TXT', name: 'b.example' },
    ],
  })

  it('reads questions (one dns.query buffer each) and answers, on UDP and TCP', () => {
    const m = parseDnsMessage(query)
    assert.deepEqual(m?.questions, [
      { name: 'a.example', type: 1 },
      { name: 'b.example', type: 16 },
    ])
    const [tx] = run(new DnsParser(false), [[true, query]])
    assert.deepEqual(tx['>dns.query'], ['a.example', 'b.example'])
    const framed = Buffer.concat([
      Buffer.from([0, query.length]),
      query,
      Buffer.from([0, query.length]),
      query,
    ])
    fc.assert(
      fc.property(fc.array(fc.nat(), { maxLength: 8 }), (cuts) => {
        const txs = run(
          new DnsParser(true),
          split(framed, cuts).map((c) => [true, c]),
        )
        assert.equal(txs.length, 2)
        assert.deepEqual(txs[1]['>dns.query'], ['a.example', 'b.example'])
      }),
    )
  })

  it('keeps the questions of a message with a broken record, and never throws on garbage', () => {
    const broken = Buffer.concat([query, Buffer.from([0xc0])])
    broken.writeUInt16BE(1, 6) // ancount 1, but no answer follows
    assert.deepEqual(
      parseDnsMessage(broken)?.questions.map((q) => q.name),
      ['a.example', 'b.example'],
    )
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.boolean(), (bytes, tcp) => {
        parseDnsMessage(Buffer.from(bytes))
        run(new DnsParser(tcp), [[true, bytes]])
        detect(bytes, 0, bytes.length, true, tcp)
      }),
      { numRuns: 1000 },
    )
    // A pointer loop is refused, not followed.
    const loop = Buffer.from([0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1])
    assert.equal(parseDnsMessage(loop), undefined)
  })
})

/** A ClientHello record with GREASE values, SNI, groups and point formats. */
function clientHello(sni: string): Buffer {
  const u16 = (n: number) => [n >> 8, n & 0xff]
  const ext = (type: number, body: number[]) => [...u16(type), ...u16(body.length), ...body]
  const name = [...enc(sni)]
  const sniBody = [...u16(name.length + 3), 0, ...u16(name.length), ...name]
  const groups = [0x0a0a, 29, 23, 24]
  const extensions = [
    ...ext(0x1a1a, []),
    ...ext(0, sniBody),
    ...ext(10, [...u16(groups.length * 2), ...groups.flatMap(u16)]),
    ...ext(11, [1, 0]),
    ...ext(43, [4, ...u16(0x0304), ...u16(0x0303)]),
  ]
  const ciphers = [0x2a2a, 0x1301, 0xc02f, 0x009c]
  const body = [
    ...u16(0x0303),
    ...new Array(32).fill(7),
    0,
    ...u16(ciphers.length * 2),
    ...ciphers.flatMap(u16),
    1,
    0,
    ...u16(extensions.length),
    ...extensions,
  ]
  const hs = [1, 0, ...u16(body.length), ...body]
  return Buffer.from([22, 3, 1, ...u16(hs.length), ...hs])
}

describe('TLS parser', () => {
  it('reads SNI and JA3 from a ClientHello (GREASE left out), split anywhere', () => {
    const record = clientHello('tls.example')
    const h = parseClientHello(record.subarray(9))
    assert.equal(h?.sni, 'tls.example')
    const ja3 = '771,4865-49199-156,0-10-11-43,29-23-24,0'
    assert.equal(ja3String(h as NonNullable<typeof h>), ja3)
    fc.assert(
      fc.property(fc.array(fc.nat(), { maxLength: 10 }), (cuts) => {
        const [tx] = run(
          new TlsParser(),
          split(record, cuts).map((c) => [true, c]),
        )
        assert.deepEqual(tx['>tls.sni'], ['tls.example'])
        assert.deepEqual(tx['>ja3.string'], [ja3])
        assert.deepEqual(tx['>ja3.hash'], [createHash('md5').update(ja3).digest('hex')])
      }),
    )
  })

  it('never throws on garbage or truncated hellos', () => {
    const record = clientHello('x')
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(), (bytes, cut) => {
        run(new TlsParser(), [[true, bytes]])
        parseClientHello(record.subarray(9, 9 + (cut % record.length)))
        const mangled = Buffer.from(record)
        if (bytes.length > 0) mangled[cut % mangled.length] = bytes[0]
        run(new TlsParser(), [[true, mangled]])
      }),
      { numRuns: 1000 },
    )
  })
})

describe('protocol detection', () => {
  it('detects by content, waits for more bytes when unsure, and gives up after the probe window', () => {
    assert.equal(detect(enc('GET / HTTP/1.1\r\n'), 0, 16, true, true), 'http')
    assert.equal(detect(enc('HTTP/1.1 200 OK'), 0, 15, false, true), 'http')
    assert.equal(detect(enc('GE'), 0, 2, true, true), undefined)
    assert.equal(detect(enc('RFB 003.008\n'), 0, 12, false, true), 'none')
    assert.equal(detect(enc('SSH-2.0-OpenSSH'), 0, 15, true, true), 'ssh')
    const ch = clientHello('a')
    assert.equal(detect(ch, 0, ch.length, true, true), 'tls')
    const app = new AppState(true)
    const updated: AppTx[] = []
    app.feed(true, enc('G'), 0, 1, updated)
    app.feed(true, enc('ET / HTTP/1.0\r\n\r\n'), 0, 17, updated)
    assert.equal(app.proto, 'http')
    assert.equal(updated.length, 1)
    const other = new AppState(true)
    other.feed(false, enc('RFB 003.008\n'), 0, 12, [])
    other.feed(true, enc('RFB 003.008\n'), 0, 12, [])
    assert.equal(other.unknown, true)
  })
})
