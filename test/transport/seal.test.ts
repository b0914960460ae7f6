/**
 * The sealed channel (protocol version 2) against an attacker on the link who sniffs every frame
 * and injects: forged segments of every kind, replays, an unauthenticated SYN, the other mode.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { NodeFrameAead, SEAL_CIPHER_AES_256_GCM } from '../../src/transport/aead.ts'
import { Delivery, SEGMENT_SKIP } from '../../src/transport/config.ts'
import type { Address, CloseReason, Connection } from '../../src/transport/connection.ts'
import { Endpoint } from '../../src/transport/endpoint.ts'
import { messageBuffers } from '../../src/transport/message-buffers.ts'
import { REPLAY_WINDOW, ReplayWindow, reconstructCounter } from '../../src/transport/seal.ts'
import { Session } from '../../src/session/session.ts'
import { decodeTcpFrame, IP_OFFSET, newTcpFrame, type TcpFrame } from '../../src/wire/frame.ts'
import {
  SEAL_TAG_OFFSET,
  setTcpChecksum,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
} from '../../src/wire/tcp.ts'
import { NO_FAULTS } from '../support/memory-link.ts'
import { messageId, patternMessage } from '../support/random.ts'
import { IP_A, IP_B, MAC_A, MAC_B, PORT_B, Simulation, TEST_KEY } from '../support/simulation.ts'

function decode(frame: Uint8Array, verifyChecksums = true): TcpFrame {
  const f = newTcpFrame()
  assert.equal(decodeTcpFrame(frame, f, verifyChecksums), undefined)
  return f
}

/** Recomputes the checksum after an edit, as any attacker can. */
function fixChecksum(frame: Buffer): Buffer {
  const f = newTcpFrame()
  decodeTcpFrame(frame, f, false)
  setTcpChecksum(frame, f.tcpOffset, frame.length - f.tcpOffset, f.ip.source, f.ip.destination)
  return frame
}

/** Re-seals an edited frame under a key of the attacker's (wrong: it does not hold the guest's). */
function resealWithWrongKey(frame: Buffer): Buffer {
  const f = decode(fixChecksum(frame))
  const seal = f.tcp.options.seal
  // A fresh counter, or it would be dropped as a replay before its tag is even looked at.
  frame.writeUInt32BE(seal.counter + 2000, seal.offset + 6)
  frame[f.tcpOffset + 16] = 0
  frame[f.tcpOffset + 17] = 0
  new NodeFrameAead(SEAL_CIPHER_AES_256_GCM, randomBytes(32)).seal(
    frame,
    IP_OFFSET,
    f.tcpOffset,
    f.payloadOffset,
    frame.length,
    seal.offset + SEAL_TAG_OFFSET,
    seal.counter + 2000,
  )
  return fixChecksum(frame)
}

interface World {
  sim: Simulation
  client: Connection
  server: () => Connection
  atB: number[]
  atA: number[]
  /** Copies of every frame sent towards B (side 1), as a sniffer sees them. */
  toB: Buffer[]
  closed: { a?: CloseReason; b?: CloseReason }
}

function world(seed: number, options = {}): World {
  const sim = new Simulation(seed, NO_FAULTS, options)
  const toB: Buffer[] = []
  sim.link.tap = (to, frame) => {
    if (to === 1) toB.push(frame)
  }
  const atB: number[] = []
  const atA: number[] = []
  const closed: World['closed'] = {}
  let server: Connection | undefined
  sim.acceptHandlers = (_r, c) => {
    server = c
    return { message: (m) => atB.push(messageId(m)), closed: (r) => (closed.b = r) }
  }
  const client = sim.connect({ message: (m) => atA.push(messageId(m)), closed: (r) => (closed.a = r) })
  assert.ok(sim.run(() => client.state === 'established' && server?.state === 'established'))
  return { sim, client, server: () => server!, atB, atA, toB, closed }
}

/** Sends `count` messages A→B, then one B→A, so A's last frame is a pure ACK at B's next expected sequence number. */
function exchange(w: World, count: number): void {
  const first = w.atB.length
  for (let i = 0; i < count; i++) assert.ok(w.client.send(patternMessage(first + i, 3000), Delivery.Reliable))
  assert.ok(w.sim.run(() => w.atB.length === first + count))
  assert.ok(w.server().send(patternMessage(50_000 + w.atA.length, 10), Delivery.Reliable))
  const replies = w.atA.length + 1
  assert.ok(w.sim.run(() => w.atA.length === replies && w.sim.quiet()))
}

/** Injects `frame` at B now, then lets the link settle. */
function inject(w: World, frame: Buffer): void {
  w.sim.b.receive(frame)
  w.sim.b.flush()
  w.sim.run(() => w.sim.link.nextDelivery() === Number.POSITIVE_INFINITY, w.sim.clock.now + 50)
}

function lastFrame(frames: Buffer[], pick: (f: TcpFrame) => boolean): Buffer {
  for (let i = frames.length - 1; i >= 0; i--) if (pick(decode(frames[i]))) return Buffer.from(frames[i])
  throw new Error('no such frame captured')
}

describe('sealed channel: codec-level helpers', () => {
  it('replay window: new counters pass, seen ones and those below the window do not', () => {
    const w = new ReplayWindow()
    assert.ok(w.check(0))
    w.update(0)
    assert.equal(w.check(0), false)
    w.update(5)
    assert.ok(w.check(3), 'a gap inside the window is still acceptable')
    w.update(3)
    assert.equal(w.check(3), false)
    w.update(5 + REPLAY_WINDOW)
    assert.equal(w.check(5), false, 'below the window')
    assert.ok(w.check(4 + REPLAY_WINDOW))
    assert.equal(w.check(5 + REPLAY_WINDOW), false)
    w.update(100_000)
    assert.ok(w.check(100_000 - 1), 'a jump forgets the old bits')
  })

  it('reconstructs 64-bit counters from their low 32 bits near the highest verified one', () => {
    assert.equal(reconstructCounter(7, -1), 7)
    assert.equal(reconstructCounter(5, 10), 5)
    assert.equal(reconstructCounter(3, 0xffff_fff0), 0x1_0000_0003)
    assert.equal(reconstructCounter(0xffff_fff0, 0x1_0000_0003), 0xffff_fff0)
    assert.equal(reconstructCounter(0x10, 2 ** 40 + 5), 2 ** 40 + 0x10)
  })
})

describe('sealed channel: an attacker on the link', () => {
  it('forged data, ACK, Skip, FIN and RST segments (bits flipped, or re-sealed with a wrong key) are dropped, counted, and change nothing', () => {
    const w = world(11)
    exchange(w, 4)
    const server = w.server()
    const before = { ...server.stats, drops: { ...server.stats.drops } }
    const data = lastFrame(w.toB, (f) => f.payloadLength > 0)
    const ack = lastFrame(w.toB, (f) => f.payloadLength === 0 && !(f.tcp.flags & TCP_SYN))
    const ackFrame = decode(ack)
    const forgeries: [string, Buffer][] = []
    const edit = (name: string, base: Buffer, change: (b: Buffer, f: TcpFrame) => void) => {
      const b = Buffer.from(base)
      change(b, decode(b, false))
      // A fresh counter, or it would be dropped as a replay before its tag is even looked at.
      const flipped = Buffer.from(b)
      const seal = decode(flipped, false).tcp.options.seal
      flipped.writeUInt32BE(seal.counter + 1000, seal.offset + 6)
      forgeries.push([`${name} (bits flipped)`, fixChecksum(flipped)])
      forgeries.push([`${name} (re-sealed, wrong key)`, resealWithWrongKey(Buffer.from(b))])
    }
    // A data segment carrying a new message: its payload and message start changed.
    edit('data', data, (b, f) => {
      b[f.payloadOffset] ^= 0xff
      b.writeUInt32BE((f.tcp.seq + 100_000) >>> 0, f.tcpOffset + 4)
      b.writeUInt32BE((f.tcp.seq + 100_000) >>> 0, f.tcpOffset + 20 + 6)
    })
    // A pure ACK advancing the window.
    edit('ACK', ack, (b, f) => b.writeUInt16BE(0xffff, f.tcpOffset + 14))
    // A Skip over the next message: the data segment with the Skip flag.
    edit('Skip', data, (b, f) => {
      b[f.tcpOffset + 20 + 5] |= SEGMENT_SKIP
    })
    // FIN and RST at exactly the expected sequence number (the ACK's), as a sniffer knows it.
    edit('FIN', ack, (b, f) => {
      b[f.tcpOffset + 13] = TCP_FIN | TCP_ACK
    })
    edit('RST', ack, (b, f) => {
      b[f.tcpOffset + 13] = TCP_RST
    })
    // The genuine ACK with its SEAL option stripped (SEAL turned into a foreign experiment) must not pass either.
    const stripped = Buffer.from(ack)
    stripped.writeUInt16BE(0x1234, ackFrame.tcp.options.seal.offset + 2)
    forgeries.push(['ACK without SEAL', fixChecksum(stripped)])

    // A forged frame with payload may be a piece of a split GSO record: staged (piecesStaged), and
    // counted authFailed only when evicted, never joined (rejoin.ts).
    const counted = () => server.stats.authFailed + server.stats.unsealed + server.stats.piecesStaged
    for (const [name, frame] of forgeries) {
      const failed = counted()
      inject(w, frame)
      assert.equal(counted(), failed + 1, `${name} not counted`)
      assert.equal(server.state, 'established', `${name} changed the state`)
      assert.equal(w.closed.b, undefined, `${name} closed the connection`)
    }
    assert.equal(server.stats.unsealed, 1)
    assert.equal(server.stats.authFailed + server.stats.piecesStaged, forgeries.length - 1)
    assert.equal(server.stats.recordsRejoined, 0)
    assert.equal(server.stats.messagesDelivered, before.messagesDelivered, 'a forged message was delivered')
    assert.equal(server.stats.framesReceived, before.framesReceived, 'forged frames are not processed at all')
    assert.equal(server.stats.bestEffortDropped, before.bestEffortDropped)
    // The channel still works, both ways, exactly once.
    assert.ok(w.client.send(patternMessage(10, 5000), Delivery.Reliable))
    assert.ok(server.send(patternMessage(11, 5000), Delivery.Ordered))
    assert.ok(w.sim.run(() => w.atB.length === 5 && w.atA.length === 2))
    assert.deepEqual(w.atB, [0, 1, 2, 3, 10])
    assert.deepEqual(w.atA, [50_000, 11])
  })

  it('the same forged RST resets a plaintext connection (what sealing prevents)', () => {
    const w = world(12, { insecurePlaintext: true })
    exchange(w, 1)
    const rst = lastFrame(w.toB, (f) => f.payloadLength === 0 && !(f.tcp.flags & TCP_SYN))
    const f = decode(rst)
    rst[f.tcpOffset + 13] = TCP_RST
    inject(w, fixChecksum(rst))
    assert.equal(w.closed.b, 'reset')
  })

  it('replayed frames (the whole capture, handshake included) are dropped as replayed and deliver nothing twice', () => {
    const w = world(13)
    for (let i = 0; i < 20; i++)
      assert.ok(w.client.send(patternMessage(i, 2000 + i * 500), Delivery.Reliable))
    assert.ok(w.sim.run(() => w.atB.length === 20))
    const server = w.server()
    const captured = w.toB.map((b) => Buffer.from(b))
    const delivered = server.stats.messagesDelivered
    for (const frame of captured) inject(w, Buffer.from(frame))
    assert.equal(server.stats.replayed, captured.length)
    assert.equal(server.stats.authFailed, 0)
    assert.equal(server.stats.messagesDelivered, delivered)
    assert.equal(w.atB.length, 20)
    assert.equal(server.state, 'established')
  })

  it('rekeys under load (every 64 frames) and still delivers everything exactly once, in order', () => {
    // No reordering: with epochs this short, a frame held back two epochs would meet no key (bad-epoch).
    const sim = new Simulation(
      14,
      { ...NO_FAULTS, loss: 0.005, duplicate: 0.01 },
      {
        rekeyAfterFrames: 64,
      },
    )
    const atB: number[] = []
    const atA: number[] = []
    let server: Connection | undefined
    sim.acceptHandlers = (_r, c) => {
      server = c
      return { message: (m) => atB.push(messageId(m)) }
    }
    const client = sim.connect({ message: (m) => atA.push(messageId(m)) })
    assert.ok(sim.run(() => client.state === 'established' && server?.state === 'established'))
    // As a session does: the listener installs the traffic keys first, the opener after.
    const nonceO = randomBytes(16)
    const nonceL = randomBytes(16)
    server!.installTrafficKeys(nonceO, nonceL)
    client.installTrafficKeys(nonceO, nonceL)
    const n = 300
    let sentA = 0
    let sentB = 0
    const pump = () => {
      while (sentA < n && client.send(patternMessage(sentA, 4000), Delivery.Ordered)) sentA++
      while (sentB < n && server!.send(patternMessage(100_000 + sentB, 3000), Delivery.Reliable)) sentB++
    }
    pump()
    assert.ok(sim.run(() => atB.length === n && atA.length === n, 600_000, pump))
    assert.deepEqual(
      atB,
      Array.from({ length: n }, (_, i) => i),
    )
    assert.deepEqual(new Set(atA).size, n)
    assert.ok(client.stats.rekeys >= 10, `client rekeyed ${client.stats.rekeys} times`)
    assert.ok(server!.stats.rekeys >= 5, `server rekeyed ${server!.stats.rekeys} times`)
    assert.equal(client.stats.authFailed + server!.stats.authFailed, 0)
    assert.equal(client.stats.badEpoch + server!.stats.badEpoch, 0)
    assert.ok(client.sealEpochs.send > 10 && server!.sealEpochs.receive > 10)
  })

  it('a session moves both directions to the traffic keys (epoch 1): the listener only after the opener did', () => {
    const sim = new Simulation(15)
    let listener: Session | undefined
    sim.acceptHandlers = (_r, c) => {
      listener = new Session(c, 'listener', TEST_KEY, { control() {} })
      return listener.connectionHandlers
    }
    const c = sim.connect({ message() {} })
    const opener = new Session(c, 'opener', TEST_KEY, { control() {} })
    assert.ok(sim.run(() => opener.authenticated && listener?.authenticated === true))
    assert.equal(c.sealEpochs.send, 1, 'the opener sends under epoch 1 once it verified the Auth')
    const got: unknown[] = []
    listener = listener!
    ;(listener as unknown as { handlers: { control: (m: unknown) => void } }).handlers.control = (m) =>
      got.push(m)
    opener.sendControl({ hello: 'world' })
    assert.ok(sim.run(() => got.length === 1))
    assert.ok(sim.run(() => sim.quiet()))
    assert.deepEqual(c.sealEpochs, { send: 1, receive: 1 })
    assert.deepEqual(listener.connection.sealEpochs, { send: 1, receive: 1 })
  })

  it('a listener drops a SYN sealed with another key, or bit-flipped, without creating state or answering', () => {
    const sim = new Simulation(16)
    let sentByB = 0
    const clock = () => sim.clock.now
    const b = new Endpoint({
      mac: MAC_B,
      ip: IP_B,
      sink: () => sentByB++,
      clock,
      listenPort: PORT_B,
      key: TEST_KEY,
      accept: () => ({ message() {} }),
    })
    const syns: Buffer[] = []
    const attacker = new Endpoint({ mac: MAC_A, ip: IP_A, sink: (f) => syns.push(Buffer.from(f)), clock })
    attacker.connect({ mac: MAC_B, ip: IP_B, port: PORT_B }, { message() {} }, randomBytes(32))
    const good = new Endpoint({ mac: MAC_A, ip: IP_A, sink: (f) => syns.push(Buffer.from(f)), clock })
    good.connect({ mac: MAC_B, ip: IP_B, port: PORT_B }, { message() {} }, TEST_KEY)
    assert.equal(syns.length, 2)
    b.receive(syns[0])
    const flipped = Buffer.from(syns[1])
    flipped[flipped.length - 1] ^= 0x01 // the last byte of the SEAL tag (the SYN has no payload)
    b.receive(fixChecksum(flipped))
    assert.equal(b.stats.authFailed, 2)
    assert.equal([...b.connections()].length, 0, 'no state for unauthenticated SYNs')
    assert.equal(sentByB, 0, 'no answer')
    // The genuine one is accepted (so the drops above were for the forgery, not for the setup).
    b.receive(syns[1])
    assert.equal([...b.connections()].length, 1)
    assert.equal(sentByB, 1, 'a SYN-ACK')
  })

  it('sends no RST for a segment that belongs to no connection', () => {
    const sim = new Simulation(17)
    let sent = 0
    const b = new Endpoint({ mac: MAC_B, ip: IP_B, sink: () => sent++, listenPort: PORT_B, key: TEST_KEY })
    const frames: Buffer[] = []
    const a = new Endpoint({ mac: MAC_A, ip: IP_A, sink: (f) => frames.push(Buffer.from(f)), key: TEST_KEY })
    a.connect({ mac: MAC_B, ip: IP_B, port: PORT_B }, { message() {} })
    const stray = frames[0]
    const f = decode(stray)
    stray[f.tcpOffset + 13] = TCP_ACK | TCP_PSH
    b.receive(fixChecksum(stray))
    assert.equal(b.stats.drops['no-connection'], 1)
    assert.equal(sent, 0)
    assert.equal(b.stats.resetsSent, 0)
    void sim
  })

  for (const openerPlaintext of [false, true]) {
    it(`refuses the other mode (${openerPlaintext ? 'plaintext opener, sealed listener' : 'sealed opener, plaintext listener'}): dropped, counted, reported, never downgraded`, () => {
      const sim = new Simulation(18, NO_FAULTS, { insecurePlaintext: openerPlaintext, connectTimeout: 2000 })
      const reported: [Address, boolean][] = []
      sim.restartB(19, { insecurePlaintext: !openerPlaintext })
      ;(sim.b as unknown as { onModeMismatch: (r: Address, s: boolean) => void }).onModeMismatch = (r, s) =>
        reported.push([r, s])
      let accepted = 0
      sim.acceptHandlers = () => {
        accepted++
        return { message() {} }
      }
      let reason: CloseReason | undefined
      sim.connect({ message() {}, closed: (r) => (reason = r) })
      assert.ok(sim.run(() => reason !== undefined))
      assert.equal(reason, 'connect-timeout')
      assert.equal(accepted, 0)
      assert.ok(sim.b.stats.modeMismatch >= 1)
      assert.equal(reported[0][1], !openerPlaintext, 'reports whether the peer is sealed')
      assert.equal(reported[0][0].ip, IP_A)
    })
  }
})

describe('sealed channel: decrypting straight into the reassembly buffer', () => {
  /** A and B wired by hand: every frame A sends is kept for the test to hand to B. */
  function pair() {
    const toB: Buffer[] = []
    const toA: Buffer[] = []
    const messages: Uint8Array[] = []
    const a = new Endpoint({ mac: MAC_A, ip: IP_A, sink: (f) => toB.push(f as Buffer), key: TEST_KEY })
    const b = new Endpoint({
      mac: MAC_B,
      ip: IP_B,
      sink: (f) => toA.push(f as Buffer),
      key: TEST_KEY,
      listenPort: PORT_B,
      accept: () => ({ message: (m) => messages.push(Uint8Array.from(m)) }),
    })
    const client = a.connect({ mac: MAC_B, ip: IP_B, port: PORT_B }, { message() {} }, TEST_KEY)
    const settle = () => {
      for (let round = 0; round < 20 && (toB.length > 0 || toA.length > 0); round++) {
        for (const f of toB.splice(0)) b.receive(f)
        b.flush()
        for (const f of toA.splice(0)) a.receive(f)
        a.flush()
      }
    }
    settle()
    assert.equal(client.state, 'established')
    return { a, b, client, toB, messages, settle }
  }

  /** Empties the pool's buffers that could hold `length` bytes; returns them (give them back after). */
  function drainPool(length: number): Buffer[] {
    const taken: Buffer[] = []
    for (let b = messageBuffers.takePooled(length); b; b = messageBuffers.takePooled(length)) taken.push(b)
    return taken
  }

  for (const pooled of [true, false]) {
    it(`the frames of a message that spans several are decrypted into its buffer, out of place: ${pooled ? 'all, the first into a buffer the pool had free' : 'each after the first (the pool has no buffer free: the first in place)'}`, () => {
      const p = pair()
      const message = patternMessage(1, 10_000)
      const drained = drainPool(message.length)
      if (pooled) messageBuffers.giveBack(messageBuffers.take(message.length))
      try {
        assert.ok(p.client.send(message, Delivery.Reliable))
        const frames = p.toB.splice(0)
        assert.ok(frames.length >= 5, 'the message spans several frames')
        const left: boolean[] = []
        for (const frame of frames) {
          const copy = Buffer.from(frame)
          p.b.receive(frame)
          left.push(frame.equals(copy))
        }
        // In place, every frame's payload would now be plaintext.
        assert.deepEqual(
          left,
          frames.map((_f, i) => pooled || i > 0),
        )
        p.settle()
        assert.equal(p.messages.length, 1)
        assert.deepEqual(p.messages[0], message)
      } finally {
        for (const b of drained) messageBuffers.giveBack(b)
      }
    })
  }

  it('a forged first frame decrypted into a buffer from the pool gives it back, and the genuine one then takes it', () => {
    const p = pair()
    const message = patternMessage(3, 10_000)
    const drained = drainPool(message.length)
    messageBuffers.giveBack(messageBuffers.take(message.length))
    const before = messageBuffers.pooledBytes
    try {
      assert.ok(p.client.send(message, Delivery.Reliable))
      const frames = p.toB.splice(0)
      const forged = Buffer.from(frames[0])
      const f = decode(forged, false)
      forged[f.payloadOffset + 1] ^= 0x08
      forged.writeUInt32BE((f.tcp.options.seal.counter + 77) >>> 0, f.tcp.options.seal.offset + 6)
      const server = [...p.b.connections()][0]
      const failed = server.stats.authFailed
      p.b.receive(fixChecksum(forged))
      assert.equal(messageBuffers.pooledBytes, before, 'the buffer went back')
      const copy = Buffer.from(frames[0])
      p.b.receive(frames[0])
      assert.ok(frames[0].equals(copy), 'decrypted out of place, into the pooled buffer')
      assert.ok(messageBuffers.pooledBytes < before, 'the message holds it now')
      for (const frame of frames.slice(1)) p.b.receive(frame)
      p.settle()
      assert.deepEqual(p.messages, [message])
      assert.ok(server.stats.authFailed + server.stats.piecesStaged > failed, 'the forgery was refused')
    } finally {
      for (const b of drained) messageBuffers.giveBack(b)
    }
  })

  it('messages given in chunks (a header, then a body) arrive whole: each frame is sealed from its chunks', () => {
    const p = pair()
    const sent: Uint8Array[] = []
    for (const [head, body] of [
      [40, 10_000],
      [3, 1],
      [2000, 50],
      [1, 4096],
    ]) {
      const whole = patternMessage(sent.length + 5, head + body)
      sent.push(whole)
      assert.ok(p.client.send([whole.subarray(0, head), whole.subarray(head)], Delivery.Reliable))
      assert.ok(
        p.client.send(
          [whole.subarray(0, 1), whole.subarray(1, head), whole.subarray(head)],
          Delivery.Reliable,
        ),
      )
      sent.push(whole)
    }
    p.settle()
    assert.deepEqual(p.messages, sent)
  })

  it('forged frames decrypted into the buffer before, between and after the genuine ones change nothing that is delivered', () => {
    const p = pair()
    const message = patternMessage(2, 12_000)
    assert.ok(p.client.send(message, Delivery.Reliable))
    const frames = p.toB.splice(0)
    assert.ok(frames.length >= 6)
    /** A frame's copy with one payload byte flipped and a fresh counter (else: a replay, never decrypted). */
    const forged = (i: number, shift: number) => {
      const b = Buffer.from(frames[i])
      const f = decode(b, false)
      b[f.payloadOffset + 3] ^= 0x40
      b.writeUInt32BE((f.tcp.options.seal.counter + 1000 + shift) >>> 0, f.tcp.options.seal.offset + 6)
      return fixChecksum(b)
    }
    const server = [...p.b.connections()][0]
    // Out of order, so that received parts lie above rcvNxt: into a part nothing has filled yet
    // (decrypted into the buffer, refused), then the genuine frame; into a part a genuine frame
    // filled already (it must not be overwritten); the first forgery comes before the message has
    // a buffer (decrypted in place, refused).
    p.b.receive(forged(2, 0))
    p.b.receive(frames[2])
    p.b.receive(forged(2, 1))
    p.b.receive(frames[0])
    p.b.receive(forged(1, 2))
    p.b.receive(frames[1])
    p.b.receive(forged(1, 3))
    p.b.receive(forged(2, 4))
    // A forged first frame of another message.
    const other = Buffer.from(frames[3])
    const fo = decode(other, false)
    other.writeUInt32BE((fo.tcp.seq + 500_000) >>> 0, fo.tcpOffset + 4)
    other.writeUInt32BE((fo.tcp.seq + 500_000 - 1000) >>> 0, fo.tcpOffset + 20 + 6)
    other.writeUInt32BE((fo.tcp.options.seal.counter + 2000) >>> 0, fo.tcp.options.seal.offset + 6)
    p.b.receive(fixChecksum(other))
    for (const frame of frames.slice(3)) p.b.receive(frame)
    p.settle()
    // Refused (a forged piece is staged, and counted authFailed too once evicted), never joined.
    assert.ok(server.stats.authFailed + server.stats.piecesStaged >= 6, 'every forgery refused')
    assert.equal(server.stats.recordsRejoined, 0)
    assert.equal(p.messages.length, 1)
    assert.deepEqual(p.messages[0], message)
  })
})
