/** Hostile and damaged LUKS headers: a VrioError every time, never a crash, a hang or a huge allocation. */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { MemoryDevice } from '../../../src/devices/blk/memory-device.ts'
import { isVrioError } from '../../../src/errors.ts'
import { formatLuks, readLuksHeader, unlockLuks } from '../../../src/services/crypt/luks.ts'

const MiB = 1024 * 1024
const PASS = Buffer.from('pass')

async function formatted(type: 'luks1' | 'luks2'): Promise<Buffer> {
  const dev = new MemoryDevice({ size: (type === 'luks1' ? 3 : 17) * MiB })
  await formatLuks(dev, { type, pbkdf: 'pbkdf2', passphrase: PASS, iterations: 1000 })
  return Buffer.from(await dev.read(0, dev.size))
}

function deviceWith(bytes: Uint8Array): MemoryDevice {
  const dev = new MemoryDevice({ size: Math.ceil(Math.max(bytes.length, 1) / 512) * 512 })
  if (bytes.length > 0) void dev.write(0, bytes, false)
  return dev
}

/** Reads (and, when that succeeds, tries to unlock) a header: only VrioErrors may come out. */
async function probe(bytes: Uint8Array, unlock: boolean): Promise<void> {
  const dev = deviceWith(bytes)
  try {
    const header = await readLuksHeader(dev)
    if (unlock) await unlockLuks(dev, header, PASS)
  } catch (error) {
    if (!isVrioError(error)) throw new Error(`not a VrioError: ${String(error)}`)
  }
}

// biome-ignore lint/suspicious/noExplicitAny: the tests reach into arbitrary LUKS2 JSON
type AnyJson = Record<string, any>

/** Rewrites a LUKS2 copy's JSON and fixes its checksum, so the hostile JSON gets parsed. */
function withJson(image: Buffer, mutate: (json: AnyJson) => void): Buffer {
  const out = Buffer.from(image)
  for (const at of [0, 16384]) {
    const area = out.subarray(at, at + 16384)
    const text = area.subarray(4096).toString('utf8').replace(/\0+$/, '')
    const json = JSON.parse(text)
    mutate(json)
    area.fill(0, 4096)
    area.write(JSON.stringify(json), 4096, 'utf8')
    area.fill(0, 448, 512)
    const h = createHash('sha256')
    h.update(area.subarray(0, 448))
    h.update(Buffer.alloc(64))
    h.update(area.subarray(512))
    h.digest().copy(area, 448)
  }
  return out
}

describe('hostile LUKS headers', () => {
  it('truncated headers of every length give VrioErrors', async () => {
    for (const type of ['luks1', 'luks2'] as const) {
      const image = await formatted(type)
      for (const n of [0, 5, 8, 100, 591, 592, 4095, 4096, 8192, 16383, 16384, 20000, 32768, 40000, 300000]) {
        await probe(image.subarray(0, n), true)
      }
    }
  })

  it('random byte flips in the header area (fast-check) give VrioErrors or a header', async () => {
    for (const type of ['luks1', 'luks2'] as const) {
      const image = await formatted(type)
      const span = type === 'luks1' ? 592 : 4096 + 1024
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({ at: fc.integer({ min: 0, max: span - 1 }), value: fc.integer({ min: 0, max: 255 }) }),
            {
              minLength: 1,
              maxLength: 8,
            },
          ),
          async (flips) => {
            const copy = Buffer.from(image.subarray(0, 64 * 1024))
            for (const f of flips) copy[f.at] = f.value
            // Parsing only: a flipped iteration count could legitimately ask for hours of PBKDF2.
            await probe(copy, false)
          },
        ),
        { numRuns: 150 },
      )
    }
  })

  it('hostile LUKS2 JSON (checksums fixed) gives clear VrioErrors', async () => {
    const image = await formatted('luks2')
    const cases: [string, (j: AnyJson) => void, RegExp][] = [
      ['no segments', (j) => (j.segments = {}), /0 segments/],
      ['two segments', (j) => (j.segments['1'] = j.segments['0']), /2 segments/],
      [
        'other cipher',
        (j) => (j.segments['0'].encryption = 'serpent-cbc-essiv:sha256'),
        /serpent-cbc-essiv:sha256/,
      ],
      ['odd sector size', (j) => (j.segments['0'].sector_size = 1024), /sector size 1024/],
      ['offset not a string', (j) => (j.segments['0'].offset = 16777216), /segment.offset/],
      ['huge offset', (j) => (j.segments['0'].offset = '99999999999999999'), /offset/],
      ['area outside', (j) => (j.keyslots['0'].area.offset = '16777000'), /outside the keyslots area/],
      ['huge stripes', (j) => (j.keyslots['0'].af.stripes = 2 ** 31), /does not fit/],
      [
        'argon2 4 TiB',
        (j) =>
          (j.keyslots['0'].kdf = {
            type: 'argon2id',
            time: 4,
            memory: 2 ** 32 - 1,
            cpus: 1,
            salt: 'AAAAAAAAAAA=',
          }),
        /out of range/,
      ],
      ['unknown kdf', (j) => (j.keyslots['0'].kdf.type = 'scrypt'), /scrypt/],
      [
        'requirements',
        (j) => (j.config.requirements = { mandatory: ['online-reencrypt-v2'] }),
        /requirements/,
      ],
      ['no digests', (j) => (j.digests = {}), /no LUKS2 digest/],
      ['wrong json_size', (j) => (j.config.json_size = '4096'), /json_size/],
      ['bad base64', (j) => (j.digests['0'].salt = '***'), /base64/],
    ]
    for (const [name, mutate, message] of cases) {
      const dev = deviceWith(withJson(image, mutate))
      await assert.rejects(
        (async () => unlockLuks(dev, await readLuksHeader(dev), PASS))(),
        (e) => isVrioError(e) && message.test(e.message),
        name,
      )
    }
  })

  it('a LUKS2 volume with a damaged primary header opens from the secondary copy', async () => {
    const image = await formatted('luks2')
    image[4096 + 10] ^= 0xff // JSON byte: primary checksum fails
    const dev = deviceWith(image)
    const header = await readLuksHeader(dev)
    assert.deepEqual(header.copies, { primary: false, secondary: true })
    const key = await unlockLuks(dev, header, PASS)
    assert.equal(key.length, 64)
    image.fill(0, 0, 4096) // and with the primary magic gone entirely
    const dev2 = deviceWith(image)
    assert.equal((await readLuksHeader(dev2)).version, 2)
    image.fill(0, 16384, 20480) // both gone
    await assert.rejects(readLuksHeader(deviceWith(image)), (e) => isVrioError(e, 'not-luks'))
  })

  it('LUKS1 with a foreign cipher or hash is refused by name', async () => {
    const image = await formatted('luks1')
    const cbc = Buffer.from(image)
    cbc.fill(0, 40, 72)
    cbc.write('cbc-essiv:sha256', 40)
    await assert.rejects(
      readLuksHeader(deviceWith(cbc)),
      (e) => isVrioError(e, 'unsupported-cipher') && /aes-cbc-essiv:sha256/.test(e.message),
    )
    const rmd = Buffer.from(image)
    rmd.fill(0, 72, 104)
    rmd.write('whirlpool', 72)
    await assert.rejects(
      readLuksHeader(deviceWith(rmd)),
      (e) => isVrioError(e, 'unsupported-hash') && /whirlpool/.test(e.message),
    )
  })
})
