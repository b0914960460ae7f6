import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { type ConnectionOptions, DEFAULT_CONNECTION_OPTIONS, Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { Endpoint } from '../../src/transport/endpoint.ts'
import { decodeTcpFrame, newTcpFrame, type TcpFrame } from '../../src/wire/frame.ts'
import { TCP_ACK } from '../../src/wire/tcp.ts'
import { CHANNEL_MODES } from '../support/harness.ts'
import { seededRandom } from '../support/random.ts'
import { IP_A, IP_B, MAC_A, MAC_B, PORT_B, TEST_KEY } from '../support/simulation.ts'

/**
 * Two endpoints joined by hand, on a virtual clock: every frame is seen, and time moves only when
 * a test moves it, so "within the delay" and "after it" are exact.
 */
class Pair {
  readonly clock = { now: 1000 }
  /** Frames A sent, not yet handed to B; and the other way. */
  readonly toB: Buffer[] = []
  readonly toA: Buffer[] = []
  readonly a: Endpoint
  readonly b: Endpoint
  readonly client: Connection
  server: Connection | undefined
  /** What B's application does with a message (default: nothing, no answer). */
  onServerMessage: (m: Uint8Array, c: Connection) => void = () => {}
  readonly atA: number[] = []
  readonly atB: number[] = []

  constructor(options: Partial<ConnectionOptions>) {
    const common = {
      clock: () => this.clock.now,
      random: seededRandom(7),
      options,
      key: TEST_KEY,
    }
    this.a = new Endpoint({
      ...common,
      mac: MAC_A,
      ip: IP_A,
      sink: (f) => this.toB.push(Buffer.from(f)),
      peerPort: PORT_B,
    })
    this.b = new Endpoint({
      ...common,
      mac: MAC_B,
      ip: IP_B,
      sink: (f) => this.toA.push(Buffer.from(f)),
      listenPort: PORT_B,
      accept: (_remote, c) => {
        this.server = c
        return {
          message: (m) => {
            this.atB.push(m.length)
            this.onServerMessage(m, c)
          },
        }
      },
    })
    this.client = this.a.connect(
      { mac: MAC_B, ip: IP_B, port: PORT_B },
      { message: (m) => void this.atA.push(m.length) },
    )
    while (this.toA.length + this.toB.length > 0) {
      this.deliverToB()
      this.deliverToA()
    }
    assert.equal(this.client.state, 'established')
    assert.equal(this.server?.state, 'established')
  }

  /** Hands B what A sent (one batch), then ends the batch; returns the frames. */
  deliverToB(frames = this.toB.splice(0)): Buffer[] {
    for (const f of frames) this.b.receive(f)
    this.b.flush()
    return frames
  }

  deliverToA(frames = this.toA.splice(0)): Buffer[] {
    for (const f of frames) this.a.receive(f)
    this.a.flush()
    return frames
  }

  /** Moves the clock and runs both endpoints' timers, as the link driver's timer would. */
  advance(ms: number): void {
    this.clock.now += ms
    this.a.tick()
    this.b.tick()
  }
}

function decode(frame: Buffer): TcpFrame {
  const f = newTcpFrame()
  assert.equal(decodeTcpFrame(frame, f, false), undefined)
  return f
}

const isPureAck = (frame: Buffer): boolean => {
  const f = decode(frame)
  return f.payloadLength === 0 && f.tcp.flags === TCP_ACK
}

const ACK_DELAY = DEFAULT_CONNECTION_OPTIONS.ackDelay

for (const { name: mode, insecurePlaintext } of CHANNEL_MODES)
  describe(`delayed acknowledgements (${mode})`, () => {
    it('a request answered at once is acknowledged by its answer: two frames per exchange, no pure ACK', () => {
      // An answer of 4 KiB in one GSO super-frame, as the link drivers send it.
      const p = new Pair({ insecurePlaintext, gsoMaxSize: 64_000 })
      const answer = new Uint8Array(4096).fill(3)
      p.onServerMessage = (_m, c) => assert.ok(c.send(answer, Delivery.Reliable))
      const exchanges = 20
      const frames: Buffer[] = []
      for (let i = 0; i < exchanges; i++) {
        assert.ok(p.client.send(new Uint8Array(64).fill(i), Delivery.Reliable))
        frames.push(...p.deliverToB(), ...p.deliverToA())
        p.advance(0.1)
      }
      assert.equal(p.atA.length, exchanges)
      assert.equal(frames.length, 2 * exchanges, 'request + answer, nothing else')
      assert.equal(frames.filter(isPureAck).length, 0)
      // The last answer is owed an ACK: it goes out after the delay, once.
      p.advance(ACK_DELAY)
      assert.equal(p.toB.length, 1)
      assert.ok(isPureAck(p.toB[0]))
      p.deliverToB()
      assert.equal(p.server!.unacknowledged, 0)
    })

    it('a request answered later, but within the delay, is acknowledged by its answer', () => {
      const p = new Pair({ insecurePlaintext })
      let pending: Connection | undefined
      p.onServerMessage = (_m, c) => {
        pending = c
      }
      assert.ok(p.client.send(new Uint8Array(100).fill(1), Delivery.Reliable))
      p.deliverToB()
      assert.equal(p.toA.length, 0, 'no pure ACK at the end of the batch')
      p.advance(ACK_DELAY / 2)
      assert.equal(p.toA.length, 0, 'none before the delay either')
      assert.ok(pending!.send(new Uint8Array(200).fill(2), Delivery.Reliable))
      assert.equal(p.toA.length, 1)
      const f = decode(p.toA[0])
      assert.equal(f.payloadLength > 0, true)
      p.advance(ACK_DELAY)
      assert.equal(p.toA.length, 1, 'the answer carried the ACK: nothing left to send')
      p.deliverToA()
      assert.equal(p.client.unacknowledged, 0)
    })

    it('two full-sized segments in a row are acknowledged at once', () => {
      const p = new Pair({ insecurePlaintext })
      assert.ok(p.client.send(new Uint8Array(20_000).fill(5), Delivery.Reliable))
      const segments = p.toB.splice(0)
      assert.ok(segments.length >= 4)
      const mss = decode(segments[0]).payloadLength
      assert.equal(decode(segments[1]).payloadLength, mss, 'full-sized segments')
      // Each frame its own batch: the first waits, the second is acknowledged with it.
      p.deliverToB([segments[0]])
      assert.equal(p.toA.length, 0)
      p.deliverToB([segments[1]])
      assert.equal(p.toA.length, 1)
      const ack = decode(p.toA[0])
      assert.ok(isPureAck(p.toA[0]))
      assert.equal(ack.tcp.ack, (decode(segments[1]).tcp.seq + mss) >>> 0)
      assert.equal(p.b.nextDeadline() > p.clock.now + ACK_DELAY, true, 'no delayed ACK left owed')
      // Two more in one batch: one ACK for both.
      p.deliverToB(segments.slice(2, 4))
      assert.equal(p.toA.length, 2)
      assert.equal(decode(p.toA[1]).tcp.ack, (decode(segments[3]).tcp.seq + mss) >>> 0)
    })

    it('out-of-order data is acknowledged at once with SACK, and so is the segment that fills the hole', () => {
      const p = new Pair({ insecurePlaintext })
      assert.ok(p.client.send(new Uint8Array(3000).fill(6), Delivery.Reliable))
      const segments = p.toB.splice(0)
      assert.equal(segments.length, 3)
      const first = decode(segments[0])
      const third = decode(segments[2])
      p.deliverToB([segments[2]])
      assert.equal(p.toA.length, 1, 'a hole: ACK at once')
      const ack = decode(p.toA[0])
      assert.ok(isPureAck(p.toA[0]))
      assert.equal(ack.tcp.ack, first.tcp.seq, 'still expecting the first segment')
      assert.equal(ack.tcp.options.sackCount, 1)
      assert.equal(ack.tcp.options.sackBlocks[0], third.tcp.seq)
      assert.equal(ack.tcp.options.sackBlocks[1], (third.tcp.seq + third.payloadLength) >>> 0)
      // The first segment: in order, but a hole is still open above it: at once again.
      p.deliverToB([segments[0]])
      assert.equal(p.toA.length, 2)
      assert.equal(decode(p.toA[1]).tcp.options.sackCount, 1)
      // The gap fill completes the message: at once, nothing left to SACK.
      p.deliverToB([segments[1]])
      assert.equal(p.toA.length, 3)
      const last = decode(p.toA[2])
      assert.equal(last.tcp.ack, (third.tcp.seq + third.payloadLength) >>> 0)
      assert.equal(last.tcp.options.sackCount, 0)
      assert.deepEqual(p.atB, [3000])
    })

    it('a segment nobody answers is acknowledged after the delay, by the endpoint timer deadline', () => {
      const p = new Pair({ insecurePlaintext })
      assert.ok(p.client.send(new Uint8Array(300).fill(7), Delivery.Reliable))
      const sent = p.clock.now
      p.deliverToB()
      assert.deepEqual(p.atB, [300])
      assert.equal(p.toA.length, 0)
      // The one deadline the link driver's timer follows is the delayed ACK.
      assert.equal(p.b.nextDeadline(), sent + ACK_DELAY)
      p.advance(ACK_DELAY - 0.5)
      assert.equal(p.toA.length, 0)
      p.advance(0.5)
      assert.equal(p.toA.length, 1)
      assert.ok(isPureAck(p.toA[0]))
      p.deliverToA()
      assert.equal(p.client.unacknowledged, 0)
      assert.ok(p.b.nextDeadline() > p.clock.now + ACK_DELAY, 'nothing owed any more')
    })

    it('with ackDelay 0 every batch that received data is acknowledged at its end', () => {
      const p = new Pair({ insecurePlaintext, ackDelay: 0 })
      assert.ok(p.client.send(new Uint8Array(300).fill(7), Delivery.Reliable))
      p.deliverToB()
      assert.equal(p.toA.length, 1)
      assert.ok(isPureAck(p.toA[0]))
    })

    it('a FIN is acknowledged at once', () => {
      const p = new Pair({ insecurePlaintext })
      p.client.close()
      p.deliverToB()
      assert.equal(p.toA.length, 1)
      assert.ok(decode(p.toA[0]).tcp.flags & TCP_ACK)
      assert.equal(p.server!.state, 'close-wait')
    })
  })
