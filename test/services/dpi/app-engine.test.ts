/**
 * Application-layer inspection through the DPI engine: protocol detection by content, sticky
 * buffers and content modifiers on HTTP, DNS and TLS transactions, `alert http|dns|tls` headers.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { createServer, type Socket, connect as tcpConnect } from 'node:net'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls'
import dnsPacket from 'dns-packet'
import fc from 'fast-check'
import { createDpi, type DpiOptions, type DpiService } from '../../../src/services/dpi/index.ts'
import { MAX_PORT_CLASSES } from '../../../src/services/dpi/groups.ts'
import type { NetContext } from '../../../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN } from '../../../src/wire/tcp.ts'
import { checksum, ethHeader, ETHERTYPE_IPV4, ipv4, mac, tcpFrame } from '../../support/packets.ts'

const GUEST_MAC = mac('02:00:00:00:00:02')
const WORLD_MAC = mac('02:00:00:00:00:01')
const enc = (s: string) => Buffer.from(s, 'latin1')
const FIXTURES = join(import.meta.dirname, '..', '..', '..', '..', 'test', 'fixtures', 'dpi-app')

class Harness {
  readonly dpi: DpiService
  readonly events: Record<string, unknown>[] = []
  readonly ctx: NetContext
  readonly #p = newPacket()
  constructor(rules: string, options: DpiOptions = {}) {
    this.dpi = createDpi(rules, 'app.rules', options)
    this.ctx = { now: 0, reply: () => {}, event: (r) => this.events.push(r) }
  }
  send(frame: Uint8Array, fromGuest: boolean): boolean {
    dissectPacket(frame, this.#p)
    return this.dpi.inspect(frame, this.#p, fromGuest ? 'from-guest' : 'to-guest', this.ctx)
  }
  get sids(): number[] {
    return this.events.map((e) => (e.alert as { signature_id: number }).signature_id)
  }
}

/** A TCP connection: the guest 10.0.0.2:40000 is the client. */
class Conn {
  clientSeq = 1000
  serverSeq = 900_000
  readonly h: Harness
  readonly serverPort: number
  constructor(h: Harness, serverPort = 80) {
    this.h = h
    this.serverPort = serverPort
  }
  frame(fromClient: boolean, payload: Uint8Array, flags: number): Buffer {
    return tcpFrame({
      dstMac: fromClient ? WORLD_MAC : GUEST_MAC,
      srcMac: fromClient ? GUEST_MAC : WORLD_MAC,
      srcIp: ipv4(fromClient ? '10.0.0.2' : '93.184.216.34'),
      dstIp: ipv4(fromClient ? '93.184.216.34' : '10.0.0.2'),
      srcPort: fromClient ? 40000 : this.serverPort,
      dstPort: fromClient ? this.serverPort : 40000,
      seq: fromClient ? this.clientSeq : this.serverSeq,
      ack: fromClient ? this.serverSeq : this.clientSeq,
      flags,
      payload,
    })
  }
  handshake(): this {
    this.h.send(this.frame(true, new Uint8Array(0), TCP_SYN), true)
    this.clientSeq++
    this.h.send(this.frame(false, new Uint8Array(0), TCP_SYN | TCP_ACK), false)
    this.serverSeq++
    this.h.send(this.frame(true, new Uint8Array(0), TCP_ACK), true)
    return this
  }
  client(data: string | Uint8Array): boolean {
    const bytes = typeof data === 'string' ? enc(data) : data
    const v = this.h.send(this.frame(true, bytes, TCP_ACK | TCP_PSH), true)
    this.clientSeq = (this.clientSeq + bytes.length) >>> 0
    return v
  }
  server(data: string | Uint8Array): boolean {
    const bytes = typeof data === 'string' ? enc(data) : data
    const v = this.h.send(this.frame(false, bytes, TCP_ACK | TCP_PSH), false)
    this.serverSeq = (this.serverSeq + bytes.length) >>> 0
    return v
  }
}

function udpFrame(fromGuest: boolean, sport: number, dport: number, payload: Uint8Array): Buffer {
  const f = Buffer.alloc(14 + 20 + 8 + payload.length)
  f.set(ethHeader(fromGuest ? WORLD_MAC : GUEST_MAC, fromGuest ? GUEST_MAC : WORLD_MAC, ETHERTYPE_IPV4), 0)
  f[14] = 0x45
  f.writeUInt16BE(28 + payload.length, 16)
  f[22] = 64
  f[23] = 17
  f.set(ipv4(fromGuest ? '10.0.0.2' : '9.9.9.9'), 26)
  f.set(ipv4(fromGuest ? '9.9.9.9' : '10.0.0.2'), 30)
  f.writeUInt16BE(checksum(f, 14, 34), 24)
  f.writeUInt16BE(sport, 34)
  f.writeUInt16BE(dport, 36)
  f.writeUInt16BE(8 + payload.length, 38)
  f.set(payload, 42)
  return f
}

const REQUEST =
  'POST /a/../login%2ephp?user=x HTTP/1.1\r\nHost: WWW.Example.COM:8080\r\nUser-Agent: EvilBot/1.0\r\n' +
  'Cookie: session=abc\r\nContent-Length: 11\r\n\r\nhello=world'

describe('DPI application layer', () => {
  it('never throws on random traffic through every parser, and keeps its bounds', () => {
    const rules = [
      'alert http any any -> any any (http.uri; content:"/a"; http.header; content:"x"; sid:1;)',
      'alert http any any -> any any (flow:to_client; file_data; content:"zz"; http.stat_code; content:"2"; sid:2;)',
      'alert tls any any -> any any (tls.sni; content:"a"; sid:3;)',
      'alert tls any any -> any any (tls.cert_subject; content:"C"; sid:4;)',
      'alert dns any any -> any any (dns.query; content:"a"; sid:5;)',
      'alert ftp any any -> any any (content:"USER"; sid:6;)',
    ].join('\n')
    const starts = [
      'GET /a HTTP/1.1\r\nx: y\r\n',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n',
      '\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03',
      '\x00\x1d\x00\x01\x01\x00\x00\x01',
      '220 FTP\r\n',
      '',
    ]
    fc.assert(
      fc.property(
        fc.constantFrom(...starts),
        fc.constantFrom(...starts),
        fc.array(fc.tuple(fc.boolean(), fc.uint8Array({ maxLength: 200 })), { maxLength: 12 }),
        (clientStart, serverStart, chunks) => {
          const h = new Harness(rules)
          const c = new Conn(h, 1000 + chunks.length).handshake()
          if (clientStart) c.client(clientStart)
          if (serverStart) c.server(serverStart)
          for (const [fromClient, bytes] of chunks) {
            if (bytes.length === 0) continue
            if (fromClient) c.client(bytes)
            else c.server(bytes)
          }
          h.send(c.frame(true, new Uint8Array(0), TCP_ACK | TCP_FIN), true)
          h.send(c.frame(false, new Uint8Array(0), TCP_ACK | TCP_FIN), false)
          const udp = new Harness(rules)
          for (const [, bytes] of chunks) udp.send(udpFrame(true, 5000, 53, bytes), true)
        },
      ),
      { numRuns: 300 },
    )
  })

  it('matches HTTP request sticky buffers and content modifiers, once per transaction', () => {
    const h = new Harness(
      [
        'alert http any any -> any any (msg:"uri"; flow:to_server; http.method; content:"POST"; http.uri; content:"/login.php?user=x"; sid:1;)',
        'alert http any any -> any any (msg:"raw uri"; http.uri.raw; content:"/a/../login%2ephp"; sid:2;)',
        'alert http any any -> any any (msg:"host"; http.host; content:"www.example.com"; sid:3;)',
        'alert http any any -> any any (msg:"ua"; content:"EvilBot"; http_user_agent; sid:4;)',
        'alert http any any -> any any (msg:"cookie"; content:"session="; http_cookie; sid:5;)',
        'alert http any any -> any any (msg:"not in header"; content:"session="; http_header; sid:6;)',
        'alert http any any -> any any (msg:"body"; http.request_body; content:"hello=world"; sid:7;)',
        'alert http any any -> any any (msg:"pcre U"; pcre:"/^\\/login\\.php/U"; sid:8;)',
        'alert http any any -> any any (msg:"normalised uri is not raw"; http.uri; content:"%2e"; sid:9;)',
        'alert http any any -> any any (msg:"header"; http.header; content:"Content-Length|3a 20|11|0d 0a|"; sid:10;)',
      ].join('\n'),
    )
    const c = new Conn(h, 8080).handshake()
    // Split mid-head and mid-body.
    c.client(REQUEST.slice(0, 30))
    assert.deepEqual(h.sids, [])
    c.client(REQUEST.slice(30, REQUEST.length - 4))
    c.client(REQUEST.slice(REQUEST.length - 4))
    assert.deepEqual(
      [...h.sids].sort((a, b) => a - b),
      [1, 2, 3, 4, 5, 7, 8, 10],
    )
    // The response does not repeat the request's alerts.
    const before = h.sids.length
    c.server('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')
    assert.equal(h.sids.length, before)
    assert.deepEqual(h.dpi.counters().appFlows, { http: 1, dns: 0, tls: 0, ftp: 0, smtp: 0, smb: 0, ssh: 0 })
    assert.equal(h.events[0].app_proto, 'http')
  })

  it('matches the response: status code and message, chunked file_data across segments', () => {
    const h = new Harness(
      [
        'alert http any any -> any any (msg:"404"; flow:to_client; http.stat_code; content:"404"; sid:1;)',
        'alert http any any -> any any (msg:"body"; flow:to_client; file_data; content:"MZ-payload-here"; sid:2;)',
        'alert http any any -> any any (msg:"server"; http.server; content:"nginx"; sid:3;)',
        'alert http any any -> any any (msg:"uri and code"; http.uri; content:"/x"; http.stat_code; content:"404"; sid:4;)',
        'alert http any any -> any any (msg:"stat msg"; content:"Not Found"; http_stat_msg; sid:5;)',
      ].join('\n'),
    )
    const c = new Conn(h).handshake()
    c.client('GET /x HTTP/1.1\r\nHost: a\r\n\r\n')
    assert.deepEqual(h.sids, [])
    c.server('HTTP/1.1 404 Not Found\r\nServer: nginx\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nMZ-payl\r\n')
    assert.deepEqual(
      [...h.sids].sort((a, b) => a - b),
      [1, 3, 4, 5],
    )
    c.server('8\r\noad-here\r\n0\r\n\r\n')
    assert.deepEqual(
      [...h.sids].sort((a, b) => a - b),
      [1, 2, 3, 4, 5],
    )
  })

  it('alert http matches only flows detected as HTTP, on any port; alert tcp matches either', () => {
    const rules = [
      'alert http any any -> any any (msg:"http canary"; content:"CANARY"; sid:1;)',
      'alert tcp any any -> any any (msg:"tcp canary"; content:"CANARY"; sid:2;)',
      'alert http any any -> any any (msg:"any http"; flow:to_server; sid:3;)',
    ].join('\n')
    const h = new Harness(rules)
    new Conn(h, 5555).handshake().client('\x00\x01binary CANARY stuff')
    assert.deepEqual(h.sids, [2])
    const h2 = new Harness(rules)
    new Conn(h2, 5555).handshake().client('GET /CANARY HTTP/1.0\r\n\r\n')
    assert.deepEqual([...h2.sids].sort(), [1, 2, 3])
    // No rule reads an HTTP buffer: the flow is detected, not parsed.
    assert.equal(h2.dpi.counters().appFlows.http, 1)
    assert.equal(h2.dpi.counters().appTransactions, 0)
  })

  it('request-line buffers match before the headers are complete; a FIN completes a cut-short head', () => {
    const h = new Harness(
      [
        'alert http any any -> any any (http.request_line; content:"GET /index.html HTTP/1.0"; sid:1;)',
        'alert http any any -> any any (flow:from_server; content:"ng1nx"; nocase; http_header; sid:2;)',
      ].join('\n'),
    )
    const c = new Conn(h).handshake()
    c.client('GET /index.html HTTP/1.0\r\nHost: x\r\n')
    assert.deepEqual(h.sids, [1])
    c.server('HTTP/1.0 200 OK\r\nServer:ng1nx')
    assert.deepEqual(h.sids, [1])
    h.send(c.frame(false, new Uint8Array(0), TCP_ACK | TCP_FIN), false)
    assert.deepEqual(h.sids, [1, 2])
  })

  it('alert ftp|smtp|ssh match flows detected as such by their first bytes, on any port', () => {
    const rules = [
      'alert ftp any any -> any any (msg:"ftp user"; content:"USER anonymous"; sid:1;)',
      'alert smtp any any -> any any (msg:"smtp helo"; content:"HELO"; sid:2;)',
      'alert ssh any any -> any any (msg:"ssh"; content:"SSH-2.0"; sid:3;)',
    ].join('\n')
    const ftp = new Harness(rules)
    const c1 = new Conn(ftp, 2121).handshake()
    c1.server('220 Welcome\r\n')
    c1.client('USER anonymous\r\n')
    assert.deepEqual(ftp.sids, [1])
    const smtp = new Harness(rules)
    const c2 = new Conn(smtp, 2525).handshake()
    c2.server('220 mail.example ESMTP ready\r\n')
    c2.client('HELO USER anonymous\r\n')
    assert.deepEqual(smtp.sids, [2])
    const ssh = new Harness(rules)
    new Conn(ssh, 2222).handshake().client('SSH-2.0-OpenSSH_9.6\r\n')
    assert.deepEqual(ssh.sids, [3])
    // The same bytes in an HTTP flow: none of them.
    const http = new Harness(rules)
    new Conn(http, 2121).handshake().client('GET /USER anonymous HELO SSH-2.0 HTTP/1.0\r\n\r\n')
    assert.deepEqual(http.sids, [])
  })

  it('pipelined requests are separate transactions, each alerting', () => {
    const h = new Harness('alert http any any -> any any (http.uri; content:"/evil"; sid:1;)')
    const c = new Conn(h).handshake()
    c.client(
      'GET /evil HTTP/1.1\r\nHost: a\r\n\r\nGET /good HTTP/1.1\r\nHost: a\r\n\r\nGET /evil2 HTTP/1.1\r\nHost: a\r\n\r\n',
    )
    assert.deepEqual(h.sids, [1, 1])
  })

  it('matches dns.query on UDP and TCP DNS, and alert dns only on DNS flows', () => {
    const rules = [
      'alert dns any any -> any any (msg:"dns q"; dns.query; content:"evil.example"; nocase; sid:1;)',
      'alert udp any any -> any any (msg:"legacy"; dns_query; content:"EVIL"; sid:2;)',
      'alert dns any any -> any any (msg:"answer"; dns.answer.name; content:"evil"; nocase; sid:3;)',
    ].join('\n')
    const h = new Harness(rules)
    const query = dnsPacket.encode({
      type: 'query',
      id: 7,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: 'A', name: 'www.EVIL.example' }],
    })
    h.send(udpFrame(true, 5353, 53, query), true)
    assert.deepEqual([...h.sids].sort(), [1, 2])
    const response = dnsPacket.encode({
      type: 'response',
      id: 7,
      questions: [{ type: 'A', name: 'www.EVIL.example' }],
      answers: [{ type: 'A', name: 'www.EVIL.example', data: '1.2.3.4' }],
    })
    h.send(udpFrame(false, 53, 5353, response), false)
    assert.deepEqual([...h.sids].sort(), [1, 2, 3])
    // Not DNS: no alert even with the name in it.
    const h2 = new Harness(rules)
    h2.send(udpFrame(true, 5353, 53, enc('www.evil.example is not dns')), true)
    assert.deepEqual(h2.sids, [])
    // DNS over TCP, the length prefix and the message split across segments.
    const h3 = new Harness(rules)
    const framed = Buffer.concat([Buffer.from([query.length >> 8, query.length & 0xff]), query])
    const c = new Conn(h3, 53).handshake()
    c.client(framed.subarray(0, 9))
    assert.deepEqual(h3.sids, [])
    c.client(framed.subarray(9))
    assert.deepEqual(h3.sids, [1])
  })

  it('matches a real TLS 1.2 handshake: SNI, JA3, JA3S, certificate fields', async () => {
    const { client, server } = await captureTls('dpi.example.test')
    const h = new Harness(
      [
        'alert tls any any -> any any (msg:"sni"; tls.sni; content:"dpi.example.test"; sid:1;)',
        'alert tls any any -> any any (msg:"subject"; tls.cert_subject; content:"CN=dpi.example.test"; sid:2;)',
        'alert tls any any -> any any (msg:"issuer"; tls.cert_issuer; content:"O=vrio test"; sid:3;)',
        'alert tls any any -> any any (msg:"serial"; tls.cert_serial; content:"1A:2B:3C:4D:5E"; sid:4;)',
        'alert tls any any -> any any (msg:"fp"; tls.cert_fingerprint; content:"c1:0f:ee:8b:0a:3e:02:50:b5:a2:2d:88:e5:75:45:e3:99:39:8d:08"; sid:5;)',
        'alert tls any any -> any any (msg:"ja3 string"; ja3.string; content:"771,"; sid:6;)',
        'alert tls any any -> any any (msg:"ja3s"; ja3s.string; content:"771,"; sid:7;)',
        'alert tls any any -> any any (msg:"wrong sni"; tls_sni; content:"other.example"; sid:8;)',
        'alert http any any -> any any (msg:"not http"; sid:9;)',
        'alert tls any any -> any any (msg:"version"; flow:to_client; tls.version:1.2; sid:10;)',
        'alert tls any any -> any any (msg:"not 1.3"; tls.version:1.3; sid:11;)',
      ].join('\n'),
    )
    const c = new Conn(h, 443).handshake()
    for (const [fromClient, bytes] of interleave(client, server)) {
      if (fromClient) c.client(bytes)
      else c.server(bytes)
    }
    assert.deepEqual(
      [...h.sids].sort((a, b) => a - b),
      [1, 2, 3, 4, 5, 6, 7, 10],
    )
    assert.deepEqual(h.dpi.counters().appFlows, { http: 0, dns: 0, tls: 1, ftp: 0, smtp: 0, smb: 0, ssh: 0 })
  })
})

/** Client and server byte chunks of a real TLS 1.2 handshake through a recording relay. */
async function captureTls(servername: string): Promise<{ client: Buffer[]; server: Buffer[] }> {
  const key = readFileSync(join(FIXTURES, 'server.key'))
  const cert = readFileSync(join(FIXTURES, 'server.crt'))
  const tlsServer = createTlsServer({ key, cert, maxVersion: 'TLSv1.2' }, (s) => s.end('hi'))
  await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r))
  const tlsPort = (tlsServer.address() as { port: number }).port
  const client: Buffer[] = []
  const server: Buffer[] = []
  const relay = createServer((inbound: Socket) => {
    const outbound = tcpConnect(tlsPort, '127.0.0.1')
    inbound.on('data', (d) => {
      client.push(Buffer.from(d))
      outbound.write(d)
    })
    outbound.on('data', (d) => {
      server.push(Buffer.from(d))
      inbound.write(d)
    })
    inbound.on('end', () => outbound.end())
    outbound.on('end', () => inbound.end())
    inbound.on('error', () => outbound.destroy())
    outbound.on('error', () => inbound.destroy())
  })
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r))
  const relayPort = (relay.address() as { port: number }).port
  try {
    await new Promise<void>((resolve, reject) => {
      const s = tlsConnect({
        port: relayPort,
        host: '127.0.0.1',
        servername,
        ca: [cert],
        rejectUnauthorized: false,
      })
      s.on('data', () => {})
      s.on('end', () => resolve())
      s.on('error', reject)
    })
  } finally {
    relay.close()
    tlsServer.close()
  }
  return { client, server }
}

/** Client chunks then server chunks, alternating as a handshake does (client speaks first). */
function interleave(client: Buffer[], server: Buffer[]): Array<[boolean, Buffer]> {
  const out: Array<[boolean, Buffer]> = []
  for (let k = 0; k < Math.max(client.length, server.length); k++) {
    if (k < client.length) out.push([true, client[k]])
    if (k < server.length) out.push([false, server[k]])
  }
  return out
}

const sorted = (sids: number[]) => [...sids].sort((x, y) => x - y)

describe('DPI prefilter groups and header indexing through the engine', () => {
  it('finds a fast pattern bound to the start split across the first segments, and at a later segment start', () => {
    const rules = [
      'alert tcp any any -> any any (msg:"head"; content:"|18 03|"; depth:2; sid:1;)',
      'alert tcp any any -> any any (msg:"floating"; content:"needle"; sid:2;)',
    ].join('\n')
    const h = new Harness(rules)
    const c = new Conn(h, 5201).handshake()
    c.client('\x18')
    assert.deepEqual(sorted(h.sids), [])
    c.client('\x03 and more')
    assert.deepEqual(sorted(h.sids), [1])
    // Later: a segment starting with it (the packet's own payload) alerts again; one past its
    // first two bytes does not.
    c.client('xx\x18\x03 more')
    assert.deepEqual(sorted(h.sids), [1])
    c.client('\x18\x03 again')
    assert.deepEqual(sorted(h.sids), [1, 1])
    c.client(`${'z'.repeat(700)}needle`)
    assert.deepEqual(sorted(h.sids), [1, 1, 2])
  })

  it("port-bound rules meet only their ports, also beyond the port groups' cap", () => {
    const count = MAX_PORT_CLASSES + 8
    const rules = Array.from(
      { length: count },
      (_, k) => `alert tcp any any -> any ${2000 + k} (msg:"port ${k}"; content:"hit-${k}-x"; sid:${k + 1};)`,
    ).join('\n')
    const h = new Harness(rules)
    for (let k = 0; k < count; k++) {
      const c = new Conn(h, 2000 + k).handshake()
      // Each flow carries every rule's pattern: only its port's rule may alert.
      c.client(Array.from({ length: count }, (_, j) => `hit-${j}-x`).join(' '))
      assert.equal(h.sids.length, k + 1, `port ${2000 + k}`)
      assert.equal(sorted(h.sids).at(-1), k + 1)
    }
  })

  it('an HTTP rule with its fast pattern in the payload alerts on a transaction that has it, only then', () => {
    const h = new Harness(
      'alert http any any -> any any (msg:"cmd"; flow:established,to_server; content:"|0d 0a 0d 0a|command="; fast_pattern; ' +
        'http.method; content:"POST"; http.request_body; content:"command="; depth:8; sid:7;)',
    )
    const c = new Conn(h).handshake()
    c.client('GET /a HTTP/1.1\r\nHost: x\r\n\r\n')
    c.client('POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nother')
    assert.deepEqual(sorted(h.sids), [])
    c.client('POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\ncommand=run&x')
    assert.deepEqual(sorted(h.sids), [7])
  })

  it('indexes header-only rules by their narrower side; IPv6-only lists never meet IPv4 frames', () => {
    const h = new Harness(
      [
        'alert ip $HOME_NET any -> [93.184.216.34,198.51.100.0/24] any (msg:"to bad"; sid:1;)',
        'alert ip [2001:db8::1,2001:db8::2] any -> $HOME_NET any (msg:"v6 list"; sid:2;)',
        'alert ip [93.184.216.34] any -> $HOME_NET any (msg:"from bad"; sid:3;)',
        'alert ip [198.51.100.7,2001:db8::1,93.184.216.34/32] any -> $HOME_NET any (msg:"mixed list"; sid:4;)',
        'alert ip [198.51.100.8,2001:db8::2] any -> $HOME_NET any (msg:"mixed, not it"; sid:5;)',
      ].join('\n'),
      { vars: { HOME_NET: '10.0.0.0/8' } },
    )
    const c = new Conn(h).handshake()
    c.client('hello')
    c.server('world')
    // One alert per frame and rule: the 3 client frames (SYN, ACK, data), the 2 server frames.
    assert.deepEqual(sorted(h.sids), [1, 1, 1, 3, 3, 4, 4])
  })
})
