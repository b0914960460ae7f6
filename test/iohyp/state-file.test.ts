import assert from 'node:assert/strict'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import { isVrioError } from '../../src/errors.ts'
import {
  EMPTY_STATE,
  type IohypState,
  lastGoodPath,
  parseStateFile,
  readStateFile,
  writeStateFile,
} from '../../src/iohyp/state-file.ts'
import { tempDir } from '../control/fixtures.ts'

const KEY = 'ab'.repeat(32)
const GOOD: IohypState = {
  version: 1,
  guests: [
    { mac: '52:54:00:00:00:01', address: '10.0.0.2', key: KEY, budgets: { pendingReplyBytes: 1 << 20 } },
  ],
  disks: [
    {
      name: 'root',
      guest: '52:54:00:00:00:01',
      backing: '/var/lib/vrio/root.img',
      readOnly: false,
      encrypt: { kind: 'luks', passphraseFile: '/etc/vrio/root.pass' },
      handle: { high: 0xdeadbeef, low: 1 },
    },
  ],
  nics: [
    {
      name: 'web0',
      guest: '52:54:00:00:00:01',
      mac: '52:54:00:aa:00:01',
      mtu: 1500,
      tap: 'vt-web0',
      bridge: 'br0',
      ip: '10.0.1.0/29',
      handle: { high: 7, low: 2 },
    },
  ],
}

function refusal(text: string): { message: string; field: unknown } {
  try {
    parseStateFile(text, '/state/iohyp-state.json')
  } catch (error) {
    assert.ok(isVrioError(error, 'invalid-state'), String(error))
    return { message: error.message, field: error.details.field }
  }
  assert.fail('accepted')
}

// biome-ignore lint/suspicious/noExplicitAny: the tests edit the JSON freely, as an operator would
type Json = any

function edited(edit: (s: Json) => void): string {
  const s: Json = structuredClone(GOOD)
  edit(s)
  return JSON.stringify(s)
}

describe('IOhyp state file', () => {
  it('round-trips a valid state', () => {
    assert.deepEqual(parseStateFile(JSON.stringify(GOOD), 'f'), GOOD)
    assert.deepEqual(parseStateFile('{"version":1}', 'f'), EMPTY_STATE)
  })

  it('refuses a corrupted or hand-edited file, naming the field', () => {
    const cases: [string, string, RegExp][] = [
      ['{"version":1,"guests":[', '', /not valid JSON/],
      ['[]', '', /expected an object/],
      [edited((s) => (s.version = 2)), 'version', /version: expected 1, got 2/],
      [edited((s) => (s.guests[0].mac = 'zz')), 'guests[0].mac', /'zz' is not a MAC address/],
      [edited((s) => (s.guests[0].key = 'ab'.repeat(31))), 'guests[0].key', /64 hex characters/],
      [
        edited((s) => (s.guests[0].budgets.reassemblyBytes = 5)),
        'guests[0].budgets.reassemblyBytes',
        /at least/,
      ],
      [edited((s) => (s.disks[0].name = '../etc')), 'disks[0].name', /letters, digits/],
      [edited((s) => (s.disks[0].handle.high = 2 ** 32)), 'disks[0].handle.high', /at most/],
      [edited((s) => delete s.disks[0].readOnly), 'disks[0].readOnly', /required/],
      [
        edited((s) => (s.disks[0].encrypt = { kind: 'rot13' })),
        'disks[0].encrypt.kind',
        /expected 'plain' or 'luks'/,
      ],
      [edited((s) => (s.nics[0].tap = 'vt+web0')), 'nics[0].tap', /letters, digits/],
      [edited((s) => (s.nics[0].mtu = 10)), 'nics[0].mtu', /at least 68/],
      [edited((s) => (s.nics[0].extra = 1)), 'nics[0].extra', /unknown key/],
    ]
    for (const [text, field, message] of cases) {
      const r = refusal(text)
      assert.equal(r.field, field, text)
      assert.match(r.message, message, text)
      assert.match(r.message, /^state file \/state\/iohyp-state\.json: /)
    }
  })

  it('keeps the last good copy at every save, and never rotates a broken file over it', async () => {
    const tmp = tempDir()
    try {
      const file = tmp.path('iohyp-state.json')
      assert.deepEqual(await readStateFile(file), EMPTY_STATE)
      await writeStateFile(file, EMPTY_STATE)
      await writeStateFile(file, GOOD)
      assert.deepEqual(await readStateFile(file), GOOD)
      assert.deepEqual(parseStateFile(readFileSync(lastGoodPath(file), 'utf8'), 'x'), EMPTY_STATE)
      assert.equal(statSync(file).mode & 0o777, 0o600, 'the state file holds keys')
      assert.equal(statSync(lastGoodPath(file)).mode & 0o777, 0o600, 'so does its copy')
      // A hand-edit breaks the file: loading refuses, and the next save does not rotate it.
      writeFileSync(
        file,
        edited((s) => (s.guests[0].mac = 'zz')),
      )
      await assert.rejects(readStateFile(file), (e: unknown) => isVrioError(e, 'invalid-state'))
      await writeStateFile(file, GOOD)
      assert.deepEqual(parseStateFile(readFileSync(lastGoodPath(file), 'utf8'), 'x'), EMPTY_STATE)
    } finally {
      tmp.remove()
    }
  })
})
