/**
 * A peer that labels the same sequence positions as part of two messages (a segment re-labelled
 * as a message of its own, or a Skip over another message's bytes) must never get a message
 * delivered with bytes that were not written from its own segments: reassembly buffers are
 * recycled, so those bytes would be another message's (another guest's) old data.
 */
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { Delivery, SEGMENT_SKIP } from '../../src/transport/config.ts'
import { Endpoint } from '../../src/transport/endpoint.ts'
import { messageBuffers } from '../../src/transport/message-buffers.ts'
import { decodeTcpFrame, encodeTcpFrame, newTcpFrame } from '../../src/wire/frame.ts'
import { seededRandom } from '../support/random.ts'

type Rewrite = (frame: Buffer) => Buffer

function run(rewriteSecondSegment: Rewrite): { length: number; stale: number }[] {
  let now = 0
  const random = seededRandom(7)
  const toB: Buffer[] = []
  const toA: Buffer[] = []
  const a = new Endpoint({
    mac: 0xa,
    ip: 1,
    sink: (f) => toB.push(Buffer.from(f)),
    clock: () => now,
    random,
    // Plaintext: the test rewrites segments in flight, as a peer holding the keys could just as well.
    options: { insecurePlaintext: true },
    peerPort: 7860,
  })
  const got: { length: number; stale: number }[] = []
  const b = new Endpoint({
    mac: 0xb,
    ip: 2,
    sink: (f) => toA.push(Buffer.from(f)),
    clock: () => now,
    random,
    options: { insecurePlaintext: true },
    listenPort: 7860,
    accept: () => ({
      message: (m) => got.push({ length: m.length, stale: m.reduce((n, x) => n + (x === 0xab ? 1 : 0), 0) }),
    }),
  })
  const c = a.connect({ mac: 0xb, ip: 2, port: 7860 }, { message() {} })
  let dataSegments = 0
  const pump = (rewrite: boolean) => {
    for (let i = 0; i < 50 && (toA.length > 0 || toB.length > 0); i++) {
      for (const f of toB.splice(0)) {
        const d = newTcpFrame()
        const isData = !decodeTcpFrame(f, d, true) && d.payloadLength > 0
        if (isData) dataSegments++
        b.receive(rewrite && isData && dataSegments === 2 ? rewriteSecondSegment(f) : f)
      }
      b.flush()
      for (const f of toA.splice(0)) a.receive(f)
      a.flush()
      now += 1
    }
  }
  pump(false)
  assert.equal(c.state, 'established')
  // Another message's data, given back to the pool: what a hostile peer would like to read.
  const other = messageBuffers.take(5000)
  other.fill(0xab)
  messageBuffers.giveBack(other)
  c.send(Buffer.alloc(5000, 0x11), Delivery.Reliable)
  pump(true)
  return got
}

/** The frame with its segment option changed by `change`, payload kept (`keepPayload`) or cut. */
function relabel(
  f: Buffer,
  keepPayload: boolean,
  change: (
    o: { messageStart: number; messageLength: number; flags: number },
    seq: number,
    length: number,
  ) => void,
): Buffer {
  const d = newTcpFrame()
  assert.equal(decodeTcpFrame(f, d, true), undefined)
  change(d.tcp.options.vrio, d.tcp.seq, d.payloadLength)
  const g = keepPayload ? Buffer.from(f) : Buffer.alloc(d.payloadOffset)
  encodeTcpFrame(g, d, keepPayload ? d.payloadLength : 0, false)
  return g
}

it('a segment re-labelled as a message of its own: the message it was cut from is never delivered', () => {
  const got = run((f) =>
    relabel(f, true, (o, seq, length) => {
      o.messageStart = seq
      o.messageLength = length
    }),
  )
  assert.ok(
    got.every((m) => m.stale === 0),
    'no stale pool bytes delivered',
  )
  assert.ok(!got.some((m) => m.length === 5000), 'the 5000-byte message is not delivered')
})

it("a Skip over another message's bytes: that message is never delivered", () => {
  const got = run((f) =>
    relabel(f, false, (o, seq, length) => {
      o.messageStart = seq
      o.messageLength = length
      o.flags = Delivery.BestEffort | SEGMENT_SKIP
    }),
  )
  assert.deepEqual(got, [])
})
