import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { cleanupNetns, remainingNetns, requireRoot } from '../support/netns.ts'

const support = fileURLToPath(new URL('../support/netns.js', import.meta.url))

function child(
  body: string,
  signalAfterReady?: NodeJS.Signals,
): Promise<{ prefix: string; code: number | null; signal: string | null }> {
  const script = `const h = await import(${JSON.stringify(support)});
    const a = h.createNetns(); const b = h.createNetns(); h.createVethPair(a, b, { mtu: 9000 });
    console.log('PREFIX ' + h.RUN_PREFIX);
    ${body}`
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    c.stdout.on('data', (d: Buffer) => {
      out += d
      if (signalAfterReady && out.includes('PREFIX ')) c.kill(signalAfterReady)
    })
    c.stderr.resume()
    c.on('error', reject)
    c.on('exit', (code, signal) => {
      const m = /PREFIX (\S+)/.exec(out)
      if (!m) reject(new Error(`child printed no prefix: ${out}`))
      else resolve({ prefix: m[1], code, signal })
    })
  })
}

after(() => {
  cleanupNetns()
  assert.deepEqual(remainingNetns(), [])
})

test('namespaces are removed even when the test process dies of an uncaught exception', async () => {
  requireRoot()
  const r = await child(`throw new Error('deliberate failure')`)
  assert.notEqual(r.code, 0)
  assert.deepEqual(remainingNetns(r.prefix), [])
})

test('namespaces are removed when the test process is terminated by a signal', async () => {
  requireRoot()
  const r = await child(`setInterval(() => {}, 1000)`, 'SIGTERM')
  assert.equal(r.signal, 'SIGTERM')
  assert.deepEqual(remainingNetns(r.prefix), [])
})

test('namespaces are removed on a normal exit without explicit cleanup', async () => {
  requireRoot()
  const r = await child('')
  assert.equal(r.code, 0)
  assert.deepEqual(remainingNetns(r.prefix), [])
})
