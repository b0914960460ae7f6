import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { blockDeviceInfo } from '../../src/devices/blk/device.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import { type ErrorCode, isVrioError } from '../../src/errors.ts'

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (e: unknown) => isVrioError(e, code))
}

const pattern = (n: number, seed: number) => {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff
  return b
}

describe('MemoryDevice', () => {
  it('reads zeroes from holes and allocates nothing for them', async () => {
    const d = new MemoryDevice({ size: 1 << 20, chunkSize: 4096 })
    assert.deepEqual(await d.read(1000, 5000), Buffer.alloc(5000))
    assert.equal(d.allocatedBytes, 0)
  })

  it('writes and reads back across chunk boundaries, allocating only touched chunks', async () => {
    const d = new MemoryDevice({ size: 1 << 20, chunkSize: 4096 })
    const data = pattern(10_000, 7)
    await d.write(3000, data, false)
    assert.equal(d.allocatedBytes, 4 * 4096)
    assert.deepEqual(await d.read(3000, 10_000), data)
    const around = await d.read(0, 16_384)
    assert.deepEqual(around.subarray(0, 3000), Buffer.alloc(3000))
    assert.deepEqual(around.subarray(3000, 13_000), data)
    assert.deepEqual(around.subarray(13_000), Buffer.alloc(16_384 - 13_000))
  })

  it('keeps no reference to the caller’s buffer and hands out its own copies', async () => {
    const d = new MemoryDevice({ size: 65536 })
    const data = pattern(512, 1)
    await d.write(0, data, true)
    data.fill(0)
    const read = await d.read(0, 512)
    assert.deepEqual(read, pattern(512, 1))
    read.fill(9)
    assert.deepEqual(await d.read(0, 512), pattern(512, 1))
  })

  it('trim frees whole chunks and zeroes partial ones', async () => {
    const d = new MemoryDevice({ size: 1 << 20, chunkSize: 4096 })
    await d.write(0, pattern(16_384, 3), false)
    await d.trim(2048, 8192)
    assert.equal(d.allocatedBytes, 3 * 4096, 'chunk 1 is freed, chunks 0 and 2 are kept')
    const r = await d.read(0, 16_384)
    assert.deepEqual(r.subarray(0, 2048), pattern(16_384, 3).subarray(0, 2048))
    assert.deepEqual(r.subarray(2048, 10_240), Buffer.alloc(8192))
    assert.deepEqual(r.subarray(10_240), pattern(16_384, 3).subarray(10_240))
  })

  it('write-zeroes: may trim, or keep the range provisioned (NO_HOLE)', async () => {
    const d = new MemoryDevice({ size: 1 << 20, chunkSize: 4096 })
    await d.write(0, pattern(8192, 5), false)
    await d.writeZeroes(0, 8192, true, false)
    assert.equal(d.allocatedBytes, 0)
    await d.writeZeroes(0, 8192, false, false)
    assert.equal(d.allocatedBytes, 8192)
    assert.deepEqual(await d.read(0, 8192), Buffer.alloc(8192))
  })

  it('refuses out-of-range and malformed requests with out-of-range', async () => {
    const d = new MemoryDevice({ size: 8192 })
    await rejectsWith(d.read(8192, 1), 'out-of-range')
    await rejectsWith(d.read(-1, 1), 'out-of-range')
    await rejectsWith(d.read(0.5, 1), 'out-of-range')
    await rejectsWith(d.write(4096, Buffer.alloc(8192), false), 'out-of-range')
    await rejectsWith(d.trim(0, 8193), 'out-of-range')
    await rejectsWith(d.writeZeroes(8000, 512, true, false), 'out-of-range')
    assert.equal((await d.read(8192, 0)).length, 0)
  })

  it('read-only devices refuse every change', async () => {
    const d = new MemoryDevice({ size: 8192, readOnly: true })
    await rejectsWith(d.write(0, Buffer.alloc(512), false), 'read-only')
    await rejectsWith(d.trim(0, 512), 'read-only')
    await rejectsWith(d.writeZeroes(0, 512, false, false), 'read-only')
    await d.flush()
  })

  it('no-space: refuses a write that needs more memory than allowed, before changing anything', async () => {
    const d = new MemoryDevice({ size: 1 << 20, chunkSize: 4096, maxAllocatedBytes: 8192 })
    await d.write(0, pattern(4096, 1), false)
    await rejectsWith(d.write(4096, pattern(8192, 2), false), 'no-space')
    assert.equal(d.allocatedBytes, 4096)
    assert.deepEqual(await d.read(4096, 8192), Buffer.alloc(8192))
    await rejectsWith(d.writeZeroes(8192, 8192, false, false), 'no-space')
    await d.writeZeroes(8192, 8192, true, false)
  })

  it('capabilities can be switched off and then fail with unsupported', async () => {
    const d = new MemoryDevice({
      size: 8192,
      canFlush: false,
      canTrim: false,
      canWriteZeroes: false,
      canFua: false,
    })
    await rejectsWith(d.flush(), 'unsupported')
    await rejectsWith(d.trim(0, 512), 'unsupported')
    await rejectsWith(d.writeZeroes(0, 512, true, false), 'unsupported')
    assert.deepEqual(blockDeviceInfo(d), {
      size: 8192,
      blockSize: 512,
      readOnly: false,
      canFlush: false,
      canFua: false,
      canTrim: false,
      canWriteZeroes: false,
    })
  })

  it('validates its options', () => {
    assert.throws(() => new MemoryDevice({ size: -1 }), RangeError)
    assert.throws(() => new MemoryDevice({ size: 1024, blockSize: 1000 }), RangeError)
    assert.throws(() => new MemoryDevice({ size: 1024, chunkSize: 3000 }), RangeError)
    assert.equal(new MemoryDevice({ size: 4096, blockSize: 4096 }).blockSize, 4096)
  })
})
