import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Delivery } from '../../src/transport/config.ts'
import type { CloseReason, Connection } from '../../src/transport/connection.ts'
import { patternMessage } from '../support/random.ts'
import { CHANNEL_MODES } from '../support/harness.ts'
import { Simulation } from '../support/simulation.ts'

for (const { name: mode, insecurePlaintext } of CHANNEL_MODES)
  describe(`connection over a clean in-memory link (${mode})`, () => {
    it('best-effort messages: the caller may reuse its buffers once send returns, whether sent at once or queued', () => {
      const sim = new Simulation(7, noFaults(), { insecurePlaintext })
      const got: Buffer[] = []
      sim.acceptHandlers = () => ({ message: (m) => got.push(Buffer.from(m)) })
      const client = sim.connect({ message() {} })
      // Before the handshake ends: queued, so copied.
      const early = Buffer.alloc(3000, 0xaa)
      assert.ok(client.send([early.subarray(0, 1000), early.subarray(1000)], Delivery.BestEffort))
      early.fill(0xee)
      assert.ok(sim.run(() => client.state === 'established'))
      assert.ok(sim.run(() => got.length === 1))
      // Small enough to go out whole at once; and one far beyond the congestion window.
      const now = Buffer.alloc(1200, 0xbb)
      assert.ok(client.send(now, Delivery.BestEffort))
      now.fill(0xee)
      const big = Buffer.alloc(300_000, 0xcc)
      assert.ok(client.send(big, Delivery.BestEffort))
      big.fill(0xee)
      assert.ok(sim.run(() => got.length === 3))
      assert.deepEqual(
        got.map((m) => [m.length, m.every((b) => b === m[0]) ? m[0] : -1]),
        [
          [3000, 0xaa],
          [1200, 0xbb],
          [300_000, 0xcc],
        ],
      )
    })

    it('reliable messages leave room in the send buffer for best-effort ones (a disk burst does not starve a NIC)', () => {
      const sendBuffer = 4 * 1024 * 1024
      const sim = new Simulation(8, noFaults(), {
        insecurePlaintext,
        sendBuffer,
        maxMessageSize: 1024 * 1024,
      })
      const got: number[] = []
      sim.acceptHandlers = () => ({ message: (m) => got.push(m.length) })
      const client = sim.connect({ message() {} })
      assert.ok(sim.run(() => client.state === 'established'))
      // Reliable messages until the buffer refuses one (nothing is delivered meanwhile: no run).
      let queued = 0
      while (client.send(Buffer.alloc(256 * 1024, 1), Delivery.Reliable)) queued += 256 * 1024
      // They stopped short of the buffer by its reserve (an eighth of 4 MiB here)...
      assert.equal(queued, sendBuffer - sendBuffer / 8)
      assert.equal(client.stats.windowStalls, 1)
      // ...which best-effort messages still get, up to the whole buffer.
      const frames = (sendBuffer / 8 / 1500) | 0
      for (let i = 0; i < frames; i++)
        assert.ok(client.send(Buffer.alloc(1500, 2), Delivery.BestEffort), `frame ${i}`)
      assert.equal(client.send(Buffer.alloc(sendBuffer / 8, 2), Delivery.BestEffort), false)
      assert.equal(client.stats.bestEffortDropped, 1)
      assert.ok(sim.run(() => got.length === queued / (256 * 1024) + frames))
      // A reliable message as large as the buffer allows still goes into an empty queue.
      assert.ok(client.send(Buffer.alloc(1024 * 1024, 3), Delivery.Reliable))
    })

    it('opens with a three-way handshake, carries messages both ways and closes cleanly', () => {
      const sim = new Simulation(1, noFaults(), { insecurePlaintext })
      const atB: Uint8Array[] = []
      const atA: Uint8Array[] = []
      const closed: Record<string, CloseReason> = {}
      let serverSide: Connection | undefined
      sim.acceptHandlers = (_remote, c) => {
        serverSide = c
        return {
          message: (m) => {
            atB.push(Uint8Array.from(m))
            c.send(Uint8Array.from(m).reverse(), Delivery.Ordered)
          },
          peerClosed: () => c.close(),
          closed: (r) => {
            closed.b = r
          },
        }
      }
      let established = false
      const client = sim.connect({
        message: (m) => atA.push(Uint8Array.from(m)),
        established: () => {
          established = true
        },
        closed: (r) => {
          closed.a = r
        },
      })
      assert.ok(sim.run(() => established))
      assert.equal(client.state, 'established')
      const sizes = [1, 100, 1432, 1433, 5000, 65_536, 1_000_000]
      for (const [i, n] of sizes.entries()) assert.ok(client.send(patternMessage(i, n), Delivery.Ordered))
      assert.ok(sim.run(() => atA.length === sizes.length))
      assert.deepEqual(
        atB.map((m) => m.length),
        sizes,
      )
      for (const [i, n] of sizes.entries()) {
        assert.deepEqual(atB[i], patternMessage(i, n))
        assert.deepEqual(atA[i], patternMessage(i, n).reverse())
      }
      client.close()
      assert.ok(sim.run(() => closed.a !== undefined && closed.b !== undefined))
      assert.deepEqual(closed, { a: 'normal', b: 'normal' })
      assert.equal(serverSide?.state, 'closed')
      assert.equal(sim.link.stats.lost, 0)
      assert.equal(client.stats.retransmits, 0)
    })
    it(`refuses a connection with an RST (${insecurePlaintext ? 'stateless' : 'sealed by the connection'})`, () => {
      const sim = new Simulation(2, noFaults(), { insecurePlaintext })
      let reason: CloseReason | undefined
      sim.acceptHandlers = () => undefined // B refuses everyone
      sim.connect({ message() {}, closed: (r) => (reason = r) })
      assert.ok(sim.run(() => reason !== undefined))
      assert.equal(reason, 'refused')
      assert.equal(sim.b.stats.drops.refused, 1)
      assert.equal(sim.b.stats.resetsSent, insecurePlaintext ? 1 : 0)
    })

    it('gives up connecting when nobody answers', () => {
      const sim = new Simulation(3, { ...noFaults(), loss: 1 }, { insecurePlaintext })
      let reason: CloseReason | undefined
      sim.connect({ message() {}, closed: (r) => (reason = r) })
      assert.ok(sim.run(() => reason !== undefined))
      assert.equal(reason, 'connect-timeout')
      assert.ok(sim.clock.now >= 5000 && sim.clock.now < 10_000, `gave up at ${sim.clock.now} ms`)
    })
    it(`detects a restarted peer (${insecurePlaintext ? 'its RST' : 'it sends no RST, keepalives end it'}), and reconnects`, () => {
      const sim = new Simulation(4, noFaults(), { insecurePlaintext })
      let up = 0
      let reason: CloseReason | undefined
      const handlers = {
        message() {},
        established: () => up++,
        closed: (r: CloseReason) => (reason = r),
      }
      sim.connect(handlers)
      assert.ok(sim.run(() => up === 1))
      // B's process dies: its endpoint and every connection vanish without a FIN.
      sim.restartB(99, { insecurePlaintext })
      const client = [...sim.a.connections()][0]
      client.send(new Uint8Array(10), Delivery.Reliable)
      // Plaintext: the restarted B knows no such connection and answers with an RST. Sealed: it
      // stays silent (it could not seal an RST), and unanswered data ends the connection.
      assert.ok(sim.run(() => reason !== undefined))
      assert.equal(reason, insecurePlaintext ? 'reset' : 'dead-peer')
      sim.connect(handlers)
      assert.ok(sim.run(() => up === 2))
      assert.equal(sim.b.stats.connectionsAccepted, 1)
    })

    it('aborts after keepalive probes go unanswered', () => {
      const sim = new Simulation(5, noFaults(), { insecurePlaintext })
      let up = false
      let reason: CloseReason | undefined
      sim.connect({ message() {}, established: () => (up = true), closed: (r) => (reason = r) })
      assert.ok(sim.run(() => up))
      const dropAll = sim.link as unknown as { faults: { loss: number } }
      dropAll.faults = { ...noFaults(), loss: 1 }
      assert.ok(sim.run(() => reason !== undefined))
      assert.equal(reason, 'dead-peer')
    })

    it('never sends beyond the advertised window: a slow consumer slows the sender', () => {
      const receiveBuffer = 256 * 1024
      const sim = new Simulation(6, noFaults(), {
        insecurePlaintext,
        receiveBuffer,
        maxMessageSize: 64 * 1024,
        manualRelease: true,
      })
      let server: Connection | undefined
      let held = 0
      sim.acceptHandlers = (_r, c) => {
        server = c
        return { message: (m) => (held += m.length) }
      }
      let up = false
      const client = sim.connect({ message() {}, established: () => (up = true) })
      assert.ok(sim.run(() => up))
      let sent = 0
      for (let i = 0; i < 64; i++) if (client.send(patternMessage(i, 32 * 1024), Delivery.Reliable)) sent++
      assert.equal(sent, 64)
      sim.run(() => false, sim.clock.now + 2000)
      // The receiver holds exactly one window's worth and the sender waits.
      assert.ok(held <= receiveBuffer, `held ${held}`)
      assert.ok(held >= receiveBuffer - 32 * 1024, `held ${held}`)
      assert.equal(server?.receiveWindow, receiveBuffer - held)
      const heldFirst = held
      server?.release(held)
      let total = 0
      server?.setHandlers({
        message: (m) => {
          total += m.length
          server?.release(m.length)
        },
      })
      assert.ok(sim.run(() => client.unacknowledged === 0))
      assert.equal(heldFirst + total, 64 * 32 * 1024, 'everything arrives once the consumer catches up')
      assert.equal(client.state, 'established')
    })
  })

function noFaults() {
  return {
    loss: 0,
    duplicate: 0,
    reorder: 0,
    reorderDelay: 2,
    corrupt: 0,
    delay: 0.05,
    jitter: 0,
    gro: 0,
    mtu: 65_535,
  }
}
