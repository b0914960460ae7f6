/**
 * A host on the guests' segment that holds no key, flooding a guest agent (floods.test.ts): SYNs
 * that spoof the IOhyp's address from many source ports (it answers the guest's SYN-ACKs, so the
 * connections it opens become established, unauthenticated ones), Skip-like segments on those
 * connections, each leaving a gap, and garbage (random segments and random frames). Driven from
 * this process through a packet socket in the host's namespace; frames are built with vrio's own
 * wire codec. Bounded: a fixed rate for a fixed time.
 */
import { randomBytes, randomInt } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { Delivery, SEGMENT_SKIP } from '../../src/transport/config.ts'
import { VRIO_PROTOCOL_VERSION } from '../../src/transport/connection.ts'
import { parseMac } from '../../src/wire/address.ts'
import {
  decodeTcpFrame,
  encodeTcpFrame,
  newTcpFrame,
  type TcpFrame,
  tcpFrameHeaderLength,
} from '../../src/wire/frame.ts'
import { clearTcpOptions, TCP_ACK, TCP_PSH, TCP_SYN } from '../../src/wire/tcp.ts'
import type { VethEnd } from './harness.ts'

export interface KeylessFloodOptions {
  /** The flooding host's interface, on the guest's segment. */
  end: VethEnd
  /** The guest under attack: its MAC, vrio address and listen port. */
  victim: { mac: number; ip: number; port: number }
  /** The address it pretends to be (the IOhyp's). */
  spoofIp: number
  /** New spoofed connections (SYNs) per second; source ports cycle over 49152-65535. */
  synsPerSecond: number
  /** Skip-like segments sent on each connection the guest accepts. */
  skipsPerConnection: number
  /** Garbage frames per second (half random TCP segments to the listen port, half random bytes). */
  garbagePerSecond: number
  seconds: number
}

export interface KeylessFloodStats {
  syns: number
  synAcks: number
  acks: number
  skips: number
  garbage: number
  resets: number
  refusedByKernel: number
}

const EPHEMERAL_LOW = 49_152
const TICK_MS = 10

export class KeylessHost {
  readonly stats: KeylessFloodStats = {
    syns: 0,
    synAcks: 0,
    acks: 0,
    skips: 0,
    garbage: 0,
    resets: 0,
    refusedByKernel: 0,
  }
  private readonly o: KeylessFloodOptions
  private readonly socket: PacketSocket
  private readonly mac: number
  private readonly tx: TcpFrame = newTcpFrame()
  private readonly rx: TcpFrame = newTcpFrame()
  private readonly outbox: Uint8Array[] = []
  private nextPort = EPHEMERAL_LOW
  private stopped = false

  constructor(o: KeylessFloodOptions) {
    this.o = o
    this.socket = PacketSocket.open({ ifname: o.end.ifname, netns: o.end.ns.path, ignoreOutgoing: true })
    this.mac = parseMac(this.socket.mac)!
    this.socket.onBatch((b) => {
      for (let i = 0; i < b.count; i++) this.onFrame(b.frame(i))
      this.flush()
    })
  }

  /** Floods for the configured time at the configured rates; resolves when done. */
  async run(): Promise<KeylessFloodStats> {
    const ticks = Math.round((this.o.seconds * 1000) / TICK_MS)
    const synsPerTick = Math.max(1, Math.round((this.o.synsPerSecond * TICK_MS) / 1000))
    const garbagePerTick = Math.round((this.o.garbagePerSecond * TICK_MS) / 1000)
    const started = Date.now()
    for (let t = 0; t < ticks && !this.stopped; t++) {
      for (let i = 0; i < synsPerTick; i++) this.sendSyn()
      for (let i = 0; i < garbagePerTick; i++) this.sendGarbage(i)
      this.flush()
      // Paced against the clock, so a busy event loop does not stretch the flood.
      const ahead = started + (t + 1) * TICK_MS - Date.now()
      if (ahead > 0) await sleep(ahead)
    }
    return this.stats
  }

  stop(): void {
    this.stopped = true
    this.socket.close()
  }

  /** Initial sequence number used for `port`: the SYN-ACK's ACK tells which one it was. */
  private static iss(port: number): number {
    return Math.imul(port, 0x9e37_79b1) >>> 0
  }

  private prepare(port: number, seq: number, ack: number, flags: number): TcpFrame {
    const f = this.tx
    f.ethernet.source = this.mac
    f.ethernet.destination = this.o.victim.mac
    f.ip.source = this.o.spoofIp
    f.ip.destination = this.o.victim.ip
    f.ip.identification = randomInt(0x1_0000)
    f.tcp.sourcePort = port
    f.tcp.destinationPort = this.o.victim.port
    f.tcp.seq = seq >>> 0
    f.tcp.ack = ack >>> 0
    f.tcp.flags = flags
    f.tcp.window = 65_535
    clearTcpOptions(f.tcp.options)
    return f
  }

  private send(f: TcpFrame, payload?: Uint8Array): void {
    const headerLength = tcpFrameHeaderLength(f.tcp.options)
    const frame = Buffer.alloc(headerLength + (payload?.length ?? 0))
    if (payload) frame.set(payload, headerLength)
    encodeTcpFrame(frame, f, payload?.length ?? 0)
    this.outbox.push(frame)
  }

  private flush(): void {
    if (this.outbox.length === 0 || this.socket.closed) return
    const sent = this.socket.send(this.outbox)
    this.stats.refusedByKernel += this.outbox.length - sent
    this.outbox.length = 0
  }

  private sendSyn(): void {
    const port = this.nextPort
    this.nextPort = port === 65_535 ? EPHEMERAL_LOW : port + 1
    const f = this.prepare(port, KeylessHost.iss(port), 0, TCP_SYN)
    const o = f.tcp.options
    o.mss = 1460
    o.sackPermitted = true
    o.windowScale = 7
    o.vrioVersion = VRIO_PROTOCOL_VERSION
    this.send(f)
    this.stats.syns++
  }

  private sendGarbage(i: number): void {
    this.stats.garbage++
    if (i % 2 === 0) {
      // Random bytes claiming to be IPv4, to the guest's MAC.
      const frame = randomBytes(14 + randomInt(20, 200))
      frame.writeUIntBE(this.o.victim.mac, 0, 6)
      frame.writeUIntBE(this.mac, 6, 6)
      frame.writeUInt16BE(0x0800, 12)
      this.outbox.push(frame)
      return
    }
    // A well-formed TCP segment to the listen port, with a random vrio segment option and payload.
    const port = EPHEMERAL_LOW + randomInt(16_384)
    const f = this.prepare(port, randomInt(0x1_0000_0000), randomInt(0x1_0000_0000), TCP_ACK | TCP_PSH)
    const v = f.tcp.options.vrio
    v.present = true
    v.flags = randomInt(256)
    v.messageStart = randomInt(0x1_0000_0000)
    v.messageLength = randomInt(0x1_0000_0000)
    this.send(f, randomBytes(randomInt(1, 1400)))
  }

  private onFrame(frame: Uint8Array): void {
    const f = this.rx
    if (decodeTcpFrame(frame, f, false)) return
    if (f.ethernet.destination !== this.mac || f.ip.destination !== this.o.spoofIp) return
    if (f.ip.source !== this.o.victim.ip || f.tcp.sourcePort !== this.o.victim.port) return
    const flags = f.tcp.flags
    if (flags & 0x04) {
      this.stats.resets++
      return
    }
    if ((flags & (TCP_SYN | TCP_ACK)) !== (TCP_SYN | TCP_ACK)) return
    this.stats.synAcks++
    const port = f.tcp.destinationPort
    const iss = KeylessHost.iss(port)
    if (f.tcp.ack !== (iss + 1) >>> 0) return
    const theirs = (f.tcp.seq + 1) >>> 0
    // Complete the handshake: an established connection the guest must now keep until it times out.
    this.send(this.prepare(port, iss + 1, theirs, TCP_ACK))
    this.stats.acks++
    // Skip-like segments: best-effort messages of one byte at every other position, never sent.
    for (let i = 0; i < this.o.skipsPerConnection; i++) {
      const at = (iss + 2 + 2 * i) >>> 0
      const s = this.prepare(port, at, theirs, TCP_ACK)
      const v = s.tcp.options.vrio
      v.present = true
      v.flags = Delivery.BestEffort | SEGMENT_SKIP
      v.messageStart = at
      v.messageLength = 1
      this.send(s)
      this.stats.skips++
    }
  }
}
