import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, statSync, writeFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { type TempDir, tempDir } from '../control/fixtures.ts'
import { isRefusalExit } from '../support/proc.ts'

const bin = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))
const vrio = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' })

function noStack(stderr: string): void {
  assert.doesNotMatch(stderr, /\n\s+at /)
  assert.equal(stderr.trim().split('\n').length, 1, `one line: ${stderr}`)
}

describe('vrio crypt', () => {
  let tmp: TempDir
  let pass: string
  before(() => {
    tmp = tempDir('vrio-crypt-cli-')
    pass = tmp.path('pass')
    writeFileSync(pass, 'cli passphrase\n', { mode: 0o600 })
    writeFileSync(tmp.path('open-pass'), 'cli passphrase\n', { mode: 0o644 })
    chmodSync(tmp.path('open-pass'), 0o644) // whatever the umask
  })
  after(() => tmp.remove())

  it('formats a new LUKS1 file and shows its header, as text and JSON, without secrets', () => {
    const img = tmp.path('a.img')
    const f = vrio('crypt', 'format', img, '--passphrase-file', pass, '--type', 'luks1', '--size', '4M')
    assert.equal(f.status, 0, f.stderr)
    assert.match(f.stdout, /formatted .*a\.img as luks1 \(aes-xts-plain64, 512-bit key, 512-byte sectors\)/)
    assert.equal(statSync(img).size, 2 * 1024 * 1024 + 4 * 1024 * 1024)
    const info = vrio('crypt', 'info', img)
    assert.equal(info.status, 0, info.stderr)
    assert.match(info.stdout, /^type:\s+luks1$/m)
    assert.match(info.stdout, /^keyslot 0:\s+pbkdf2-sha256/m)
    const json = vrio('crypt', 'info', img, '--json')
    assert.equal(json.status, 0)
    const doc = JSON.parse(json.stdout)
    assert.equal(doc.type, 'luks1')
    assert.equal(doc.payloadSize, 4 * 1024 * 1024)
    assert.doesNotMatch(json.stdout, /salt|digest|cli passphrase/i)
  })

  it('formats LUKS2 with 4096-byte sectors and argon2id by default', () => {
    const img = tmp.path('b.img')
    const f = vrio(
      'crypt',
      'format',
      img,
      '--key-file',
      pass,
      '--sector-size',
      '4096',
      '--size',
      '1M',
      '--json',
    )
    assert.equal(f.status, 0, f.stderr)
    const doc = JSON.parse(f.stdout)
    assert.equal(doc.type, 'luks2')
    assert.equal(doc.sectorSize, 4096)
    assert.equal(doc.keyslots[0].kdf, 'argon2id')
    assert.deepEqual(doc.headerCopies, { primary: true, secondary: true })
  })

  it('refuses bad input with one line and a non-zero exit', () => {
    const img = tmp.path('c.img')
    for (const [args, message] of [
      [['crypt', 'info', tmp.path('missing.img')], /missing\.img/],
      [['crypt', 'info', pass], /too small for a LUKS header|no LUKS header/],
      [
        ['crypt', 'format', img, '--passphrase-file', pass, '--type', 'luks3'],
        /--type must be one of luks1, luks2, not "luks3"/,
      ],
      [
        ['crypt', 'format', img, '--passphrase-file', pass, '--sector-size', '1024'],
        /--sector-size must be one of 512, 4096/,
      ],
      [
        ['crypt', 'format', img, '--passphrase-file', pass, '--type', 'luks1', '--sector-size', '4096'],
        /LUKS1 supports 512-byte sectors only/,
      ],
      [
        ['crypt', 'format', img, '--passphrase-file', tmp.path('nope')],
        /passphrase file .*nope does not exist/,
      ],
      [
        ['crypt', 'format', img, '--passphrase-file', tmp.path('open-pass')],
        /passphrase file .*open-pass is accessible by group or others \(mode 0644\); run: chmod 600 /,
      ],
      [
        ['crypt', 'format', img, '--key-file', tmp.path('open-pass')],
        /key file .*open-pass is accessible by group or others \(mode 0644\)/,
      ],
      [['crypt', 'format', img], /give exactly one of a passphrase file and a key file/],
      [
        ['crypt', 'format', img, '--passphrase-file', pass, '--size', 'lots'],
        /--size must be a positive byte count/,
      ],
    ] as [string[], RegExp][]) {
      const r = vrio(...args)
      assert.ok(isRefusalExit(r.status), `${args.join(' ')}: ${r.status} ${r.stderr}`)
      assert.match(r.stderr, /^vrio: /)
      assert.match(r.stderr, message)
      noStack(r.stderr)
    }
  })
})
