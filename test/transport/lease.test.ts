import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { it } from 'node:test'
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { type ConnectionLease, LEND, type LeaseReturn } from '../../src/transport/lease.ts'
import { Simulation } from '../support/simulation.ts'

// What a Connection takes back from a fast path (lease.ts), without the addon: a stand-in lease
// hands back the state a fast path would after a long lend.

/**
 * A sealed pair in its traffic epoch, both sides quiet: `c` connected, `server` accepted; what `c`
 * is delivered goes to `got`.
 */
function steadyPair(): {
  sim: Simulation
  c: Connection
  server: Connection
  got: Uint8Array[]
} {
  const sim = new Simulation(11)
  let server: Connection | undefined
  sim.acceptHandlers = (_remote, s) => {
    server = s
    return { message() {} }
  }
  const got: Uint8Array[] = []
  const c = sim.connect({ message: (m) => got.push(Uint8Array.from(m)) })
  assert.ok(sim.run(() => c.state === 'established' && server?.state === 'established'))
  const nonceO = randomBytes(16)
  const nonceL = randomBytes(16)
  server!.installTrafficKeys(nonceO, nonceL)
  c.installTrafficKeys(nonceO, nonceL)
  // A round trip each way: both use their epoch-1 keys.
  c.send(new Uint8Array(64), Delivery.Reliable)
  server!.send(new Uint8Array(64), Delivery.Reliable)
  assert.ok(sim.run(() => sim.quiet()))
  got.length = 0
  return { sim, c, server: server!, got }
}

/** A stand-in lease whose hand back (`back`) is set by the test. */
function standIn(back: (into: LeaseReturn) => void): ConnectionLease {
  return {
    reclaim: (into) => back(into),
    send: () => false,
    framesTaken: 0,
    ackProgress: 0,
    inFlight: 0,
    rttSamples: 0,
    srtt: -1,
    rttvar: 0,
  }
}

it('a lend during which more than 2^31 bytes went each way: the positions it hands back are past them, not 2^32 behind', () => {
  const { c } = steadyPair()
  // A message of its own in flight at the lend (sent, not acknowledged yet).
  assert.equal(c.send(new Uint8Array(100), Delivery.Reliable), true)
  const p = new Float64Array(LEND.disks)
  const bits = new Uint32Array(32)
  let back: ((into: LeaseReturn) => void) | undefined
  const lease: ConnectionLease = {
    reclaim: (into) => back!(into),
    send: () => false,
    framesTaken: 1,
    ackProgress: 1,
    inFlight: 0,
    rttSamples: 0,
    srtt: -1,
    rttvar: 0,
  }
  const keys = c.lendTo(lease, p, bits)
  assert.ok(keys, 'lent')
  // Meanwhile the fast path took 3 GiB of requests and sent 3 GiB of replies, all acknowledged
  // (the message above too) but the last reply's final 5000 bytes.
  const moved = 3 * 2 ** 30
  const last = 6000
  const u32 = (n: number) => n % 2 ** 32
  const sndNxt = u32(p[LEND.sndNxt] + moved)
  back = (into) => {
    into.rcvAdvance = moved
    into.unaAdvance = moved + 100 - 5000
    into.sndNxt = sndNxt
    into.sndMax = sndNxt
    into.ipId = p[LEND.ipId]
    into.txCounter = keys.txCounter + 1000
    into.txBytes = keys.txBytes
    into.rxHighest = keys.rxHighest + 1000
    into.rxBits.fill(0)
    into.sndWnd = p[LEND.sndWnd]
    into.cwnd = p[LEND.cwnd]
    into.wl1 = u32(p[LEND.rcvNxt] + moved)
    into.wl2 = u32(sndNxt - 5000 + 2 ** 32)
    into.framesTaken = 1
    into.ackProgress = 1
    into.rttSamples = 0
    into.srtt = p[LEND.srtt]
    into.rttvar = p[LEND.rttvar]
    into.replySeqs = [u32(sndNxt - last + 2 ** 32)]
    into.replies = [new Uint8Array(last)]
    into.partial = undefined
    into.partialLost = false
  }
  c.takeBack()
  assert.equal(c.lent, false)
  // Acknowledged: the message of before the lend and the reply's first 1000 bytes. What is left
  // is the reply (whole: a message is freed once all of it is acknowledged).
  assert.equal(c.unacknowledged, last, 'the message sent before the lend is acknowledged')
  // And the next message goes out after it (a wrong position would lay it over older ones).
  assert.equal(c.send(new Uint8Array(200), Delivery.Reliable), true)
  assert.equal(c.unacknowledged, last + 200)
})

it('a message partly received goes with the lend (its bytes so far); refused, or handed back unfinished, it is still delivered whole, once', () => {
  const { sim, c, server, got } = steadyPair()
  for (const outcome of ['refused', 'handed back'] as const) {
    // Larger than the initial congestion window: it arrives over several round trips.
    const msg = randomBytes(200_000)
    assert.equal(server.send(msg, Delivery.Reliable), true)
    assert.ok(
      sim.run(() => c.reassemblyMemory > 0),
      'partly received',
    )
    const p = new Float64Array(LEND.disks)
    const bits = new Uint32Array(32)
    let part: Uint8Array | undefined
    const lease = standIn((into) => {
      // The fast path took nothing more: everything as lent, the message's bytes so far back.
      into.rcvAdvance = 0
      into.unaAdvance = 0
      into.sndNxt = into.sndMax = p[LEND.sndNxt]
      into.ipId = p[LEND.ipId]
      into.txCounter = p[LEND.txCounter]
      into.txBytes = p[LEND.txBytes]
      into.rxHighest = p[LEND.rxHighest]
      into.rxBits.set(bits)
      into.sndWnd = p[LEND.sndWnd]
      into.cwnd = p[LEND.cwnd]
      into.wl1 = p[LEND.rcvNxt]
      into.wl2 = p[LEND.sndUna]
      into.framesTaken = 0
      into.ackProgress = 0
      into.rttSamples = 0
      into.srtt = p[LEND.srtt]
      into.rttvar = p[LEND.rttvar]
      into.replySeqs = []
      into.replies = []
      into.partialSeq = p[LEND.partStart]
      into.partialLength = p[LEND.partLength]
      into.partial = part
      into.partialLost = false
    })
    assert.ok(c.lendTo(lease, p, bits), 'lent with a message partly received')
    const filled = p[LEND.partFilled]
    assert.equal(p[LEND.partLength], msg.length)
    assert.ok(filled > 0 && filled < msg.length, `bytes so far: ${filled}`)
    assert.deepEqual(c.lendingPartial, msg.subarray(0, filled))
    if (outcome === 'refused') {
      c.cancelLend()
      assert.equal(c.reassemblyMemory, msg.length, "still the connection's")
    } else {
      // Taken: the message is the fast path's; at the hand back its bytes come back.
      part = Uint8Array.from(c.lendingPartial!)
      c.lendTaken()
      assert.equal(c.reassemblyMemory, 0, 'the fast path holds it')
      c.takeBack()
      assert.equal(c.reassemblyMemory, msg.length, 'reassembled again from what came back')
    }
    assert.ok(
      sim.run(() => got.length === 1),
      'delivered',
    )
    assert.deepEqual(got.pop(), new Uint8Array(msg))
    assert.ok(sim.run(() => sim.quiet()))
  }
})

it('a delayed ACK owed goes with the lend: the fast path sends it; a lend refused leaves it owed', () => {
  const { sim, c, server } = steadyPair()
  // One segment: its ACK is delayed.
  assert.equal(server.send(randomBytes(100), Delivery.Reliable), true)
  assert.ok(
    sim.run(() => c.ackDue !== Number.POSITIVE_INFINITY),
    'an ACK owed',
  )
  const p = new Float64Array(LEND.disks)
  assert.ok(
    c.lendTo(
      standIn(() => {}),
      p,
      new Uint32Array(32),
    ),
    'lent',
  )
  assert.equal(p[LEND.ackOwed], 1, 'the fast path is told')
  c.cancelLend()
  assert.notEqual(c.ackDue, Number.POSITIVE_INFINITY, 'refused: still owed by the connection')
  assert.ok(
    c.lendTo(
      standIn(() => {}),
      p,
      new Uint32Array(32),
    ),
    'lent again',
  )
  c.lendTaken()
  assert.equal(c.ackDue, Number.POSITIVE_INFINITY, 'taken: the fast path sent it')
})
