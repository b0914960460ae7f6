/**
 * Sealed channel over a link that splits GSO super-frames into MSS pieces (TSO, or software GSO
 * with checksum offload off): every piece carries the record's SEAL option and fails alone; the
 * receiver re-joins them (src/transport/rejoin.ts, protocol.md "Sealed segments").
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { decodeTcpFrame, newTcpFrame } from '../../src/wire/frame.ts'
import { setTcpChecksum, TCP_PSH } from '../../src/wire/tcp.ts'
import { type FaultModel, NO_FAULTS } from '../support/memory-link.ts'
import { messageId, patternMessage } from '../support/random.ts'
import { Simulation } from '../support/simulation.ts'

const GSO = { gsoMaxSize: 65_000 }
const MIB = 1 << 20

interface Pair {
  sim: Simulation
  client: Connection
  server: Connection
  atA: Map<number, number>
  atB: Map<number, number>
  corrupt: number[]
}

/** A sealed pair on a splitting link; received messages are checked against their pattern. */
function pair(seed: number, faults: FaultModel): Pair {
  const sim = new Simulation(seed, faults, GSO, false, true)
  const atA = new Map<number, number>()
  const atB = new Map<number, number>()
  const corrupt: number[] = []
  const note = (into: Map<number, number>) => (m: Uint8Array) => {
    const id = messageId(m)
    if (!Buffer.from(m).equals(Buffer.from(patternMessage(id, m.length)))) corrupt.push(id)
    into.set(id, (into.get(id) ?? 0) + 1)
  }
  let server: Connection | undefined
  sim.acceptHandlers = (_r, c) => {
    server = c
    return { message: note(atB) }
  }
  const client = sim.connect({ message: note(atA) })
  assert.ok(sim.run(() => client.state === 'established' && server?.state === 'established'))
  return { sim, client, server: server!, atA, atB, corrupt }
}

/** Both ways: two 1 MiB reliable messages and 40 best-effort ones of 30 000 bytes, each way. */
function exchange(p: Pair): { reliable: number[]; bestEffort: number[] } {
  const reliable = [1, 2]
  const bestEffort = Array.from({ length: 40 }, (_, i) => 100 + i)
  const queue = (base: number) => [
    ...reliable.map((id) => ({ id: base + id, length: MIB, d: Delivery.Reliable })),
    ...bestEffort.map((id) => ({ id: base + id, length: 30_000, d: Delivery.BestEffort })),
  ]
  const fromA = queue(0)
  const fromB = queue(10_000)
  const pump = () => {
    while (fromA.length > 0 && p.client.send(patternMessage(fromA[0].id, fromA[0].length), fromA[0].d))
      fromA.shift()
    while (fromB.length > 0 && p.server.send(patternMessage(fromB[0].id, fromB[0].length), fromB[0].d))
      fromB.shift()
  }
  pump()
  const reliableIn = (m: Map<number, number>, base: number) => reliable.every((id) => m.has(base + id))
  assert.ok(
    p.sim.run(
      () => fromA.length === 0 && fromB.length === 0 && reliableIn(p.atB, 0) && reliableIn(p.atA, 10_000),
      600_000,
      pump,
    ),
  )
  // Let what is in flight settle (best-effort stragglers, acknowledgements).
  p.sim.run(() => p.sim.link.nextDelivery() === Number.POSITIVE_INFINITY, p.sim.clock.now + 5_000)
  return { reliable, bestEffort }
}

describe('sealed channel over a link that splits GSO super-frames', () => {
  it('re-joins the pieces: 1 MiB reliable and best-effort messages arrive intact, exactly once', () => {
    const p = pair(71, NO_FAULTS)
    const { reliable, bestEffort } = exchange(p)
    assert.deepEqual(p.corrupt, [])
    for (const [m, base] of [
      [p.atB, 0],
      [p.atA, 10_000],
    ] as const) {
      for (const id of [...reliable, ...bestEffort]) assert.equal(m.get(base + id), 1, `message ${base + id}`)
      assert.equal(m.size, reliable.length + bestEffort.length)
    }
    for (const c of [p.client, p.server]) {
      assert.ok(c.stats.recordsRejoined > 0, 'split records were re-joined')
      assert.ok(c.stats.piecesStaged > c.stats.recordsRejoined)
      assert.equal(c.stats.authFailed, 0)
      assert.equal(c.stats.replayed, 0)
    }
    // Without re-joining every piece fails and only retransmissions of small frames get through.
    assert.ok(p.client.stats.retransmits + p.server.stats.retransmits < 10)
  })

  for (const [name, seed, faults] of [
    ['reordering', 72, { ...NO_FAULTS, reorder: 0.2, reorderDelay: 3, jitter: 0.2 }],
    ['loss, reordering and duplicates', 73, { ...NO_FAULTS, loss: 0.01, reorder: 0.1, duplicate: 0.01 }],
  ] as const) {
    it(`re-joins under ${name}: reliable exactly once, best-effort at most once, all intact`, () => {
      const p = pair(seed, faults)
      const { reliable, bestEffort } = exchange(p)
      assert.deepEqual(p.corrupt, [])
      for (const [m, base] of [
        [p.atB, 0],
        [p.atA, 10_000],
      ] as const) {
        for (const id of reliable) assert.equal(m.get(base + id), 1, `reliable ${base + id}`)
        for (const id of bestEffort) assert.ok((m.get(base + id) ?? 0) <= 1, `best-effort ${base + id}`)
        assert.ok(
          bestEffort.some((id) => m.get(base + id) === 1),
          'best-effort messages arrive',
        )
      }
      for (const c of [p.client, p.server]) assert.ok(c.stats.recordsRejoined > 0)
    })
  }

  it('staging is bounded: 4 records, the oldest evicted and counted auth-failed; overlaps counted at once', () => {
    const p = pair(75, NO_FAULTS)
    const captured: Buffer[] = []
    p.sim.link.tap = (to, frame) => {
      if (to === 1) captured.push(frame)
    }
    assert.ok(p.client.send(patternMessage(6, 3000), Delivery.Reliable))
    assert.ok(p.sim.run(() => p.atB.has(6)))
    const f = newTcpFrame()
    const data = captured.find((x) => decodeTcpFrame(x, f) === undefined && f.payloadLength > 0)!
    decodeTcpFrame(data, f)
    const forge = (counter: number, seqOffset: number) => {
      const b = Buffer.from(data)
      b.writeUInt32BE(counter >>> 0, f.tcp.options.seal.offset + 6)
      b.writeUInt32BE((f.tcp.seq + seqOffset) >>> 0, f.tcpOffset + 4)
      setTcpChecksum(b, f.tcpOffset, b.length - f.tcpOffset, f.ip.source, f.ip.destination)
      p.sim.b.receive(b)
    }
    const s = p.server.stats
    const before = {
      staged: s.piecesStaged,
      failed: s.authFailed,
      delivered: s.messagesDelivered,
      rejoined: s.recordsRejoined,
    }
    for (let i = 0; i < 4; i++) forge(f.tcp.options.seal.counter + 1000 + i, 0)
    assert.equal(s.piecesStaged - before.staged, 4)
    assert.equal(s.authFailed, before.failed)
    forge(f.tcp.options.seal.counter + 1000 + 3, 1) // overlaps the piece staged under that key
    assert.equal(s.authFailed, before.failed + 1)
    forge(f.tcp.options.seal.counter + 1000 + 4, 0) // a fifth record: the oldest is evicted
    assert.equal(s.piecesStaged - before.staged, 5)
    assert.equal(s.authFailed, before.failed + 2)
    assert.equal(s.messagesDelivered, before.delivered)
    assert.equal(s.recordsRejoined, before.rejoined)
    p.server.abort()
    assert.equal(s.authFailed, before.failed + 6, 'every piece that never joined counted once')
  })

  it('a piece with a forged payload byte never joins: its record is not delivered from it, and is counted', () => {
    const p = pair(74, NO_FAULTS)
    // Forge the second piece of the first data super-frame to B: flip one payload byte and fix the
    // checksum, as anyone on the link can.
    const link = p.sim.link as unknown as { put(to: 0 | 1, frame: Uint8Array, superFrame?: boolean): void }
    const put = link.put.bind(link)
    const f = newTcpFrame()
    let dataPieces = 0
    let forged = false
    link.put = (to, frame, superFrame) => {
      if (to === 1 && !forged && decodeTcpFrame(frame, f, false) === undefined && f.payloadLength > 0) {
        dataPieces++
        if (dataPieces === 2) {
          const copy = Buffer.from(frame)
          copy[f.payloadOffset + 7] ^= 0x40
          setTcpChecksum(copy, f.tcpOffset, copy.length - f.tcpOffset, f.ip.source, f.ip.destination)
          frame = copy
        }
        if (f.tcp.flags & TCP_PSH) {
          // The last piece: the first record split in pieces is the forged one.
          if (dataPieces >= 2) forged = true
          else dataPieces = 0
        }
      }
      put(to, frame, superFrame)
    }
    const message = patternMessage(5, 20_000)
    assert.ok(p.client.send(message, Delivery.Reliable))
    assert.ok(p.sim.run(() => p.atB.has(5)))
    p.sim.run(() => p.sim.link.nextDelivery() === Number.POSITIVE_INFINITY, p.sim.clock.now + 5_000)
    assert.equal(p.atB.get(5), 1, 'delivered once, from the retransmission')
    assert.deepEqual(p.corrupt, [])
    assert.ok(dataPieces >= 3, `the record was split (${dataPieces} pieces)`)
    assert.ok(p.client.stats.retransmits > 0)
    assert.ok(p.server.stats.recordsRejoined >= 1, 'the retransmitted record re-joined')
    // The forged record's pieces stay staged until evicted or the connection ends: then counted.
    assert.equal(p.server.stats.authFailed, 0)
    p.server.abort()
    assert.equal(p.server.stats.authFailed, dataPieces)
  })
})
