/**
 * The disk and restart-matrix suites again on an IOhyp with two iocores that poll, its native fast
 * path off, and guest agents that poll (VRIO_TEST_IOCORES=2, VRIO_FASTPATH=0: every request through
 * the TypeScript transport, the slow path — the suites' own run has it on, the default — and
 * VRIO_TEST_POLL=1: every IOhyp those tests start gets --iocores 2 --poll, every agent --poll; each
 * pair checks that poll rounds were counted), in a child test run of their own: one rerun covers
 * all three, for CI time. NICs through iocores: iocores.test.ts.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { it } from 'node:test'
import { requireRoot } from '../support/netns.ts'

const SUITES = ['blk.test.js', 'restart-matrix.test.js'].map((f) =>
  fileURLToPath(new URL(`./${f}`, import.meta.url)),
)

it('the disk and restart-matrix suites pass with --iocores 2 --poll and the slow path only (VRIO_FASTPATH=0)', async () => {
  requireRoot()
  const { NODE_TEST_CONTEXT: _, ...env } = process.env
  const child = spawn(
    process.execPath,
    ['--enable-source-maps', '--test', '--test-concurrency=1', ...SUITES],
    {
      env: { ...env, VRIO_TEST_IOCORES: '2', VRIO_FASTPATH: '0', VRIO_TEST_POLL: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let out = ''
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr.on('data', (d: Buffer) => {
    out += d.toString()
  })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  assert.equal(code, 0, out.slice(-4000))
  assert.match(out, /# fail 0/)
  assert.doesNotMatch(out, /# pass 0\n/)
})
