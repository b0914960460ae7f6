import assert from 'node:assert/strict'
import { it } from 'node:test'
import { Flow, FlowTable, flowKey, newFlowKey } from '../../../src/services/dpi/stream.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { ipv4, mac, tcpFrame } from '../../support/packets.ts'

const A = ipv4('10.0.0.1')
const B = ipv4('10.0.0.2')
const C = ipv4('10.0.1.1')

/** The flow key of a TCP frame from `src`:`sport` to `dst`:`dport`, computed through `out`. */
function keyOf(
  out: ReturnType<typeof newFlowKey>,
  src: Uint8Array,
  sport: number,
  dst: Uint8Array,
  dport: number,
) {
  const frame = tcpFrame({
    dstMac: mac('02:00:00:00:00:02'),
    srcMac: mac('02:00:00:00:00:01'),
    srcIp: src,
    dstIp: dst,
    srcPort: sport,
    dstPort: dport,
    seq: 1,
    payload: new Uint8Array(4),
  })
  const p = newPacket()
  assert.equal(dissectPacket(frame, p), undefined)
  flowKey(frame, p, out)
  return { key: out.key, fromLow: out.fromLow }
}

it('gives both directions of a flow one key, and each flow its own, whatever came just before', () => {
  const out = newFlowKey()
  const ab = keyOf(out, A, 40000, B, 80)
  const ba = keyOf(out, B, 80, A, 40000)
  assert.equal(ba.key, ab.key, 'one key both ways')
  assert.notEqual(ba.fromLow, ab.fromLow, 'opposite directions')
  // Interleaved flows: the key kept for the last packet must not leak into the next flow's.
  const cb = keyOf(out, C, 40000, B, 80)
  const ab2 = keyOf(out, A, 40000, B, 80)
  const ab3 = keyOf(out, A, 40000, B, 80)
  const other = keyOf(out, A, 40001, B, 80)
  assert.notEqual(cb.key, ab.key)
  assert.notEqual(other.key, ab.key, 'another source port')
  assert.deepEqual(ab2, ab)
  assert.deepEqual(ab3, ab, 'the same flow again (the kept key)')
  // A fresh key object agrees with the one that kept its last key.
  assert.deepEqual(keyOf(newFlowKey(), A, 40000, B, 80), ab)
  assert.deepEqual(keyOf(newFlowKey(), B, 80, A, 40000), ba)
})

it('moves a flow to the recent end at most once a second, and still expires and evicts', () => {
  const table = new FlowTable({ maxFlows: 2, idleTimeoutMs: 10_000, closedTimeoutMs: 10_000 })
  const f1 = new Flow(1, 'one', 6, 0, 0)
  const f2 = new Flow(2, 'two', 6, 0, 0)
  table.add(f1)
  table.add(f2)
  // Within the second: seen, but not moved; the oldest touched goes first when the table is full.
  assert.equal(table.get('one', 500), f1)
  assert.equal(f1.lastSeen, 500)
  table.add(new Flow(3, 'three', 6, 600, 0))
  assert.equal(table.get('one', 700), undefined, 'evicted: touched first')
  assert.equal(table.evicted, 1)
  // After a second, a packet moves the flow: the other one is evicted instead.
  assert.equal(table.get('two', 1700), f2)
  table.add(new Flow(4, 'four', 6, 1800, 0))
  assert.equal(table.get('three', 1900), undefined)
  assert.equal(table.get('two', 1900), f2)
  // Idle past the timeout: gone at the next lookup.
  assert.equal(table.get('two', 12_000), undefined)
  assert.equal(table.expired, 1)
})

it('sweeps an idle flow that sits behind one seen since it was last moved', () => {
  const table = new FlowTable({ maxFlows: 8, idleTimeoutMs: 10_000, closedTimeoutMs: 10_000 })
  const x = new Flow(1, 'x', 6, 0, 0)
  const y = new Flow(2, 'y', 6, 500, 0)
  table.add(x)
  table.add(y)
  table.get('x', 900) // seen, not moved: x stays ahead of y in the order
  table.sweep(10_500)
  assert.equal(table.expired, 1, 'y, idle for 10 s, is swept')
  assert.equal(table.size, 1)
  assert.equal(table.get('x', 10_600), x, 'x, seen 9.6 s ago, stays')
})
