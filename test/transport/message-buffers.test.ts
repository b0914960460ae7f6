import assert from 'node:assert/strict'
import { it } from 'node:test'
import {
  pooledMessageBytes,
  recycleMessageBuffer,
  takeMessageBuffer,
} from '../../src/transport/message-buffers.ts'

it('reuses a given-back buffer for the next message of its size class, and only then', () => {
  const a = takeMessageBuffer(65_600)
  assert.equal(a.length, 65_600)
  a.fill(1)
  const pooled = pooledMessageBytes()
  recycleMessageBuffer(a)
  assert.equal(pooledMessageBytes(), pooled + 65_600, 'kept whole')
  // Given back twice (also through a view into it): ignored (a second taker would share memory otherwise).
  recycleMessageBuffer(a)
  recycleMessageBuffer(a.subarray(10))
  assert.equal(pooledMessageBytes(), pooled + 65_600)
  assert.notEqual(takeMessageBuffer(70_000).buffer, a.buffer, 'too small for a bigger message')
  const b = takeMessageBuffer(65_000)
  assert.equal(b.buffer, a.buffer, 'same memory for a message it can hold')
  assert.equal(b.length, 65_000)
  const c = takeMessageBuffer(65_000)
  assert.notEqual(c.buffer, a.buffer, 'a lent buffer is never handed out twice')
  assert.equal(pooledMessageBytes(), pooled)
})

it('ignores buffers that did not come from it, and sizes it does not pool', () => {
  const pooled = pooledMessageBytes()
  recycleMessageBuffer(Buffer.allocUnsafeSlow(65_536))
  recycleMessageBuffer(new Uint8Array(4096))
  const huge = takeMessageBuffer(40 * 1024 * 1024)
  recycleMessageBuffer(huge)
  assert.equal(pooledMessageBytes(), pooled)
})

it('keeps at most 32 MiB in its free lists', () => {
  const taken = Array.from({ length: 40 }, () => takeMessageBuffer(1024 * 1024 + 64))
  for (const t of taken) recycleMessageBuffer(t)
  assert.ok(pooledMessageBytes() <= 32 * 1024 * 1024)
  const again = takeMessageBuffer(1024 * 1024 + 64)
  assert.ok(taken.some((t) => t.buffer === again.buffer))
})
