/** `npm run bench -- NAME`: runs bench/NAME.ts (compiled) in a child with the flags benchmarks need. */
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const dir = fileURLToPath(new URL('.', import.meta.url))
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.js') && f !== 'run.js' && !f.endsWith('-peer.js'))
  .map((f) => f.slice(0, -3))
const names = process.argv.slice(2)
if (names.length === 0 || names.some((n) => !available.includes(n))) {
  console.error(`usage: npm run bench -- NAME...   (NAME: ${available.join(', ')})`)
  process.exit(2)
}
for (const name of names) {
  const r = spawnSync(process.execPath, ['--expose-gc', '--max-semi-space-size=128', `${dir}${name}.js`], {
    stdio: 'inherit',
  })
  if (r.status !== 0) process.exit(r.status ?? 1)
}
