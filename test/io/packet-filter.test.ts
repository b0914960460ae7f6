/**
 * The packet socket's kernel filter (src/io/packet-filter.ts): the generated program run in a small
 * classic-BPF interpreter over frames built with the wire codecs (vrio segments pass; foreign TCP,
 * UDP, ARP, broadcasts, other ports and addresses do not; nothing the transport takes as its own is
 * refused), then the same program in the kernel on a veth.
 */
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import fc from 'fast-check'
import { ETH_P_NONE, PacketSocket } from '../../src/io/index.ts'
import {
  JEQ_K,
  JSET_K,
  LD_B_ABS,
  LD_H_ABS,
  LD_H_IND,
  LD_W_ABS,
  LDX_B_MSH,
  RET_K,
  type SockFilter,
  vrioPacketFilter,
} from '../../src/io/packet-filter.ts'
import { formatIPv4, formatMac, parseIPv4, parseMac } from '../../src/wire/address.ts'
import { ETHERTYPE_ARP, ETHERTYPE_IPV6, ETHERTYPE_VLAN } from '../../src/wire/ethernet.ts'
import {
  decodeTcpFrame,
  encodeTcpFrame,
  IP_OFFSET,
  newTcpFrame,
  tcpFrameHeaderLength,
} from '../../src/wire/frame.ts'
import { IP_PROTOCOL_UDP } from '../../src/wire/ipv4.ts'
import { TCP_ACK, TCP_PSH, TCP_SYN } from '../../src/wire/tcp.ts'
import { cleanupNetns, createNetns, createVethPair, linkMac, requireRoot } from '../support/netns.ts'
import { arpRequest, checksum, ipv4 as ipBytesOf, mac as macBytesOf } from '../support/packets.ts'
import { waitUntil } from '../support/wait.ts'

// ---- A classic BPF interpreter: the opcodes a socket filter may use that the program does ----

/** Checks what the kernel's checker does for these opcodes: known ones, forward jumps in range, a RET last. */
function validate(program: readonly SockFilter[]): void {
  assert.ok(program.length > 0 && program.length <= 4096, 'length 1..BPF_MAXINSNS')
  const known = new Set([LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_H_IND, LDX_B_MSH, JEQ_K, JSET_K, RET_K])
  program.forEach((p, i) => {
    assert.ok(known.has(p.code), `insn ${i}: opcode 0x${p.code.toString(16)}`)
    assert.ok(Number.isInteger(p.k) && p.k >= 0 && p.k <= 0xffff_ffff, `insn ${i}: k`)
    assert.ok(p.jt >= 0 && p.jt <= 255 && p.jf >= 0 && p.jf <= 255, `insn ${i}: jump offsets are u8`)
    if (p.code === JEQ_K || p.code === JSET_K)
      assert.ok(i + 1 + Math.max(p.jt, p.jf) < program.length, `insn ${i}: jump out of the program`)
  })
  assert.equal(program[program.length - 1].code, RET_K, 'the last instruction returns')
}

/** Runs `program` over `frame` as the kernel does: the bytes to keep (0: dropped). */
function runFilter(program: readonly SockFilter[], frame: Uint8Array): number {
  let a = 0
  let x = 0
  const load = (at: number, size: number): number | undefined => {
    if (at < 0 || at + size > frame.length) return undefined
    let v = 0
    for (let i = 0; i < size; i++) v = v * 256 + frame[at + i]
    return v
  }
  for (let pc = 0; pc < program.length; pc++) {
    const p = program[pc]
    let v: number | undefined
    switch (p.code) {
      case LD_W_ABS:
      case LD_H_ABS:
      case LD_B_ABS:
        v = load(p.k, p.code === LD_W_ABS ? 4 : p.code === LD_H_ABS ? 2 : 1)
        if (v === undefined) return 0 // a load past the end ends the program: dropped
        a = v
        break
      case LD_H_IND:
        v = load(x + p.k, 2)
        if (v === undefined) return 0
        a = v
        break
      case LDX_B_MSH:
        v = load(p.k, 1)
        if (v === undefined) return 0
        x = (v & 0x0f) * 4
        break
      case JEQ_K:
        pc += a === p.k ? p.jt : p.jf
        break
      case JSET_K:
        pc += (a & p.k) >>> 0 !== 0 ? p.jt : p.jf
        break
      case RET_K:
        return p.k
      default:
        assert.fail(`opcode 0x${p.code.toString(16)}`)
    }
  }
  assert.fail('fell off the end of the program')
}

const passes = (program: readonly SockFilter[], frame: Uint8Array): boolean => {
  const keep = runFilter(program, frame)
  assert.ok(keep === 0 || keep >= frame.length, 'a passed frame is kept whole')
  return keep !== 0
}

// ---- Frames ----

const GUEST_MAC = parseMac('02:00:00:00:00:0b')!
const IOHYP_MAC = parseMac('02:00:00:00:00:0a')!
const GUEST_IP = parseIPv4('10.99.0.2')!
const IOHYP_IP = parseIPv4('10.99.0.1')!
const OTHER_IP = parseIPv4('10.99.0.7')!
const OTHER_MAC = parseMac('02:00:00:00:00:77')!
const BROADCAST = parseMac('ff:ff:ff:ff:ff:ff')!
const PORT = 7860
const EPHEMERAL = 40_123

const guestFilter = vrioPacketFilter({ mac: GUEST_MAC, ip: GUEST_IP, localPort: PORT })
const iohypFilter = vrioPacketFilter({ mac: IOHYP_MAC, ip: IOHYP_IP, remotePort: PORT })

interface Seg {
  dstMac: number
  srcMac: number
  dstIp: number
  srcIp: number
  srcPort: number
  dstPort: number
  flags?: number
  payload?: number
  /** Bytes of IPv4 options (a multiple of 4, at most 40). */
  ipOptions?: number
  /** With a timestamp option, as the channel's segments carry. */
  timestamp?: boolean
}

/** An Ethernet/IPv4/TCP frame from the wire codecs, IPv4 options (NOPs) spliced in if asked. */
function segment(s: Seg): Buffer {
  const f = newTcpFrame()
  f.ethernet.destination = s.dstMac
  f.ethernet.source = s.srcMac
  f.ip.source = s.srcIp
  f.ip.destination = s.dstIp
  f.tcp.sourcePort = s.srcPort
  f.tcp.destinationPort = s.dstPort
  f.tcp.flags = s.flags ?? TCP_ACK | TCP_PSH
  f.tcp.window = 1000
  if (s.timestamp) {
    f.tcp.options.hasTimestamp = true
    f.tcp.options.tsValue = 1
  }
  const payload = s.payload ?? 100
  const header = tcpFrameHeaderLength(f.tcp.options)
  const buf = Buffer.alloc(header + payload, 0x5a)
  const length = encodeTcpFrame(buf, f, payload)
  const options = s.ipOptions ?? 0
  if (options === 0) return buf.subarray(0, length)
  // IPv4 options: NOPs after the 20-byte header, IHL and total length raised, header checksum redone.
  const out = Buffer.concat([
    buf.subarray(0, IP_OFFSET + 20),
    Buffer.alloc(options, 1),
    buf.subarray(IP_OFFSET + 20, length),
  ])
  out[IP_OFFSET] = 0x40 | ((20 + options) / 4)
  out.writeUInt16BE(out.readUInt16BE(IP_OFFSET + 2) + options, IP_OFFSET + 2)
  out.writeUInt16BE(0, IP_OFFSET + 10)
  out.writeUInt16BE(checksum(out, IP_OFFSET, IP_OFFSET + 20 + options), IP_OFFSET + 10)
  return out
}

/** IOhyp → guest (to the guest's port) and guest → IOhyp (from it): the channel's two directions. */
const toGuest = (o: Partial<Seg> = {}): Buffer =>
  segment({
    dstMac: GUEST_MAC,
    srcMac: IOHYP_MAC,
    dstIp: GUEST_IP,
    srcIp: IOHYP_IP,
    srcPort: EPHEMERAL,
    dstPort: PORT,
    ...o,
  })
const toIohyp = (o: Partial<Seg> = {}): Buffer =>
  segment({
    dstMac: IOHYP_MAC,
    srcMac: GUEST_MAC,
    dstIp: IOHYP_IP,
    srcIp: GUEST_IP,
    srcPort: PORT,
    dstPort: EPHEMERAL,
    ...o,
  })

function withEtherType(frame: Buffer, type: number): Buffer {
  const f = Buffer.from(frame)
  f.writeUInt16BE(type, 12)
  return f
}

function withIpProtocol(frame: Buffer, protocol: number): Buffer {
  const f = Buffer.from(frame)
  f[IP_OFFSET + 9] = protocol
  return f
}

const macBytes = (m: number): Buffer => macBytesOf(formatMac(m))
const ipBytes = (a: number): Buffer => ipBytesOf(formatIPv4(a))
const arp = (): Buffer => arpRequest(macBytes(OTHER_MAC), ipBytes(OTHER_IP), ipBytes(GUEST_IP))

/** What the transport takes as a segment of this daemon (Endpoint.receive's first checks). */
function transportTakes(
  frame: Uint8Array,
  mac: number,
  ipAddr: number,
  local?: number,
  remote?: number,
): boolean {
  const f = newTcpFrame()
  if (decodeTcpFrame(frame, f, false) !== undefined) return false
  if (f.ethernet.destination !== mac || f.ip.destination !== ipAddr) return false
  return f.tcp.destinationPort === local || f.tcp.sourcePort === remote
}

describe('vrioPacketFilter in a classic BPF interpreter', () => {
  test('the programs are well formed', () => {
    for (const p of [
      guestFilter,
      iohypFilter,
      vrioPacketFilter({ mac: 1, ip: 1 }),
      vrioPacketFilter({ mac: 1, ip: 1, localPort: 1, remotePort: 2 }),
    ])
      validate(p)
  })

  test("vrio's segments pass: SYNs, data, options, IPv4 options, GSO super-frames", () => {
    for (const [name, filter, make] of [
      ['guest', guestFilter, toGuest],
      ['iohyp', iohypFilter, toIohyp],
    ] as const) {
      assert.ok(passes(filter, make()), `${name}: data`)
      assert.ok(passes(filter, make({ flags: TCP_SYN, payload: 0, timestamp: true })), `${name}: SYN`)
      assert.ok(passes(filter, make({ payload: 0, flags: TCP_ACK })), `${name}: pure ACK`)
      for (const ipOptions of [4, 12, 40])
        assert.ok(
          passes(filter, make({ ipOptions, timestamp: true })),
          `${name}: ${ipOptions} bytes of IPv4 options`,
        )
      assert.ok(passes(filter, make({ payload: 64_000, timestamp: true })), `${name}: 64 KB GSO super-frame`)
      // The guest sees the IOhyp's ports from any ephemeral port; the IOhyp any of its own.
      assert.ok(
        passes(filter, name === 'guest' ? make({ srcPort: 1 }) : make({ dstPort: 65535 })),
        `${name}: other ephemeral port`,
      )
    }
  })

  test('foreign traffic does not pass', () => {
    const cases: [string, Buffer][] = [
      ['TCP to another port', toGuest({ dstPort: 22 })],
      ['TCP from the vrio port to the guest (not its listen port)', toGuest({ srcPort: PORT, dstPort: 80 })],
      ['TCP to another address', toGuest({ dstIp: OTHER_IP })],
      ['TCP to another MAC', toGuest({ dstMac: OTHER_MAC })],
      ['TCP to the broadcast MAC', toGuest({ dstMac: BROADCAST })],
      ['UDP to the vrio port', withIpProtocol(toGuest(), IP_PROTOCOL_UDP)],
      ['IPv6', withEtherType(toGuest(), ETHERTYPE_IPV6)],
      ['an in-frame VLAN tag', withEtherType(toGuest(), ETHERTYPE_VLAN)],
      ['ARP broadcast', arp()],
      ['a runt', toGuest().subarray(0, 20)],
      ['headers cut before the ports', toGuest({ payload: 0 }).subarray(0, IP_OFFSET + 21)],
    ]
    const fragment = toGuest()
    fragment[IP_OFFSET + 6] = 0x20 // MF
    cases.push(['a first fragment', fragment])
    const later = toGuest()
    later.writeUInt16BE(0x0010, IP_OFFSET + 6) // offset 128
    cases.push(['a later fragment', later])
    for (const [name, frame] of cases) assert.equal(passes(guestFilter, frame), false, name)
    // The IOhyp: segments from ports other than the guests', and to its address from the vrio port but another MAC.
    assert.equal(passes(iohypFilter, toIohyp({ srcPort: 443 })), false, 'iohyp: from another port')
    assert.equal(passes(iohypFilter, toIohyp({ dstMac: BROADCAST })), false, 'iohyp: broadcast')
    assert.equal(passes(iohypFilter, toGuest()), false, "iohyp: the guest's segments")
  })

  test("an iocore's filter passes only its guests' segments (peers), and none with no guests", () => {
    const THIRD_IP = parseIPv4('10.99.0.9')!
    const one = vrioPacketFilter({ mac: IOHYP_MAC, ip: IOHYP_IP, remotePort: PORT, peers: [GUEST_IP] })
    const two = vrioPacketFilter({
      mac: IOHYP_MAC,
      ip: IOHYP_IP,
      remotePort: PORT,
      peers: [OTHER_IP, GUEST_IP, THIRD_IP],
    })
    const none = vrioPacketFilter({ mac: IOHYP_MAC, ip: IOHYP_IP, remotePort: PORT, peers: [] })
    for (const p of [one, two, none]) validate(p)
    assert.ok(passes(one, toIohyp()), 'its guest')
    assert.equal(passes(one, toIohyp({ srcIp: OTHER_IP })), false, 'another guest')
    for (const ip of [OTHER_IP, GUEST_IP, THIRD_IP])
      assert.ok(passes(two, toIohyp({ srcIp: ip })), `guest ${ip}`)
    assert.equal(passes(two, toIohyp({ srcIp: IOHYP_IP })), false, 'not a guest of it')
    assert.equal(passes(two, toIohyp({ srcIp: THIRD_IP, srcPort: 443 })), false, 'its guest, another port')
    assert.equal(passes(none, toIohyp()), false, 'no guests: nothing')
  })

  test('exactly the frames the transport takes as its own pass (generated headers)', () => {
    const pick = <T>(...values: T[]) => fc.constantFrom(...values)
    const frames = fc
      .record({
        // Each daemon's own values most often, so that plenty of frames pass.
        dstMac: pick(GUEST_MAC, GUEST_MAC, IOHYP_MAC, IOHYP_MAC, OTHER_MAC, BROADCAST),
        srcMac: pick(IOHYP_MAC, GUEST_MAC, OTHER_MAC),
        dstIp: pick(GUEST_IP, GUEST_IP, IOHYP_IP, IOHYP_IP, OTHER_IP),
        srcIp: pick(IOHYP_IP, GUEST_IP, OTHER_IP),
        srcPort: pick(PORT, PORT, EPHEMERAL, 80),
        dstPort: pick(PORT, PORT, EPHEMERAL, 22),
        flags: pick(TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH),
        payload: fc.integer({ min: 0, max: 2000 }),
        ipOptions: pick(0, 4, 40),
        timestamp: fc.boolean(),
      })
      .chain((s) =>
        fc.record({
          frame: fc.constant(segment(s)),
          etherType: pick(0x0800, 0x0800, 0x0800, ETHERTYPE_ARP, ETHERTYPE_IPV6),
          protocol: pick(6, 6, 6, IP_PROTOCOL_UDP, 1),
          // Now and then the frame cut short inside its headers.
          cut: fc.oneof(
            { arbitrary: fc.constant(null), weight: 7 },
            { arbitrary: fc.integer({ min: 0, max: 80 }), weight: 1 },
          ),
        }),
      )
    let passed = 0
    fc.assert(
      fc.property(frames, ({ frame, etherType, protocol, cut }) => {
        let f = withIpProtocol(withEtherType(frame, etherType), protocol)
        if (cut !== null) f = f.subarray(0, cut)
        for (const [filter, mac, addr, local, remote] of [
          [guestFilter, GUEST_MAC, GUEST_IP, PORT, undefined],
          [iohypFilter, IOHYP_MAC, IOHYP_IP, undefined, PORT],
        ] as const) {
          const takes = transportTakes(f, mac, addr, local, remote)
          const pass = passes(filter, f)
          if (takes)
            assert.ok(pass, `refused a frame the transport takes: ${f.subarray(0, 60).toString('hex')}`)
          // The filter checks neither lengths nor checksums: what it passes beyond the transport's
          // own is malformed and counted there. These frames are well formed, so: equal.
          if (cut === null) assert.equal(pass, takes, f.subarray(0, 60).toString('hex'))
          if (pass) passed++
        }
      }),
      { numRuns: 3000, seed: 15 },
    )
    assert.ok(passed > 100, `too few passing frames generated (${passed})`)
  })
})

describe('vrioPacketFilter in the kernel (SO_ATTACH_FILTER on a veth)', () => {
  after(cleanupNetns)

  test('the socket receives the vrio segments and none of the rest', async () => {
    requireRoot()
    const nsA = createNetns()
    const nsB = createNetns()
    const veth = createVethPair(nsA, nsB)
    const bMac = parseMac(linkMac(nsB, veth.b.ifname))!
    const rx = PacketSocket.open({
      ifname: veth.b.ifname,
      netns: nsB.path,
      filter: vrioPacketFilter({ mac: bMac, ip: GUEST_IP, localPort: PORT }),
    })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    try {
      assert.equal(rx.filtered, true, 'the addon attached the filter')
      assert.equal(tx.filtered, false)
      const got: string[] = []
      rx.onBatch((batch) => {
        for (let i = 0; i < batch.count; i++) got.push(Buffer.from(batch.frame(i)).toString('hex'))
      })
      const ours = [
        toGuest({ dstMac: bMac }),
        toGuest({ dstMac: bMac, ipOptions: 8, timestamp: true }),
        toGuest({ dstMac: bMac, payload: 1400, flags: TCP_SYN }),
      ]
      const foreign = [
        toGuest({ dstMac: bMac, dstPort: 22 }),
        toGuest({ dstMac: bMac, dstIp: OTHER_IP }),
        toGuest({ dstMac: BROADCAST }),
        withIpProtocol(toGuest({ dstMac: bMac }), IP_PROTOCOL_UDP),
        arp(),
      ]
      // Foreign frames first: when the last vrio segment is in, every earlier frame has been decided.
      assert.equal(tx.send([...foreign, ...foreign, ...ours]), 2 * foreign.length + ours.length)
      await waitUntil(() => got.length >= ours.length, `the ${ours.length} vrio segments (got ${got.length})`)
      assert.deepEqual(
        got,
        ours.map((f) => f.toString('hex')),
        `only the vrio segments reach the socket (to ${formatMac(bMac)})`,
      )
      assert.equal(rx.stats().kernelPackets, ours.length, 'the kernel counted only what the filter passed')
    } finally {
      rx.close()
      tx.close()
    }
  })
})
