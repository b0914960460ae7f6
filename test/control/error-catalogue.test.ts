import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import { ERROR_CATALOGUE, EXIT, exitStatusForCode, VrioError } from '../../src/errors.ts'

const OPERATIONS = new URL('../../../docs/operations.md', import.meta.url)

describe('error catalogue', () => {
  it('docs/operations.md lists every code with its HTTP and exit status, and no other', () => {
    const doc = readFileSync(OPERATIONS, 'utf8')
    const rows = new Map<string, [number, number]>()
    for (const m of doc.matchAll(/^\| `([a-z-]+)` \| (\d+) \| (\d+) \| .+ \|$/gm))
      rows.set(m[1], [Number(m[2]), Number(m[3])])
    for (const [code, e] of Object.entries(ERROR_CATALOGUE))
      assert.deepEqual(rows.get(code), [e.http, e.exit], `${code} in docs/operations.md`)
    assert.deepEqual([...rows.keys()].sort(), Object.keys(ERROR_CATALOGUE).sort())
  })

  it('every exit status is one of the documented kinds', () => {
    const kinds = new Set<number>(Object.values(EXIT))
    for (const [code, e] of Object.entries(ERROR_CATALOGUE)) assert.ok(kinds.has(e.exit), code)
    assert.equal(exitStatusForCode('no-such-code'), EXIT.failure)
  })

  it('a peer error with an unknown code becomes `unknown`, keeping what the peer said', () => {
    const e = VrioError.fromJSON({ code: 'from-the-future', message: 'm', field: 'x' })
    assert.equal(e.code, 'unknown')
    assert.deepEqual(e.details, { field: 'x', peerCode: 'from-the-future' })
    const known = VrioError.fromJSON({ code: 'not-found', message: 'gone' })
    assert.equal(known.code, 'not-found')
    assert.deepEqual(known.details, {})
  })
})
