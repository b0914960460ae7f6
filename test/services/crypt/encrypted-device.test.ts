import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { inspect } from 'node:util'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { MemoryDevice } from '../../../src/devices/blk/memory-device.ts'
import { isVrioError } from '../../../src/errors.ts'
import { EncryptedDevice } from '../../../src/services/crypt/encrypted-device.ts'
import { openEncryption } from '../../../src/services/crypt/open.ts'
import { createXts } from '../../../src/services/crypt/xts.ts'
import { referenceXtsCrypt } from '../../support/reference-xts.ts'
import { type TempDir, tempDir } from '../../control/fixtures.ts'

function key(): Buffer {
  const k = randomBytes(64)
  k[0] = k[32] ^ 1 // halves differ
  return k
}

const MiB = 1024 * 1024

function setup(sectorSize = 512, size = 2 * MiB, payloadOffset = 64 * 1024) {
  const k = key()
  const inner = new MemoryDevice({ size: size + payloadOffset })
  const dev = new EncryptedDevice(inner, { cipher: createXts(k), sectorSize, payloadOffset })
  return { k, inner, dev }
}

describe('EncryptedDevice', () => {
  let tmp: TempDir
  before(() => {
    tmp = tempDir('vrio-crypt-dev-')
  })
  after(() => tmp.remove())

  it('gives read arrays back to the inner device only when that one pools them', async () => {
    const { dev } = setup(512)
    assert.equal(dev.release, undefined, 'a MemoryDevice does not pool: nothing to give back')
    const given: Uint8Array[] = []
    const pooling = Object.assign(new MemoryDevice({ size: MiB }), {
      release: (data: Uint8Array) => given.push(data),
    })
    const over = new EncryptedDevice(pooling, { cipher: createXts(key()) })
    const data = await over.read(0, 4096)
    over.release?.(data)
    assert.deepEqual(given, [data], 'decrypted in place: the inner array goes back')
  })

  it('stores ciphertext at the payload offset (dm-crypt layout) and reads plaintext back', async () => {
    const { k, inner, dev } = setup(512)
    assert.equal(dev.size, 2 * MiB)
    const plain = randomBytes(8192)
    const copy = Buffer.from(plain)
    await dev.write(4096, plain, false)
    assert.deepEqual(plain, copy, "the caller's buffer was changed")
    const stored = await inner.read(64 * 1024 + 4096, 8192)
    assert.deepEqual(Buffer.from(stored), Buffer.from(referenceXtsCrypt(true, k, plain, 8, 512, 1)))
    assert.deepEqual(Buffer.from(await dev.read(4096, 8192)), plain)
  })

  it('a handed-over (transfer) aligned write encrypts in place; an unaligned one leaves it alone', async () => {
    const { k, inner, dev } = setup(512)
    const plain = randomBytes(8192)
    const given = Buffer.from(plain)
    await dev.write(4096, given, false, true)
    const expected = Buffer.from(referenceXtsCrypt(true, k, plain, 8, 512, 1))
    assert.deepEqual(given, expected, 'encrypted in the given buffer')
    assert.deepEqual(Buffer.from(await inner.read(64 * 1024 + 4096, 8192)), expected)
    assert.deepEqual(Buffer.from(await dev.read(4096, 8192)), plain)
    // Unaligned (RMW): served from this device's own buffer, the given one is not needed.
    const part = randomBytes(1000)
    const partCopy = Buffer.from(part)
    await dev.write(4096 + 100, part, false, true)
    assert.deepEqual(part, partCopy)
    const all = Buffer.from(plain)
    partCopy.copy(all, 100)
    assert.deepEqual(Buffer.from(await dev.read(4096, 8192)), all)
  })

  it('random aligned and unaligned writes, zeroes and reads agree with a plain model (fast-check)', async () => {
    for (const sectorSize of [512, 4096]) {
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({
              op: fc.constantFrom('write', 'read', 'zero'),
              offset: fc.integer({ min: 0, max: 64 * 1024 - 1 }),
              length: fc.integer({ min: 0, max: 20000 }),
              aligned: fc.boolean(),
              concurrent: fc.boolean(),
              transfer: fc.boolean(),
            }),
            { minLength: 1, maxLength: 25 },
          ),
          async (ops) => {
            const size = 64 * 1024
            const { dev } = setup(sectorSize, size, 4096)
            const model = Buffer.alloc(size)
            // Starts as the decryption of zeroes, whatever that is: write zeroes first.
            await dev.writeZeroes(0, size, true, false)
            // Writes left in flight together touch disjoint sectors, so any completion order
            // gives the model's result; RMW of neighbouring partial sectors is what is exercised.
            const pending: { start: number; end: number; done: Promise<void> }[] = []
            const settle = async () => {
              await Promise.all(pending.splice(0).map((p) => p.done))
            }
            for (const o of ops) {
              let offset = o.offset
              let length = Math.min(o.length, size - offset)
              if (o.aligned) {
                offset -= offset % sectorSize
                length -= length % sectorSize
              }
              const start = offset - (offset % sectorSize)
              const end = Math.ceil((offset + length) / sectorSize) * sectorSize
              if (o.op === 'write') {
                const data = randomBytes(length)
                if (pending.some((p) => p.start < end && start < p.end)) await settle()
                model.set(data, offset)
                // Handed over (as the block back-end does) or not: the same stored result.
                const done = dev.write(offset, data, false, o.transfer)
                pending.push({ start, end, done })
                if (!o.concurrent) await settle()
              } else {
                await settle()
                if (o.op === 'zero') {
                  model.fill(0, offset, offset + length)
                  await dev.writeZeroes(offset, length, true, false)
                } else {
                  assert.deepEqual(
                    Buffer.from(await dev.read(offset, length)),
                    model.subarray(offset, offset + length),
                  )
                }
              }
            }
            await settle()
            assert.deepEqual(Buffer.from(await dev.read(0, size)), model)
          },
        ),
        { numRuns: 40 },
      )
    }
  })

  it('concurrent unaligned writes into one sector both survive (RMW is serialised)', async () => {
    for (let round = 0; round < 20; round++) {
      const { dev } = setup(4096, 64 * 1024, 0)
      await dev.writeZeroes(0, 8192, false, false)
      const a = Buffer.alloc(100, 0xaa)
      const b = Buffer.alloc(100, 0xbb)
      const c = Buffer.alloc(4096, 0xcc)
      await Promise.all([dev.write(10, a, false), dev.write(3000, b, false), dev.write(4096, c, false)])
      const back = Buffer.from(await dev.read(0, 8192))
      const want = Buffer.alloc(8192)
      want.fill(0xaa, 10, 110)
      want.fill(0xbb, 3000, 3100)
      want.fill(0xcc, 4096, 8192)
      assert.deepEqual(back, want)
    }
    const { dev } = setup(4096, 64 * 1024, 0)
    await dev.write(1, Buffer.alloc(1, 1), false)
    assert.ok(dev.counters().readModifyWrites >= 1)
  })

  it('writeZeroes writes encrypted zeroes (never a pass-through), over many chunks', async () => {
    const { inner, dev } = setup(512, 3 * MiB, 0)
    await dev.write(0, randomBytes(3 * MiB), false)
    await dev.writeZeroes(100, 3 * MiB - 300, true, false)
    const back = Buffer.from(await dev.read(0, 3 * MiB))
    assert.ok(back.subarray(100, 3 * MiB - 200).every((b) => b === 0))
    assert.ok(!back.subarray(0, 100).every((b) => b === 0))
    // On the inner device those zeroes are ciphertext, not zeroes.
    assert.ok(!Buffer.from(await inner.read(4096, 4096)).every((b) => b === 0))
  })

  it('refuses trim by default, passes whole sectors when allowed; propagates read-only', async () => {
    const { dev } = setup()
    assert.equal(dev.canTrim, false)
    await assert.rejects(
      dev.trim(0, 4096),
      (e) => isVrioError(e, 'unsupported') && /which blocks/.test(e.message),
    )
    const inner = new MemoryDevice({ size: MiB, chunkSize: 4096 })
    const trimming = new EncryptedDevice(inner, { cipher: createXts(key()), allowDiscards: true })
    assert.equal(trimming.canTrim, true)
    await trimming.write(0, randomBytes(16384), false)
    await trimming.trim(100, 12000) // only [4096, 8192) is a whole inner chunk within it
    assert.equal(inner.allocatedBytes, 3 * 4096)
    const ro = new EncryptedDevice(new MemoryDevice({ size: MiB, readOnly: true }), {
      cipher: createXts(key()),
    })
    assert.equal(ro.readOnly, true)
    await assert.rejects(ro.write(0, Buffer.alloc(512), false), (e) => isVrioError(e, 'read-only'))
    await assert.rejects(ro.writeZeroes(0, 512, true, false), (e) => isVrioError(e, 'read-only'))
    await assert.rejects(dev.read(2 * MiB, 512), (e) => isVrioError(e, 'out-of-range'))
    assert.ok(dev.counters().errors >= 2)
  })

  it('never shows the key: JSON, info, inspect, errors', async () => {
    const k = key()
    const keyFile = tmp.path('plain.key')
    writeFileSync(keyFile, k, { mode: 0o600 })
    const dev = await openEncryption(new MemoryDevice({ size: MiB }), {
      kind: 'plain',
      cipher: 'aes-xts-plain64',
      keyFile,
    })
    await dev.write(0, Buffer.alloc(4096, 1), false)
    const hex = k.toString('hex')
    const b64 = k.toString('base64')
    const shown = [
      JSON.stringify(dev),
      JSON.stringify(dev.info()),
      inspect(dev, { depth: 10, showHidden: true }),
      JSON.stringify(dev.counters()),
    ]
    const failures: unknown[] = []
    await dev.read(MiB, 1).catch((e) => failures.push(e))
    dev.close()
    await dev.read(0, 512).catch((e) => failures.push(e))
    for (const e of failures) shown.push(String(e), JSON.stringify(e), inspect(e))
    assert.equal(failures.length, 2)
    for (const text of shown) {
      for (const secret of [hex.slice(0, 16), hex.slice(64, 80), b64.slice(0, 12)])
        assert.ok(!text.includes(secret), `key material in: ${text.slice(0, 200)}`)
      assert.ok(!/"?key"?\s*[:=]\s*[<["']/.test(text) || !text.includes(hex.slice(0, 8)))
    }
    assert.match(JSON.stringify(dev), /"format":"plain"/)
    assert.equal(dev.counters().bytesEncrypted, 4096)
  })

  it('plain key files must be raw 32 or 64 bytes; bad ones are refused by path, not content', async () => {
    const bad = tmp.path('bad.key')
    writeFileSync(bad, 'not-a-key-but-a-secret-anyway', { mode: 0o600 })
    await assert.rejects(
      openEncryption(new MemoryDevice({ size: MiB }), {
        kind: 'plain',
        cipher: 'aes-xts-plain64',
        keyFile: bad,
      }),
      (e) => isVrioError(e, 'bad-key') && e.message.includes(bad) && !e.message.includes('secret-anyway'),
    )
    await assert.rejects(
      openEncryption(new MemoryDevice({ size: MiB }), {
        kind: 'plain',
        cipher: 'aes-cbc-essiv:sha256' as 'aes-xts-plain64',
        keyFile: bad,
      }),
      (e) => isVrioError(e, 'unsupported-cipher') && /aes-cbc-essiv:sha256/.test(e.message),
    )
  })
})
