import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import {
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { FileDevice, INLINE_IO_MAX, sameFile } from '../../src/devices/blk/file-device.ts'
import { type ErrorCode, isVrioError } from '../../src/errors.ts'
import { fallocateAvailable } from '../../src/io/fallocate.ts'
import { seededRandom } from '../support/random.ts'
import { assertBytes, pattern } from './blk-harness.ts'

const KiB = 1024
const MiB = 1024 * KiB

let dir: string
let n = 0
function image(size: number): string {
  const path = join(dir, `disk${n++}.img`)
  writeFileSync(path, '')
  truncateSync(path, size) // sparse: no blocks allocated
  return path
}

const rejectsWith = (p: Promise<unknown>, code: ErrorCode) =>
  assert.rejects(p, (e: unknown) => isVrioError(e, code) || assert.fail(`expected ${code}, got ${String(e)}`))

describe('FileDevice', () => {
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vrio-blk-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('reads, writes (plain and FUA) and flushes a raw image; size from fstat', async () => {
    const path = image(8 * MiB)
    const d = await FileDevice.open(path)
    try {
      assert.equal(d.size, 8 * MiB)
      assert.equal(d.blockSize, 512)
      assert.equal(d.readOnly, false)
      assert.equal(d.isBlockDevice, false)
      assertBytes(await d.read(4096, 16), new Uint8Array(16), 'a fresh sparse image reads zeros')
      const a = pattern(1, 100_000)
      const b = pattern(2, 4096)
      await d.write(12_345, a, false)
      await d.write(3 * MiB, b, true)
      await d.flush()
      assertBytes(await d.read(12_345, a.length), a)
      assertBytes(await d.read(3 * MiB, 4096), b)
      assertBytes(await d.read(12_345 - 5, 10), Buffer.concat([Buffer.alloc(5), a.subarray(0, 5)]))
      assert.equal((await d.read(0, 0)).length, 0)
      assert.equal(d.stats.flushes, 1)
    } finally {
      await d.close()
    }
  })

  it('keeps many requests in flight and stays consistent', async () => {
    const path = image(4 * MiB)
    const d = await FileDevice.open(path)
    const shadow = new Uint8Array(d.size)
    const random = seededRandom(7)
    try {
      // Non-overlapping concurrent writes, then concurrent reads of everything.
      const writes: Promise<void>[] = []
      for (let i = 0; i < 256; i++) {
        const offset = i * 16_384 + Math.floor(random() * 1000)
        const data = pattern(100 + i, 1 + Math.floor(random() * 15_000))
        shadow.set(data, offset)
        writes.push(d.write(offset, data, i % 7 === 0))
      }
      await Promise.all(writes)
      const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => d.read(i * 65_536, 65_536)))
      for (let i = 0; i < 64; i++) assertBytes(reads[i], shadow.subarray(i * 65_536, (i + 1) * 65_536))
    } finally {
      await d.close()
    }
  })

  it('trim punches a hole: the file gives its blocks back and reads zeros', {
    skip: !fallocateAvailable(),
  }, async () => {
    const path = image(16 * MiB)
    const d = await FileDevice.open(path)
    try {
      const empty = statSync(path).blocks
      await d.write(4 * MiB, pattern(3, 2 * MiB), false)
      await d.flush()
      const written = statSync(path).blocks
      assert.ok(written >= empty + (2 * MiB) / 512, `blocks ${empty} -> ${written}`)
      await d.trim(4 * MiB, 2 * MiB)
      assert.equal(statSync(path).blocks, empty, 'sparse again')
      assertBytes(await d.read(4 * MiB, 2 * MiB), new Uint8Array(2 * MiB))
      assert.equal(statSync(path).size, 16 * MiB, 'size kept')
      assert.equal(d.stats.holesPunched, 1)
      assert.equal(d.stats.zeroBytesWritten, 0)
    } finally {
      await d.close()
    }
  })

  it('write-zeroes: may-trim punches, no-trim zeroes in place, neither writes zeros', {
    skip: !fallocateAvailable(),
  }, async () => {
    const path = image(16 * MiB)
    const d = await FileDevice.open(path)
    try {
      assert.equal(d.canWriteZeroes, true)
      const empty = statSync(path).blocks
      await d.write(0, pattern(4, 4 * MiB), false)
      await d.flush()
      await d.writeZeroes(0, 2 * MiB, true, false)
      const afterPunch = statSync(path).blocks
      assert.ok(afterPunch <= empty + (2 * MiB) / 512 + 8, 'the may-trim half is deallocated')
      await d.writeZeroes(2 * MiB + 100, MiB, false, true)
      assertBytes(await d.read(0, 2 * MiB), new Uint8Array(2 * MiB))
      assertBytes(await d.read(2 * MiB + 100, MiB), new Uint8Array(MiB))
      const tail = await d.read(3 * MiB + 100, MiB - 100)
      assertBytes(tail, pattern(4, 4 * MiB).subarray(3 * MiB + 100))
      // Zeroing a range that is a hole already must not allocate it when trimming is allowed.
      const before = statSync(path).blocks
      await d.writeZeroes(8 * MiB, 4 * MiB, true, false)
      assert.equal(statSync(path).blocks, before)
      assert.equal(d.stats.zeroBytesWritten, 0)
      assert.ok(d.stats.rangesZeroed >= 1)
    } finally {
      await d.close()
    }
  })

  it('without fallocate: trim does nothing, write-zeroes writes zeros', async () => {
    const path = image(4 * MiB)
    const d = await FileDevice.open(path, { useFallocate: false })
    try {
      assert.equal(d.canTrim, true)
      assert.equal(d.canWriteZeroes, false)
      await d.write(0, pattern(5, MiB), false)
      await d.trim(0, MiB)
      assertBytes(await d.read(0, MiB), pattern(5, MiB), 'trim is a hint')
      await d.writeZeroes(1000, 5000, true, true)
      assertBytes(await d.read(1000, 5000), new Uint8Array(5000))
      assert.equal(d.stats.zeroBytesWritten, 5000)
    } finally {
      await d.close()
    }
  })

  it('read-only: reads work, every change fails with read-only', async () => {
    const path = image(MiB)
    const w = await FileDevice.open(path)
    await w.write(0, pattern(6, 4096), false)
    await w.close()
    const d = await FileDevice.open(path, { readOnly: true })
    try {
      assert.equal(d.readOnly, true)
      assert.equal(d.canTrim, false)
      assertBytes(await d.read(0, 4096), pattern(6, 4096))
      await rejectsWith(d.write(0, new Uint8Array(512), false), 'read-only')
      await rejectsWith(d.trim(0, 512), 'read-only')
      await rejectsWith(d.writeZeroes(0, 512, true, false), 'read-only')
      await d.flush()
    } finally {
      await d.close()
    }
  })

  it('out-of-range requests fail before touching the file', async () => {
    const path = image(MiB)
    const d = await FileDevice.open(path)
    try {
      await rejectsWith(d.read(MiB - 10, 11), 'out-of-range')
      await rejectsWith(d.read(-1, 1), 'out-of-range')
      await rejectsWith(d.read(0.5, 1), 'out-of-range')
      await rejectsWith(d.write(MiB, new Uint8Array(1), false), 'out-of-range')
      await rejectsWith(d.trim(0, MiB + 1), 'out-of-range')
      await rejectsWith(d.writeZeroes(MiB - 1, 2, true, false), 'out-of-range')
      assert.equal(statSync(path).size, MiB, 'the file did not grow')
      assertBytes(await d.read(MiB - 10, 10), new Uint8Array(10))
    } finally {
      await d.close()
    }
  })

  it('small requests served inline (memory fs, RWF_NOWAIT) give the same bytes as the thread pool', async () => {
    const SIZE = 2 * MiB
    // /dev/shm is tmpfs ('memory': plain read/write on this thread); the test directory is on a
    // disk file system ('nowait': preadv2/pwritev2 RWF_NOWAIT where the kernel supports it).
    assert.equal(statfsSync('/dev/shm').type, 0x01021994, '/dev/shm is tmpfs')
    const shmDir = mkdtempSync('/dev/shm/vrio-blk-')
    const shmPath = join(shmDir, 'disk.img')
    writeFileSync(shmPath, '')
    truncateSync(shmPath, SIZE)
    const devices = {
      memory: await FileDevice.open(shmPath),
      nowait: await FileDevice.open(image(SIZE)),
      pool: await FileDevice.open(image(SIZE), { inlineIo: false }),
    }
    try {
      const op = fc.record({
        write: fc.boolean(),
        offset: fc.integer({ min: 0, max: SIZE - 1 }),
        length: fc.oneof(
          fc.integer({ min: 1, max: 4096 }),
          fc.integer({ min: INLINE_IO_MAX - 2, max: INLINE_IO_MAX + 2 }),
          fc.integer({ min: 1, max: 3 * INLINE_IO_MAX }),
        ),
        seed: fc.nat(),
      })
      const shadow = new Uint8Array(SIZE)
      await fc.assert(
        fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 20 }), async (ops) => {
          for (const o of ops) {
            const length = Math.min(o.length, SIZE - o.offset)
            if (o.write) {
              const data = pattern(o.seed, length)
              shadow.set(data, o.offset)
              await Promise.all(Object.values(devices).map((d) => d.write(o.offset, data, false)))
            } else {
              const expected = shadow.subarray(o.offset, o.offset + length)
              for (const [name, d] of Object.entries(devices))
                assertBytes(await d.read(o.offset, length), expected, name)
            }
          }
        }),
        { numRuns: 40 },
      )
      const s = Object.fromEntries(Object.entries(devices).map(([k, d]) => [k, d.stats]))
      assert.equal(s.pool.inlineReads + s.pool.inlineWrites, 0, 'inlineIo: false uses the pool only')
      assert.ok(s.memory.inlineReads > 0 && s.memory.inlineWrites > 0, 'memory fs: both inline')
      assert.ok(s.memory.inlineReads < s.memory.reads, 'large reads still go to the pool')
      assert.ok(s.nowait.inlineReads > 0, 'page-cached reads: RWF_NOWAIT')
    } finally {
      for (const d of Object.values(devices)) await d.close()
      rmSync(shmDir, { recursive: true, force: true })
    }
  })

  it('open failures say why; a closed device fails requests', async () => {
    await rejectsWith(FileDevice.open(join(dir, 'missing.img')), 'not-found')
    await rejectsWith(FileDevice.open(dir), 'invalid-argument')
    const d = await FileDevice.open(image(MiB))
    const pending = d.write(0, pattern(7, 65_536), false)
    await d.close() // waits for the write in flight
    await pending
    await rejectsWith(d.read(0, 1), 'not-connected')
  })

  it('refuses a path whose last component is a symlink, naming it; a symlinked directory is fine', async () => {
    const target = image(MiB)
    const link = join(dir, `link${n++}.img`)
    symlinkSync(target, link)
    await assert.rejects(
      FileDevice.open(link),
      (e: unknown) => isVrioError(e, 'symlink') && e.message.includes(link) && e.details.path === link,
    )
    await assert.rejects(FileDevice.open(link, { readOnly: true }), (e: unknown) => isVrioError(e, 'symlink'))
    const linkedDir = join(dir, `linkdir${n++}`)
    symlinkSync(dir, linkedDir)
    const viaDir = join(linkedDir, target.slice(dir.length + 1))
    const a = await FileDevice.open(target, { readOnly: true })
    const b = await FileDevice.open(viaDir, { readOnly: true })
    try {
      assert.ok(sameFile(a.identity, b.identity), 'a symlinked directory leads to the same file')
      const st = statSync(target, { bigint: true })
      assert.deepEqual(a.identity, { dev: st.dev, ino: st.ino })
    } finally {
      await a.close()
      await b.close()
    }
  })

  it('a hard link has the same identity; another file does not', async () => {
    const target = image(MiB)
    const hard = join(dir, `hard${n++}.img`)
    linkSync(target, hard)
    const a = await FileDevice.open(target, { readOnly: true })
    const b = await FileDevice.open(hard, { readOnly: true })
    const c = await FileDevice.open(image(MiB), { readOnly: true })
    try {
      assert.ok(sameFile(a.identity, b.identity))
      assert.ok(!sameFile(a.identity, c.identity))
    } finally {
      for (const d of [a, b, c]) await d.close()
    }
  })

  for (const [inlineIo, dsyncDescriptor] of [
    [true, true],
    [false, true],
    [true, false],
  ]) {
    it(`a path swapped after open changes nothing: writes, FUA writes and flushes land in the opened file (inlineIo ${inlineIo}, dsyncDescriptor ${dsyncDescriptor})`, async () => {
      // The backing sits in a directory reached through a symlink, as an operator may well have it.
      const real = join(dir, `real${n++}`)
      const other = join(dir, `other${n++}`)
      mkdirSync(real)
      mkdirSync(other)
      const viaLink = join(dir, `images${n++}`)
      symlinkSync(real, viaLink)
      const path = join(viaLink, 'disk.img')
      writeFileSync(path, Buffer.alloc(MiB))
      const victim = join(other, 'disk.img')
      writeFileSync(victim, Buffer.alloc(MiB, 0x55))
      const d = await FileDevice.open(path, { inlineIo, dsyncDescriptor })
      try {
        // The attacker's two moves: the file itself replaced by a symlink to another tenant's
        // image, and the directory link re-pointed at a directory holding a file of that name.
        renameSync(join(real, 'disk.img'), join(real, 'moved.img'))
        symlinkSync(victim, join(real, 'disk.img'))
        const a = pattern(21, 4096)
        const b = pattern(22, 100_000)
        const c = pattern(23, 512)
        await d.write(0, a, true)
        await d.write(8192, b, false)
        await d.flush()
        rmSync(viaLink)
        symlinkSync(other, viaLink)
        await d.write(200_000, c, true)
        await d.writeZeroes(300_000, 4096, false, true)
        await d.flush()
        const moved = readFileSync(join(real, 'moved.img'))
        assertBytes(moved.subarray(0, 4096), a)
        assertBytes(moved.subarray(8192, 8192 + b.length), b)
        assertBytes(moved.subarray(200_000, 200_512), c)
        assert.ok(readFileSync(victim).equals(Buffer.alloc(MiB, 0x55)), 'the swapped-in file is untouched')
      } finally {
        await d.close()
      }
    })
  }

  it('serves a block device (a loop device): size from the kernel, exclusive, trim and zeroes', async (t) => {
    const path = image(8 * MiB)
    let loop: string
    try {
      loop = execFileSync('losetup', ['-f', '--show', path], { encoding: 'utf8', stdio: 'pipe' }).trim()
    } catch {
      t.skip('no loop devices here (needs root and losetup)')
      return
    }
    try {
      const d = await FileDevice.open(loop)
      try {
        assert.equal(d.isBlockDevice, true)
        assert.equal(d.size, 8 * MiB)
        assert.equal(d.blockSize, 512)
        await rejectsWith(FileDevice.open(loop), 'busy')
        // Another device node of the same device is the same backing.
        const st = statSync(loop, { bigint: true })
        const alias = join(dir, `alias${n++}`)
        execFileSync('mknod', [alias, 'b', String(st.rdev >> 8n), String(st.rdev & 0xffn)])
        const again = await FileDevice.open(alias, { readOnly: true, exclusive: false })
        assert.ok(sameFile(d.identity, again.identity), 'two nodes of one block device')
        await again.close()
        const data = pattern(9, 64 * KiB)
        await d.write(MiB, data, true)
        assertBytes(await d.read(MiB, data.length), data)
        // Unaligned edges are written, the aligned middle zeroed by the kernel.
        await d.writeZeroes(MiB + 100, 10_000, true, true)
        const back = await d.read(MiB, data.length)
        assertBytes(back.subarray(0, 100), data.subarray(0, 100))
        assertBytes(back.subarray(100, 10_100), new Uint8Array(10_000))
        assertBytes(back.subarray(10_100), data.subarray(10_100))
        await d.trim(MiB, 64 * KiB)
        await rejectsWith(d.read(8 * MiB, 1), 'out-of-range')
      } finally {
        await d.close()
      }
    } finally {
      execFileSync('losetup', ['-d', loop])
    }
  })
})
