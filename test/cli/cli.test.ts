import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'

const bin = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))
const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'))
const vrio = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' })

describe('vrio command line', () => {
  it('prints its version', () => {
    const r = vrio('--version')
    assert.equal(r.status, 0)
    assert.equal(r.stdout.trim(), pkg.version)
  })

  it('prints help naming its commands', () => {
    const r = vrio('--help')
    assert.equal(r.status, 0)
    assert.match(r.stdout, /Usage: vrio/)
    assert.match(r.stdout, /demo/)
  })

  it('names the control commands in its help', () => {
    const r = vrio('--help')
    assert.equal(r.status, 0)
    for (const command of ['keygen', 'guests', 'status'])
      assert.match(r.stdout, new RegExp(`\\b${command}\\b`))
    const guests = vrio('guests', '--help')
    assert.equal(guests.status, 0)
    for (const command of ['add', 'remove', 'list'])
      assert.match(guests.stdout, new RegExp(`\\b${command}\\b`))
  })

  it('refuses an unknown command with a one-line reason and a non-zero exit, no stack trace', () => {
    const r = vrio('frobnicate')
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, /unknown command 'frobnicate'/)
    assert.doesNotMatch(r.stderr, /\n\s+at /)
  })
})
