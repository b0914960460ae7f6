import assert from 'node:assert/strict'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { writeFileAtomic } from '../../src/daemon/runtime.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

describe('writeFileAtomic', () => {
  let tmp: TempDir
  before(() => {
    tmp = tempDir('vrio-atomic-')
  })
  after(() => tmp.remove())

  it('concurrent writes to one path all succeed and the last call wins, whole', async () => {
    const path = tmp.path('state.json')
    // Large enough that the writes overlap; each is distinguishable and self-checking.
    const body = (i: number) => `${JSON.stringify({ i, pad: String(i).repeat(50_000) })}\n`
    await Promise.all(Array.from({ length: 40 }, (_, i) => writeFileAtomic(path, body(i))))
    assert.equal(readFileSync(path, 'utf8'), body(39))
    assert.deepEqual(readdirSync(tmp.dir), ['state.json'])
    assert.equal(statSync(path).mode & 0o777, 0o600)
  })

  it('creates missing directories and removes temp files that a killed writer left', async () => {
    const path = join(tmp.path('new/dir'), 'state.json')
    await writeFileAtomic(path, 'one\n')
    writeFileSync(`${path}.tmp-999999-1`, 'torn')
    writeFileSync(`${path}.tmp-999998-7`, 'torn')
    writeFileSync(join(tmp.path('new/dir'), 'unrelated.tmp-1'), 'not ours')
    // This process swept that path already; a new process would: simulate with another path name.
    const other = join(tmp.path('new/dir'), 'other')
    writeFileSync(`${other}.tmp-1-1`, 'torn')
    await writeFileAtomic(other, 'two\n')
    assert.deepEqual(readdirSync(tmp.path('new/dir')).sort(), [
      'other',
      'state.json',
      'state.json.tmp-999998-7',
      'state.json.tmp-999999-1',
      'unrelated.tmp-1',
    ])
    assert.equal(readFileSync(other, 'utf8'), 'two\n')
  })
})
