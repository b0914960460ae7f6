import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { Delivery } from '../../src/transport/config.ts'
import type { CloseReason, Connection } from '../../src/transport/connection.ts'
import type { FaultModel } from '../support/memory-link.ts'
import { messageId, patternMessage } from '../support/random.ts'
import { CHANNEL_MODES } from '../support/harness.ts'
import { Simulation } from '../support/simulation.ts'

/** fast-check seed: fixed so CI is reproducible; set VRIO_FC_SEED to explore others. */
const SEED = Number(process.env.VRIO_FC_SEED ?? 20261124)
const RUNS = Number(process.env.VRIO_FC_RUNS ?? 100)

interface Planned {
  id: number
  size: number
  delivery: Delivery
}

const sizeArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 4, max: 3000 }) },
  { weight: 3, arbitrary: fc.integer({ min: 3000, max: 120_000 }) },
  { weight: 1, arbitrary: fc.integer({ min: 120_000, max: 1_500_000 }) },
)
const deliveryArb = fc.constantFrom<Delivery>(Delivery.Ordered, Delivery.Reliable, Delivery.BestEffort)
const plan = (base: number) =>
  fc
    .array(fc.record({ size: sizeArb, delivery: deliveryArb }), { minLength: 1, maxLength: 30 })
    .map((list) => list.map((m, i) => ({ ...m, id: base + i })))

const faultsArb = fc.record({
  loss: fc.constantFrom(0, 0.02, 0.1),
  duplicate: fc.constantFrom(0, 0.05),
  reorder: fc.constantFrom(0, 0.1, 0.3),
  reorderDelay: fc.constantFrom(0.5, 3),
  corrupt: fc.constantFrom(0, 0.02),
  delay: fc.constantFrom(0.05, 1),
  jitter: fc.constantFrom(0, 0.3),
  gro: fc.constantFrom(0, 0.5),
  mtu: fc.constant(65_535),
})

interface Side {
  connection?: Connection
  received: Map<number, number>
  orderedSeen: number[]
  corrupt: number
  closed?: CloseReason
  pending: Planned[]
}

function newSide(pending: Planned[]): Side {
  return { received: new Map(), orderedSeen: [], corrupt: 0, pending: [...pending] }
}

function onMessage(side: Side, sizes: Map<number, number>) {
  return (data: Uint8Array, delivery: Delivery) => {
    const id = messageId(data)
    const size = sizes.get(id)
    if (size === undefined || size !== data.length || !Buffer.from(data).equals(patternMessage(id, size))) {
      side.corrupt++
      return
    }
    side.received.set(id, (side.received.get(id) ?? 0) + 1)
    if (delivery === Delivery.Ordered) side.orderedSeen.push(id)
  }
}

/** Sends what is pending until the buffer refuses, then closes once everything is queued (if asked). */
function pump(side: Side, closeWhenDone: boolean): void {
  const c = side.connection
  if (!c) return
  while (side.pending.length > 0) {
    const m = side.pending[0]
    if (!c.send(patternMessage(m.id, m.size), m.delivery)) {
      if (m.delivery !== Delivery.BestEffort) return
    }
    side.pending.shift()
  }
  if (closeWhenDone) c.close()
}

function checkDelivery(receiver: Side, sent: Planned[], name: string): void {
  assert.equal(receiver.corrupt, 0, `${name}: corrupt or unknown messages delivered`)
  for (const m of sent) {
    const n = receiver.received.get(m.id) ?? 0
    if (m.delivery === Delivery.BestEffort)
      assert.ok(n <= 1, `${name}: best-effort ${m.id} delivered ${n} times`)
    else assert.equal(n, 1, `${name}: reliable message ${m.id} (${m.size} B) delivered ${n} times`)
  }
  const orderedSent = sent.filter((m) => m.delivery === Delivery.Ordered).map((m) => m.id)
  assert.deepEqual(receiver.orderedSeen, orderedSent, `${name}: ordered messages out of order`)
}

/** One scenario: A and B exchange their planned messages over the faulty link, then close. */
function scenario(
  seed: number,
  faults: FaultModel,
  fromA: Planned[],
  fromB: Planned[],
  mtu: number,
  gsoMaxSize: number,
  insecurePlaintext: boolean,
): void {
  const options = {
    mtu,
    gsoMaxSize,
    receiveBuffer: 4 * 1024 * 1024,
    maxMessageSize: 2 * 1024 * 1024,
    insecurePlaintext,
  }
  const sim = new Simulation(seed, { ...faults, mtu }, options)
  const sizes = new Map<number, number>([...fromA, ...fromB].map((m) => [m.id, m.size]))
  const a = newSide(fromA)
  const b = newSide(fromB)
  let peerClosedAtB = false
  sim.acceptHandlers = (_remote, c) => {
    b.connection = c
    return {
      message: onMessage(b, sizes),
      established: () => pump(b, false),
      writable: () => pump(b, peerClosedAtB),
      peerClosed: () => {
        peerClosedAtB = true
        pump(b, true)
      },
      closed: (r) => (b.closed = r),
    }
  }
  a.connection = sim.connect({
    message: onMessage(a, sizes),
    established: () => pump(a, true),
    writable: () => pump(a, true),
    closed: (r) => (a.closed = r),
  })
  const bound = options.receiveBuffer + options.maxMessageSize
  let maxMemory = 0
  const finished = sim.run(
    () => a.closed !== undefined && b.closed !== undefined,
    3_600_000,
    () => {
      for (const s of [a, b]) if (s.connection) maxMemory = Math.max(maxMemory, s.connection.reassemblyMemory)
    },
  )
  assert.ok(finished, `did not finish: A ${a.connection?.state}, B ${b.connection?.state}`)
  assert.equal(a.closed, 'normal')
  assert.equal(b.closed, 'normal')
  assert.ok(maxMemory <= bound, `reassembly memory ${maxMemory} > ${bound}`)
  checkDelivery(b, fromA, 'A→B')
  checkDelivery(a, fromB, 'B→A')
}

const REPORT = { seed: SEED, numRuns: RUNS, endOnFailure: true, includeErrorInReport: true }

for (const mode of CHANNEL_MODES)
  describe(`transport properties over a faulty link (${mode.name})`, () => {
    it('with 10% loss, 5% duplication, reordering and 2% corruption: reliable messages arrive exactly once and intact, ordered ones in order; best-effort never corrupt; memory bounded; both ends close', () => {
      const harsh: FaultModel = {
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.2,
        reorderDelay: 2,
        corrupt: 0.02,
        delay: 0.1,
        jitter: 0.2,
        gro: 0.3,
        mtu: 65_535,
      }
      fc.assert(
        fc.property(
          fc.integer({ min: 1, max: 2 ** 31 - 1 }),
          plan(0),
          plan(1_000_000),
          fc.constantFrom(1500, 9000),
          fc.constantFrom(0, 65_000),
          (seed, fromA, fromB, mtu, gso) =>
            scenario(seed, harsh, fromA, fromB, mtu, gso, mode.insecurePlaintext),
        ),
        REPORT,
      )
    })

    it('the same holds across a range of fault mixes, MTUs and GSO', () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 1, max: 2 ** 31 - 1 }),
          faultsArb,
          plan(0),
          plan(1_000_000),
          fc.constantFrom(1500, 9000),
          fc.constantFrom(0, 65_000),
          (seed, faults, fromA, fromB, mtu, gso) =>
            scenario(seed, faults, fromA, fromB, mtu, gso, mode.insecurePlaintext),
        ),
        REPORT,
      )
    })
  })
