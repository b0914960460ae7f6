/**
 * Who gets a read's buffer back after the NBD server has written it: the device that returned it,
 * and only when it pools (BlockDevice.release). A device without release never has its arrays
 * reused, even when they happen to come from the transport's message pool. And the other way: a
 * write payload gathered from several socket reads is reused only once the device has written it.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import { after, afterEach, before, describe, it } from 'node:test'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import { Command } from '../../src/devices/blk/nbd-protocol.ts'
import { NbdServer, type NbdServerStats } from '../../src/devices/blk/nbd-server.ts'
import { messageBuffers } from '../../src/transport/message-buffers.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'
import { waitUntil } from '../support/wait.ts'
import { RawClient } from './nbd-raw-client.ts'

const MiB = 1024 * 1024
const LENGTH = 64 * 1024

/**
 * A device that answers reads with arrays it keeps (a cache of its own), taken from the message
 * pool so that they look exactly like lent messages; `pooling` adds a release that records them.
 */
class KeepingDevice extends MemoryDevice {
  readonly kept: { data: Uint8Array; copy: Buffer }[] = []
  readonly released: Uint8Array[] = []
  readonly release?: (data: Uint8Array) => void

  constructor(pooling: boolean) {
    super({ size: MiB })
    if (pooling) this.release = (data) => this.released.push(data)
  }

  override async read(offset: number, length: number): Promise<Uint8Array> {
    const data = messageBuffers.take(length)
    data.set(await super.read(offset, length))
    this.kept.push({ data, copy: Buffer.from(data) })
    return data
  }
}

describe('NBD server: read buffers go back only to a device that pools', () => {
  let tmp: TempDir
  let server: NbdServer | undefined
  const clients: RawClient[] = []

  before(() => {
    tmp = tempDir('vrio-nbd-buffers-')
  })
  after(() => tmp.remove())
  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy()
    await server?.close()
    server = undefined
  })

  /** Serves `device`, writes a pattern, then reads it back `reads` times (simple and structured). */
  async function readThrough(device: KeepingDevice, reads: number): Promise<void> {
    const path = tmp.path(`${randomBytes(4).toString('hex')}.sock`)
    server = new NbdServer({ path, lookup: (name) => (name === 'd' ? device : undefined) })
    await server.listen()
    const pattern = randomBytes(LENGTH)
    await device.write(0, pattern, false)
    for (const structured of [false, true]) {
      const c = await RawClient.connect(path)
      clients.push(c)
      await c.attach('d', { structured })
      for (let i = 0; i < reads; i++) {
        c.request({ type: Command.Read, cookieLow: i + 1, offset: 0, length: LENGTH })
        const r = await c.reply(new Map([[i + 1, LENGTH]]))
        assert.equal(r.error, 0)
        assert.deepEqual(r.data, pattern)
      }
    }
  }

  it('never recycles the arrays of a device without release (its cache stays intact)', async () => {
    const device = new KeepingDevice(false)
    const pooled = messageBuffers.pooledBytes
    await readThrough(device, 4)
    assert.equal(device.kept.length, 8)
    assert.equal(messageBuffers.pooledBytes, pooled, 'nothing of the device went into the pool')
    // Whoever takes memory from the pool next must not get (and overwrite) the device's arrays.
    const next = Array.from({ length: 8 }, () => messageBuffers.take(LENGTH).fill(0xee))
    for (const { data, copy } of device.kept) {
      assert.ok(!next.some((n) => n.buffer === data.buffer), 'a kept array was lent again')
      assert.deepEqual(Buffer.from(data), copy, 'a kept array was overwritten')
    }
  })

  it('gives a pooling device back each array it returned, once, after the reply is written', async () => {
    const device = new KeepingDevice(true)
    await readThrough(device, 3)
    await waitUntil(() => device.released.length === device.kept.length, 'every read array released')
    assert.equal(device.kept.length, 6)
    for (const [i, { data }] of device.kept.entries()) assert.equal(device.released[i], data, `array ${i}`)
  })
})

/** Records the arrays it was asked to write (and a copy of each), and can be made to fail. */
class RecordingDevice extends MemoryDevice {
  readonly written: { data: Uint8Array; copy: Buffer }[] = []
  failing = false

  constructor() {
    super({ size: 8 * MiB })
  }

  override async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    this.written.push({ data, copy: Buffer.from(data) })
    if (this.failing) throw new Error('failing on purpose')
    return super.write(offset, data, fua)
  }
}

describe('NBD server: write payloads are reused once written, never before', () => {
  let tmp: TempDir
  let server: NbdServer | undefined
  let client: RawClient | undefined

  before(() => {
    tmp = tempDir('vrio-nbd-payloads-')
  })
  after(() => tmp.remove())
  afterEach(async () => {
    client?.destroy()
    await server?.close()
    server = undefined
  })

  async function serve(device: RecordingDevice): Promise<RawClient> {
    const path = tmp.path(`${randomBytes(4).toString('hex')}.sock`)
    server = new NbdServer({ path, lookup: (name) => (name === 'd' ? device : undefined) })
    await server.listen()
    client = await RawClient.connect(path)
    await client.attach('d', { structured: false })
    return client
  }

  /** One 1 MiB write of `pattern` at `offset`, its payload sent in 64 KiB pieces; the reply's error. */
  async function write(c: RawClient, cookie: number, offset: number, pattern: Buffer): Promise<number> {
    c.request({ type: Command.Write, cookieLow: cookie, offset, length: pattern.length })
    for (let at = 0; at < pattern.length; at += 64 * 1024) {
      c.write(pattern.subarray(at, at + 64 * 1024))
      await new Promise((r) => setImmediate(r))
    }
    return (await c.reply(new Map([[cookie, 0]]))).error
  }

  it('gathers each into the pool, takes a written one back, and leaves every write intact', async () => {
    const device = new RecordingDevice()
    const c = await serve(device)
    const patterns = [randomBytes(MiB), randomBytes(MiB), randomBytes(MiB)]
    for (const [i, p] of patterns.entries()) assert.equal(await write(c, i + 1, i * MiB, p), 0)
    assert.equal(device.written.length, 3)
    const buffers = new Set(device.written.map((w) => w.data.buffer))
    assert.ok(buffers.size < 3, 'a payload written was reused for a later one')
    for (const [i, p] of patterns.entries()) {
      assert.deepEqual(device.written[i].copy, p, `write ${i} arrived whole`)
      assert.deepEqual(Buffer.from(await device.read(i * MiB, MiB)), p, `write ${i} on the device`)
    }
  })

  it('never reuses the payload of a write that failed (the device may still hold it)', async () => {
    const device = new RecordingDevice()
    const c = await serve(device)
    device.failing = true
    assert.notEqual(await write(c, 1, 0, randomBytes(MiB)), 0)
    device.failing = false
    const failed = device.written[0]
    assert.equal(await write(c, 2, MiB, randomBytes(MiB)), 0)
    assert.equal(await write(c, 3, 2 * MiB, randomBytes(MiB)), 0)
    for (const w of device.written.slice(1)) assert.notEqual(w.data.buffer, failed.data.buffer)
    assert.deepEqual(Buffer.from(failed.data), failed.copy, 'the failed payload was not overwritten')
  })
})

/** Holds every write until released, keeping the array it was given (not a copy). */
class HoldingDevice extends MemoryDevice {
  readonly held: { offset: number; data: Uint8Array; done: () => void }[] = []

  constructor() {
    super({ size: MiB })
  }

  override write(offset: number, data: Uint8Array): Promise<void> {
    return new Promise((resolve) => this.held.push({ offset, data, done: resolve }))
  }
}

describe('NBD server: every connection reads into one buffer of the server', () => {
  let tmp: TempDir
  let server: NbdServer | undefined
  const clients: RawClient[] = []

  before(() => {
    tmp = tempDir('vrio-nbd-readbuf-')
  })
  after(() => tmp.remove())
  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy()
    await server?.close()
    server = undefined
  })

  async function connect(path: string): Promise<RawClient> {
    const c = await RawClient.connect(path)
    clients.push(c)
    return c
  }

  it('hands a device no view of that buffer: payloads still held survive later reads', async () => {
    const device = new HoldingDevice()
    const path = tmp.path('held.sock')
    server = new NbdServer({ path, lookup: (name) => (name === 'd' ? device : undefined) })
    await server.listen()
    const a = await connect(path)
    const b = await connect(path)
    await a.attach('d', { structured: false })
    await b.attach('d', { structured: false })
    // Small writes, several to one socket read, on two connections; the device holds them all
    // while later reads (of either connection) land in the same buffer.
    const payloads = Array.from({ length: 32 }, () => randomBytes(4096))
    for (const [i, p] of payloads.entries()) {
      const c = i % 2 === 0 ? a : b
      c.request({ type: Command.Write, cookieLow: i + 1, offset: i * 4096, length: 4096 }, p)
      if (i % 8 === 7) await waitUntil(() => device.held.length === i + 1, `${i + 1} writes held`)
    }
    assert.equal(device.held.length, payloads.length)
    for (const h of device.held) {
      const i = h.offset / 4096
      assert.deepEqual(Buffer.from(h.data), payloads[i], `write ${i + 1} still holds its own payload`)
    }
    for (const h of device.held) h.done()
    for (const c of [a, b]) {
      const cookies = new Map(payloads.map((_, i) => [i + 1, 0]))
      for (let k = 0; k < payloads.length / 2; k++) assert.equal((await c.reply(cookies)).error, 0)
    }
  })

  it('gives each connection a 4 MiB send buffer (a 1 MiB reply in one write, not five)', async () => {
    const path = tmp.path('sndbuf.sock')
    server = new NbdServer({ path, lookup: () => new MemoryDevice({ size: MiB }) })
    await server.listen()
    const c = await connect(path)
    await c.attach('')
    // ss shows the server's end under the socket's path; the kernel doubles what was asked.
    const line = execFileSync('ss', ['-x', '-m', 'src', path], { encoding: 'utf8' })
    const tb = /skmem:\([^)]*\btb(\d+)/.exec(line)
    assert.ok(tb, `no socket memory in ss's output:\n${line}`)
    assert.equal(Number(tb[1]), 2 * 4 * MiB)
  })

  it('refuses connections beyond maxConnections and takes new ones once one has gone', async () => {
    const path = tmp.path('max.sock')
    server = new NbdServer({ path, lookup: () => new MemoryDevice({ size: MiB }), maxConnections: 1 })
    await server.listen()
    const first = await connect(path)
    await first.attach('')
    const second = await connect(path)
    await second.expectClose()
    assert.equal(server.stats().connections, 1)
    assert.equal(server.stats().refused, 1)
    first.request({ type: Command.Read, cookieLow: 7, offset: 0, length: 512 })
    assert.equal((await first.reply(new Map([[7, 512]]))).error, 0, 'the first connection still works')
    first.destroy()
    await waitUntil(() => server!.stats().connections === 0, 'the first connection gone')
    const third = await connect(path)
    await third.attach('')
  })
})

describe('NBD server: out of file descriptors', () => {
  let tmp: TempDir
  const clients: RawClient[] = []
  let child: ChildProcess | undefined

  before(() => {
    tmp = tempDir('vrio-nbd-emfile-')
  })
  after(() => tmp.remove())
  afterEach(() => {
    for (const c of clients.splice(0)) c.destroy()
    child?.kill('SIGKILL')
  })

  it('waits and retries instead of spinning, counts it, and takes connections again', async () => {
    const path = tmp.path('emfile.sock')
    const server = fileURLToPath(new URL('../../src/devices/blk/nbd-server.js', import.meta.url))
    const memory = fileURLToPath(new URL('../../src/devices/blk/memory-device.js', import.meta.url))
    // A server in a process of its own with few descriptors; it prints its stats on each line in.
    const script = `
      const { NbdServer } = await import(${JSON.stringify(server)})
      const { MemoryDevice } = await import(${JSON.stringify(memory)})
      const s = new NbdServer({ path: ${JSON.stringify(path)}, lookup: () => new MemoryDevice({ size: 1 << 20 }) })
      await s.listen()
      console.log(JSON.stringify(s.stats()))
      process.stdin.on('data', () => console.log(JSON.stringify(s.stats())))`
    child = spawn('prlimit', ['--nofile=40:40', process.execPath, '--input-type=module', '-e', script], {
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    const lines: string[] = []
    child.stdout!.on('data', (d: Buffer) => lines.push(...d.toString().split('\n').filter(Boolean)))
    const stats = async (): Promise<NbdServerStats> => {
      const n = lines.length
      child!.stdin!.write('\n')
      await waitUntil(() => lines.length > n, 'the server to print its stats')
      return JSON.parse(lines[lines.length - 1])
    }
    await waitUntil(() => lines.length > 0, 'the server to listen')
    // Connect until the server cannot take more: its descriptors run out long before 100.
    for (let i = 0; i < 100; i++) clients.push(await RawClient.connect(path))
    for (let i = 0; (await stats()).acceptErrors === 0; i++) {
      assert.ok(i < 100, 'no accept failed with 100 connections against 40 descriptors')
      await new Promise((r) => setTimeout(r, 50))
    }
    const cpu = () => {
      const f = readFileSync(`/proc/${child!.pid}/stat`, 'utf8').split(') ')[1].split(' ')
      return (Number(f[11]) + Number(f[12])) / 100 // utime + stime, in clock ticks of 1/100 s
    }
    // Connections still queued keep the socket readable: a listener that retried at once would
    // burn a CPU here.
    const before = cpu()
    await new Promise((r) => setTimeout(r, 2000))
    const used = cpu() - before
    assert.ok(used < 0.5, `the server used ${used} s of CPU in 2 s while out of descriptors`)
    assert.ok((await stats()).acceptErrors >= 2, 'it tried again')
    // Descriptors free again (the clients gone, their queued connections taken and closed): a
    // new connection is served.
    for (const c of clients.splice(0)) c.destroy()
    const c = await RawClient.connect(path)
    clients.push(c)
    await c.attach('')
    c.request({ type: Command.Read, cookieLow: 1, offset: 0, length: 512 })
    assert.equal((await c.reply(new Map([[1, 512]]))).error, 0)
  })
})
