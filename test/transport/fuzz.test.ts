import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { Delivery } from '../../src/transport/config.ts'
import { readMac } from '../../src/wire/address.ts'
import { ETHERNET_HEADER_LENGTH } from '../../src/wire/ethernet.ts'
import { decodeTcpFrame, newTcpFrame } from '../../src/wire/frame.ts'
import { encodeIPv4 } from '../../src/wire/ipv4.ts'
import { decodeMessageHeader, newMessageHeader } from '../../src/wire/message-header.ts'
import { setTcpChecksum } from '../../src/wire/tcp.ts'
import { messageId, patternMessage } from '../support/random.ts'
import { CHANNEL_MODES } from '../support/harness.ts'
import { MAC_B, Simulation } from '../support/simulation.ts'

const SEED = Number(process.env.VRIO_FC_SEED ?? 4242)

/** A short real session, captured: the seeds that mutations start from. */
function capturedFrames(): Uint8Array[] {
  const sim = new Simulation(21, undefined, {}, true)
  sim.acceptHandlers = (_r, c) => ({
    message: (m) => c.send(Uint8Array.from(m), Delivery.Reliable),
    peerClosed: () => c.close(),
  })
  let n = 0
  let up = false
  const a = sim.connect({ message: () => n++, established: () => (up = true) })
  sim.run(() => up)
  for (let i = 0; i < 6; i++) a.send(patternMessage(i, 10 ** (i % 5) + 3), (i % 3) as Delivery)
  sim.run(() => n === 6)
  a.close()
  sim.run(() => false, sim.clock.now + 10_000)
  return sim.link.capture!.map((c) => c.frame)
}

/** Recomputes IPv4 and TCP checksums of a mutated frame where its lengths allow, so it gets past them. */
function fixChecksums(frame: Uint8Array): Uint8Array {
  const f = newTcpFrame()
  if (decodeTcpFrame(frame, f, false)) return frame
  const out = Uint8Array.from(frame)
  encodeIPv4(out, ETHERNET_HEADER_LENGTH, f.ip)
  const tcpEnd = ETHERNET_HEADER_LENGTH + f.ip.totalLength
  setTcpChecksum(out, f.tcpOffset, tcpEnd - f.tcpOffset, f.ip.source, f.ip.destination)
  return out
}

const mutation = (seeds: Uint8Array[]) =>
  fc
    .record({
      seed: fc.constantFrom(...seeds),
      flips: fc.array(fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { maxLength: 8 }),
      cut: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.nat() }),
      extra: fc.uint8Array({ maxLength: 64 }),
    })
    .map(({ seed, flips, cut, extra }) => {
      let b = Uint8Array.from(seed)
      for (const { at, value } of flips) b[at % b.length] = value
      if (cut !== undefined) b = b.subarray(0, cut % (b.length + 1))
      if (extra.length > 0) b = Uint8Array.from([...b, ...extra])
      return b
    })

describe('hostile input', () => {
  const seeds = capturedFrames()

  it('decoders never throw on random bytes or mutated frames, and always terminate', {
    timeout: 60_000,
  }, () => {
    const f = newTcpFrame()
    const h = newMessageHeader()
    const check = (b: Uint8Array) => {
      for (const verify of [true, false]) {
        const r = decodeTcpFrame(b, f, verify)
        assert.ok(r === undefined || typeof r === 'string')
        if (r === undefined) assert.ok(f.payloadOffset + f.payloadLength <= b.length)
      }
      const m = decodeMessageHeader(b, 0, b.length, h)
      assert.ok(m === undefined || typeof m === 'string')
    }
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), check), { seed: SEED, numRuns: 20_000 })
    fc.assert(fc.property(mutation(seeds), check), { seed: SEED, numRuns: 20_000 })
  })

  for (const mode of CHANNEL_MODES)
    it(`an endpoint fed forged and mutated frames (checksums fixed up) stays up and keeps serving (${mode.name})`, {
      timeout: 120_000,
    }, () => {
      const sim = new Simulation(31, undefined, { insecurePlaintext: mode.insecurePlaintext }, true)
      let rejected = 0
      const delivered = new Map<number, number>()
      let corrupt = 0
      sim.acceptHandlers = (_r, c) => ({
        message: (m) => {
          const id = messageId(m)
          if (m.length < 4 || !Buffer.from(m).equals(patternMessage(id, m.length))) corrupt++
          else delivered.set(id, m.length)
          c.send(Uint8Array.from(m), Delivery.Reliable)
        },
      })
      let echoed = 0
      let reached = 0
      let resets = 0
      // Rounds: (re)connect, exchange messages while capturing, then forge frames from this very
      // connection's traffic so that forgeries reach its state machine, not just the demultiplexer.
      for (let round = 0; round < 10; round++) {
        let up = false
        const a = sim.connect({ message: () => echoed++, established: () => (up = true) })
        assert.ok(
          sim.run(() => up, sim.clock.now + 10_000),
          `round ${round}: connects`,
        )
        const server = [...sim.b.connections()].find((c) => c.remote.port === a.local.port)!
        sim.link.capture!.length = 0
        const before = echoed
        for (let i = 0; i < 4; i++) a.send(patternMessage(round * 10 + i, 3000 * i + 10), (i % 3) as Delivery)
        assert.ok(
          sim.run(() => echoed === before + 4, sim.clock.now + 10_000),
          `round ${round}: echoes`,
        )
        const own = sim.link.capture!.map((c) => c.frame)
        fc.assert(
          fc.property(mutation(own), (frame) => {
            const b = fixChecksums(frame)
            const toServer = frame.length >= 6 && readMac(frame, 0) === MAC_B
            ;(toServer ? sim.b : sim.a).receive(b)
            sim.a.flush()
            sim.b.flush()
          }),
          { seed: SEED + round, numRuns: 500 },
        )
        reached += a.stats.framesReceived + server.stats.framesReceived
        for (const c of [a, server])
          rejected += c.stats.authFailed + c.stats.replayed + c.stats.unsealed + c.stats.badEpoch
        for (const c of [a, server]) {
          assert.ok(c.reassemblyMemory <= 8 * 1024 * 1024 + 4 * 1024 * 1024)
          if (c.closed) {
            assert.ok(c.closeReason === 'reset' || c.closeReason === 'refused', `closed: ${c.closeReason}`)
            resets++
          }
        }
        a.abort()
        sim.run(() => false, sim.clock.now + 100)
      }
      if (mode.insecurePlaintext)
        assert.ok(reached > 2_000, `only ${reached} forged frames reached connections`)
      // Sealed, forgeries stop at verification: counted, never processed.
      else assert.ok(rejected > 2_000, `only ${rejected} forged frames were rejected by verification`)
      assert.equal(corrupt, 0, 'no forged frame produced a corrupt delivery')
      for (let round = 0; round < 10; round++) {
        for (let i = 0; i < 4; i++) assert.equal(delivered.get(round * 10 + i), 3000 * i + 10)
      }
      // After all of it, a fresh connection still works end to end.
      let up = false
      const last = sim.connect({ message: () => echoed++, established: () => (up = true) })
      assert.ok(sim.run(() => up, sim.clock.now + 10_000))
      const before = echoed
      last.send(patternMessage(999, 70_000), Delivery.Reliable)
      assert.ok(sim.run(() => echoed === before + 1, sim.clock.now + 10_000))
      assert.equal(delivered.get(999), 70_000)
      assert.ok(resets < 10, 'forgeries did not reset every connection')
      if (!mode.insecurePlaintext) assert.equal(resets, 0, 'sealed: no forgery resets a connection')
    })
})
