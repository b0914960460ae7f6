import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { createFirewall } from '../../../src/services/firewall/index.ts'
import type { NetDirection } from '../../../src/services/net/service.ts'
import { writePcap } from '../../support/pcap.ts'
import { tsharkFields } from '../../support/tshark.ts'
import { dissect, fakeContext, frame, type Spec } from './frames.ts'

const FIN = 0x01
const SYN = 0x02
const RST = 0x04
const PSH = 0x08
const ACK = 0x10

/**
 * An independent encoder of the expected answers, from the RFCs, in Python with struct: parses the
 * offending frame and builds the RST or ICMP(v6) unreachable byte by byte.
 */
const PYTHON = String.raw`
import json, struct, sys, ipaddress

def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def answer(frame, kind, code):
    et = struct.unpack('!H', frame[12:14])[0]
    l3, tag = 14, b''
    if et == 0x8100:
        tag, et, l3 = frame[12:16], struct.unpack('!H', frame[16:18])[0], 18
    eth = frame[6:12] + frame[0:6] + tag + struct.pack('!H', et)
    v4 = et == 0x0800
    if v4:
        ihl = (frame[l3] & 15) * 4
        end = l3 + struct.unpack('!H', frame[l3 + 2:l3 + 4])[0]
        src, dst = ipaddress.IPv4Address(frame[l3 + 12:l3 + 16]), ipaddress.IPv4Address(frame[l3 + 16:l3 + 20])
        l4 = l3 + ihl
    else:
        end = l3 + 40 + struct.unpack('!H', frame[l3 + 4:l3 + 6])[0]
        src, dst = ipaddress.IPv6Address(frame[l3 + 8:l3 + 24]), ipaddress.IPv6Address(frame[l3 + 24:l3 + 40])
        l4 = l3 + 40
    me, peer = dst.packed, src.packed
    def pseudo(proto, length):
        if v4:
            return me + peer + struct.pack('!BBH', 0, proto, length)
        return me + peer + struct.pack('!I3xB', length, proto)
    if kind == 'rst':
        sport, dport, seq, ack, off, flags = struct.unpack('!HHIIBB', frame[l4:l4 + 14])
        seglen = end - l4 - (off >> 4) * 4 + (flags & 2 != 0) + (flags & 1 != 0)
        if flags & 0x10:
            rseq, rack, rflags = ack, 0, 0x04
        else:
            rseq, rack, rflags = 0, (seq + seglen) % 2**32, 0x14
        body = struct.pack('!HHIIBBHHH', dport, sport, rseq, rack, 5 << 4, rflags, 0, 0, 0)
        body = body[:16] + struct.pack('!H', csum(pseudo(6, len(body)) + body)) + body[18:]
        proto = 6
    else:
        if v4:
            quote = frame[l3:l3 + ihl + min(8, end - l3 - ihl)]
            body = struct.pack('!BBHI', 3, code, 0, 0) + quote
            body = body[:2] + struct.pack('!H', csum(body)) + body[4:]
            proto = 1
        else:
            quote = frame[l3:min(end, l3 + 1280 - 48)]
            body = struct.pack('!BBHI', 1, code, 0, 0) + quote
            body = body[:2] + struct.pack('!H', csum(pseudo(58, len(body)) + body)) + body[4:]
            proto = 58
    if v4:
        tos, df = (0, 0x4000) if proto == 6 else (0xc0, 0)
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, tos, 20 + len(body), 0, df, 64, proto, 0, me, peer)
        ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    else:
        ip = struct.pack('!IHBB16s16s', 0x60000000, len(body), proto, 64, me, peer)
    return eth + ip + body

cases = json.load(sys.stdin)
print(json.dumps([answer(bytes.fromhex(c['frame']), c['kind'], c['code']).hex() for c in cases]))
`

interface Case {
  name: string
  rules: string
  spec: Spec
  direction?: NetDirection
  kind: 'rst' | 'icmp'
  code: number
}

const G4 = { src: '10.0.0.1', dst: '192.0.2.1' }
const G6 = { src: '2001:db8::1', dst: '2001:db8:1::2' }
const REJECT = 'from-guest reject'

const CASES: Case[] = [
  {
    name: 'IPv4 SYN',
    rules: REJECT,
    spec: { ...G4, proto: 'tcp', flags: SYN, seq: 0xfffffff0 },
    kind: 'rst',
    code: 0,
  },
  {
    name: 'IPv4 ACK with data',
    rules: 'from-guest tcp dport 80 reject with tcp reset',
    spec: { ...G4, proto: 'tcp', flags: ACK | PSH, seq: 5, ack: 77777, payload: Buffer.alloc(100, 1) },
    kind: 'rst',
    code: 0,
  },
  {
    name: 'IPv4 FIN without ACK, with data',
    rules: REJECT,
    spec: { ...G4, proto: 'tcp', flags: FIN | PSH, seq: 1000, payload: Buffer.alloc(10, 2) },
    kind: 'rst',
    code: 0,
  },
  {
    name: 'IPv6 SYN on a VLAN, toward the guest',
    rules: 'to-guest reject',
    spec: { ...G6, proto: 'tcp', flags: SYN, seq: 123456, vlan: 42 },
    direction: 'to-guest',
    kind: 'rst',
    code: 0,
  },
  {
    name: 'IPv4 GSO super-frame',
    rules: REJECT,
    spec: { ...G4, proto: 'tcp', flags: ACK, seq: 9, ack: 0x80000000, payload: Buffer.alloc(60000, 3) },
    kind: 'rst',
    code: 0,
  },
  {
    name: 'IPv4 UDP',
    rules: REJECT,
    spec: { ...G4, proto: 'udp', payload: Buffer.alloc(50, 4) },
    kind: 'icmp',
    code: 3,
  },
  {
    name: 'IPv4 UDP, host-unreachable',
    rules: 'from-guest reject with icmp type host-unreachable',
    spec: { ...G4, proto: 'udp', payload: Buffer.alloc(3, 4) },
    kind: 'icmp',
    code: 1,
  },
  {
    name: 'IPv4 ICMP echo',
    rules: REJECT,
    spec: { ...G4, proto: 'icmp', type: 8, payload: Buffer.alloc(56, 5) },
    kind: 'icmp',
    code: 3,
  },
  {
    name: 'IPv4 TCP with icmpx admin-prohibited',
    rules: 'from-guest reject with icmpx type admin-prohibited',
    spec: { ...G4, proto: 'tcp', flags: SYN },
    kind: 'icmp',
    code: 13,
  },
  {
    name: 'IPv6 UDP',
    rules: REJECT,
    spec: { ...G6, proto: 'udp', payload: Buffer.alloc(20, 6) },
    kind: 'icmp',
    code: 4,
  },
  {
    name: 'IPv6 UDP, large: the quote stops at 1280 bytes',
    rules: REJECT,
    spec: { ...G6, proto: 'udp', payload: Buffer.alloc(3000, 7) },
    kind: 'icmp',
    code: 4,
  },
  {
    name: 'IPv6 SCTP, admin-prohibited',
    rules: 'from-guest reject with icmpv6 type admin-prohibited',
    spec: { ...G6, proto: 'sctp', payload: Buffer.alloc(16, 8) },
    kind: 'icmp',
    code: 1,
  },
]

function rejectAnswer(c: Case): { offending: Buffer; answer: Buffer } {
  const fw = createFirewall(c.rules, 'reject.rules')
  const ctx = fakeContext()
  const offending = frame(c.spec)
  assert.equal(fw.inspect(offending, dissect(offending), c.direction ?? 'from-guest', ctx), false)
  assert.equal(ctx.replies.length, 1, c.name)
  return { offending, answer: ctx.replies[0] }
}

describe('firewall reject answers', () => {
  const results = CASES.map((c) => ({ c, ...rejectAnswer(c) }))

  it('are byte-exact against an independent Python encoder', () => {
    const input = JSON.stringify(
      results.map(({ c, offending }) => ({ frame: offending.toString('hex'), kind: c.kind, code: c.code })),
    )
    const expected = JSON.parse(
      execFileSync('python3', ['-c', PYTHON], { input, encoding: 'utf8' }),
    ) as string[]
    for (let i = 0; i < results.length; i++)
      assert.equal(results[i].answer.toString('hex'), expected[i], results[i].c.name)
    const v6big = results.find((r) => r.c.name.includes('1280'))
    assert.equal(v6big?.answer.length, 14 + 1280)
  })

  it('decode in tshark with good checksums and the fields they should have', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vrio-fw-reject-'))
    try {
      const file = join(dir, 'answers.pcap')
      writePcap(
        file,
        results.map((r, i) => ({ at: i, frame: r.answer })),
      )
      const rows = tsharkFields(file, [
        'ip.checksum.status',
        'tcp.checksum.status',
        'icmp.checksum.status',
        'icmpv6.checksum.status',
        'tcp.flags.reset',
        'tcp.flags.ack',
        'icmp.type',
        'icmp.code',
        'icmpv6.type',
        'icmpv6.code',
        'vlan.id',
        '_ws.malformed',
      ])
      assert.equal(rows.length, results.length)
      for (let i = 0; i < rows.length; i++) {
        const [ipSum, tcpSum, icmpSum, icmp6Sum, rst, ack, type, code, type6, code6, vlan, malformed] =
          rows[i]
        const { c } = results[i]
        const v6 = c.spec.src.includes(':')
        assert.equal(malformed, '', c.name)
        // Checksum status 1 is "Good" (0 bad, 2 unverified). The quoted header inside an ICMP error is dissected too: its own fields follow ('|').
        if (!v6) assert.equal(ipSum.split('|')[0], '1', `${c.name}: IPv4 checksum good`)
        if (c.kind === 'rst') {
          assert.equal(tcpSum, '1', `${c.name}: TCP checksum good`)
          assert.equal(rst, '1')
          assert.equal(ack, (c.spec.flags ?? 0) & ACK ? '0' : '1')
        } else if (v6) {
          assert.equal(icmp6Sum.split('|')[0], '1', `${c.name}: ICMPv6 checksum good`)
          assert.deepEqual([type6.split('|')[0], code6.split('|')[0]], ['1', String(c.code)])
        } else {
          assert.equal(icmpSum.split('|')[0], '1', `${c.name}: ICMP checksum good`)
          assert.deepEqual([type.split('|')[0], code.split('|')[0]], ['3', String(c.code)])
        }
        assert.equal(vlan, c.spec.vlan === undefined ? '' : String(c.spec.vlan))
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('are not sent about RSTs, ICMP errors, later fragments, broadcast and multicast', () => {
    const fw = createFirewall('from-guest reject\nto-guest reject')
    const ctx = fakeContext()
    const silent: Spec[] = [
      { ...G4, proto: 'tcp', flags: RST | ACK },
      { ...G4, proto: 'icmp', type: 3, code: 1, payload: Buffer.alloc(28) },
      { ...G6, proto: 'icmp', type: 1, code: 4, payload: Buffer.alloc(48) },
      { ...G4, proto: 'udp', dstMac: 'ff:ff:ff:ff:ff:ff' },
      { ...G4, dst: '10.255.255.255', proto: 'udp', srcMac: '03:00:00:00:00:01' },
      { ...G4, dst: '224.0.0.251', proto: 'udp' },
      { ...G4, dst: '255.255.255.255', proto: 'udp' },
      { ...G6, dst: 'ff02::1', proto: 'udp' },
      { ...G6, src: '::', proto: 'udp' },
      { ...G4, proto: 'udp', raw: Buffer.alloc(8), fragment: { id: 1, offset: 10, more: false } },
    ]
    for (const s of silent) {
      const f = frame(s)
      assert.equal(fw.inspect(f, dissect(f), 'from-guest', ctx), false)
    }
    assert.equal(ctx.replies.length, 0)
    const c = fw.counters()['from-guest']
    // The later fragment never reaches the rules: it is dropped for want of its first fragment.
    assert.deepEqual([c.rejected, c.rejectRepliesSuppressed, c.fragmentsDropped], [9, 9, 1])
  })
})
