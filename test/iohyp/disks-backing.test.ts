/**
 * The IOhyp's disk registry and its backing files: one file (device and inode, whatever path leads
 * to it) backs one writable disk, at create, restore and declare alike. Real files in a temporary
 * directory; the guest is a stub that accepts every disk.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before, describe, it } from 'node:test'
import type { Logger } from '../../src/daemon/log.ts'
import { isVrioError } from '../../src/errors.ts'
import { FileDevice } from '../../src/devices/blk/file-device.ts'
import type { DeviceGuest as DiskGuest } from '../../src/devices/kind.ts'
import { type DiskState, IohypDisks } from '../../src/iohyp/disks.ts'
import { formatLuks } from '../../src/services/crypt/luks.ts'
import type { Rpc } from '../../src/session/rpc.ts'
import type { Session } from '../../src/session/session.ts'
import { formatMac } from '../../src/wire/address.ts'

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} }
const MAC = 0x5254_0000_0001
const guest: DiskGuest = {
  mac: MAC,
  session: { authenticated: true, sendData: () => true } as unknown as Session,
  rpc: { call: async () => ({ nbd: 'nbd+unix:///x?socket=/run/x.sock' }) } as unknown as Rpc,
}
const macOf = (text: string) => (text === formatMac(MAC) ? MAC : undefined)

let dir: string
let n = 0
let registries: IohypDisks[] = []

function image(size = 1024 * 1024): string {
  const path = join(dir, `disk${n++}.img`)
  writeFileSync(path, '')
  truncateSync(path, size)
  return path
}

function registry(): IohypDisks {
  const r = new IohypDisks(quiet)
  registries.push(r)
  return r
}

/** A second path to `path`: a hard link, or the same name through a symlinked directory. */
function otherPath(path: string, how: 'hard link' | 'symlinked directory'): string {
  if (how === 'hard link') {
    const p = join(dir, `hard${n++}.img`)
    linkSync(path, p)
    return p
  }
  const d = join(dir, `via${n++}`)
  symlinkSync(dir, d)
  return join(d, path.slice(dir.length + 1))
}

const conflict = (e: unknown) => isVrioError(e, 'conflict') && /already backs disk/.test(e.message)

describe('IOhyp disks: one backing file per writable disk', () => {
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vrio-backing-'))
  })
  afterEach(async () => {
    for (const r of registries) await r.close()
    registries = []
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  for (const how of ['hard link', 'symlinked directory'] as const) {
    it(`blk create: the same file through a ${how} is refused unless both are read-only`, async () => {
      const disks = registry()
      const a = image()
      await disks.create({ guest: formatMac(MAC), backing: a, name: 'a' }, guest)
      const again = otherPath(a, how)
      await assert.rejects(
        disks.create({ guest: formatMac(MAC), backing: again, name: 'b' }, guest),
        conflict,
      )
      await assert.rejects(
        disks.create({ guest: formatMac(MAC), backing: again, name: 'b', readOnly: true }, guest),
        conflict,
      )
      await assert.rejects(disks.create({ guest: formatMac(MAC), backing: a, name: 'c' }, guest), conflict)

      const shared = image()
      await disks.create({ guest: formatMac(MAC), backing: shared, name: 'ro1', readOnly: true }, guest)
      await disks.create(
        { guest: formatMac(MAC), backing: otherPath(shared, how), name: 'ro2', readOnly: true },
        guest,
      )
      await assert.rejects(
        disks.create({ guest: formatMac(MAC), backing: otherPath(shared, how), name: 'rw' }, guest),
        conflict,
      )
      assert.deepEqual(
        disks.list().map((d) => d.name),
        ['a', 'ro1', 'ro2'],
      )
    })
  }

  it('blk create: a backing path whose last component is a symlink is refused, naming it', async () => {
    const disks = registry()
    const link = join(dir, `link${n++}.img`)
    symlinkSync(image(), link)
    await assert.rejects(
      disks.create({ guest: formatMac(MAC), backing: link, name: 'l' }, guest),
      (e: unknown) => isVrioError(e, 'symlink') && e.message.includes(link),
    )
    assert.equal(disks.list().length, 0)
  })

  it('an encrypted disk on a file another disk uses is refused before its key is read', async () => {
    const disks = registry()
    const a = image()
    const keyFile = join(dir, `key${n++}`)
    writeFileSync(keyFile, randomBytes(64), { mode: 0o600 })
    const encrypt = { kind: 'plain', cipher: 'aes-xts-plain64', keyFile } as const
    await disks.create({ guest: formatMac(MAC), backing: a, name: 'enc', encrypt }, guest)
    await assert.rejects(
      disks.create(
        {
          guest: formatMac(MAC),
          backing: otherPath(a, 'hard link'),
          name: 'enc2',
          // Read first, this missing file would make it a 'key-file' error instead.
          encrypt: { ...encrypt, keyFile: join(dir, 'no-such-key') },
        },
        guest,
      ),
      conflict,
    )
  })

  it('two creates on one file at the same time (a LUKS unlock in between): exactly one gets it', async () => {
    const disks = registry()
    const a = image(4 * 1024 * 1024)
    const file = await FileDevice.open(a)
    await formatLuks(file, { type: 'luks1', passphrase: Buffer.from('pass'), iterations: 20_000 })
    await file.close()
    const pass = join(dir, `pass${n++}`)
    writeFileSync(pass, 'pass', { mode: 0o600 })
    const encrypt = { kind: 'luks', keyFile: pass } as const
    const results = await Promise.allSettled([
      disks.create({ guest: formatMac(MAC), backing: a, name: 'x', encrypt }, guest),
      disks.create({ guest: formatMac(MAC), backing: otherPath(a, 'hard link'), name: 'y', encrypt }, guest),
    ])
    const refused = results.filter((r) => r.status === 'rejected')
    assert.equal(refused.length, 1, JSON.stringify(results))
    assert.ok(conflict(refused[0].reason))
    assert.equal(disks.list().length, 1)
  })

  it('two creates of one name at the same time: exactly one gets it', async () => {
    const disks = registry()
    const images = [image(4 * 1024 * 1024), image(4 * 1024 * 1024)]
    for (const img of images) {
      const file = await FileDevice.open(img)
      await formatLuks(file, { type: 'luks1', passphrase: Buffer.from('pass'), iterations: 20_000 })
      await file.close()
    }
    const pass = join(dir, `pass${n++}`)
    writeFileSync(pass, 'pass', { mode: 0o600 })
    const encrypt = { kind: 'luks', keyFile: pass } as const
    const results = await Promise.allSettled(
      images.map((backing) => disks.create({ guest: formatMac(MAC), backing, name: 'same', encrypt }, guest)),
    )
    const refused = results.filter((r) => r.status === 'rejected')
    assert.equal(refused.length, 1, JSON.stringify(results))
    assert.ok(isVrioError(refused[0].reason, 'conflict'))
    const winner = images[results.findIndex((r) => r.status === 'fulfilled')]
    assert.deepEqual(
      disks.list().map((d) => [d.name, d.backing]),
      [['same', winner]],
    )
  })

  it('restore after a restart takes the identity again: two entries on one file are refused', async () => {
    const a = image()
    const sub = join(dir, `sub${n++}`)
    mkdirSync(sub)
    const entry = (name: string, backing: string, readOnly: boolean, low: number): DiskState => ({
      name,
      guest: formatMac(MAC),
      backing,
      readOnly,
      handle: { high: 7, low },
    })
    await assert.rejects(
      registry().restore([entry('a', a, false, 1), entry('b', otherPath(a, 'hard link'), false, 2)], macOf),
      conflict,
    )
    await assert.rejects(
      registry().restore(
        [entry('a', a, true, 1), entry('b', otherPath(a, 'symlinked directory'), false, 2)],
        macOf,
      ),
      conflict,
    )
    const ok = registry()
    await ok.restore([entry('a', a, true, 1), entry('b', otherPath(a, 'hard link'), true, 2)], macOf)
    assert.equal(ok.list().length, 2)
  })

  it('declare (config disks at start) refuses the same file twice', async () => {
    const a = image()
    const disks = registry()
    await assert.rejects(
      disks.declare(
        [
          { name: 'a', guest: formatMac(MAC), backing: a, readOnly: false },
          { name: 'b', guest: formatMac(MAC), backing: otherPath(a, 'symlinked directory'), readOnly: false },
        ],
        macOf,
      ),
      (e: unknown) => conflict(e) && /^disk b: /.test((e as Error).message),
    )
  })
})
