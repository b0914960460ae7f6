/**
 * Issue 15, must-hold "the BPF filter": a flood of foreign frames on the daemons' segment (other
 * hosts' TCP, also to the daemons' own addresses on other ports, UDP, broadcasts, ARP) costs the
 * daemons no measurable CPU, and their packet sockets receive none of it.
 *
 * An IOhyp and an enrolled, connected guest on a bridge with a third host that floods. Run twice on
 * fresh segments: with the daemons as they ship (kernel filter on) and as the control with
 * VRIO_PACKET_FILTER=off, where the same flood must reach them and cost them CPU — proof that the
 * flood is real and that the filtered run can fail. Compared: each daemon's CPU ticks
 * (/proc/PID/stat utime + stime) and its socket's frames-received counter, before and after.
 */
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { StatusInfo } from '../../src/control/api.ts'
import { VRIO_PORT } from '../../src/daemon/runtime.ts'
import { ETH_P_NONE, PacketSocket } from '../../src/io/index.ts'
import { killDaemons, vrioJsonAsync } from '../support/daemons.ts'
import type { VethEnd } from '../support/harness.ts'
import { bridgedLan } from '../support/lan.ts'
import { cleanupNetns, ip, requireRoot } from '../support/netns.ts'
import { startWithFilter } from '../support/packet-filter.ts'
import { cpuTicks as ticksOf } from '../support/proc.ts'
import { VrioPair } from '../support/vrio-pair.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

/** Frames in one flood: enough that 5 % of the unfiltered cost is several ticks (≈ 3 µs each there). */
const FLOOD = 250_000
/** Without the filter the two daemons must spend at least this many ticks on the flood (else it proves nothing). */
const MIN_UNFILTERED_TICKS = 20
/** With it, each daemon below this share of its unfiltered ticks... */
const FILTERED_SHARE = 0.05
/** ...and at most this many ticks whatever the control measured (what an idle daemon spends meanwhile). */
const FILTERED_MAX_TICKS = 4
/**
 * Frames a filtered socket may receive meanwhile: the channel's own traffic only (keepalives, about
 * two a second here, over a window of a few seconds); without the filter it is most of the flood.
 */
const FILTERED_MAX_FRAMES = 100

/** utime + stime of a running daemon in clock ticks. */
const cpuTicks = (pid: number): number => {
  const t = ticksOf(pid)
  assert.ok(t !== undefined, `process ${pid} is gone`)
  return t
}

const macBytes = (mac: string): Buffer => Buffer.from(mac.replaceAll(':', ''), 'hex')
const ipBytes = (ipv4: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(ipv4 >>> 0)
  return b
}

/**
 * An IPv4 frame (TCP or UDP header with ports, then zeros) from the flooder. The IPv4 header
 * checksum is right (a bridge with br_netfilter drops bad ones); the TCP/UDP one is left zero:
 * a daemon without the filter looks at the frame all the same.
 */
function ipv4Frame(
  dstMac: Buffer,
  srcMac: Buffer,
  dstIp: number,
  srcIp: number,
  protocol: 6 | 17,
  srcPort: number,
  dstPort: number,
  length = 200,
): Buffer {
  const f = Buffer.alloc(length)
  dstMac.copy(f, 0)
  srcMac.copy(f, 6)
  f.writeUInt16BE(0x0800, 12)
  f[14] = 0x45
  f.writeUInt16BE(length - 14, 16)
  f.writeUInt16BE(0x4000, 20)
  f[22] = 64
  f[23] = protocol
  ipBytes(srcIp).copy(f, 26)
  ipBytes(dstIp).copy(f, 30)
  f.writeUInt16BE(srcPort, 34)
  f.writeUInt16BE(dstPort, 36)
  if (protocol === 6) {
    f[46] = 5 << 4
    f[47] = 0x10 // ACK
  } else f.writeUInt16BE(length - 34, 38)
  let sum = 0
  for (let i = 14; i < 34; i += 2) sum += f.readUInt16BE(i)
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16)
  f.writeUInt16BE(~sum & 0xffff, 24)
  return f
}

function arpRequest(srcMac: Buffer, srcIp: number, target: number): Buffer {
  const f = Buffer.alloc(60)
  f.fill(0xff, 0, 6)
  srcMac.copy(f, 6)
  f.writeUInt16BE(0x0806, 12)
  Buffer.from('0001080006040001', 'hex').copy(f, 14)
  srcMac.copy(f, 22)
  ipBytes(srcIp).copy(f, 28)
  ipBytes(target).copy(f, 38)
  return f
}

interface Daemon {
  name: string
  pid: number
  sock: string
  mac: string
  ip: number
}

/** The mix: for each daemon TCP to another port of its address and UDP to its vrio port; for all, foreign unicast (the bridge floods unknown MACs), UDP broadcasts, ARP. */
function floodMix(flooder: VethEnd, flooderMac: Buffer, daemons: readonly Daemon[]): Buffer[] {
  const BROADCAST = Buffer.alloc(6, 0xff)
  const UNKNOWN = macBytes('02:66:66:00:00:01')
  const OTHER_IP = 0x0a63_00c8 // 10.99.0.200: on the segment, no host
  const mix: Buffer[] = []
  for (const d of daemons) {
    mix.push(ipv4Frame(macBytes(d.mac), flooderMac, d.ip, flooder.ip, 6, 40_000, 22))
    mix.push(ipv4Frame(macBytes(d.mac), flooderMac, d.ip, flooder.ip, 17, 40_000, VRIO_PORT))
  }
  mix.push(ipv4Frame(UNKNOWN, flooderMac, OTHER_IP, flooder.ip, 6, VRIO_PORT, VRIO_PORT, 1000))
  mix.push(ipv4Frame(UNKNOWN, flooderMac, OTHER_IP, flooder.ip, 6, 443, 50_000, 1400))
  mix.push(ipv4Frame(BROADCAST, flooderMac, 0x0a63_00ff, flooder.ip, 17, 68, 67, 300))
  mix.push(arpRequest(flooderMac, flooder.ip, OTHER_IP))
  return mix
}

/** Sends `count` frames cycling through `mix`, 64 per call, yielding to the event loop between calls. */
async function flood(flooder: VethEnd, mix: readonly Buffer[], count: number): Promise<number> {
  const tx = PacketSocket.open({ ifname: flooder.ifname, netns: flooder.ns.path, protocol: ETH_P_NONE })
  let sent = 0
  try {
    const batch: Buffer[] = []
    while (sent < count) {
      batch.length = 0
      for (let i = 0; i < Math.min(64, count - sent); i++) batch.push(mix[(sent + i) % mix.length])
      sent += tx.send(batch)
      await new Promise((r) => setImmediate(r))
    }
  } finally {
    tx.close()
  }
  return sent
}

/** Waits until none of `pids` has used CPU for a while (the daemons are done with what they got). */
async function quiet(pids: readonly number[]): Promise<void> {
  let last = pids.map(cpuTicks)
  let still = 0
  for (let i = 0; i < 300 && still < 3; i++) {
    await sleep(100)
    const now = pids.map(cpuTicks)
    still = now.every((t, j) => t === last[j]) ? still + 1 : 0
    last = now
  }
}

interface Outcome {
  ticks: Map<string, number>
  frames: Map<string, number>
  sent: number
}

/** A fresh segment and pair (filter as `env` says), one flood from a third host, what it cost each daemon. */
async function floodOnce(filter: 'on' | 'off', diag: (m: string) => void): Promise<Outcome> {
  const lan = bridgedLan(3)
  const pair = new VrioPair(lan[0], lan[1])
  await startWithFilter(filter, () => pair.start())
  try {
    for (const d of [pair.iohyp, pair.guest])
      assert.ok(
        d.logs.some((l) => l.includes(`"packetFilter":"${filter}"`)),
        `${d.name} says its packet filter is ${filter}`,
      )
    const flooder = lan[2]
    const flooderMac = macBytes(JSON.parse(ip(flooder.ns, ['-j', 'link', 'show', flooder.ifname]))[0].address)
    const daemons: Daemon[] = []
    for (const [name, d, end] of [
      ['iohyp', pair.iohyp, pair.iohypEnd],
      ['guest', pair.guest, pair.guestEnd],
    ] as const) {
      const status = await vrioJsonAsync<StatusInfo>(['status', '--control', pair.sock(name)])
      // `ip netns exec` execs the daemon: its pid is the child's.
      daemons.push({ name, pid: d.child.pid!, sock: pair.sock(name), mac: status.mac, ip: end.ip })
    }
    const rxFrames = async () => {
      const m = new Map<string, number>()
      for (const d of daemons) {
        const s = await vrioJsonAsync<StatusInfo>(['status', '--control', d.sock])
        m.set(d.name, s.socket?.rxFrames ?? Number.NaN)
      }
      return m
    }
    const framesBefore = await rxFrames()
    const pids = daemons.map((d) => d.pid)
    await quiet(pids) // the status requests' own work done
    const ticksBefore = pids.map(cpuTicks)
    const started = Date.now()
    const sent = await flood(flooder, floodMix(flooder, flooderMac, daemons), FLOOD)
    const floodMs = Date.now() - started
    await quiet(pids)
    const ticksAfter = pids.map(cpuTicks)
    const framesAfter = await rxFrames()
    const out: Outcome = { ticks: new Map(), frames: new Map(), sent }
    daemons.forEach((d, i) => {
      out.ticks.set(d.name, ticksAfter[i] - ticksBefore[i])
      out.frames.set(d.name, framesAfter.get(d.name)! - framesBefore.get(d.name)!)
    })
    diag(
      `filter ${filter}: ${sent} frames sent in ${floodMs} ms; CPU ticks ${JSON.stringify(Object.fromEntries(out.ticks))}; frames received ${JSON.stringify(Object.fromEntries(out.frames))}`,
    )
    return out
  } finally {
    await pair.stop()
  }
}

describe('a foreign flood on the daemons’ segment', () => {
  test('costs the daemons no measurable CPU with the packet filter on (and does without it)', async (t) => {
    requireRoot()
    const on = await floodOnce('on', (m) => t.diagnostic(m))
    const off = await floodOnce('off', (m) => t.diagnostic(m))
    assert.equal(on.sent, FLOOD)
    assert.equal(off.sent, FLOOD)
    // The control: without the filter the flood reaches both daemons and costs them.
    let offTicks = 0
    for (const name of ['iohyp', 'guest']) {
      assert.ok(off.frames.get(name)! >= FLOOD / 4, `without the filter ${name} received the flood`)
      offTicks += off.ticks.get(name)!
    }
    assert.ok(offTicks >= MIN_UNFILTERED_TICKS, `without the filter the flood cost ${offTicks} ticks`)
    for (const name of ['iohyp', 'guest']) {
      const ticks = on.ticks.get(name)!
      const bound = Math.min(FILTERED_MAX_TICKS, FILTERED_SHARE * off.ticks.get(name)!)
      assert.ok(
        ticks < bound,
        `${name}: ${ticks} ticks with the filter (without: ${off.ticks.get(name)}; bound ${bound})`,
      )
      assert.ok(
        on.frames.get(name)! <= FILTERED_MAX_FRAMES,
        `${name}: its socket received ${on.frames.get(name)} frames during the flood`,
      )
    }
  })
})
