/** The daemons' malloc settings (daemon/runtime.ts tuneAllocator, native/malloc_tune.cc). */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD, tuneAllocator } from '../../src/daemon/runtime.ts'
import { native } from '../../src/io/native.ts'

describe("the daemons' malloc settings", () => {
  it('are applied on glibc (this machine), unless turned off or set by the operator', () => {
    assert.equal(tuneAllocator({}), 'tuned')
    assert.equal(tuneAllocator({ VRIO_MALLOC_TUNE: 'off' }), 'off')
    assert.equal(tuneAllocator({ GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=1048576' }), 'operator')
    assert.equal(tuneAllocator({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }), 'tuned')
    assert.equal(tuneAllocator({ MALLOC_MMAP_THRESHOLD_: '262144' }), 'operator')
  })

  it('the addon refuses thresholds glibc would not take, naming the ranges', () => {
    const tune = native().tuneMalloc
    assert.ok(tune, 'the addon has no tuneMalloc: rebuild it')
    assert.equal(tune(MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD), true)
    assert.throws(() => tune(64 * 1024, MALLOC_TRIM_THRESHOLD), /mmapThreshold must be 128 KiB\.\.32 MiB/)
    assert.throws(() => tune(64 * 1024 * 1024, MALLOC_TRIM_THRESHOLD), /mmapThreshold/)
    assert.throws(() => tune(MALLOC_MMAP_THRESHOLD, -1), /trimThreshold 0\.\.1 GiB/)
  })
})
