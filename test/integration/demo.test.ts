/**
 * `vrio demo`, the README's main job: it passes and leaves nothing behind (namespaces, loop
 * devices, mounts, processes, files), also when interrupted halfway with Ctrl-C (SIGINT).
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { it } from 'node:test'
import { VRIO_BIN } from '../support/daemons.ts'
import { requireRoot } from '../support/netns.ts'

function runDemo(interruptAt?: RegExp): Promise<{ code: number | null; out: string; pid: number }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [VRIO_BIN, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let sent = false
    const take = (d: Buffer) => {
      out += d.toString()
      if (interruptAt && !sent && interruptAt.test(out)) {
        sent = true
        child.kill('SIGINT')
      }
    }
    child.stdout.on('data', take)
    child.stderr.on('data', take)
    child.on('exit', (code) => resolve({ code, out, pid: child.pid! }))
  })
}

/** What a demo run with this pid could have left behind. */
function leftovers(pid: number): string[] {
  const tag = `vrio-demo-${pid}`
  const found: string[] = []
  const netns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
  if (netns.includes(tag)) found.push(`namespaces: ${netns}`)
  const loops = execFileSync('losetup', ['-a'], { encoding: 'utf8' })
  if (loops.includes(tag)) found.push(`loop devices: ${loops}`)
  const mounts = execFileSync('cat', ['/proc/mounts'], { encoding: 'utf8' })
  if (mounts.includes(tag)) found.push(`mounts: ${mounts}`)
  const procs = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes(tag))
  if (procs.length > 0) found.push(`processes: ${procs.join('; ')}`)
  const files = readdirSync(tmpdir()).filter((f) => f.startsWith(tag))
  if (files.length > 0) found.push(`files: ${files.join(', ')}`)
  return found
}

it('vrio demo passes, reports its figures and removes everything it created', {
  timeout: 240_000,
}, async () => {
  requireRoot()
  const r = await runDemo()
  assert.equal(r.code, 0, r.out)
  assert.match(r.out, /\[9\/9\] tearing down/)
  assert.match(
    r.out,
    /guest1: \/dev\/loop\d+ +write \d+ MB\/s +read \d+ MB\/s +sha256 verified +4k randread QD32 \d+ IOPS/,
  )
  assert.match(r.out, /guest2: \/dev\/loop\d+/)
  assert.match(r.out, /ping RTT [\d.]+ ms +iperf3 TCP [\d.]+ Gbit\/s/)
  assert.match(r.out, /demo passed/)
  assert.deepEqual(leftovers(r.pid), [])
})

it('vrio demo interrupted halfway (SIGINT) cleans up and exits 130', { timeout: 120_000 }, async () => {
  requireRoot()
  const r = await runDemo(/\[6\/9\] formatting/)
  assert.equal(r.code, 130, r.out)
  assert.match(r.out, /interrupted/)
  assert.deepEqual(leftovers(r.pid), [])
})
