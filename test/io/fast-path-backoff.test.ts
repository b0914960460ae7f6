/**
 * The fast path's host backs off connections whose lends come to nothing: one the addon refuses
 * (for instance because a message it is receiving is no WRITE the addon takes) is not offered
 * again after every batch, and a lend that is taken puts it back in line at once.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { FastPathHost } from '../../src/io/fast-path.ts'
import type { FrameChannel } from '../../src/io/frame-channel.ts'
import type { NativeFastPath } from '../../src/io/native.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { LEND } from '../../src/transport/lease.ts'
import { testFastDisk } from '../support/fast-disk.ts'

const disk = testFastDisk(0)

/** A connection that can always be lent and holds a message partly received. */
function connection() {
  const c = {
    lent: false,
    state: 'established',
    remote: { mac: '02:00:00:00:00:01', ip: 1, port: 2 },
    offers: 0,
    cancels: 0,
    lendingPartial: new Uint8Array(100),
    lendTo(_lease: unknown, p: Float64Array) {
      c.offers++
      p[LEND.partLength] = 1000
      return { txKey: new Uint8Array(32), rxKey: new Uint8Array(32) }
    },
    cancelLend() {
      c.cancels++
    },
  }
  return c
}

function host(accept: () => boolean) {
  const calls = { lend: 0 }
  class StandIn implements Partial<NativeFastPath> {
    lend(): boolean {
      calls.lend++
      return accept()
    }
  }
  const channel = { attachFastPath: () => true } as unknown as FrameChannel
  const h = FastPathHost.create(channel, () => [disk], StandIn as never)
  assert.ok(h)
  return { h, calls }
}

describe('fast path host: lends that come to nothing are backed off', () => {
  it('a connection the addon keeps refusing is offered ever more rarely, not after every batch', () => {
    const { h, calls } = host(() => false)
    const c = connection()
    for (let i = 0; i < 40; i++) assert.equal(h.lendIdle([c as unknown as Connection]), false)
    assert.equal(c.cancels, calls.lend, 'every refused lend was undone on the connection')
    assert.ok(calls.lend >= 2, 'never offered')
    assert.ok(calls.lend <= 10, `offered ${calls.lend} times in 40 batches`)
  })

  it('a lend taken is not backed off', () => {
    const { h, calls } = host(() => true)
    const c = Object.assign(connection(), { lendTaken() {} })
    assert.equal(h.lendIdle([c as unknown as Connection]), true)
    assert.equal(calls.lend, 1)
    assert.equal(c.cancels, 0)
  })
})
