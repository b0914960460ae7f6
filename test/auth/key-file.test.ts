import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import {
  chmodSync,
  mkdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs'
import { after, before, describe, it } from 'node:test'
import {
  generateKey,
  KEY_BYTES,
  MAX_SECRET_FILE_BYTES,
  readKeyFile,
  readSecretFile,
  writeKeyFile,
} from '../../src/auth/key-file.ts'
import { type ErrorCode, isVrioError } from '../../src/errors.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

const HEX = '0123456789abcdef'.repeat(4)

function failsWith(fn: () => unknown, code: ErrorCode, message?: RegExp, secret?: string): void {
  assert.throws(fn, (error) => {
    assert.ok(isVrioError(error, code), `expected ${code}, got ${String(error)}`)
    if (message) assert.match(error.message, message)
    if (secret) assert.ok(!JSON.stringify(error.toJSON()).includes(secret), 'the key leaked into the error')
    return true
  })
}

describe('key files', () => {
  let tmp: TempDir
  before(() => {
    tmp = tempDir('vrio-keys-')
  })
  after(() => tmp.remove())

  it('generates 32 random bytes', () => {
    const a = generateKey()
    assert.equal(a.length, KEY_BYTES)
    assert.notDeepEqual(a, generateKey())
  })

  it('writes 64 lowercase hex characters and a newline with mode 0600, and reads them back', () => {
    const path = tmp.path('guest.key')
    const key = generateKey()
    writeKeyFile(path, key)
    assert.equal(readFileSync(path, 'utf8'), `${key.toString('hex')}\n`)
    assert.equal(statSync(path).mode & 0o777, 0o600)
    assert.deepEqual(readKeyFile(path), key)
  })

  it('refuses to overwrite unless forced; forced, it replaces the file with a 0600 one', () => {
    const path = tmp.path('existing.key')
    writeFileSync(path, 'something else', { mode: 0o644 })
    chmodSync(path, 0o644)
    failsWith(() => writeKeyFile(path, generateKey()), 'file-exists', /refusing to overwrite .*existing\.key/)
    assert.equal(readFileSync(path, 'utf8'), 'something else')

    const key = generateKey()
    writeKeyFile(path, key, { force: true })
    assert.equal(statSync(path).mode & 0o777, 0o600)
    assert.deepEqual(readKeyFile(path), key)
  })

  it('forced, it replaces a symlink instead of writing through it', () => {
    const target = tmp.path('victim')
    writeFileSync(target, 'do not touch')
    const link = tmp.path('link.key')
    symlinkSync(target, link)
    failsWith(() => writeKeyFile(link, generateKey()), 'file-exists')
    writeKeyFile(link, generateKey(), { force: true })
    assert.equal(readFileSync(target, 'utf8'), 'do not touch')
  })

  it('rejects a key of the wrong length', () => {
    failsWith(() => writeKeyFile(tmp.path('short.key'), Buffer.alloc(16)), 'invalid-argument', /32 bytes/)
  })

  it("says 'key-file-missing' naming the path", () => {
    const path = tmp.path('absent.key')
    failsWith(() => readKeyFile(path), 'key-file-missing', new RegExp(`key file ${path} does not exist`))
  })

  it("says 'key-file-permissions' when group or others have access, with the chmod to run", () => {
    for (const mode of [0o640, 0o604, 0o620, 0o601]) {
      const path = tmp.path(`loose-${mode.toString(8)}.key`)
      writeFileSync(path, `${HEX}\n`)
      chmodSync(path, mode)
      failsWith(() => readKeyFile(path), 'key-file-permissions', new RegExp(`chmod 600 ${path}`), HEX)
    }
  })

  it("says 'key-file-invalid' for anything but exactly 64 hex characters, never quoting the content", () => {
    const contents = [
      HEX.slice(0, 63),
      `${HEX}0`,
      `${HEX.slice(0, 62)}zz`,
      `${HEX} ${HEX}`,
      '',
      'x'.repeat(10_000),
    ]
    contents.forEach((content, i) => {
      const path = tmp.path(`bad-${i}.key`)
      writeFileSync(path, content, { mode: 0o600 })
      failsWith(
        () => readKeyFile(path),
        'key-file-invalid',
        /exactly 64 hex characters/,
        content.slice(0, 20) || undefined,
      )
    })
    const dir = tmp.path('a-directory.key')
    mkdirSync(dir, { mode: 0o700 })
    failsWith(() => readKeyFile(dir), 'key-file-invalid', /not a regular file|is a directory/)
  })

  it('accepts surrounding whitespace and upper case', () => {
    const path = tmp.path('spaced.key')
    writeFileSync(path, `  ${HEX.toUpperCase()}\r\n\n`, { mode: 0o600 })
    assert.equal(readKeyFile(path).toString('hex'), HEX)
  })

  it('secret files (disk keys, passphrases): read whole when only the owner has access, refused otherwise', () => {
    const path = tmp.path('disk.key')
    const bytes = Buffer.from('0123456789'.repeat(7))
    writeFileSync(path, bytes, { mode: 0o600 })
    assert.deepEqual(readSecretFile(path), bytes)
    for (const mode of [0o644, 0o640, 0o604, 0o602]) {
      chmodSync(path, mode)
      const shown = mode.toString(8).padStart(4, '0')
      failsWith(
        () => readSecretFile(path, 'passphrase file'),
        'key-file-permissions',
        new RegExp(
          `^passphrase file ${path} is accessible by group or others \\(mode ${shown}\\); run: chmod 600 ${path}$`,
        ),
        '0123456789',
      )
    }
    failsWith(() => readSecretFile(tmp.path('none')), 'key-file-missing', /^key file .*none does not exist$/)
    const big = tmp.path('big.key')
    writeFileSync(big, '', { mode: 0o600 })
    truncateSync(big, MAX_SECRET_FILE_BYTES + 1)
    failsWith(() => readSecretFile(big), 'key-file-invalid', /too large/)
    // A FIFO planted at the path is refused at once instead of hanging the open.
    const fifo = tmp.path('fifo.key')
    execFileSync('mkfifo', ['-m', '600', fifo])
    failsWith(() => readSecretFile(fifo), 'key-file-invalid', /not a regular file/)
  })
})
