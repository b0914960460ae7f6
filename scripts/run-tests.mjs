// Runs every compiled test file under dist/test (Node 20's --test takes files, not globs).
import { spawnSync } from 'node:child_process'
import { readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

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
const result = spawnSync(
  process.execPath,
  ['--enable-source-maps', '--test', '--test-concurrency=1', ...files],
  {
    stdio: 'inherit',
  },
)
process.exit(result.status ?? 1)
