/**
 * Hostile input through a remote NIC's LIVE services (issue 7: "fuzzed rule files and malformed
 * packets through the services — errors with line numbers for rules, counted drops for packets,
 * no crash"). A running IOhyp with a firewall and a DPI on the NIC:
 *
 * - fuzzed rule files (fast-check, seeded: garbage lines, cut and garbled rules, binary, very long
 *   lines) pushed with `vrio nic services` (DPI with --strict: by default a bad DPI rule is skipped
 *   and reported, see nic-services-limits.test.ts): each refused naming FILE:LINE of the bad line,
 *   the old rules stay in force, the daemon stays up;
 * - malformed frames (truncated Ethernet/VLAN/ARP, IPv4 with bad version, IHL or lengths,
 *   truncated or bad TCP headers, bogus IPv6 lengths and extension headers), orphan IP fragments
 *   and a seeded batch of randomly mutated frames, sent both from the world (through the bridge
 *   into the IOhyp's TAP) and from the guest (into its interface): every malformed one is counted
 *   (`services.malformed`, NIC drop reason `filtered`), orphan fragments are counted as firewall
 *   fragment drops, nothing crashes;
 * - afterwards clean traffic still passes, and the old rules still act (a firewall drop rule
 *   counts, a DPI signature alerts).
 */
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import fc from 'fast-check'
import type { ListNicsResponse, NicInfo } from '../../src/control/api.ts'
import { isVrioError } from '../../src/errors.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { createDpi } from '../../src/services/dpi/index.ts'
import { createFirewall } from '../../src/services/firewall/index.ts'
import { dissectPacket, newPacket } from '../../src/wire/packet.ts'
import { killDaemons } from '../support/daemons.ts'
import { cleanupNetns, exec, execAsync, ip, linkMac, type Netns, requireRoot } from '../support/netns.ts'
import { seededRandom } from '../support/random.ts'
import { onBridge, pairWithWorld, type VrioPair } from '../support/vrio-pair.ts'
import { worldWebServer } from '../support/topology.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const WORLD = '192.168.77.100'
const GUEST = '192.168.77.1'
const NIC_MAC = '02:77:00:00:00:01'
const SEED = 0x7e57
const children = new Set<ChildProcess>()
after(() => {
  for (const c of children) c.kill('SIGKILL')
})

const FIREWALL = ['policy from-guest accept', 'policy to-guest accept', 'from-guest tcp dport 9 drop', '']
const DPI = [
  'alert http any any -> any any (msg:"hostile test canary"; content:"HOSTILE-CANARY"; nocase; sid:7000001; rev:1;)',
  'alert tcp any any -> any any (msg:"other"; content:"|de ad be ef|"; offset:2; depth:20; sid:7000002;)',
  '',
]

// --- Frames, built by hand -------------------------------------------------------------------

const mac = (m: string) => Buffer.from(m.replaceAll(':', ''), 'hex')
const ip4 = (a: string) => Buffer.from(a.split('.').map(Number))
const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff])

function eth(dst: Buffer, src: Buffer, type: number, body: Buffer): Buffer {
  return Buffer.concat([dst, src, u16(type), body])
}

interface Ip4Options {
  src: string
  dst: string
  protocol: number
  versionIhl?: number
  /** The total length field (default: the real length). */
  total?: number
  flagsOffset?: number
}

function ipv4(o: Ip4Options, body: Buffer): Buffer {
  const h = Buffer.alloc(20)
  h[0] = o.versionIhl ?? 0x45
  h.writeUInt16BE(o.total ?? 20 + body.length, 2)
  h.writeUInt16BE(0x1234, 4)
  h.writeUInt16BE(o.flagsOffset ?? 0x4000, 6)
  h[8] = 64
  h[9] = o.protocol
  ip4(o.src).copy(h, 12)
  ip4(o.dst).copy(h, 16)
  let sum = 0
  for (let i = 0; i < 20; i += 2) sum += h.readUInt16BE(i)
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16)
  h.writeUInt16BE(~sum & 0xffff, 10)
  return Buffer.concat([h, body])
}

function tcp(
  sport: number,
  dport: number,
  o: { dataOffset?: number; flags?: number } = {},
  payload = Buffer.alloc(0),
) {
  const h = Buffer.alloc(20)
  h.writeUInt16BE(sport, 0)
  h.writeUInt16BE(dport, 2)
  h.writeUInt32BE(1000, 4)
  h[12] = (o.dataOffset ?? 5) << 4
  h[13] = o.flags ?? 0x18
  h.writeUInt16BE(65535, 14)
  return Buffer.concat([h, payload])
}

/** An IPv6 packet (fe80::1 → fe80::2); `payloadLength` overrides the real length. */
function ipv6(next: number, body: Buffer, o: { payloadLength?: number; version?: number } = {}): Buffer {
  const h = Buffer.alloc(40)
  h[0] = (o.version ?? 6) << 4
  h.writeUInt16BE(o.payloadLength ?? body.length, 4)
  h[6] = next
  h[7] = 64
  h[8] = 0xfe
  h[9] = 0x80
  h[23] = 1
  h[24] = 0xfe
  h[25] = 0x80
  h[39] = 2
  return Buffer.concat([h, body])
}

/** Frames the dissector must refuse, each for a different reason. */
function malformedFrames(
  dst: Buffer,
  src: Buffer,
  from: string,
  to: string,
  vlan: boolean,
): { name: string; frame: Buffer }[] {
  const v4 = (o: Partial<Ip4Options> & { protocol: number }, body: Buffer) =>
    eth(dst, src, 0x0800, ipv4({ src: from, dst: to, ...o }, body))
  const t = tcp(40000, 80)
  // (A receiving kernel drops a cut VLAN tag itself, so only the guest's interface can send one.)
  const cutVlan = {
    name: 'VLAN tag cut short',
    frame: Buffer.concat([dst, src, u16(0x8100), Buffer.from([0])]),
  }
  return [
    ...(vlan ? [cutVlan] : []),
    { name: 'ARP cut short', frame: eth(dst, src, 0x0806, Buffer.from('0001080006040001', 'hex')) },
    {
      name: 'IPv4 header cut short',
      frame: eth(dst, src, 0x0800, ipv4({ src: from, dst: to, protocol: 6 }, t).subarray(0, 12)),
    },
    { name: 'IPv4 version 5', frame: v4({ protocol: 6, versionIhl: 0x55 }, t) },
    { name: 'IPv4 IHL 3', frame: v4({ protocol: 6, versionIhl: 0x43 }, t) },
    { name: 'IPv4 total < IHL', frame: v4({ protocol: 6, total: 12 }, t) },
    { name: 'IPv4 total past the frame', frame: v4({ protocol: 6, total: 1400 }, t) },
    { name: 'IPv4 IHL past the total', frame: v4({ protocol: 6, versionIhl: 0x4f, total: 40 }, t) },
    { name: 'TCP header cut short', frame: v4({ protocol: 6 }, t.subarray(0, 12)) },
    { name: 'TCP data offset 2', frame: v4({ protocol: 6 }, tcp(40000, 80, { dataOffset: 2 })) },
    {
      name: 'TCP data offset past the packet',
      frame: v4({ protocol: 6 }, tcp(40000, 80, { dataOffset: 15 })),
    },
    { name: 'UDP header cut short', frame: v4({ protocol: 17 }, Buffer.alloc(5)) },
    { name: 'IPv6 header cut short', frame: eth(dst, src, 0x86dd, ipv6(6, t).subarray(0, 30)) },
    { name: 'IPv6 version 4', frame: eth(dst, src, 0x86dd, ipv6(6, t, { version: 4 })) },
    {
      name: 'IPv6 payload length past the frame',
      frame: eth(dst, src, 0x86dd, ipv6(6, t, { payloadLength: 3000 })),
    },
    {
      name: 'IPv6 hop-by-hop header past the packet',
      frame: eth(dst, src, 0x86dd, ipv6(0, Buffer.from([6, 9, 0, 0, 0, 0, 0, 0]))),
    },
    { name: 'IPv6 TCP cut short', frame: eth(dst, src, 0x86dd, ipv6(6, t.subarray(0, 8))) },
  ]
}

/** Later fragments of datagrams nobody saw the first fragment of: the firewall drops them. */
function orphanFragments(dst: Buffer, src: Buffer, from: string, to: string): Buffer[] {
  const frag6 = Buffer.from([17, 0, 0x05, 0xc8, 0, 0, 0x42, 0x42]) // offset 185 × 8, next UDP
  return [
    eth(
      dst,
      src,
      0x0800,
      ipv4({ src: from, dst: to, protocol: 17, flagsOffset: 185 }, Buffer.alloc(64, 0x61)),
    ),
    eth(dst, src, 0x86dd, ipv6(44, Buffer.concat([frag6, Buffer.alloc(64, 0x62)]))),
  ]
}

/** A seeded batch of valid frames with a few bytes past the Ethernet header mutated, or cut. */
function mutatedFrames(dst: Buffer, src: Buffer, from: string, to: string, seed: number, count: number) {
  const random = seededRandom(seed)
  const int = (n: number) => Math.floor(random() * n)
  const templates = [
    eth(
      dst,
      src,
      0x0800,
      ipv4({ src: from, dst: to, protocol: 6 }, tcp(40001, 8080, {}, Buffer.from('hello'))),
    ),
    eth(
      dst,
      src,
      0x0800,
      ipv4(
        { src: from, dst: to, protocol: 17 },
        Buffer.concat([u16(5000), u16(53), u16(12), u16(0), Buffer.from('abcd')]),
      ),
    ),
    eth(dst, src, 0x86dd, ipv6(6, tcp(40002, 8080, {}, Buffer.from('world')))),
    eth(dst, src, 0x86dd, ipv6(0, Buffer.concat([Buffer.from([6, 0, 0, 0, 0, 0, 0, 0]), tcp(40003, 8080)]))),
  ]
  const frames: Buffer[] = []
  for (let i = 0; i < count; i++) {
    const f = Buffer.from(templates[i % templates.length])
    for (let k = 1 + int(4); k > 0; k--) f[14 + int(f.length - 14)] = int(256)
    frames.push(random() < 0.3 ? f.subarray(0, 14 + int(f.length - 14)) : f)
  }
  return frames
}

/** How many of `frames` the dissector refuses. */
function countMalformed(frames: Buffer[]): number {
  const p = newPacket()
  return frames.filter((f) => dissectPacket(f, p) !== undefined).length
}

// --- Fuzzed rule files ---------------------------------------------------------------------------

/** The FILE:LINE pairs an error message names. */
function namedLines(message: string, file: string): number[] {
  const lines = new Set<number>()
  for (const m of message.matchAll(new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:(\\d+)`, 'g')))
    lines.add(Number(m[1]))
  return [...lines].sort((a, b) => a - b)
}

/** What the in-process parser says about `text`: the lines it refuses (empty: it parses). */
function refusedLines(kind: 'firewall' | 'dpi', text: string, file: string): number[] {
  try {
    if (kind === 'firewall') createFirewall(text, file)
    else createDpi(text, file)
    return []
  } catch (e) {
    assert.ok(isVrioError(e, 'invalid-rules'), `the ${kind} parser threw ${String(e)}`)
    return namedLines((e as Error).message, file)
  }
}

const noNewline = (s: string) => s.replace(/[\r\n]/g, ' ')
/** A line of garbage: binary, unicode, brackets and quotes, or a very long run of words. */
const garbage = fc.oneof(
  fc.string({ unit: 'binary', minLength: 1, maxLength: 120 }).map(noNewline),
  fc.string({ unit: fc.constantFrom(...'{}[]()<>!"\';:,|\\/ -$#%&*'), minLength: 1, maxLength: 60 }),
  fc.nat(5000).map((n) => `from-guest tcp dport { ${'1, '.repeat(n)}2 accept`),
)

/** A valid line, cut somewhere, with garbage put somewhere in it, or replaced by garbage. */
function badLine(valid: readonly string[]) {
  return fc.oneof(
    garbage,
    fc.tuple(fc.constantFrom(...valid), fc.nat(), garbage).map(([l, at, g]) => {
      const i = at % (l.length + 1)
      return noNewline(`${l.slice(0, i)}${g}${l.slice(i)}`)
    }),
    fc.tuple(fc.constantFrom(...valid), fc.nat()).map(([l, at]) => l.slice(0, 1 + (at % (l.length - 1)))),
  )
}

const VALID_FIREWALL = [
  'from-guest tcp dport 22 accept',
  'to-guest ip saddr 10.0.0.0/8 udp dport { 53, 5353 } drop',
  'from-guest ct state established,related accept',
  'from-guest tcp flags syn / syn,ack tcp dport 25 reject',
  'to-guest icmpv6 type { nd-neighbor-solicit, nd-router-advert } accept',
  'from-guest ip6 saddr 2001:db8::/32 meta l4proto udp counter accept',
]
const VALID_DPI = [
  'alert tcp any any -> any 80 (msg:"a"; content:"abc"; nocase; sid:1;)',
  'drop http $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS (msg:"b"; flow:established,to_server; content:"GET "; depth:4; content:"|41 42|"; distance:0; sid:2; rev:3;)',
  'alert udp [10.0.0.0/8,!10.1.0.0/16] any <> any [53,5353] (msg:"c"; content:!"xyz"; pcre:"/a+b/i"; sid:3; classtype:misc-activity;)',
  'pass icmp any any -> any any (msg:"d"; dsize:>10; sid:4;)',
]

describe('NIC services under hostile input (live IOhyp)', () => {
  let pair: VrioPair
  let guest: Netns
  let world: Netns
  let worldIf: string
  let worldMac: Buffer
  let dir: string
  const fwFile = () => join(dir, 'base.fw')
  const dpiFile = () => join(dir, 'base.rules')

  const nic = async (): Promise<NicInfo> => (await pair.list<ListNicsResponse>('nic')).nics[0]
  const services = (args: string[]) => pair.nicServices('vn1', args)
  /** DPI files are refused for a bad rule only with --strict. */
  const strict = (kind: 'firewall' | 'dpi') => (kind === 'dpi' ? ['--strict'] : [])

  before(async () => {
    requireRoot()
    const set = await pairWithWorld([`${WORLD}/24`])
    pair = set.pair
    guest = set.guest
    const w = set.world
    world = w.ns
    worldIf = w.ifname
    worldMac = mac(linkMac(world, worldIf))
    // The bridge must hand the IOhyp every frame as sent: no br_netfilter checks on it.
    for (const family of ['iptables', 'ip6tables', 'arptables'])
      exec(set.iohyp, 'sh', [
        '-c',
        `[ ! -e /proc/sys/net/bridge ] || sysctl -qw net.bridge.bridge-nf-call-${family}=0`,
      ])
    dir = join(pair.dir, 'rules')
    exec(world, 'mkdir', ['-p', dir])
    const child = worldWebServer(world, WORLD, join(pair.dir, 'www'))
    children.add(child)
    writeFileSync(fwFile(), FIREWALL.join('\n'))
    writeFileSync(dpiFile(), DPI.join('\n'))
    await pair.createNic('vn1', NIC_MAC, onBridge('vt1'), {
      extra: ['--firewall', fwFile(), '--dpi', dpiFile()],
    })
    ip(guest, ['addr', 'add', `${GUEST}/24`, 'dev', 'vn1'])
    await execAsync(guest, 'curl', [
      '-sSf',
      '--retry',
      '10',
      '--retry-connrefused',
      '--retry-delay',
      '1',
      `http://${WORLD}/index.html`,
    ])
  })
  after(async () => {
    await pair?.stop()
  })

  for (const kind of ['firewall', 'dpi'] as const) {
    it(`refuses fuzzed ${kind} rule files with FILE:LINE, keeps the old rules, stays up`, async () => {
      const valid = kind === 'firewall' ? VALID_FIREWALL : VALID_DPI
      let n = 0
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.constantFrom(...valid), { maxLength: 6 }),
          fc.array(fc.constantFrom(...valid), { maxLength: 6 }),
          badLine(valid),
          fc.constantFrom('utf8', 'latin1') as fc.Arbitrary<BufferEncoding>,
          async (head, tail, bad, encoding) => {
            const file = join(dir, `fuzz-${kind}-${n++}.${kind === 'firewall' ? 'fw' : 'rules'}`)
            // Unique sids, so that the garbled line is the only bad one.
            const lines = [...head, bad, ...tail].map((l, i) => l.replace(/sid:\d+;/, `sid:${i + 1};`))
            // latin1 writes code points past 255 as single bytes: often not UTF-8 at all.
            const bytes = Buffer.from(lines.join('\n'), encoding)
            const refused = refusedLines(kind, bytes.toString('utf8'), file)
            fc.pre(refused.includes(head.length + 1)) // garbling made it invalid (a cut rule may still parse)
            writeFileSync(file, bytes)
            const r = await services([`--${kind}`, file, ...strict(kind)])
            assert.notEqual(r.status, 0, `accepted ${JSON.stringify(lines)}`)
            assert.deepEqual(namedLines(r.stderr, file), refused, r.stderr)
            assert.ok(pair.iohyp.alive, 'the IOhyp is up')
          },
        ),
        { seed: SEED + (kind === 'dpi' ? 1 : 0), numRuns: 12, endOnFailure: true },
      )
      // A big file with one bad line deep inside.
      const big = join(dir, `big.${kind === 'firewall' ? 'fw' : 'rules'}`)
      const lines = Array.from({ length: 20_000 }, (_, i) =>
        kind === 'firewall'
          ? `from-guest tcp dport ${1 + (i % 60000)} counter accept`
          : `alert tcp any any -> any ${1 + (i % 60000)} (msg:"m${i}"; content:"x${i}y"; sid:${100 + i};)`,
      )
      lines[14_999] =
        kind === 'firewall'
          ? 'from-guest tcp dport 70000 accept'
          : 'alert tcp any any -> any 80 (msg:"z"; content:"q"; sid:5; frobnicate;)'
      writeFileSync(big, lines.join('\n'))
      const r = await services([`--${kind}`, big, ...strict(kind)])
      assert.notEqual(r.status, 0)
      assert.deepEqual(namedLines(r.stderr, big), [15_000], r.stderr)

      const s = (await nic()).services.services
      assert.equal(s.firewall?.file, fwFile())
      assert.equal(s.dpi?.file, dpiFile())
      assert.equal((s.dpi?.counters as { rules: number } | undefined)?.rules, 2)
      assert.ok(pair.iohyp.alive)
    })
  }

  it('counts and drops malformed frames and orphan fragments from the world and from the guest, and lives', async () => {
    const before = await nic()
    const fw0 = before.services.services.firewall!.counters as Record<string, Record<string, number>>
    // From the world: out of its veth, over the bridge, into the IOhyp's TAP.
    const fromWorld = PacketSocket.open({ ifname: worldIf, netns: world.path, protocol: 0 })
    // From the guest: into its interface, read by the guest agent, over the channel.
    const fromGuest = PacketSocket.open({ ifname: 'vn1', netns: guest.path, protocol: 0 })
    let malformed = 0
    let orphans = 0
    try {
      for (const [sock, dst, src, from, to, seed] of [
        [fromWorld, mac(NIC_MAC), worldMac, WORLD, GUEST, SEED + 2],
        [fromGuest, worldMac, mac(NIC_MAC), GUEST, WORLD, SEED + 3],
      ] as const) {
        const bad = malformedFrames(dst, src, from, to, sock === fromGuest)
        assert.equal(
          countMalformed(bad.map((b) => b.frame)),
          bad.length,
          'every hand-built frame is malformed',
        )
        const fragments = orphanFragments(dst, src, from, to)
        const mutated = mutatedFrames(dst, src, from, to, seed, 400)
        const m = countMalformed(mutated)
        assert.ok(m > 50 && m < 400, `a mix of malformed (${m}) and well-formed mutated frames`)
        for (const f of [...bad.map((b) => b.frame), ...fragments]) assert.equal(sock.send([f]), 1)
        for (let i = 0; i < mutated.length; i += 50) sock.send(mutated.slice(i, i + 50))
        malformed += bad.length + m
        orphans += fragments.length
      }
    } finally {
      fromWorld.close()
      fromGuest.close()
    }
    // Wait until the counts settle (frames cross two daemons; the machine may be busy).
    let now = await nic()
    for (let i = 0; i < 100 && now.services.malformed - before.services.malformed < malformed; i++) {
      await sleep(100)
      now = await nic()
    }
    assert.equal(now.services.malformed - before.services.malformed, malformed, JSON.stringify(now.services))
    const fw = now.services.services.firewall!.counters as Record<string, Record<string, number>>
    const fragDrops = (c: Record<string, Record<string, number>>) =>
      c['from-guest'].fragmentsDropped + c['to-guest'].fragmentsDropped
    assert.ok(fragDrops(fw) - fragDrops(fw0) >= orphans, JSON.stringify(fw))
    assert.ok(
      (now.drops.filtered ?? 0) - (before.drops.filtered ?? 0) >= malformed + orphans,
      JSON.stringify(now.drops),
    )
    assert.ok(pair.iohyp.alive, 'the IOhyp is up')
    assert.ok(pair.guest.alive, 'the guest agent is up')
  })

  it('afterwards: clean traffic passes, the old firewall and DPI rules still act', async () => {
    const page = await execAsync(guest, 'curl', [
      '-sSf',
      '--max-time',
      '10',
      '-A',
      'hostile-canary/1',
      `http://${WORLD}/index.html`,
    ])
    assert.equal(page, 'still here\n')
    await assert.rejects(execAsync(guest, 'curl', ['-sS', '--max-time', '2', `http://${WORLD}:9/`]))
    const s = (await nic()).services.services
    const rules = (s.firewall!.counters as { rules: { line: number; packets: number }[] }).rules
    assert.ok((rules.find((r) => r.line === 3)?.packets ?? 0) >= 1, 'the port-9 drop rule counted')
    const dpi = s.dpi!.counters as { alertsBySid: Record<string, number>; alerts: number }
    assert.deepEqual(dpi.alertsBySid, { '7000001': 1 }, 'one canary alert, nothing else')
    assert.ok(pair.iohyp.alive)
  })
})
