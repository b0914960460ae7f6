// Runs every compiled test file under dist/test (Node 20's --test takes files, not globs).
//
// In lanes side by side (VRIO_TEST_LANES, default 2; 1 runs every file in one process, one at a
// time), each lane one file at a time. Files go to lanes longest first, by the seconds measured in
// scripts/test-seconds.json (a file not listed counts 5 s), each to the lane with the least so far:
// most integration tests wait on links, timers and daemons, so two lanes fill 2 cores better than one.
// The first lane's output streams, the others' are printed when it is done, and with more than one
// lane the last line adds them up: "N passed, N failed, N skipped, N todo".
import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, statSync } from 'node:fs'
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

const laneCount = Math.max(1, Math.min(files.length, Number(process.env.VRIO_TEST_LANES ?? 2) || 1))
const seconds = JSON.parse(readFileSync(new URL('./test-seconds.json', import.meta.url), 'utf8'))
const weight = (f) => seconds[f.slice(f.lastIndexOf(`test${sep}`) + 5).split(sep).join('/').replace(/\.js$/, '.ts')] ?? 5
const lanes = Array.from({ length: laneCount }, () => ({ files: [], seconds: 0 }))
for (const f of [...files].sort((a, b) => weight(b) - weight(a))) {
  const lane = lanes.reduce((min, l) => (l.seconds < min.seconds ? l : min))
  lane.files.push(f)
  lane.seconds += weight(f)
}

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

const results = await Promise.all(lanes.map((l, i) => run(l.files, i === 0)))
for (const r of results.slice(1)) process.stdout.write(r.out)

if (lanes.length > 1) {
  const totals = { pass: 0, fail: 0, skipped: 0, cancelled: 0, todo: 0 }
  for (const r of results)
    for (const k of Object.keys(totals)) {
      const m = new RegExp(`^(?:# |\\u2139 )${k} (\\d+)$`, 'm').exec(r.out)
      // A lane that printed no summary (it crashed) counts as a failure.
      if (m) totals[k] += Number(m[1])
      else if (k === 'fail') totals.fail++
    }
  // A todo is a known failure named in its test (it runs, and its result is printed above).
  console.log(
    `${totals.pass} passed, ${totals.fail + totals.cancelled} failed, ${totals.skipped} skipped, ${totals.todo} todo`,
  )
}
process.exit(results.every((r) => r.code === 0) ? 0 : 1)
