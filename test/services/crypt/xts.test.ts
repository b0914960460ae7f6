import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync, truncateSync, writeFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { FileDevice } from '../../../src/devices/blk/file-device.ts'
import { isVrioError } from '../../../src/errors.ts'
import { EncryptedDevice } from '../../../src/services/crypt/encrypted-device.ts'
import { createXts, tweakOf } from '../../../src/services/crypt/xts.ts'
import { referenceXtsCrypt } from '../../support/reference-xts.ts'
import { type TempDir, tempDir } from '../../control/fixtures.ts'

/** Debian's python3 (with python3-cryptography), not whatever python3 comes first in PATH. */
const PYTHON = '/usr/bin/python3'

/** An independent aes-xts-plain64 decryptor: python3-cryptography, one XTS call per sector. */
const PY_DECRYPT = `
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, keyfile, offset, length, sector, step, first, out = sys.argv[1:]
offset, length, sector, step, first = map(int, (offset, length, sector, step, first))
key = open(keyfile, 'rb').read()
data = open(img, 'rb').read()[offset:offset + length]
res = bytearray()
for i in range(0, len(data), sector):
    tweak = (first + (i // sector) * step).to_bytes(16, 'little')
    d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
    res += d.update(data[i:i + sector]) + d.finalize()
open(out, 'wb').write(res)
`

function key(bytes: 32 | 64): Buffer {
  for (;;) {
    const k = randomBytes(bytes)
    if (!k.subarray(0, bytes / 2).equals(k.subarray(bytes / 2))) return k
  }
}

describe('aes-xts-plain64', () => {
  let tmp: TempDir
  before(() => {
    tmp = tempDir('vrio-xts-')
  })
  after(() => tmp.remove())

  it('matches IEEE 1619 vector 4 (tweak 0, AES-128-XTS) in both implementations', () => {
    // IEEE P1619/D16 annex B, vector 4: key1 = 2718..., key2 = 3141..., data unit 0, 512 bytes 00..ff x2.
    const k = Buffer.from('27182818284590452353602874713526' + '31415926535897932384626433832795', 'hex')
    const plain = Buffer.alloc(512)
    for (let i = 0; i < 512; i++) plain[i] = i & 0xff
    const expectStart = '27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c'
    for (const impl of ['native', 'js'] as const) {
      const out = Buffer.alloc(512)
      createXts(k, impl).crypt(true, plain, out, 0, 512, 1)
      assert.equal(out.subarray(0, 32).toString('hex'), expectStart, impl)
    }
  })

  it('fast paths equal the per-sector reference (fast-check: keys, sizes, tweaks, both directions)', () => {
    const native = new Map<string, ReturnType<typeof createXts>>()
    fc.assert(
      fc.property(
        fc.constantFrom(32 as const, 64 as const),
        // The native core has two paths (sectors under 4 KiB: tweaks by hand around AES-ECB, 16 KiB
        // and four sectors at a time, 16- or 32-byte registers by sector size; 4 KiB and up: OpenSSL
        // XTS per sector): sizes and counts cross the chunk and group edges of both.
        fc.constantFrom(512, 4096, 512, 4096, 16, 48, 1024, 2048, 8192, 65536),
        fc.integer({ min: 0, max: 70 }),
        fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.constant(2 ** 32 - 1), fc.constant(2 ** 40 + 7)),
        fc.constantFrom(1, 8),
        fc.boolean(),
        (keyBytes, sectorSize, count, first, step, encrypt) => {
          const k = key(keyBytes)
          const sectors = Math.min(count, Math.floor((256 * 1024) / sectorSize))
          const src = randomBytes(sectorSize * sectors)
          const expected = referenceXtsCrypt(encrypt, k, src, first, sectorSize, step)
          for (const impl of ['native', 'js'] as const) {
            const x = createXts(k, impl)
            native.set(impl, x)
            const dst = Buffer.alloc(src.length)
            x.crypt(encrypt, src, dst, first, sectorSize, step)
            assert.deepEqual(dst, Buffer.from(expected), `${impl} differs`)
            // In place gives the same.
            const inPlace = Buffer.from(src)
            x.crypt(encrypt, inPlace, inPlace, first, sectorSize, step)
            assert.deepEqual(inPlace, dst)
            // Buffers at odd offsets (subarrays of received frames) give the same too.
            const oddSrc = Buffer.concat([Buffer.alloc(1), src]).subarray(1)
            const oddDst = Buffer.alloc(src.length + 3).subarray(3)
            x.crypt(encrypt, oddSrc, oddDst, first, sectorSize, step)
            assert.deepEqual(oddDst, dst)
          }
        },
      ),
      { numRuns: 120 },
    )
  })

  it('dst is src itself or does not overlap it (both implementations)', () => {
    const k = key(64)
    for (const impl of ['native', 'js'] as const) {
      const x = createXts(k, impl)
      const buf = randomBytes(2048)
      const plain = Buffer.from(buf.subarray(0, 1024))
      assert.throws(
        () => x.crypt(true, buf.subarray(0, 1024), buf.subarray(512, 1536), 0, 512, 1),
        (e) => e instanceof Error && /overlap/.test(e.message),
        impl,
      )
      assert.deepEqual(buf.subarray(0, 1024), plain, `${impl}: nothing written when refused`)
      // Adjacent ranges of one buffer are fine.
      x.crypt(true, buf.subarray(0, 1024), buf.subarray(1024, 2048), 7, 512, 1)
      assert.deepEqual(
        buf.subarray(1024, 2048),
        Buffer.from(referenceXtsCrypt(true, k, plain, 7, 512, 1)),
        impl,
      )
    }
  })

  it('refuses bad keys without showing them', () => {
    const equal = Buffer.concat([Buffer.alloc(32, 7), Buffer.alloc(32, 7)])
    for (const k of [Buffer.alloc(16, 1), Buffer.alloc(48, 1), equal])
      assert.throws(
        () => createXts(k),
        (e) =>
          isVrioError(e, 'bad-key') && !e.message.includes('0707') && !JSON.stringify(e).includes('0707'),
      )
  })

  it('follows the dm-crypt IV rule: 512-byte units unless iv_large_sectors', () => {
    assert.deepEqual(tweakOf({ sectorSize: 4096, ivLargeSectors: false, ivOffset: 0 }, 8192), {
      first: 16,
      step: 8,
    })
    assert.deepEqual(tweakOf({ sectorSize: 4096, ivLargeSectors: true, ivOffset: 0 }, 8192), {
      first: 2,
      step: 1,
    })
    assert.deepEqual(tweakOf({ sectorSize: 512, ivLargeSectors: false, ivOffset: 10 }, 1024), {
      first: 12,
      step: 1,
    })
    assert.deepEqual(tweakOf({ sectorSize: 4096, ivLargeSectors: true, ivOffset: 16 }, 4096), {
      first: 3,
      step: 1,
    })
  })

  for (const [sectorSize, ivLargeSectors] of [
    [512, false],
    [4096, false],
    [4096, true],
  ] as const) {
    it(`python3-cryptography decrypts a vrio-written image (${sectorSize}-byte sectors${ivLargeSectors ? ', iv_large_sectors' : ''}, payload offset 1 MiB)`, async () => {
      const k = key(64)
      const keyFile = tmp.path(`key-${sectorSize}-${ivLargeSectors}`)
      writeFileSync(keyFile, k)
      const img = tmp.path(`img-${sectorSize}-${ivLargeSectors}`)
      writeFileSync(img, '')
      truncateSync(img, 3 * 1024 * 1024)
      const file = await FileDevice.open(img)
      const payloadOffset = 1024 * 1024
      const dev = new EncryptedDevice(file, {
        cipher: createXts(k),
        payloadOffset,
        sectorSize,
        ivLargeSectors,
      })
      const plain = randomBytes(2 * 1024 * 1024)
      await dev.write(0, plain.subarray(0, 1024 * 1024), false)
      await dev.write(1024 * 1024, plain.subarray(1024 * 1024), false)
      await dev.flush()
      await file.close()
      // Ciphertext on disk, not plaintext.
      const onDisk = readFileSync(img).subarray(payloadOffset)
      assert.notDeepEqual(onDisk.subarray(0, 4096), plain.subarray(0, 4096))
      const out = tmp.path(`out-${sectorSize}-${ivLargeSectors}`)
      // dm-crypt: tweaks count 512-byte units unless iv_large_sectors (stated here, not derived).
      const first = 0
      const step = ivLargeSectors ? 1 : sectorSize / 512
      execFileSync(PYTHON, [
        '-c',
        PY_DECRYPT,
        img,
        keyFile,
        String(payloadOffset),
        String(plain.length),
        String(sectorSize),
        String(step),
        String(first),
        out,
      ])
      const decrypted = readFileSync(out)
      assert.equal(
        createHash('sha256').update(decrypted).digest('hex'),
        createHash('sha256').update(plain).digest('hex'),
      )
    })
  }
})
