import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { IoError, PacketSocket, TapDevice, interfaceInfo, isIoError } from '../../src/io/index.ts'
import type { Netns, VethPair } from '../support/netns.ts'
import {
  cleanupNetns,
  createNetns,
  createVethPair,
  ip,
  remainingNetns,
  requireRoot,
} from '../support/netns.ts'

const ioIndex = fileURLToPath(new URL('../../src/io/index.js', import.meta.url))

interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** ms from the child's 'closed' line to its exit. */
  afterMark: number
}

function runChild(script: string, timeoutMs: number): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let mark = 0
    child.stdout.on('data', (d: Buffer) => {
      stdout += d
      if (!mark && stdout.includes('MARK')) mark = performance.now()
    })
    child.stderr.on('data', (d: Buffer) => {
      stderr += d
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, afterMark: mark ? performance.now() - mark : Number.NaN })
    })
  })
}

describe('errors and lifecycle', () => {
  let ns: Netns
  let veth: VethPair

  before(() => {
    requireRoot()
    ns = createNetns()
    veth = createVethPair(ns, createNetns())
  })

  after(() => {
    cleanupNetns()
    assert.deepEqual(remainingNetns(), [])
  })

  test('an unknown interface is an IoError ENODEV naming the interface', () => {
    const err = (() => {
      try {
        PacketSocket.open({ ifname: 'nosuch-if0', netns: ns.path })
      } catch (e) {
        return e
      }
      assert.fail('open succeeded')
    })()
    assert.ok(err instanceof IoError)
    assert.ok(err instanceof Error)
    assert.ok(isIoError(err, 'ENODEV'))
    assert.equal(err.errnoName, 'ENODEV')
    assert.equal(err.code, 'unknown-interface')
    assert.equal(err.errno, -19)
    assert.equal(err.syscall, 'ioctl')
    assert.equal(err.ifname, 'nosuch-if0')
    assert.match(err.message, /nosuch-if0/)
    assert.match(err.message, /^ENODEV: /)
    assert.throws(
      () => interfaceInfo('nosuch-if0', ns.path),
      (e: unknown) => isIoError(e, 'ENODEV'),
    )
    // The same name in the root namespace, for good measure.
    assert.throws(
      () => PacketSocket.open({ ifname: 'nosuch-if0' }),
      (e: unknown) => isIoError(e, 'ENODEV'),
    )
  })

  test('a bad namespace path and an over-long TAP name are typed errors too', () => {
    assert.throws(
      () => PacketSocket.open({ ifname: 'lo', netns: '/run/netns/vrio-does-not-exist' }),
      (e: unknown) => isIoError(e, 'ENOENT') && e.syscall === 'open' && /vrio-does-not-exist/.test(e.message),
    )
    assert.throws(
      () => TapDevice.open({ name: 'a-name-longer-than-15', netns: ns.path }),
      (e: unknown) => isIoError(e, 'EINVAL'),
    )
  })

  test('interfaceInfo reads index, MAC and MTU inside another namespace', () => {
    ip(ns, ['link', 'set', veth.a.ifname, 'mtu', '1400'])
    const info = interfaceInfo(veth.a.ifname, ns.path)
    const shown = JSON.parse(ip(ns, ['-j', 'link', 'show', 'dev', veth.a.ifname]))[0]
    assert.deepEqual(info, { name: veth.a.ifname, ifindex: shown.ifindex, mac: shown.address, mtu: 1400 })
    assert.equal(interfaceInfo('lo', ns.path).mac, '00:00:00:00:00:00')
  })

  test('close twice is harmless; use after close is EBADF', () => {
    const s = PacketSocket.open({ ifname: veth.a.ifname, netns: ns.path })
    s.onBatch(() => {})
    s.close()
    s.close()
    assert.equal(s.closed, true)
    assert.throws(
      () => s.send([Buffer.alloc(60)]),
      (e: unknown) => isIoError(e, 'EBADF'),
    )
    s.ref().unref()
    const t = TapDevice.open({ netns: ns.path })
    t.close()
    t.close()
  })

  test('close() from inside the batch handler stops delivery', async () => {
    const rx = PacketSocket.open({ ifname: veth.a.ifname, netns: ns.path, rxBatch: 1 })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: ns.path, protocol: 0 })
    let calls = 0
    rx.onBatch(() => {
      calls++
      rx.close()
    })
    const f = Buffer.alloc(60, 0xff)
    tx.send([f, f, f, f, f, f, f, f])
    await new Promise((r) => setTimeout(r, 100))
    tx.close()
    assert.equal(calls, 1)
  })

  test('the process exits promptly after close(), and an open reading socket keeps it alive', async () => {
    const open = `const { PacketSocket } = await import(${JSON.stringify(ioIndex)});
      const s = PacketSocket.open({ ifname: ${JSON.stringify(veth.a.ifname)}, netns: ${JSON.stringify(ns.path)} });
      s.onBatch(() => {});`
    const closed = await runChild(`${open} s.close(); console.log('MARK');`, 5000)
    assert.equal(closed.code, 0, closed.stderr)
    assert.ok(closed.afterMark < 1000, `exited ${closed.afterMark.toFixed(0)} ms after close`)

    const unrefd = await runChild(`${open} s.unref(); console.log('MARK');`, 5000)
    assert.equal(unrefd.code, 0, unrefd.stderr)
    assert.ok(unrefd.afterMark < 1000, `exited ${unrefd.afterMark.toFixed(0)} ms after unref`)

    const held = await runChild(`${open} console.log('MARK');`, 1500)
    assert.equal(held.signal, 'SIGKILL', 'a ref()ed open socket keeps the event loop alive')
  })

  test('an exception in a batch handler surfaces as an uncaught exception, and reading goes on', async () => {
    const script = `const { PacketSocket } = await import(${JSON.stringify(ioIndex)});
      const rx = PacketSocket.open({ ifname: ${JSON.stringify(veth.a.ifname)}, netns: ${JSON.stringify(ns.path)}, rxBatch: 1 });
      const tx = PacketSocket.open({ ifname: ${JSON.stringify(veth.a.ifname)}, netns: ${JSON.stringify(ns.path)}, protocol: 0 });
      let n = 0;
      process.on('uncaughtException', (e) => { console.log('caught', e.message); });
      rx.onBatch(() => { n++; if (n === 1) throw new Error('boom'); if (n === 2) { console.log('second'); rx.close(); tx.close(); } });
      tx.send([Buffer.alloc(60, 1)]);
      setTimeout(() => tx.send([Buffer.alloc(60, 2)]), 50);`
    const r = await runChild(script, 5000)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /caught boom\nsecond/)
  })
})
