import assert from 'node:assert/strict'
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { readKeyFile, writeKeyFile } from '../../src/auth/key-file.ts'
import { type ExportableState, exportConfig, keyFileName } from '../../src/config/export.ts'
import { loadIohypConfig } from '../../src/config/load.ts'
import { isVrioError } from '../../src/errors.ts'
import { formatIPv4, formatMac } from '../../src/wire/address.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

const BACKINGS = 6

/** Live states as the IOhyp holds them: unique unicast MACs and addresses, disks on existing files. */
function stateArb(dir: string): fc.Arbitrary<ExportableState> {
  const guest = fc.record({
    mac: fc
      .integer({ min: 1, max: 2 ** 40 - 1 })
      // 02:xx:xx:xx:xx:xx, a locally administered unicast MAC.
      .map((n) => formatMac(0x0200_0000_0000 + n)),
    address: fc.integer({ min: 0x0a00_0001, max: 0x0aff_fffe }).map(formatIPv4),
    key: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((k) => Buffer.from(k).toString('hex')),
  })
  return fc
    .uniqueArray(guest, { minLength: 1, maxLength: 5, selector: (g) => g.mac })
    .filter((gs) => new Set(gs.map((g) => g.address)).size === gs.length)
    .chain((guests) =>
      fc.record({
        interface: fc.constantFrom('eth0', 'enp1s0', 'veth-x'),
        address: fc.option(fc.constantFrom('10.0.0.1', '192.168.1.1'), { nil: undefined }),
        guests: fc.constant(guests),
        disks: fc
          .uniqueArray(fc.integer({ min: 0, max: BACKINGS - 1 }), { maxLength: BACKINGS })
          .chain((backings) =>
            fc.tuple(
              ...backings.map((b) =>
                fc.record({
                  name: fc.stringMatching(/^[a-z][a-z0-9._-]{0,10}$/).map((s) => `${s}${b}`),
                  guest: fc.constantFrom(...guests.map((g) => g.mac)),
                  backing: fc.constant(join(dir, `disk${b}.img`)),
                  readOnly: fc.boolean(),
                }),
              ),
            ),
          )
          .filter((ds) => new Set(ds.map((d) => d.name)).size === ds.length),
      }),
    )
    .map((s) => (s.address === undefined ? { ...s, address: undefined } : s) as ExportableState)
}

describe('config export', () => {
  let tmp: TempDir
  before(() => {
    tmp = tempDir('vrio-export-')
    for (let b = 0; b < BACKINGS; b++) writeFileSync(tmp.path(`disk${b}.img`), '')
  })
  after(() => tmp.remove())

  it('round trip: what export writes loads back to the same guests, keys and disks; no key inline', () => {
    let run = 0
    fc.assert(
      fc.property(stateArb(tmp.dir), (state) => {
        const dir = tmp.path(`run${run++}`)
        const configPath = join(dir, 'etc', 'iohyp.yaml')
        const result = exportConfig(state, { keyDir: join(dir, 'keys'), configPath })
        mkdirSync(join(dir, 'etc'))
        for (const g of state.guests) assert.ok(!result.text.includes(g.key), 'a key is inline')
        assert.match(result.text, /keyFile: \.\.\/keys\/guest-/)
        writeFileSync(configPath, result.text)
        const c = loadIohypConfig(configPath)
        assert.equal(c.interface, state.interface)
        assert.equal(c.address, state.address)
        assert.deepEqual(
          c.guests.map((g) => [g.mac, g.address, g.key.toString('hex')]),
          state.guests.map((g) => [g.mac, g.address, g.key]),
        )
        assert.deepEqual(
          c.disks,
          state.disks.map((d) => ({ ...d })),
        )
        for (const f of result.keyFiles) assert.equal(statSync(f).mode & 0o777, 0o600)
      }),
      { numRuns: 40 },
    )
  })

  it('keeps a key file that holds the same key; refuses one with another key unless forced', () => {
    const key = Buffer.alloc(32, 9)
    const state: ExportableState = {
      interface: 'eth0',
      guests: [{ mac: '52:54:00:00:00:01', address: '10.0.0.2', key: key.toString('hex') }],
      disks: [],
    }
    const keyDir = tmp.path('keys-reuse')
    const first = exportConfig(state, { keyDir })
    assert.deepEqual(readdirSync(keyDir), [keyFileName('52:54:00:00:00:01')])
    assert.equal(first.keyFiles[0], join(keyDir, 'guest-52-54-00-00-00-01.key'))
    assert.match(first.text, new RegExp(`keyFile: ${first.keyFiles[0]}`))
    const before = readFileSync(first.keyFiles[0], 'utf8')
    exportConfig(state, { keyDir })
    assert.equal(readFileSync(first.keyFiles[0], 'utf8'), before)

    writeKeyFile(first.keyFiles[0], Buffer.alloc(32, 1), { force: true })
    assert.throws(
      () => exportConfig(state, { keyDir }),
      (e) => isVrioError(e, 'file-exists'),
    )
    exportConfig(state, { keyDir, force: true })
    assert.deepEqual(readKeyFile(first.keyFiles[0]), key)
  })

  it("keeps a disk's encryption (a disk re-declared without it would serve its ciphertext)", () => {
    const keyFile = tmp.path('xts.key')
    writeFileSync(keyFile, Buffer.alloc(64, 3), { mode: 0o600 })
    const encrypt = { kind: 'plain', cipher: 'aes-xts-plain64', keyFile } as const
    const state: ExportableState = {
      interface: 'eth0',
      guests: [{ mac: '52:54:00:00:00:02', address: '10.0.0.3', key: Buffer.alloc(32, 4).toString('hex') }],
      disks: [
        {
          name: 'secret',
          guest: '52:54:00:00:00:02',
          backing: tmp.path('disk0.img'),
          readOnly: false,
          encrypt,
        },
      ],
    }
    const config = tmp.path('enc.yaml')
    writeFileSync(config, exportConfig(state, { keyDir: tmp.path('keys-enc'), configPath: config }).text)
    assert.deepEqual(loadIohypConfig(config).disks[0].encrypt, encrypt)
  })
})
