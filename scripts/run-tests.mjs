// Runs every compiled test file under dist/test (Node 20's --test takes files, not globs).
//
// One file at a time. VRIO_TEST_LANES=2 runs two lanes side by side, each one file at a time: the
// integration tests (namespaces, daemons, fio; mostly waiting on links and timers) and all the
// others (mostly CPU); the integration lane's output streams, the other lane's is printed when the
// integration lane is done, and the last line adds both up: "N passed, N failed, N skipped".
// Not yet the default: it has not had a full run on a quiet machine.
import { spawn } from 'node:child_process'
import { readdirSync, statSync } from 'node:fs'
import { join, sep } from 'node:path'

const roots = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['dist/test']
const files = []
const walk = (p) => {
  if (statSync(p).isDirectory()) for (const e of readdirSync(p).sort()) walk(join(p, e))
  else if (p.endsWith('.test.js')) files.push(p)
}
for (const r of roots) walk(r)
if (files.length === 0) {
  console.error(`no test files under ${roots.join(', ')}`)
  process.exit(1)
}

const integration = files.filter((f) => f.includes(`${sep}integration${sep}`))
const others = files.filter((f) => !integration.includes(f))
const lanes =
  process.env.VRIO_TEST_LANES !== '2' || integration.length === 0 || others.length === 0
    ? [files]
    : [integration, others]

/** Runs one lane and collects its output; the first lane's is also streamed as it comes. */
function run(laneFiles, stream) {
  const child = spawn(process.execPath, ['--enable-source-maps', '--test', '--test-concurrency=1', ...laneFiles], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  const take = (to) => (d) => {
    out += d
    if (stream) to.write(d)
  }
  child.stdout.on('data', take(process.stdout))
  child.stderr.on('data', take(process.stderr))
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, out })))
}

const results = await Promise.all(lanes.map((l, i) => run(l, i === 0)))
for (const r of results.slice(1)) process.stdout.write(r.out)

if (lanes.length > 1) {
  const totals = { pass: 0, fail: 0, skipped: 0, cancelled: 0 }
  for (const r of results)
    for (const k of Object.keys(totals)) {
      const m = new RegExp(`^(?:# |\\u2139 )${k} (\\d+)$`, 'm').exec(r.out)
      // A lane that printed no summary (it crashed) counts as a failure.
      if (m) totals[k] += Number(m[1])
      else if (k === 'fail') totals.fail++
    }
  console.log(`${totals.pass} passed, ${totals.fail + totals.cancelled} failed, ${totals.skipped} skipped`)
}
process.exit(results.every((r) => r.code === 0) ? 0 : 1)
