/**
 * The daemons' process settings (daemon/runtime.ts, native/malloc_tune.cc): malloc's thresholds,
 * and `--cpus` (every thread of the daemon on the CPUs listed).
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { describe, it } from 'node:test'
import { MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD, tuneAllocator } from '../../src/daemon/runtime.ts'
import { native } from '../../src/io/native.ts'

describe("the daemons' malloc settings", () => {
  it('are applied on glibc (this machine), unless turned off or set by the operator', () => {
    assert.equal(tuneAllocator({}), 'tuned')
    assert.equal(tuneAllocator({ VRIO_MALLOC_TUNE: 'off' }), 'off')
    assert.equal(tuneAllocator({ GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=1048576' }), 'operator')
    assert.equal(tuneAllocator({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }), 'tuned')
    assert.equal(tuneAllocator({ MALLOC_MMAP_THRESHOLD_: '262144' }), 'operator')
  })

  it('the addon refuses thresholds glibc would not take, naming the ranges', () => {
    const tune = native().tuneMalloc
    assert.ok(tune, 'the addon has no tuneMalloc: rebuild it')
    assert.equal(tune(MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD), true)
    assert.throws(() => tune(64 * 1024, MALLOC_TRIM_THRESHOLD), /mmapThreshold must be 128 KiB\.\.32 MiB/)
    assert.throws(() => tune(64 * 1024 * 1024, MALLOC_TRIM_THRESHOLD), /mmapThreshold/)
    assert.throws(() => tune(MALLOC_MMAP_THRESHOLD, -1), /trimThreshold 0\.\.1 GiB/)
  })
})

const bin = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))

/** Cpus_allowed_list of each thread of `pid`. */
const threadCpus = (pid: number): string[] =>
  readdirSync(`/proc/${pid}/task`).map(
    (tid) =>
      readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8').match(/^Cpus_allowed_list:\s*(\S+)/m)![1],
  )

describe('--cpus', () => {
  it('pins every thread of the daemon (the IOhyp on the loopback interface) to the CPUs listed', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'vrio-cpus-'))
    const child = spawn(
      process.execPath,
      [
        bin,
        'iohyp',
        '--interface',
        'lo',
        '--state-dir',
        dir,
        '--control',
        join(dir, 'c.sock'),
        '--cpus',
        '0',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )
    let log = ''
    child.stderr.on('data', (d) => (log += d))
    t.after(() => {
      child.kill('SIGKILL')
      rmSync(dir, { recursive: true, force: true })
    })
    for (let i = 0; i < 200 && !log.includes('iohyp started'); i++) await sleep(50)
    assert.match(log, /"msg":"threads pinned","cpus":"0"/)
    assert.match(log, /iohyp started/)
    const cpus = threadCpus(child.pid!)
    assert.ok(cpus.length > 1, 'node runs several threads')
    assert.deepEqual([...new Set(cpus)], ['0'], `threads' CPUs: ${cpus.join(' ')}`)
  })

  it('refuses a CPU the process may not use, naming it, before the daemon starts', () => {
    const r = spawnSync(process.execPath, [bin, 'iohyp', '--interface', 'lo', '--cpus', '1023'], {
      encoding: 'utf8',
    })
    assert.equal(r.status, 2, r.stderr)
    assert.match(r.stderr, /--cpus 1023: none of these CPUs is online and allowed for this process/)
    const g = spawnSync(process.execPath, [bin, 'guest', '--interface', 'lo', '--cpus', '0-x'], {
      encoding: 'utf8',
    })
    assert.notEqual(g.status, 0)
    assert.match(g.stderr, /--cpus '0-x': must be a CPU list/)
  })
})
