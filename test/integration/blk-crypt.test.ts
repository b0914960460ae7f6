/**
 * Encrypted remote disks through the daemons: the guest writes plaintext to its NBD export, the
 * IOhyp's backing file holds ciphertext that independent tools decrypt — python3-cryptography for
 * dm-crypt plain aes-xts-plain64, qemu's luks driver for a LUKS1 volume vrio formatted — and a
 * volume cryptsetup formatted and qemu-io filled opens in vrio with its passphrase. A wrong
 * passphrase is refused with a clear error.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, linkSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { DiskInfo } from '../../src/control/api.ts'
import { sparseFile } from '../support/block-io.ts'
import { killDaemons, vrioAsync, vrioJsonAsync } from '../support/daemons.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink } from '../support/topology.ts'
import { VrioPair } from '../support/vrio-pair.ts'
import { isRefusalExit } from '../support/proc.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const MiB = 1024 * 1024
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')
/** Debian's python3, which has python3-cryptography. */
const PYTHON = '/usr/bin/python3'
const XTS_DECRYPT = `
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = open(sys.argv[1], 'rb').read(); data = open(sys.argv[2], 'rb').read(); out = bytearray()
for i in range(0, len(data), 512):
    d = Cipher(algorithms.AES(key), modes.XTS((i // 512).to_bytes(16, 'little'))).decryptor()
    out += d.update(data[i:i + 512]) + d.finalize()
open(sys.argv[3], 'wb').write(out)
`

describe('encrypted remote disks', () => {
  let pair: VrioPair
  const create = (args: string[]) =>
    vrioJsonAsync<DiskInfo>([
      'blk',
      'create',
      '--guest',
      pair.guestMac,
      ...args,
      '--json',
      '--control',
      pair.sock('iohyp'),
    ])
  const file = (name: string) => join(pair.dir, name)

  before(async () => {
    requireRoot()
    const link = directLink()
    pair = new VrioPair(link.a, link.b)
    await pair.start()
  })
  after(async () => {
    await pair?.stop()
  })

  it('plain aes-xts-plain64: the backing holds ciphertext that python-cryptography decrypts to what the guest wrote', async () => {
    const key = file('xts.key')
    writeFileSync(key, randomBytes(64), { mode: 0o600 })
    sparseFile(file('plain.img'), 8 * MiB)
    const disk = await create([
      '--backing',
      file('plain.img'),
      '--name',
      'plain',
      '--encrypt',
      'plain',
      '--key-file',
      key,
    ])
    assert.equal(disk.encryption?.kind, 'plain')
    assert.doesNotMatch(JSON.stringify(disk), new RegExp(readFileSync(key).toString('hex').slice(0, 16)))
    const src = randomBytes(8 * MiB)
    writeFileSync(file('src'), src)
    execFileSync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', file('src'), disk.nbd!])
    // The service and its counters, as `vrio blk services` shows them: every byte went through it.
    const shown = await vrioJsonAsync<{
      services: { encryption: { kind: string; counters: Record<string, number> } }
    }>(['blk', 'services', 'plain', '--json', '--control', pair.sock('iohyp')])
    assert.equal(shown.services.encryption.kind, 'plain')
    assert.ok(shown.services.encryption.counters.bytesEncrypted >= 8 * MiB)
    const text = await vrioAsync(['blk', 'services', 'plain', '--control', pair.sock('iohyp')])
    assert.match(text.stdout, /^plain: encryption plain \(.*aes-xts-plain64.*\)\n {2}reads \d+, writes \d+/)
    assert.match(
      (await vrioAsync(['blk', 'services', 'nope', '--control', pair.sock('iohyp')])).stderr,
      /no disk named nope/,
    )
    await pair.removeDisk('plain')
    const backing = readFileSync(file('plain.img'))
    assert.notEqual(sha(backing), sha(src), 'the backing is not plaintext')
    execFileSync(PYTHON, ['-c', XTS_DECRYPT, key, file('plain.img'), file('plain.dec')])
    assert.equal(sha(readFileSync(file('plain.dec'))), sha(src))
  })

  it('LUKS1 formatted by vrio: written through vrio, read back identical by qemu-img luks; a wrong passphrase is refused', async () => {
    const pass = file('pass')
    writeFileSync(pass, 'correct horse battery staple\n', { mode: 0o600 })
    const r = await vrioAsync([
      'crypt',
      'format',
      file('luks1.img'),
      '--passphrase-file',
      pass,
      '--type',
      'luks1',
      '--size',
      String(8 * MiB),
    ])
    assert.equal(r.status, 0, r.stderr)
    const wrong = file('wrong')
    writeFileSync(wrong, 'wrong\n', { mode: 0o600 })
    const refused = await vrioAsync([
      'blk',
      'create',
      '--guest',
      pair.guestMac,
      '--backing',
      file('luks1.img'),
      '--encrypt',
      'luks',
      '--passphrase-file',
      wrong,
      '--control',
      pair.sock('iohyp'),
    ])
    assert.notEqual(refused.status, 0)
    assert.match(refused.stderr, /no key slot opens with this passphrase/)
    assert.equal(refused.stderr.trim().split('\n').length, 1)

    const disk = await create([
      '--backing',
      file('luks1.img'),
      '--name',
      'luks1',
      '--encrypt',
      'luks',
      '--passphrase-file',
      pass,
    ])
    assert.equal(disk.size, 8 * MiB)
    const src = randomBytes(8 * MiB)
    writeFileSync(file('src1'), src)
    execFileSync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', file('src1'), disk.nbd!])
    await pair.removeDisk('luks1')
    execFileSync('qemu-img', [
      'convert',
      '--object',
      'secret,id=s0,data=correct horse battery staple',
      '--image-opts',
      `driver=luks,key-secret=s0,file.filename=${file('luks1.img')}`,
      '-O',
      'raw',
      file('luks1.out'),
    ])
    assert.equal(sha(readFileSync(file('luks1.out'))), sha(src))
  })

  it('a volume cryptsetup formatted and qemu-io filled opens in vrio and reads back identical', async () => {
    const pass = file('pass2')
    writeFileSync(pass, 'another passphrase', { mode: 0o600 })
    sparseFile(file('cs.img'), 12 * MiB)
    execFileSync('cryptsetup', [
      'luksFormat',
      '--batch-mode',
      '--type',
      'luks1',
      '--pbkdf-force-iterations',
      '1000',
      '--key-file',
      pass,
      file('cs.img'),
    ])
    execFileSync('qemu-io', [
      '--object',
      'secret,id=s0,data=another passphrase',
      '--image-opts',
      `driver=luks,key-secret=s0,file.filename=${file('cs.img')}`,
      '-c',
      'write -P 0xab 0 1M',
      '-c',
      'write -P 0x5c 1M 1M',
    ])
    const disk = await create([
      '--backing',
      file('cs.img'),
      '--name',
      'cs',
      '--encrypt',
      'luks',
      '--key-file',
      pass,
    ])
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', disk.nbd!, file('cs.out')])
    const out = readFileSync(file('cs.out'))
    assert.ok(out.subarray(0, MiB).every((b) => b === 0xab))
    assert.ok(out.subarray(MiB, 2 * MiB).every((b) => b === 0x5c))
    await pair.removeDisk('cs')
  })

  it('through the control API: a key file group or others can read, a symlinked backing, and a backing in use through a hard link are refused', async () => {
    const refused = async (args: string[], message: RegExp) => {
      const r = await vrioAsync([
        'blk',
        'create',
        '--guest',
        pair.guestMac,
        ...args,
        '--control',
        pair.sock('iohyp'),
      ])
      assert.ok(isRefusalExit(r.status), `${r.status} ${r.stderr}`)
      assert.match(r.stderr, message)
    }
    const key = file('open.key')
    writeFileSync(key, randomBytes(64), { mode: 0o600 })
    chmodSync(key, 0o644)
    sparseFile(file('k.img'), MiB)
    await refused(
      ['--backing', file('k.img'), '--name', 'k', '--encrypt', 'plain', '--key-file', key],
      /key file .*open\.key is accessible by group or others \(mode 0644\); run: chmod 600 /,
    )
    symlinkSync(file('k.img'), file('k-link.img'))
    await refused(['--backing', file('k-link.img'), '--name', 'k'], /k-link\.img is a symbolic link/)
    await create(['--backing', file('k.img'), '--name', 'k'])
    linkSync(file('k.img'), file('k-hard.img'))
    await refused(
      ['--backing', file('k-hard.img'), '--name', 'k2', '--read-only'],
      /k-hard\.img \(the same file as .*k\.img\) already backs disk k/,
    )
    await pair.removeDisk('k')
  })
})
