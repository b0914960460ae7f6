import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { createDpi } from '../../../src/services/dpi/index.ts'
import { NetServiceChain } from '../../../src/services/net/chain.ts'
import { frame } from '../firewall/frames.ts'

const ALERT = 'alert udp any any -> any 53 (msg:"x"; content:"evil"; sid:1;)\n'
const DROP = 'drop udp any any -> any 53 (msg:"x"; content:"evil"; sid:1;)\n'

/** A datagram to port 53; each source port is a flow of its own. */
const udp = (text: string, sport = 4000) =>
  frame({
    src: '10.0.0.1',
    dst: '10.0.0.2',
    proto: 'udp',
    sport,
    dport: 53,
    payload: Buffer.from(text),
  })

function chainWith(rules: string) {
  const events: Record<string, unknown>[] = []
  const chain = new NetServiceChain((e) => events.push(e))
  const dpi = createDpi(rules, 'test.rules')
  chain.set('dpi', { service: dpi, file: 'test.rules' })
  const packets = () => (dpi.counters() as { packets: number }).packets
  return { chain, dpi, events, packets }
}

describe('NetServiceChain: services that cannot drop run after forwarding', () => {
  it('alert-only DPI: inspect() passes without it, observe() runs it and it alerts', () => {
    const { chain, dpi, events, packets } = chainWith(ALERT)
    assert.equal(dpi.canDrop, false)
    assert.equal(dpi.counters().inline, false)
    assert.equal(chain.observing, true)
    const f = udp('some evil payload')
    assert.equal(
      chain.inspect(f, 'from-guest', () => {}),
      true,
    )
    assert.equal(packets(), 0, 'not inspected on the path')
    assert.equal(events.length, 0)
    chain.observe(f, 'from-guest')
    assert.equal(packets(), 1)
    assert.equal(events.length, 1, 'the alert, raised by observe()')
  })

  it('a DPI with a drop rule stays on the path and drops; observe() does not run it again', () => {
    const { chain, dpi, events, packets } = chainWith(DROP)
    assert.equal(dpi.canDrop, true)
    assert.equal(dpi.counters().inline, true)
    assert.equal(chain.observing, false)
    assert.equal(
      chain.inspect(udp('evil'), 'from-guest', () => {}),
      false,
    )
    assert.equal(
      chain.inspect(udp('fine', 4001), 'from-guest', () => {}),
      true,
    )
    assert.equal(packets(), 2)
    chain.observe(udp('evil', 4002), 'from-guest')
    assert.equal(packets(), 2)
    assert.equal(events.length, 1)
  })

  it('follows rule swaps, and a flow once dropped keeps the DPI on the path', () => {
    const { chain, dpi } = chainWith(ALERT)
    assert.equal(chain.observing, true)
    dpi.replace(DROP, 'test.rules')
    assert.equal(chain.observing, false)
    assert.equal(
      chain.inspect(udp('evil'), 'from-guest', () => {}),
      false,
    )
    dpi.replace(ALERT, 'test.rules')
    assert.equal(dpi.canDrop, true, 'a dropped flow stays dropped: the DPI must still see its frames first')
    assert.equal(
      chain.inspect(udp('fine'), 'from-guest', () => {}),
      false,
      'the dropped flow',
    )
  })

  it("a work budget that drops (budgetExceeded: 'drop') keeps it on the path", () => {
    assert.equal(createDpi(ALERT, 't', { budgetExceeded: 'drop' }).canDrop, true)
    assert.equal(createDpi(ALERT, 't', { budgetExceeded: 'pass' }).canDrop, false)
  })
})
