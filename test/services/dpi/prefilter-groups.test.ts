/**
 * The payload prefilter's groups (src/services/dpi/groups.ts) and what the engine does with them:
 * a group's candidates are those of the naive scan over its rules; rules bound to a buffer's start
 * are found over the first bytes of a segment and of the stream; port-bound rules meet only their
 * ports' flows, also past the group cap; application rules with a payload fast pattern; header-only
 * rules indexed by address.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { parsePortField } from '../../../src/services/dpi/addresses.ts'
import { type GroupedRule, MAX_GROUPS, PrefilterGroups } from '../../../src/services/dpi/groups.ts'
import { createDpi, type DpiOptions, type DpiService } from '../../../src/services/dpi/index.ts'
import type { NetContext } from '../../../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { TCP_ACK, TCP_PSH, TCP_SYN } from '../../../src/wire/tcp.ts'
import { ipv4, mac, tcpFrame } from '../../support/packets.ts'

const fold = (b: number) => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b)

/** Whether folded `p` occurs in `input` ending at or before `until`. */
function occurs(p: Uint8Array, input: Uint8Array, until: number): boolean {
  for (let end = p.length; end <= Math.min(until, input.length); end++) {
    let ok = true
    for (let k = 0; k < p.length && ok; k++) ok = fold(input[end - p.length + k]) === p[k]
    if (ok) return true
  }
  return false
}

const PORTS = ['any', '80', '445', '[80,8080]', '1024:', '!80']
const APPS = [undefined, 'http', 'dns'] as const
const byte = fc.constantFrom(0x61, 0x62, 0x63, 0x00, 0xff, 0x41)

const ruleArb = fc.record({
  pattern: fc.array(byte, { minLength: 1, maxLength: 5 }),
  anchor: fc.oneof(fc.constant(-1), fc.integer({ min: 1, max: 40 }), fc.constant(600)),
  classMask: fc.integer({ min: 1, max: 15 }),
  app: fc.constantFrom(...APPS),
  toServer: fc.constantFrom(undefined, true, false),
  sourcePorts: fc.constantFrom(...PORTS),
  destinationPorts: fc.constantFrom(...PORTS),
  bidirectional: fc.boolean(),
})

describe('DPI prefilter groups', () => {
  it('a group gives the candidates of the naive scan over the rules its side can meet', () => {
    fc.assert(
      fc.property(
        fc.array(ruleArb, { minLength: 1, maxLength: 40 }),
        fc.array(byte, { maxLength: 300 }),
        fc.integer({ min: 0, max: 3 }),
        fc.constantFrom(...APPS),
        fc.boolean(),
        fc.constantFrom(80, 445, 8080, 40000, 53),
        fc.constantFrom(80, 445, 8080, 40000, 53),
        (specs, text, cls, app, toServer, sport, dport) => {
          const rules: GroupedRule[] = specs.map((r, rule) => ({
            rule,
            pattern: Uint8Array.from(r.pattern, fold),
            anchor: r.anchor,
            classMask: r.classMask,
            app: r.app,
            toServer: r.toServer,
            sourcePorts: parsePortField(r.sourcePorts, {}),
            destinationPorts: parsePortField(r.destinationPorts, {}),
            bidirectional: r.bidirectional,
          }))
          const groups = new PrefilterGroups(rules, { automaton: undefined, patternRules: [] })
          const group = groups.find(cls, app, toServer, sport, dport)
          const input = Uint8Array.from(text)
          const found = new Set<number>()
          group.automaton?.scan(input, 0, input.length, 0, (p) => {
            for (const i of group.patternRules[p]) found.add(i)
          })
          const head = group.head
          head?.automaton.scan(input, 0, Math.min(input.length, head.length), 0, (p) => {
            for (const i of head.patternRules[p]) found.add(i)
          })
          const naive = new Set<number>()
          rules.forEach((r, i) => {
            const meets =
              (r.classMask & (1 << cls)) !== 0 &&
              (r.app === undefined || r.app === app) &&
              (r.toServer === undefined || r.toServer === toServer) &&
              ((r.sourcePorts.match(sport) && r.destinationPorts.match(dport)) ||
                (r.bidirectional && r.sourcePorts.match(dport) && r.destinationPorts.match(sport)))
            // A rule bound to the first bytes is a candidate when its pattern ends there.
            if (
              meets &&
              occurs(r.pattern, input, r.anchor >= 0 && r.anchor <= 512 ? (head?.length ?? 0) : Infinity)
            )
              naive.add(i)
          })
          assert.deepEqual(
            [...found].sort((a, b) => a - b),
            [...naive].sort((a, b) => a - b),
          )
          // Cached: the same side finds the same group.
          assert.equal(groups.find(cls, app, toServer, sport, dport), group)
        },
      ),
      { numRuns: 500 },
    )
  })
})

const GUEST_MAC = mac('02:00:00:00:00:02')
const WORLD_MAC = mac('02:00:00:00:00:01')

class Harness {
  readonly dpi: DpiService
  readonly events: Record<string, unknown>[] = []
  readonly ctx: NetContext
  readonly #p = newPacket()
  constructor(rules: string, options: DpiOptions = {}) {
    this.dpi = createDpi(rules, 'groups.rules', options)
    this.ctx = { now: 0, reply: () => {}, event: (r) => this.events.push(r) }
  }
  send(frame: Uint8Array, fromGuest: boolean): boolean {
    dissectPacket(frame, this.#p)
    return this.dpi.inspect(frame, this.#p, fromGuest ? 'from-guest' : 'to-guest', this.ctx)
  }
  get sids(): number[] {
    return this.events.map((e) => (e.alert as { signature_id: number }).signature_id).sort((a, b) => a - b)
  }
}

/** The guest 10.0.0.2:40000 is the client of 93.184.216.34:`serverPort`. */
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
  client(data: string): void {
    const bytes = Buffer.from(data, 'latin1')
    this.h.send(this.frame(true, bytes, TCP_ACK | TCP_PSH), true)
    this.clientSeq = (this.clientSeq + bytes.length) >>> 0
  }
  server(data: string): void {
    const bytes = Buffer.from(data, 'latin1')
    this.h.send(this.frame(false, bytes, TCP_ACK | TCP_PSH), false)
    this.serverSeq = (this.serverSeq + bytes.length) >>> 0
  }
}

describe('DPI engine with prefilter groups', () => {
  it('finds a fast pattern bound to the start split across the first segments, and at a later segment start', () => {
    const rules = [
      'alert tcp any any -> any any (msg:"head"; content:"|18 03|"; depth:2; sid:1;)',
      'alert tcp any any -> any any (msg:"floating"; content:"needle"; sid:2;)',
    ].join('\n')
    const h = new Harness(rules)
    const c = new Conn(h, 5201).handshake()
    c.client('\x18')
    assert.deepEqual(h.sids, [])
    c.client('\x03 and more')
    assert.deepEqual(h.sids, [1])
    // Later: a segment starting with it (the packet's own payload) alerts again; one past its
    // first two bytes does not.
    c.client('xx\x18\x03 more')
    assert.deepEqual(h.sids, [1])
    c.client('\x18\x03 again')
    assert.deepEqual(h.sids, [1, 1])
    c.client(`${'z'.repeat(700)}needle`)
    assert.deepEqual(h.sids, [1, 1, 2])
  })

  it('port-bound rules meet only their ports, also once the groups reach their cap', () => {
    const count = MAX_GROUPS + 8
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
      assert.equal(h.sids.at(-1), k + 1)
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
    assert.deepEqual(h.sids, [])
    c.client('POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\ncommand=run&x')
    assert.deepEqual(h.sids, [7])
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
    assert.deepEqual(h.sids, [1, 1, 1, 3, 3, 4, 4])
  })
})
