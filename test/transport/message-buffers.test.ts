import assert from 'node:assert/strict'
import { it } from 'node:test'
import { BufferPool, messageBuffers, takeMessageBuffer } from '../../src/transport/message-buffers.ts'

it('reuses a given-back buffer for the next message of its size class, and only then', () => {
  const pool = new BufferPool()
  const a = pool.take(65_600)
  assert.equal(a.length, 65_600)
  a.fill(1)
  const pooled = pool.pooledBytes
  assert.equal(pool.giveBack(a), true, 'its own')
  assert.equal(pool.pooledBytes, pooled + 65_600, 'kept whole')
  // Given back twice (also through a view into it): ignored (a second taker would share memory otherwise).
  assert.equal(pool.giveBack(a), false)
  assert.equal(pool.giveBack(a.subarray(10)), false)
  assert.equal(pool.pooledBytes, pooled + 65_600)
  assert.notEqual(pool.take(70_000).buffer, a.buffer, 'too small for a bigger message')
  const b = pool.take(65_000)
  assert.equal(b.buffer, a.buffer, 'same memory for a message it can hold')
  assert.equal(b.length, 65_000)
  const c = pool.take(65_000)
  assert.notEqual(c.buffer, a.buffer, 'a lent buffer is never handed out twice')
  assert.equal(pool.pooledBytes, pooled)
})

it('ignores buffers that did not come from it, and sizes it does not pool', () => {
  const pool = new BufferPool()
  const pooled = pool.pooledBytes
  assert.equal(pool.giveBack(Buffer.allocUnsafeSlow(65_536)), false)
  assert.equal(pool.giveBack(new Uint8Array(4096)), false)
  const huge = pool.take(40 * 1024 * 1024)
  assert.equal(pool.giveBack(huge), true, 'its own, too big to keep')
  assert.equal(pool.pooledBytes, pooled)
})

it('hands out a slice of the shared slab below its smallest class, never lent', () => {
  const pool = new BufferPool()
  const small = pool.take(4095)
  assert.equal(small.length, 4095)
  assert.ok(small.buffer.byteLength > small.length, 'a slice of a larger (shared) ArrayBuffer')
  assert.equal(pool.giveBack(small), false, 'not one of its loans')
  assert.equal(pool.pooledBytes, 0)
  const four = pool.take(4096)
  assert.equal(four.buffer.byteLength, 4096, 'from 4 KiB on, a buffer of its own')
  assert.equal(pool.giveBack(four), true)
})

it('keeps at most 32 MiB in its free lists', () => {
  const pool = new BufferPool()
  const taken = Array.from({ length: 40 }, () => pool.take(1024 * 1024 + 64))
  for (const t of taken) pool.giveBack(t)
  assert.ok(pool.pooledBytes <= 32 * 1024 * 1024)
  const again = pool.take(1024 * 1024 + 64)
  assert.ok(taken.some((t) => t.buffer === again.buffer))
})

it('takes back only what it lent, not a buffer of another pool', () => {
  const pool = new BufferPool()
  const other = new BufferPool()
  const foreign = other.take(65_536)
  pool.giveBack(foreign)
  assert.equal(pool.pooledBytes, 0)
  assert.notEqual(pool.take(65_536).buffer, foreign.buffer)
  other.giveBack(foreign)
  assert.equal(other.pooledBytes, 65_536)
})

it('lends the transport its buffers from messageBuffers', () => {
  const before = messageBuffers.pooledBytes
  const m = takeMessageBuffer(8192)
  messageBuffers.giveBack(m)
  assert.equal(messageBuffers.pooledBytes, before + 8192)
  assert.equal(messageBuffers.take(8192).buffer, m.buffer)
})

it('a full pool makes room for what comes back: a size no longer used cannot keep it missing', () => {
  const pool = new BufferPool(8 * 1024 * 1024)
  // Full of buffers just too small for the messages that come now (same size class).
  const small = Array.from({ length: 8 }, () => pool.take(1024 * 1024))
  for (const s of small) pool.giveBack(s)
  assert.equal(pool.pooledBytes, 8 * 1024 * 1024)
  const big = pool.take(1024 * 1024 + 64)
  assert.ok(
    small.every((s) => s.buffer !== big.buffer),
    'a buffer too small was lent',
  )
  pool.giveBack(big)
  assert.ok(pool.pooledBytes <= 8 * 1024 * 1024)
  const again = pool.take(1024 * 1024 + 64)
  assert.equal(again.buffer, big.buffer, 'the buffer given back was dropped, the old ones kept')
})

it('finds a buffer big enough under smaller ones of its class', () => {
  const pool = new BufferPool()
  const big = pool.take(1024 * 1024 + 4096)
  const small = pool.take(1024 * 1024)
  pool.giveBack(big)
  pool.giveBack(small) // on top
  const m = pool.take(1024 * 1024 + 100)
  assert.equal(m.buffer, big.buffer)
  assert.equal(pool.take(1024 * 1024).buffer, small.buffer)
})
