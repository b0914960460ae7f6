import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { isVrioError } from '../../../src/errors.ts'
import {
  createDpi,
  type DpiOptions,
  type DpiService,
  EveFileSink,
  loadDpi,
} from '../../../src/services/dpi/index.ts'
import type { NetContext, NetDirection } from '../../../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from '../../../src/wire/tcp.ts'
import { checksum, ethHeader, ETHERTYPE_IPV4, ipv4, mac, tcpFrame } from '../../support/packets.ts'

const GUEST_MAC = mac('02:00:00:00:00:02')
const WORLD_MAC = mac('02:00:00:00:00:01')
const enc = (s: string) => Buffer.from(s, 'latin1')

interface Harness {
  dpi: DpiService
  events: Record<string, unknown>[]
  ctx: NetContext
  /** Inspects a frame; returns the verdict. */
  send(frame: Uint8Array, direction: NetDirection): boolean
}

function harness(rules: string, options: DpiOptions = {}): Harness {
  const dpi = createDpi(rules, 'test.rules', options)
  const events: Record<string, unknown>[] = []
  const ctx: NetContext = { now: 0, reply: () => {}, event: (r) => events.push(r) }
  const p = newPacket()
  return {
    dpi,
    events,
    ctx,
    send(frame, direction) {
      dissectPacket(frame, p)
      return dpi.inspect(frame, p, direction, ctx)
    },
  }
}

/** A TCP connection between the guest (client, 10.0.0.2:40000) and a server (93.184.216.34:80). */
class Conn {
  readonly h: Harness
  clientSeq: number
  serverSeq: number
  readonly clientPort: number

  constructor(h: Harness, clientPort = 40000, clientIsn = 1000, serverIsn = 900_000) {
    this.h = h
    this.clientPort = clientPort
    this.clientSeq = clientIsn
    this.serverSeq = serverIsn
  }

  frame(fromClient: boolean, payload: Uint8Array, flags: number, seq?: number): Buffer {
    return tcpFrame({
      dstMac: fromClient ? WORLD_MAC : GUEST_MAC,
      srcMac: fromClient ? GUEST_MAC : WORLD_MAC,
      srcIp: ipv4(fromClient ? '10.0.0.2' : '93.184.216.34'),
      dstIp: ipv4(fromClient ? '93.184.216.34' : '10.0.0.2'),
      srcPort: fromClient ? this.clientPort : 80,
      dstPort: fromClient ? 80 : this.clientPort,
      seq: seq ?? (fromClient ? this.clientSeq : this.serverSeq),
      ack: fromClient ? this.serverSeq : this.clientSeq,
      flags,
      payload,
    })
  }

  handshake(): void {
    assert.equal(this.h.send(this.frame(true, new Uint8Array(0), TCP_SYN), 'from-guest'), true)
    this.clientSeq++
    assert.equal(this.h.send(this.frame(false, new Uint8Array(0), TCP_SYN | TCP_ACK), 'to-guest'), true)
    this.serverSeq++
    assert.equal(this.h.send(this.frame(true, new Uint8Array(0), TCP_ACK), 'from-guest'), true)
  }

  /** Client data; advances the sequence unless `seq` is given explicitly. */
  client(data: string | Uint8Array, seq?: number, flags = TCP_ACK | TCP_PSH): boolean {
    const bytes = typeof data === 'string' ? enc(data) : data
    const verdict = this.h.send(this.frame(true, bytes, flags, seq), 'from-guest')
    if (seq === undefined) this.clientSeq = (this.clientSeq + bytes.length) >>> 0
    return verdict
  }

  server(data: string | Uint8Array, flags = TCP_ACK | TCP_PSH): boolean {
    const bytes = typeof data === 'string' ? enc(data) : data
    const verdict = this.h.send(this.frame(false, bytes, flags), 'to-guest')
    this.serverSeq = (this.serverSeq + bytes.length) >>> 0
    return verdict
  }
}

function udpFrame(src: string, dst: string, sport: number, dport: number, payload: Uint8Array): Buffer {
  const f = Buffer.alloc(14 + 20 + 8 + payload.length)
  f.set(ethHeader(WORLD_MAC, GUEST_MAC, ETHERTYPE_IPV4), 0)
  f[14] = 0x45
  f.writeUInt16BE(28 + payload.length, 16)
  f[22] = 64
  f[23] = 17
  f.set(ipv4(src), 26)
  f.set(ipv4(dst), 30)
  f.writeUInt16BE(checksum(f, 14, 34), 24)
  f.writeUInt16BE(sport, 34)
  f.writeUInt16BE(dport, 36)
  f.writeUInt16BE(8 + payload.length, 38)
  f.set(payload, 42)
  return f
}

const sids = (events: Record<string, unknown>[]) =>
  events.map((e) => (e.alert as { signature_id: number }).signature_id)

const EVIL =
  'alert tcp any any -> any any (msg:"evil seen"; content:"evil"; classtype:trojan-activity; sid:100; rev:2;)'

describe('DPI stream inspection', () => {
  it('matches a signature split across two segments, once, with a Suricata-shaped EVE record', () => {
    const h = harness(EVIL, {
      wallClock: () => 1_714_568_645_123_456,
      utcOffsetMinutes: 120,
      interfaceName: 'vrio-nic0',
    })
    const c = new Conn(h)
    c.handshake()
    assert.equal(c.client('GET /ev'), true)
    assert.equal(h.events.length, 0)
    assert.equal(c.client('il HTTP/1.1\r\n\r\n'), true)
    assert.equal(h.events.length, 1)
    c.server('HTTP/1.1 200 OK\r\n\r\nnothing evil-free here') // the server side has its own match
    c.client('more clean data')
    assert.deepEqual(sids(h.events), [100, 100])
    const e = h.events[0]
    assert.deepEqual(e, {
      timestamp: '2024-05-01T15:04:05.123456+0200',
      flow_id: e.flow_id,
      in_iface: 'vrio-nic0',
      event_type: 'alert',
      src_ip: '10.0.0.2',
      src_port: 40000,
      dest_ip: '93.184.216.34',
      dest_port: 80,
      proto: 'TCP',
      direction: 'to_server',
      alert: {
        action: 'allowed',
        gid: 1,
        signature_id: 100,
        rev: 2,
        signature: 'evil seen',
        category: 'A Network Trojan was detected',
        severity: 1,
      },
      flow: {
        pkts_toserver: 4,
        pkts_toclient: 1,
        bytes_toserver: 4 * 54 + 7 + 15,
        bytes_toclient: 54,
        start: '2024-05-01T15:04:05.123456+0200',
      },
    })
    assert.equal(typeof e.flow_id, 'number')
    assert.ok(Number.isSafeInteger(e.flow_id))
    assert.equal(h.events[1].direction, 'to_client')
    assert.equal(h.events[1].src_ip, '93.184.216.34')
    assert.equal(h.events[1].flow_id, e.flow_id)
    const counters = h.dpi.counters()
    assert.equal(counters.alerts, 2)
    assert.deepEqual(counters.alertsBySid, { '100': 2 })
    assert.equal(counters.rules, 1)
    assert.equal(counters.flowsActive, 1)
    // Round-trips as JSON with a local-time timestamp by default.
    const local = harness(EVIL)
    new Conn(local).client('evil')
    assert.match(String(local.events[0].timestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d{4}$/)
    assert.deepEqual(JSON.parse(JSON.stringify(local.events[0])), local.events[0])
  })

  it('reassembles out-of-order segments and alerts on the frame that fills the hole', () => {
    const h = harness(EVIL)
    const c = new Conn(h)
    c.handshake()
    const start = c.clientSeq
    assert.equal(c.client('il and more', start + 6), true) // arrives first
    assert.equal(h.events.length, 0)
    assert.equal(c.client('xxxxev', start), true)
    assert.deepEqual(sids(h.events), [100])
    assert.equal(h.dpi.counters().outOfOrderSegments, 1)
  })

  it('keeps the first copy of overlapping data (first-wins) and does not re-alert on retransmissions', () => {
    const h = harness(EVIL)
    const c = new Conn(h)
    c.handshake()
    const start = c.clientSeq
    c.client('abcev', start)
    // Overlaps [3,5) with different bytes: the delivered "ev" wins, so the stream reads "abcevil!".
    c.client('zzil!', start + 3)
    assert.deepEqual(sids(h.events), [100])
    // The same bytes again (a retransmission) and a clean continuation: no new alert.
    c.client('abcev', start)
    c.client('zzil!', start + 3)
    c.client(' clean', start + 8)
    assert.deepEqual(sids(h.events), [100])
    assert.ok(h.dpi.counters().retransmittedBytes >= 12)
    // A second occurrence later in the stream is a new match.
    c.client('... evil again', start + 14)
    assert.deepEqual(sids(h.events), [100, 100])
  })

  it('matches nocase contents across segments and ignores wrong-case ones', () => {
    const h = harness(
      'alert tcp any any -> any any (content:"SeLeCt"; nocase; sid:1;)\n' +
        'alert tcp any any -> any any (content:"UNION"; sid:2;)',
    )
    const c = new Conn(h)
    c.client('?q=1 sel')
    c.client('ECT * union all')
    assert.deepEqual(sids(h.events), [1])
  })

  it('raises no alert on clean traffic and counts what it inspected', () => {
    const rules = Array.from(
      { length: 300 },
      (_, i) => `alert tcp any any -> any any (content:"attack-${i}-sig"; sid:${i + 1};)`,
    ).join('\n')
    const h = harness(
      `${rules}\nalert tcp any any -> any any (content:"x-evil"; pcre:"/x-evil\\d{3}/"; sid:999;)`,
    )
    const c = new Conn(h)
    c.handshake()
    let bytes = 0
    for (let i = 0; i < 200; i++) {
      const request = `GET /index-${i}.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test attack-${i}\r\n\r\n`
      c.client(request)
      c.server(`HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello x-evil12`)
      bytes += request.length
    }
    assert.deepEqual(h.events, [])
    const counters = h.dpi.counters()
    assert.equal(counters.packets, 403)
    assert.equal(counters.rules, 301)
    assert.ok(bytes > 10_000)
  })

  it('drops the matching frame and every later frame of the flow, both ways (IPS)', () => {
    const h = harness('drop tcp any any -> any 80 (msg:"block"; content:"/etc/passwd"; sid:5;)')
    const c = new Conn(h)
    c.handshake()
    assert.equal(c.client('GET /index.html HTTP/1.1\r\n\r\n'), true)
    assert.equal(c.server('HTTP/1.1 200 OK\r\n\r\n'), true)
    assert.equal(c.client('GET /../../etc/'), true)
    assert.equal(c.client('passwd HTTP/1.1\r\n\r\n'), false)
    assert.equal((h.events[0].alert as { action: string }).action, 'blocked')
    assert.equal(c.server('HTTP/1.1 404\r\n\r\n'), false)
    assert.equal(c.client('clean'), false)
    assert.equal(h.events.length, 1)
    // Another connection is not affected.
    const other = new Conn(h, 40001)
    other.handshake()
    assert.equal(other.client('GET / HTTP/1.1\r\n\r\n'), true)
    const counters = h.dpi.counters()
    assert.equal(counters.drops, 3)
    assert.equal(counters.droppedFlows, 1)
  })

  it('stops inspecting a flow once a pass rule matches, and pass wins in the same frame', () => {
    const h = harness(
      'pass tcp any any -> any any (content:"trusted-update"; sid:1;)\n' +
        'alert tcp any any -> any any (content:"evil"; sid:2;)\n' +
        'drop tcp any any -> any any (content:"worse"; sid:3;)',
    )
    const c = new Conn(h)
    c.client('evil')
    assert.deepEqual(sids(h.events), [2])
    assert.equal(c.client('trusted-update evil'), true)
    assert.equal(c.client('evil worse'), true)
    assert.deepEqual(sids(h.events), [2])
    assert.equal(h.dpi.counters().passedFlows, 1)
  })

  it('applies flow:to_server / to_client and flow:established (handshake, or mid-stream when allowed)', () => {
    const rules =
      'alert tcp any any -> any any (content:"secret"; flow:to_client; sid:1;)\n' +
      'alert tcp any any -> any any (content:"token"; flow:established,to_server; sid:2;)\n' +
      'alert tcp any any -> any any (content:"early"; flow:not_established; sid:3;)'
    const h = harness(rules, { midstream: false })
    const c = new Conn(h)
    assert.equal(h.send(c.frame(true, enc('early'), TCP_SYN), 'from-guest'), true) // data on the SYN
    c.clientSeq += 1 + 5
    assert.equal(h.send(c.frame(false, new Uint8Array(0), TCP_SYN | TCP_ACK), 'to-guest'), true)
    c.serverSeq++
    // The handshake's ACK carries it: not established yet (Suricata: from the next frame on).
    c.client('token')
    assert.deepEqual(sids(h.events), [3])
    c.client('token')
    c.client('secret')
    c.server('secret')
    assert.deepEqual(sids(h.events), [3, 2, 1])
    // Mid-stream pickup: not established when midstream is off, established when on (default).
    const strict = harness(rules, { midstream: false })
    new Conn(strict, 40002).client('token')
    assert.deepEqual(strict.events, [])
    const lenient = harness(rules)
    new Conn(lenient, 40002).client('token')
    assert.deepEqual(sids(lenient.events), [2])
  })

  it('finds contents spread over segments within the stream window (offset/depth from the stream start)', () => {
    const h = harness(
      'alert tcp any any -> any any (content:"POST"; depth:4; content:"cmd=rm"; distance:0; sid:7;)',
    )
    const c = new Conn(h)
    c.handshake()
    c.client('POST /cgi HTTP/1.1\r\n')
    c.client('Host: x\r\n\r\n')
    assert.equal(h.events.length, 0)
    c.client('a=1&cmd=rm')
    assert.deepEqual(sids(h.events), [7])
    // Not at the stream start: depth 4 cannot match.
    const later = new Conn(h, 40001)
    later.handshake()
    later.client('GET / HTTP/1.1\r\n\r\nPOST /cgi cmd=rm')
    assert.deepEqual(sids(h.events), [7])
  })

  it('inspects a 64 KiB GSO super-frame', () => {
    const h = harness(EVIL)
    const c = new Conn(h)
    c.handshake()
    const payload = Buffer.alloc(65_000, 'a')
    payload.write('evil', 40_000, 'latin1')
    assert.equal(c.client(payload), true)
    assert.deepEqual(sids(h.events), [100])
  })

  it('gives up a hole when the out-of-order queue overflows, counts the gap, and keeps inspecting', () => {
    const h = harness(EVIL, { maxOutOfOrderBytes: 1000 })
    const c = new Conn(h)
    c.handshake()
    const start = c.clientSeq
    c.client(Buffer.alloc(600, 'x'), start + 100) // hole [0, 100)
    c.client(Buffer.alloc(600, 'y'), start + 700) // queue over 1000: give up the hole
    assert.equal(h.dpi.counters().reassemblyGaps, 1)
    c.client('evil', start + 1300)
    assert.deepEqual(sids(h.events), [100])
  })

  it('alerts per datagram for UDP and per frame for header-only rules', () => {
    const h = harness(
      'alert udp any any -> any 53 (msg:"dns tunnel"; content:"|00 10|"; content:"exfil"; distance:0; nocase; sid:1;)\n' +
        'alert udp $HOME_NET any -> 198.51.100.0/24 [1000:2000,!1500] (msg:"hdr"; dsize:>3; sid:2;)\n' +
        'alert tcp any any <> any 8443 (msg:"tls port"; sid:3;)',
    )
    h.send(udpFrame('10.0.0.2', '8.8.8.8', 5000, 53, enc('\u0000\u0010data.EXFIL.example')), 'from-guest')
    h.send(udpFrame('10.0.0.2', '8.8.8.8', 5000, 53, enc('\u0000\u0010data.EXFIL.example')), 'from-guest')
    h.send(udpFrame('10.0.0.2', '8.8.8.8', 5000, 53, enc('exfil \u0000\u0010')), 'from-guest')
    h.send(udpFrame('10.0.0.2', '198.51.100.7', 5000, 1200, enc('abcd')), 'from-guest')
    h.send(udpFrame('10.0.0.2', '198.51.100.7', 5000, 1500, enc('abcd')), 'from-guest')
    h.send(udpFrame('10.0.0.2', '198.51.100.7', 5000, 1200, enc('abc')), 'from-guest')
    h.send(udpFrame('8.8.4.4', '198.51.100.7', 5000, 1200, enc('abcd')), 'from-guest')
    const c = new Conn(h)
    const server = (payload: string) =>
      h.send(
        tcpFrame({
          dstMac: GUEST_MAC,
          srcMac: WORLD_MAC,
          srcIp: ipv4('93.184.216.34'),
          dstIp: ipv4('10.0.0.2'),
          srcPort: 8443,
          dstPort: 40000,
          seq: 5,
          flags: TCP_ACK,
          payload: enc(payload),
        }),
        'to-guest',
      )
    void c
    server('')
    server('x')
    assert.deepEqual(sids(h.events), [1, 1, 2, 3, 3])
    assert.equal(h.events[0].proto, 'UDP')
  })

  it('forgets closed flows after the timeout and evicts the least recently used flow', () => {
    const h = harness('drop tcp any any -> any any (content:"evil"; sid:1;)', {
      maxFlows: 2,
      closedTimeoutMs: 5000,
    })
    const a = new Conn(h, 1)
    a.client('evil')
    assert.equal(a.client('x'), false)
    h.send(a.frame(true, new Uint8Array(0), TCP_RST | TCP_ACK), 'from-guest')
    h.ctx.now = 6000
    // After the timeout the same 5-tuple is a new flow: no longer dropped.
    assert.equal(a.client('clean'), true)
    assert.equal(h.dpi.counters().flowsExpired, 1)
    new Conn(h, 2).client('x')
    new Conn(h, 3).client('x')
    const counters = h.dpi.counters()
    assert.equal(counters.flowsActive, 2)
    assert.equal(counters.flowsEvicted, 1)
    assert.equal(counters.flowsTracked, 4)
    // A new SYN on a connection closed by FINs starts over at once.
    const b = new Conn(h, 4)
    b.client('evil')
    b.client('', undefined, TCP_FIN | TCP_ACK)
    b.server('', TCP_FIN | TCP_ACK)
    assert.equal(h.send(b.frame(true, new Uint8Array(0), TCP_SYN), 'from-guest'), true)
  })

  it('swaps rules at run time keeping stream state, and refuses bad rules in strict mode', () => {
    const h = harness('alert tcp any any -> any any (content:"nothing"; sid:1;)')
    const c = new Conn(h)
    c.handshake()
    c.client('GET /ev')
    h.dpi.replace(EVIL, 'new.rules')
    c.client('il')
    assert.deepEqual(sids(h.events), [100])
    assert.throws(
      () =>
        h.dpi.replace(
          'alert tcp any any -> any any (content:"x"; asn1:bitstring_overflow; sid:1;)',
          'bad.rules',
        ),
      (e: unknown) => isVrioError(e, 'invalid-rules') && e.message.includes('bad.rules:1:'),
    )
    assert.equal(h.dpi.rules[0].sid, 100)
    assert.throws(() => createDpi('alert tcp any any -> any any (sid:1;)\nnonsense', 'x'), /x:2:/)
    const lax = createDpi('alert tcp any any -> any any (sid:1;)\nnonsense', 'x', { strict: false })
    assert.equal(lax.rules.length, 1)
    assert.equal(lax.errors[0].line, 2)
  })

  it('never throws on malformed or random frames', () => {
    const h = harness(
      `${EVIL}\nalert ip any any -> any any (content:"AB"; sid:2;)\nalert udp any any -> any any (pcre:"/x+/"; sid:3;)\n` +
        'alert icmp any any -> any any (sid:4;)',
    )
    const valid = new Conn(h).frame(true, enc('evil data'), TCP_ACK)
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 200 }),
          fc
            .array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 8 })
            .map((edits) => {
              const f = Buffer.from(valid)
              for (const [at, v] of edits) f[at] = v
              return f
            }),
          fc.nat(valid.length).map((n) => valid.subarray(0, n)),
        ),
        fc.boolean(),
        (frame, out) => {
          const verdict = h.send(frame, out ? 'from-guest' : 'to-guest')
          assert.equal(typeof verdict, 'boolean')
        },
      ),
      { numRuns: 3000 },
    )
  })
})

describe('DPI file helpers', () => {
  it('loads a rule file and writes EVE lines', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vrio-dpi-'))
    try {
      const rules = join(dir, 'dpi.rules')
      writeFileSync(rules, `${EVIL}\n`)
      const dpi = await loadDpi(rules)
      const sink = new EveFileSink(join(dir, 'eve.json'))
      const p = newPacket()
      const ctx: NetContext = { now: 0, reply: () => {}, event: sink.write }
      const frame = new Conn(harness('')).frame(true, enc('so evil'), TCP_ACK)
      dissectPacket(frame, p)
      dpi.inspect(frame, p, 'from-guest', ctx)
      dpi.inspect(frame, p, 'from-guest', ctx) // a retransmission: no second alert
      sink.close()
      const lines = readFileSync(join(dir, 'eve.json'), 'utf8').trim().split('\n')
      assert.equal(lines.length, 1)
      assert.equal(JSON.parse(lines[0]).alert.signature_id, 100)
      writeFileSync(rules, 'alert tcp any any -> any any (foo; sid:1;)\n')
      await assert.rejects(
        loadDpi(rules),
        (e: unknown) => isVrioError(e, 'invalid-rules') && e.message.includes(`${rules}:1:`),
      )
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('DPI per-segment inspection of anchored payload rules (as Suricata: packet and stream)', () => {
  it('depth counts from the segment as well as from the stream start (an FTP USER after NOOP)', () => {
    const h = harness(
      'alert tcp any any -> any 80 (content:"USER"; depth:4; content:"root"; distance:1; within:4; sid:2009984;)',
    )
    const c = new Conn(h)
    c.handshake()
    c.client('NOOP\r\n')
    assert.deepEqual(h.events, [])
    c.client('USER root\r\n')
    assert.deepEqual(sids(h.events), [2009984])
    // Not anchored on the segment: the stream alone decides (no second alert for one occurrence).
    const s = harness('alert tcp any any -> any 80 (content:"root"; sid:1;)')
    const d = new Conn(s)
    d.handshake()
    d.client('USER ro')
    d.client('ot\r\n')
    assert.deepEqual(sids(s.events), [1])
  })
})
