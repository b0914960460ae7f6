/**
 * Work a listening endpoint does before its peer authenticates is bounded (issue 12, item 3): SYNs
 * only from the configured peer address, half-open and unauthenticated connections capped in
 * number (the oldest evicted, so the real peer always gets in) and in memory, and a SYN that
 * collides with an unauthenticated connection's address and port never locks the real peer out.
 * These run on the unsealed channel (insecurePlaintext), where a forged SYN costs the listener a
 * connection: the caps are what bound it. Sealed, the same SYNs are refused before any state exists
 * (test/transport/seal.test.ts); the caps then bound replayed genuine SYNs.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { Session } from '../../src/session/session.ts'
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { Endpoint, type EndpointInit } from '../../src/transport/endpoint.ts'
import { decodeTcpFrame, encodeTcpFrame, newTcpFrame, tcpFrameHeaderLength } from '../../src/wire/frame.ts'
import { clearTcpOptions, TCP_SYN } from '../../src/wire/tcp.ts'
import { seededRandom } from '../support/random.ts'

const IOHYP_MAC = 0x02_00_00_00_00_0a
const IOHYP_IP = 0x0a_00_00_01
const GUEST_MAC = 0x02_00_00_00_00_0b
const GUEST_IP = 0x0a_00_00_02
const ATTACKER_MAC = 0x02_00_00_00_00_66
const PORT = 7860

/**
 * A guest endpoint (listening, requiring authentication) on a virtual clock, and any number of
 * peer endpoints; frames go to the endpoint owning their destination MAC, others are lost (a
 * blind attacker's own MAC gets nothing back).
 */
class World {
  now = 0
  readonly key = randomBytes(32)
  readonly guest: Endpoint
  readonly accepted: Connection[] = []
  readonly sessions: Session[] = []
  private readonly peers = new Map<number, Endpoint>()
  private readonly queue: { to: number; frame: Buffer }[] = []
  private readonly random = seededRandom(12)
  /** Most connections the guest held at once, and most bytes held for reassembly. */
  /** Frames the guest sent, and control messages its sessions received. */
  guestFrames = 0
  readonly control: unknown[] = []
  maxConnections = 0
  maxReassembly = 0

  constructor(init: Partial<EndpointInit> = {}) {
    this.guest = new Endpoint({
      mac: GUEST_MAC,
      ip: GUEST_IP,
      sink: (f) => {
        this.guestFrames++
        this.queue.push({ to: 0, frame: Buffer.from(f) })
      },
      clock: () => this.now,
      random: this.random,
      listenPort: PORT,
      requireAuthentication: true,
      options: { insecurePlaintext: true },
      accept: (_remote, c) => {
        this.accepted.push(c)
        const s = new Session(c, 'listener', this.key, { control: (m) => this.control.push(m) })
        this.sessions.push(s)
        return s.connectionHandlers
      },
      ...init,
    })
  }

  /** A peer endpoint at `mac`/`ip` (the real IOhyp, or an attacker that sees its replies). */
  peer(mac: number, ip: number): Endpoint {
    const e = new Endpoint({
      mac,
      ip,
      sink: (f) => this.queue.push({ to: GUEST_MAC, frame: Buffer.from(f) }),
      clock: () => this.now,
      random: this.random,
      peerPort: PORT,
      options: { insecurePlaintext: true },
    })
    this.peers.set(mac, e)
    return e
  }

  /** The IOhyp holding the key: a connection and an opener session on it. */
  iohyp(mac = IOHYP_MAC): { connection: Connection; session: Session } {
    const e = this.peers.get(mac) ?? this.peer(mac, IOHYP_IP)
    const connection = e.connect({ mac: GUEST_MAC, ip: GUEST_IP, port: PORT }, { message() {} })
    const session = new Session(connection, 'opener', this.key, { control() {} })
    return { connection, session }
  }

  /** Hands a frame to the guest directly (a forged one). */
  inject(frame: Buffer): void {
    this.guest.receive(frame)
    this.guest.flush()
    this.observe()
  }

  /** Delivers queued frames (guest's answers by destination MAC) until none are left. */
  run(steps = 200): void {
    for (let i = 0; i < steps && this.queue.length > 0; i++) {
      for (const { to, frame } of this.queue.splice(0)) {
        if (to === GUEST_MAC) {
          this.guest.receive(frame)
          this.observe()
        } else {
          const d = newTcpFrame()
          decodeTcpFrame(frame, d, true)
          this.peers.get(d.ethernet.destination)?.receive(frame)
        }
      }
      this.guest.flush()
      for (const p of this.peers.values()) p.flush()
      this.now += 0.1
    }
  }

  advance(ms: number): void {
    this.now += ms
    this.guest.tick()
    for (const p of this.peers.values()) p.tick()
    this.run()
  }

  private observe(): void {
    let n = 0
    let bytes = 0
    for (const c of this.guest.connections()) {
      n++
      bytes += c.reassemblyMemory
    }
    this.maxConnections = Math.max(this.maxConnections, n)
    this.maxReassembly = Math.max(this.maxReassembly, bytes)
  }
}

/** A SYN as a vrio IOhyp would send it, from `ip`:`port` with Ethernet source `mac`. */
function syn(mac: number, ip: number, port: number, seq: number): Buffer {
  const f = newTcpFrame()
  f.ethernet.source = mac
  f.ethernet.destination = GUEST_MAC
  f.ip.source = ip
  f.ip.destination = GUEST_IP
  f.ip.ttl = 64
  f.tcp.sourcePort = port
  f.tcp.destinationPort = PORT
  f.tcp.seq = seq >>> 0
  f.tcp.flags = TCP_SYN
  f.tcp.window = 65_535
  clearTcpOptions(f.tcp.options)
  f.tcp.options.mss = 1460
  f.tcp.options.vrioVersion = 1
  const buf = Buffer.alloc(tcpFrameHeaderLength(f.tcp.options))
  encodeTcpFrame(buf, f, 0, false)
  return buf
}

describe('endpoint: work before authentication', () => {
  it('accepts SYNs only from the configured peer address; others are dropped silently and counted', () => {
    const w = new World({ peerAddress: IOHYP_IP })
    w.inject(syn(ATTACKER_MAC, 0x0a_00_00_09, 50_000, 1))
    assert.equal(w.guest.stats.drops['foreign-address'], 1)
    assert.equal(w.accepted.length, 0)
    assert.equal(w.guestFrames, 0, 'no answer')
    const { session } = w.iohyp()
    w.run()
    assert.ok(session.authenticated, 'the configured IOhyp gets in')
    // Learned or reconfigured: the old address is now foreign.
    w.guest.setPeerAddress(0x0a_00_00_09)
    w.inject(syn(ATTACKER_MAC, IOHYP_IP, 50_001, 2))
    assert.equal(w.guest.stats.drops['foreign-address'], 2)
  })

  it('a flood of spoofed SYNs over every ephemeral port: the guest holds at most maxHalfOpen, the real IOhyp still gets in', () => {
    const w = new World({ peerAddress: IOHYP_IP })
    let seq = 1
    for (let port = 49_152; port < 65_536; port++) w.inject(syn(ATTACKER_MAC, IOHYP_IP, port, seq++))
    assert.equal(w.guest.pending.halfOpen, 16)
    assert.ok(w.maxConnections <= 16, `at most 16 connections at once, saw ${w.maxConnections}`)
    assert.equal(w.guest.stats.evictedHalfOpen, 16_384 - 16)
    const { session } = w.iohyp()
    w.run()
    assert.ok(session.authenticated, 'the real IOhyp authenticated after the flood')
    assert.equal(w.sessions.filter((s) => s.authenticated).length, 1)
  })

  it("a spoofed SYN on the real IOhyp's port (another MAC, or the same) does not lock it out", () => {
    for (const forgedMac of [ATTACKER_MAC, IOHYP_MAC]) {
      const w = new World({ peerAddress: IOHYP_IP })
      const { connection, session } = w.iohyp()
      // The forgery arrives first, then the real SYN (still queued) from the same address and port.
      w.inject(syn(forgedMac, IOHYP_IP, connection.local.port, 0x1234_5678))
      w.run()
      assert.ok(session.authenticated, `forged MAC ${forgedMac.toString(16)}: the real IOhyp authenticated`)
      assert.equal(w.guest.stats.drops['connection-exists'] ?? 0, 0)
    }
  })

  it('an authenticated connection keeps its place: a SYN on its address and port is dropped', () => {
    const w = new World({ peerAddress: IOHYP_IP })
    const { connection, session } = w.iohyp()
    w.run()
    assert.ok(session.authenticated)
    w.inject(syn(ATTACKER_MAC, IOHYP_IP, connection.local.port, 0x1234_5678))
    assert.equal(w.guest.stats.drops['connection-exists'], 1)
    w.run()
    assert.equal(connection.state, 'established')
  })

  it('peers that complete handshakes but never authenticate: at most maxUnauthenticated kept, the real IOhyp gets in', () => {
    const w = new World({ peerAddress: IOHYP_IP })
    const squatters: Connection[] = []
    for (let i = 0; i < 40; i++) {
      const e = w.peer(ATTACKER_MAC + 0x100 * (i + 1), IOHYP_IP)
      squatters.push(e.connect({ mac: GUEST_MAC, ip: GUEST_IP, port: PORT }, { message() {} }))
      w.run()
    }
    assert.ok(w.guest.pending.unauthenticated <= 4)
    assert.ok(w.maxConnections <= 4 + 1, `at most 5 connections at once, saw ${w.maxConnections}`)
    assert.ok(w.guest.stats.evictedUnauthenticated >= 36)
    const { session } = w.iohyp()
    w.run()
    assert.ok(session.authenticated, 'the real IOhyp authenticated')
  })

  it('an unauthenticated connection holds at most preAuthReceiveBytes and takes no best-effort data', () => {
    const w = new World({ peerAddress: IOHYP_IP })
    const cases: [string, number, Delivery][] = [
      ['unauthenticated', 1024 * 1024, Delivery.Reliable],
      ['unauthenticated', 3000, Delivery.BestEffort],
      ['receive-memory', 100_000, Delivery.Ordered],
    ]
    for (const [i, [reason, length, delivery]] of cases.entries()) {
      const e = w.peer(ATTACKER_MAC + 0x100 * (i + 1), IOHYP_IP)
      const sq = e.connect({ mac: GUEST_MAC, ip: GUEST_IP, port: PORT }, { message() {} })
      w.run()
      assert.equal(sq.state, 'established')
      assert.ok(sq.send(Buffer.alloc(length, 1), delivery))
      w.run()
      const guestSide = w.accepted[i]
      assert.ok((guestSide.stats.drops[reason as 'unauthenticated'] ?? 0) > 0, `${length} bytes: ${reason}`)
      assert.equal(guestSide.stats.messagesDelivered, 0)
    }
    assert.ok(w.maxReassembly <= 4096, `reassembly held ${w.maxReassembly} bytes`)
  })

  it('after authentication the limits are lifted: large messages arrive', () => {
    const w = new World({ peerAddress: IOHYP_IP })
    const { session } = w.iohyp()
    w.run()
    assert.ok(session.authenticated)
    assert.ok(w.accepted[0].authenticated)
    const pad = 'x'.repeat(200_000)
    assert.ok(session.sendControl({ pad }))
    w.run(2000)
    assert.deepEqual(w.control, [{ pad }])
  })

  it('a connection that does not authenticate within authTimeout is aborted', () => {
    const w = new World({ peerAddress: IOHYP_IP, authTimeout: 1000 })
    const sq = w
      .peer(ATTACKER_MAC, IOHYP_IP)
      .connect({ mac: GUEST_MAC, ip: GUEST_IP, port: PORT }, { message() {} })
    w.run()
    assert.equal(w.guest.pending.unauthenticated, 1)
    assert.ok(w.guest.nextDeadline() <= w.now + 1000)
    w.advance(1001)
    assert.equal(w.guest.stats.authTimeouts, 1)
    assert.equal(w.guest.pending.unauthenticated, 0)
    assert.equal([...w.guest.connections()].length, 0)
    assert.equal(sq.state, 'closed', 'the peer was told (RST)')
  })

  it('without requireAuthentication, accepted connections count as authenticated once established', () => {
    const w = new World({ requireAuthentication: false })
    const sq = w
      .peer(ATTACKER_MAC, IOHYP_IP)
      .connect({ mac: GUEST_MAC, ip: GUEST_IP, port: PORT }, { message() {} })
    w.run()
    assert.equal(sq.state, 'established')
    assert.deepEqual(w.guest.pending, { halfOpen: 0, unauthenticated: 0 })
    assert.ok(w.accepted[0].authenticated)
  })
})
