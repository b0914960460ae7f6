/** `vrio dashboard`'s server and `vrio top` against a stub daemon (no daemons, no namespaces). */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { request } from 'node:http'
import { createServer } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { topLines } from '../../src/cli/top.ts'
import { computeFigures } from '../../src/dashboard/figures.ts'
import { type Dashboard, hostName, parseListen, startDashboard } from '../../src/dashboard/server.ts'
import { EXIT, isVrioError } from '../../src/errors.ts'
import { VRIO_BIN, vrioAsync } from '../support/daemons.ts'
import { waitUntil } from '../support/wait.ts'
import { iohypText, scrapeOf } from './fixtures.ts'
import { STUB_GUEST, StubDaemon } from './stub-daemon.ts'

function get(
  url: string,
  o: { host?: string; method?: string } = {},
): Promise<{ status: number; type: string; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: o.method ?? 'GET', headers: o.host ? { host: o.host } : {} },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d) => (body += d))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            type: String(res.headers['content-type']),
            body,
            headers: res.headers,
          }),
        )
      },
    )
    req.once('error', reject)
    req.end()
  })
}

describe('vrio dashboard server', () => {
  let stub: StubDaemon
  let d: Dashboard
  before(async () => {
    stub = await new StubDaemon().start()
    d = await startDashboard({ socketPath: stub.path, host: '127.0.0.1', port: 0, intervalMs: 100 })
  })
  after(async () => {
    await d?.close()
    await stub?.stop()
  })

  it('serves the page, its script and uPlot from node_modules', async () => {
    const page = await get(d.url)
    assert.equal(page.status, 200)
    assert.match(page.type, /text\/html/)
    assert.match(page.body, /<script src="\/uplot\/uPlot.iife.min.js">/)
    assert.match(String(page.headers['content-security-policy']), /default-src 'self'/)
    const js = await get(`${d.url}uplot/uPlot.iife.min.js`)
    assert.equal(js.status, 200)
    assert.match(js.body, /uPlot/)
    assert.ok(js.body.length > 10_000)
    assert.equal((await get(`${d.url}uplot/uPlot.min.css`)).status, 200)
    assert.match((await get(`${d.url}app.js`)).body, /vrioDashboard/)
    assert.equal((await get(`${d.url}uplot/../../package.json`)).status, 404)
  })

  it('/api/figures and /api/history: the stub disk, its IOPS rising over time', async () => {
    await waitUntil(() => d.history.length >= 3, 'three points in the history', 10_000)
    const f = JSON.parse((await get(`${d.url}api/figures`)).body)
    assert.equal(f.error, null)
    assert.ok(f.groups.some((g: { id: string }) => g.id === 'disk-iops'))
    assert.equal(f.figures.disks[0].disk, 'd1')
    assert.equal(f.figures.guests[0].guest, STUB_GUEST)
    assert.ok(f.figures.disks[0].iops > 0)
    const h = JSON.parse((await get(`${d.url}api/history`)).body)
    const i = h.series.findIndex((s: { group: string; label: string }) => s.group === 'disk-iops')
    assert.equal(h.series[i].label, `${STUB_GUEST}/d1`)
    assert.ok(h.t.length >= 3)
    assert.ok(h.values[i].every((v: number) => v > 0))
    const last = h.t[h.t.length - 1]
    const later = JSON.parse((await get(`${d.url}api/history?after=${last}`)).body)
    assert.ok(later.t.every((t: number) => t > last))
    assert.equal((await get(`${d.url}api/history?after=soon`)).status, 400)
  })

  it('read-only and localhost-only: POST refused, a foreign Host header refused', async () => {
    assert.equal((await get(`${d.url}api/figures`, { method: 'POST' })).status, 405)
    assert.equal((await get(d.url, { host: 'attacker.example:7171' })).status, 421)
    assert.equal((await get(d.url, { host: `localhost:${new URL(d.url).port}` })).status, 200)
    assert.equal((await get(`${d.url}nope`)).status, 404)
  })

  it('the daemon going away: /api/figures says the scrape fails, the history stays; it recovers', async () => {
    await waitUntil(() => d.history.length >= 2, 'two points in the history', 10_000)
    await stub.close()
    const figures = async () => JSON.parse((await get(`${d.url}api/figures`)).body)
    for (let i = 0; i < 100 && (await figures()).error === null; i++) await sleep(50)
    const down = await figures()
    assert.match(down.error ?? '', /no vrio daemon is listening/)
    assert.equal(down.figures.disks[0].disk, 'd1', 'the last figures are kept')
    assert.ok(JSON.parse((await get(`${d.url}api/history`)).body).t.length >= 2)
    await stub.start()
    for (let i = 0; i < 100 && (await figures()).error !== null; i++) await sleep(50)
    assert.equal((await figures()).error, null)
  })

  it('a port in use and a missing daemon are clear errors at start', async () => {
    const port = Number(new URL(d.url).port)
    await assert.rejects(
      startDashboard({ socketPath: stub.path, host: '127.0.0.1', port }),
      (e: unknown) => isVrioError(e, 'address-in-use') && /127\.0\.0\.1:\d+.*in use/.test(e.message),
    )
    await assert.rejects(startDashboard({ socketPath: `${stub.path}.nope`, port: 0 }), (e: unknown) =>
      isVrioError(e, 'daemon-not-running'),
    )
  })
})

describe('vrio dashboard and top on the command line', () => {
  let stub: StubDaemon
  before(async () => {
    stub = await new StubDaemon().start()
  })
  after(() => stub?.stop())

  it('top --once --json: one document with the disk and a positive IOPS', async () => {
    const r = await vrioAsync(['top', '--once', '--json', '--interval', '0.2', '--socket', stub.path])
    assert.equal(r.status, 0, r.stderr)
    const f = JSON.parse(r.stdout)
    assert.equal(f.disks[0].disk, 'd1')
    assert.ok(f.disks[0].iops > 0)
  })

  it('top --once: a table; control characters in names are printed escaped', async () => {
    stub.diskName = 'evil\x1b[2Jdisk'
    try {
      const r = await vrioAsync(['top', '--once', '--interval', '0.2', '--control', stub.path])
      assert.equal(r.status, 0, r.stderr)
      assert.match(r.stdout, /^DISK +IOPS/m)
      assert.ok(r.stdout.includes(`${STUB_GUEST}/evil\\x1b[2Jdisk`))
      assert.ok(!r.stdout.includes('\x1b'))
    } finally {
      stub.diskName = 'd1'
    }
  })

  it('top --json without --once: one JSON line per refresh until SIGTERM', async () => {
    const child = spawn(process.execPath, [
      VRIO_BIN,
      'top',
      '--json',
      '--interval',
      '0.2',
      '--socket',
      stub.path,
    ])
    let out = ''
    child.stdout.on('data', (b) => (out += b))
    let exited: number | null | undefined
    child.on('exit', (code) => (exited = code))
    await waitUntil(() => out.split('\n').length > 3 || exited !== undefined, 'three JSON lines', 10_000)
    child.kill('SIGTERM')
    await waitUntil(() => exited !== undefined, 'top to exit', 10_000)
    assert.equal(exited, 0)
    const docs = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    assert.ok(docs.length >= 3)
    assert.ok(docs.every((f) => f.disks[0].disk === 'd1' && f.disks[0].iops > 0 && f.seconds > 0))
  })

  it('bad input: a bad --listen, a bad --interval, a missing daemon', async () => {
    let r = await vrioAsync(['dashboard', '--listen', 'localhost', '--socket', stub.path])
    assert.equal(r.status, EXIT.usage)
    assert.match(r.stderr, /--listen "localhost": expected ADDR:PORT/)
    r = await vrioAsync(['top', '--interval', '0', '--socket', stub.path])
    assert.match(r.stderr, /--interval "0"/)
    r = await vrioAsync(['top', '--once', '--socket', `${stub.path}.nope`])
    assert.equal(r.status, EXIT.unavailable)
    assert.match(r.stderr, /no vrio daemon is listening/)
  })

  it('dashboard prints its URL and stops on SIGTERM', async () => {
    const probe = createServer()
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
    const port = (probe.address() as { port: number }).port
    await new Promise((resolve) => probe.close(resolve))
    const child = spawn(process.execPath, [
      VRIO_BIN,
      'dashboard',
      '--listen',
      `127.0.0.1:${port}`,
      '--socket',
      stub.path,
    ])
    let out = ''
    child.stdout.on('data', (b) => (out += b))
    let exited: number | null | undefined
    child.on('exit', (code) => (exited = code))
    await waitUntil(() => out.includes('serving') || exited !== undefined, 'the dashboard to start', 10_000)
    assert.match(out, new RegExp(`serving http://127\\.0\\.0\\.1:${port}/`))
    assert.equal((await get(`http://127.0.0.1:${port}/api/figures`)).status, 200)
    child.kill('SIGTERM')
    await waitUntil(() => exited !== undefined, 'the dashboard to exit', 10_000)
    assert.equal(exited, 0)
  })
})

describe('pure helpers', () => {
  it('parseListen: ADDR:PORT and [v6]:PORT only', () => {
    assert.deepEqual(parseListen('127.0.0.1:7171'), { host: '127.0.0.1', port: 7171 })
    assert.deepEqual(parseListen('[::1]:80'), { host: '::1', port: 80 })
    assert.deepEqual(parseListen('0.0.0.0:0'), { host: '0.0.0.0', port: 0 })
    for (const bad of ['7171', 'localhost', '::1:80', '1.2.3.4:70000', '1.2.3.4:'])
      assert.throws(
        () => parseListen(bad),
        (e: unknown) => isVrioError(e, 'invalid-argument'),
        bad,
      )
  })

  it('hostName: the host part of a Host header', () => {
    assert.equal(hostName('LocalHost:7171'), 'localhost')
    assert.equal(hostName('[::1]:7171'), '[::1]')
    assert.equal(hostName('127.0.0.1'), '127.0.0.1')
  })

  it('topLines: a row per guest, disk and NIC', () => {
    const g = STUB_GUEST
    const a = {
      guest: g,
      disk: 'd1',
      reads: 0,
      writes: 0,
      readBytes: 0,
      writeBytes: 0,
      latencies: [],
      inFlight: 0,
    }
    const f = computeFigures(
      scrapeOf(0, iohypText({ guest: g, disks: [a] })),
      scrapeOf(1000, iohypText({ guest: g, disks: [{ ...a, reads: 1234, readBytes: 1234 * 4096 }] })),
    )
    const lines = topLines(f, '/run/vrio/iohyp.sock')
    assert.match(lines[0], /iohyp\.sock \(iohyp\).*rates over 1\.0 s/)
    assert.ok(lines.some((l) => l.startsWith(g) && /connected/.test(l)))
    const row = lines.find((l) => l.startsWith(`${g}/d1`))
    assert.match(row ?? '', new RegExp(`^${g}/d1 +1234 +1234 +0 +5\\.05 `))
    assert.ok(lines.includes('no NICs'))
  })
})
