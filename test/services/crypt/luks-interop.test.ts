/**
 * LUKS interop with real tools: cryptsetup 2.6 (header operations and offline encryption work on
 * plain files without device-mapper), qemu-io's luks driver (LUKS1 only in qemu 7.2) and nbdkit's
 * luks filter (LUKS1 only in nbdkit 1.32), with python3-cryptography as an independent decryptor.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync, truncateSync, writeFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { FileDevice } from '../../../src/devices/blk/file-device.ts'
import { isVrioError } from '../../../src/errors.ts'
import { formatLuks, readLuksHeader, summarizeLuks } from '../../../src/services/crypt/luks.ts'
import { openEncryption } from '../../../src/services/crypt/open.ts'
import { type TempDir, tempDir } from '../../control/fixtures.ts'
import { requireRoot } from '../../support/netns.ts'

const PYTHON = '/usr/bin/python3'
const MiB = 1024 * 1024
const PASS = 'correct horse battery'

function run(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`)
  return r.stdout
}

/** A plaintext where every 512-byte sector says which it is: misplaced sectors show up. */
function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes)
  for (let s = 0; s < bytes / 512; s++) {
    b.writeUInt32LE(s, s * 512)
    b.writeUInt32LE(seed, s * 512 + 4)
    b.fill(s & 0xff, s * 512 + 8, s * 512 + 512)
  }
  return b
}

async function vrioRead(img: string, spec: { passphraseFile?: string; keyFile?: string }, length: number) {
  const file = await FileDevice.open(img)
  try {
    const dev = await openEncryption(file, { kind: 'luks', ...spec })
    const data = Buffer.from(await dev.read(0, length))
    return { data, dev }
  } finally {
    await file.close()
  }
}

describe('LUKS interop', () => {
  let tmp: TempDir
  let passFile: string // the passphrase and a newline, for vrio's passphraseFile
  let keyFile: string // the passphrase bytes exactly, for cryptsetup --key-file and vrio's keyFile
  before(() => {
    requireRoot()
    tmp = tempDir('vrio-luks-')
    passFile = tmp.path('pass')
    writeFileSync(passFile, `${PASS}\n`, { mode: 0o600 })
    keyFile = tmp.path('keyfile')
    writeFileSync(keyFile, PASS, { mode: 0o600 })
  })
  after(() => tmp?.remove())

  function image(name: string, bytes: number): string {
    const p = tmp.path(name)
    writeFileSync(p, '')
    truncateSync(p, bytes)
    return p
  }

  it('opens a cryptsetup LUKS1 volume whose payload qemu-io wrote', async () => {
    const img = image('cs-luks1.img', 8 * MiB)
    run('cryptsetup', [
      'luksFormat',
      '--type',
      'luks1',
      '-q',
      '--iter-time',
      '10',
      '--key-file',
      keyFile,
      img,
    ])
    run('qemu-io', [
      '--object',
      `secret,id=s0,file=${keyFile}`,
      '--image-opts',
      `driver=luks,key-secret=s0,file.filename=${img}`,
      '-c',
      'write -P 0xab 0 1M',
      '-c',
      'write -P 0x5c 1M 512',
    ])
    const { data, dev } = await vrioRead(img, { passphraseFile: passFile }, MiB + 1024)
    assert.equal(dev.format, 'luks1')
    assert.ok(data.subarray(0, MiB).every((b) => b === 0xab))
    assert.ok(data.subarray(MiB, MiB + 512).every((b) => b === 0x5c))
  })

  for (const pbkdf of ['pbkdf2', 'argon2id'] as const)
    for (const sectorSize of [512, 4096])
      it(`opens a LUKS2 volume cryptsetup encrypted itself (${pbkdf}, ${sectorSize}-byte sectors)`, async () => {
        // `reencrypt --encrypt` encrypts the existing data in userspace: cryptsetup writes the
        // payload, so its IV rule is checked here, not assumed.
        const img = tmp.path(`cs-luks2-${pbkdf}-${sectorSize}.img`)
        const plain = pattern(24 * MiB, sectorSize)
        writeFileSync(img, Buffer.concat([plain, Buffer.alloc(32 * MiB - plain.length)]))
        run('cryptsetup', [
          'reencrypt',
          '--encrypt',
          '--type',
          'luks2',
          '--sector-size',
          String(sectorSize),
          '--reduce-device-size',
          '16M',
          '--pbkdf',
          pbkdf,
          ...(pbkdf === 'argon2id'
            ? ['--pbkdf-memory', '8192', '--pbkdf-force-iterations', '4', '--pbkdf-parallel', '2']
            : ['--pbkdf-force-iterations', '1000']),
          '-q',
          '--key-file',
          keyFile,
          img,
        ])
        const dump = run('cryptsetup', ['luksDump', img])
        assert.match(dump, new RegExp(`sector: ${sectorSize} \\[bytes\\]`))
        const { data, dev } = await vrioRead(img, { keyFile }, 8 * MiB)
        assert.equal(dev.format, 'luks2')
        assert.equal(dev.sectorSize, sectorSize)
        assert.ok(data.equals(plain.subarray(0, 8 * MiB)), 'vrio reads what cryptsetup encrypted')
      })

  it('opens cryptsetup luksFormat LUKS2 volumes (pbkdf2 and argon2id) and writes what python decrypts with the dumped volume key', async () => {
    for (const pbkdf of ['pbkdf2', 'argon2id']) {
      const img = image(`cs-fmt-${pbkdf}.img`, 20 * MiB)
      run('cryptsetup', [
        'luksFormat',
        '--type',
        'luks2',
        '--pbkdf',
        pbkdf,
        ...(pbkdf === 'argon2id' ? ['--pbkdf-memory', '8192', '--iter-time', '10'] : ['--iter-time', '10']),
        '-q',
        '--key-file',
        keyFile,
        img,
      ])
      const plain = randomBytes(MiB)
      const file = await FileDevice.open(img)
      const dev = await openEncryption(file, { kind: 'luks', passphraseFile: passFile })
      await dev.write(4096, plain, false)
      await file.close()
      const vk = tmp.path(`vk-${pbkdf}`)
      run('cryptsetup', [
        'luksDump',
        '--dump-volume-key',
        '--volume-key-file',
        vk,
        '-q',
        '--key-file',
        keyFile,
        img,
      ])
      // cryptsetup 2.6 picks 4096-byte sectors for files by default; tweaks count 512-byte units.
      const out = pythonDecrypt(
        img,
        vk,
        dev.payloadOffset + 4096,
        MiB,
        dev.sectorSize,
        dev.sectorSize / 512,
        8,
      )
      assert.ok(out.equals(plain), `python decrypts what vrio wrote (${pbkdf})`)
    }
  })

  it('formats LUKS1 that qemu-io and nbdkit read back identical', async () => {
    const img = image('vrio-luks1.img', 6 * MiB)
    let file = await FileDevice.open(img)
    await formatLuks(file, { type: 'luks1', passphrase: Buffer.from(PASS), iterations: 1000 })
    const dev = await openEncryption(file, { kind: 'luks', keyFile })
    const plain = pattern(4 * MiB, 1)
    await dev.write(0, plain, false)
    await file.close()
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img])
    const qemuOut = tmp.path('qemu.raw')
    run('qemu-img', [
      'convert',
      '--object',
      `secret,id=s0,file=${keyFile}`,
      '--image-opts',
      `driver=luks,key-secret=s0,file.filename=${img}`,
      '-O',
      'raw',
      qemuOut,
    ])
    assert.ok(readFileSync(qemuOut).equals(plain), 'qemu-img reads what vrio wrote')
    const nbdOut = tmp.path('nbdkit.raw')
    run('nbdkit', [
      '-U',
      '-',
      'file',
      img,
      '--filter=luks',
      `passphrase=${PASS}`,
      '--run',
      `nbdcopy "$uri" ${nbdOut}`,
    ])
    assert.ok(readFileSync(nbdOut).equals(plain), 'nbdkit reads what vrio wrote')
    // And the other way: qemu writes, vrio reads.
    run('qemu-io', [
      '--object',
      `secret,id=s0,file=${keyFile}`,
      '--image-opts',
      `driver=luks,key-secret=s0,file.filename=${img}`,
      '-c',
      'write -P 0x77 512 4096',
    ])
    file = await FileDevice.open(img)
    const again = await openEncryption(file, { kind: 'luks', keyFile })
    const back = Buffer.from(await again.read(0, 8192))
    await file.close()
    assert.ok(back.subarray(512, 4608).every((b) => b === 0x77))
    assert.ok(back.subarray(0, 512).equals(plain.subarray(0, 512)))
  })

  for (const [pbkdf, sectorSize] of [
    ['pbkdf2', 512],
    ['argon2id', 4096],
  ] as const)
    it(`formats LUKS2 (${pbkdf}, ${sectorSize}-byte sectors) that cryptsetup accepts and python decrypts`, async () => {
      const img = image(`vrio-luks2-${pbkdf}.img`, 20 * MiB)
      const file = await FileDevice.open(img)
      await formatLuks(file, {
        type: 'luks2',
        pbkdf,
        sectorSize,
        passphrase: Buffer.from(PASS),
        iterations: 1000,
        argon2: { memoryKiB: 8192, time: 4, parallelism: 2 },
      })
      const dev = await openEncryption(file, { kind: 'luks', passphraseFile: passFile })
      const plain = pattern(2 * MiB, 2)
      await dev.write(MiB, plain, false)
      await file.close()
      const dump = run('cryptsetup', ['luksDump', img])
      assert.match(dump, /Version:\s+2/)
      assert.match(dump, new RegExp(`PBKDF:\\s+${pbkdf}`))
      assert.match(dump, new RegExp(`sector: ${sectorSize} \\[bytes\\]`))
      run('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img])
      const wrong = spawnSync('cryptsetup', ['open', '--test-passphrase', '--key-file', passFile, img])
      assert.notEqual(wrong.status, 0, 'cryptsetup refuses the passphrase with a newline')
      const vk = tmp.path(`vrio-vk-${pbkdf}`)
      run('cryptsetup', [
        'luksDump',
        '--dump-volume-key',
        '--volume-key-file',
        vk,
        '-q',
        '--key-file',
        keyFile,
        img,
      ])
      const out = pythonDecrypt(
        img,
        vk,
        dev.payloadOffset + MiB,
        plain.length,
        sectorSize,
        sectorSize / 512,
        MiB / 512,
      )
      assert.ok(out.equals(plain), 'python decrypts what vrio wrote with the key cryptsetup unlocked')
    })

  it('refuses a wrong passphrase with a clear error, naming no secret', async () => {
    const img = image('wrong.img', 4 * MiB)
    const file = await FileDevice.open(img)
    await formatLuks(file, { type: 'luks1', passphrase: Buffer.from(PASS), iterations: 1000 })
    const wrong = tmp.path('wrong-pass')
    writeFileSync(wrong, 'hunter2\n', { mode: 0o600 })
    await assert.rejects(openEncryption(file, { kind: 'luks', passphraseFile: wrong }), (e) => {
      assert.ok(isVrioError(e, 'bad-passphrase'))
      assert.equal(e.message, 'no key slot opens with this passphrase')
      assert.ok(!JSON.stringify(e).includes('hunter2') && !String(e.stack).includes('hunter2'))
      return true
    })
    const summary = JSON.stringify(summarizeLuks(await readLuksHeader(file), file.size))
    assert.ok(!/salt|digest/i.test(summary))
    await file.close()
  })
})

function pythonDecrypt(
  img: string,
  keyPath: string,
  offset: number,
  length: number,
  sectorSize: number,
  step: number,
  first: number,
): Buffer {
  const script = `
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, keyfile, offset, length, sector, step, first = sys.argv[1:]
offset, length, sector, step, first = map(int, (offset, length, sector, step, first))
key = open(keyfile, 'rb').read()
f = open(img, 'rb'); f.seek(offset); data = f.read(length)
out = bytearray()
for i in range(0, len(data), sector):
    d = Cipher(algorithms.AES(key), modes.XTS((first + (i // sector) * step).to_bytes(16, 'little'))).decryptor()
    out += d.update(data[i:i + sector]) + d.finalize()
sys.stdout.buffer.write(out)
`
  return execFileSync(
    PYTHON,
    ['-c', script, img, keyPath, ...[offset, length, sectorSize, step, first].map(String)],
    {
      maxBuffer: 64 * MiB,
    },
  )
}
