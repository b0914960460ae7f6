/**
 * `vrio dashboard` in headless Chromium and `vrio top` under tmux, against a real IOhyp and guest
 * while fio runs on a remote disk (issue 18's must-holds): the page shows every guest and device
 * and its plotted IOPS change; top shows the running disk's IOPS within 10 % of fio's.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { mkdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { type Browser, chromium } from 'playwright-core'
import type { DiskInfo } from '../../src/control/api.ts'
import { fio, sparseFile } from '../support/block-io.ts'
import { killDaemons, VRIO_BIN, vrioAsync } from '../support/daemons.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink, worldOnBridge } from '../support/topology.ts'
import { onBridge, VrioPair } from '../support/vrio-pair.ts'
import { waitUntil } from '../support/wait.ts'

const CHROMIUM = '/usr/bin/chromium'
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
]
/** Where screenshots go: $VRIO_ARTEFACTS, else test-artefacts/ (gitignored). */
const ARTEFACTS = resolve(process.env.VRIO_ARTEFACTS ?? 'test-artefacts')
const MiB = 1024 * 1024

after(async () => {
  await killDaemons()
  cleanupNetns()
})

/** fio random reads held at `iops` for `seconds` on the disk's NBD export. */
function steadyReads(disk: DiskInfo, iops: number, seconds: number) {
  return fio(disk.nbd!, [
    // Jobs as threads: one process, so killing it (a failed test's cleanup) leaves no job behind.
    '--thread',
    '--rw=randread',
    '--bs=4k',
    '--iodepth=4',
    `--rate_iops=${iops}`,
    '--time_based',
    `--runtime=${seconds}`,
  ])
}

function fioReadIops(json: unknown): number {
  return (json as { jobs: { read: { iops: number } }[] }).jobs[0].read.iops
}

describe('dashboard and top on a live IOhyp with fio running', () => {
  let pair: VrioPair
  let disk: DiskInfo
  const nicName = 'vd1'
  before(async () => {
    requireRoot()
    const t = directLink()
    pair = new VrioPair(t.a, t.b)
    await pair.start()
    worldOnBridge(t.a.ns)
    await pair.createNic(nicName, '02:77:00:00:0d:01', onBridge('vtd1'))
    const backing = join(pair.dir, 'dash.img')
    sparseFile(backing, 64 * MiB)
    disk = await pair.createDisk(backing, 'dash')
  })
  after(() => pair?.stop())

  it('headless Chromium: every guest and device shown, plotted IOPS change while fio runs; screenshot', async () => {
    const dashboard = spawn(process.execPath, [
      VRIO_BIN,
      'dashboard',
      '--listen',
      '127.0.0.1:0',
      '--control',
      pair.sock('iohyp'),
    ])
    let out = ''
    let err = ''
    dashboard.stdout.on('data', (d) => (out += d))
    dashboard.stderr.on('data', (d) => (err += d))
    let browser: Browser | undefined
    let job: ReturnType<typeof fio> | undefined
    try {
      await waitUntil(
        () => /serving (http:\S+)/.test(out) || dashboard.exitCode !== null,
        'the dashboard',
        15_000,
      )
      const url = /serving (http:\S+)/.exec(out)?.[1]
      assert.ok(url, `dashboard did not start: ${err}`)
      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS })
      const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } })
      await page.goto(url)
      const diskLabel = `${pair.guestMac}/dash`
      const nicLabel = `${pair.guestMac}/${nicName}`
      // Every guest (connected), disk and NIC in the tables.
      await page.waitForSelector(`#guests tr[data-name="${pair.guestMac}"]`, { timeout: 15_000 })
      assert.match((await page.textContent(`#guests tr[data-name="${pair.guestMac}"]`)) ?? '', /connected/)
      await page.waitForSelector(`#disks tr[data-name="${diskLabel}"]`, { timeout: 15_000 })
      await page.waitForSelector(`#nics tr[data-name="${nicLabel}"]`, { timeout: 15_000 })
      // The IOPS plot's data for the disk: what uPlot was given to draw.
      const plotted = () =>
        page.evaluate((label) => {
          const u = (
            globalThis as unknown as {
              vrioDashboard: {
                plots: Record<string, { series: { label?: string }[]; data: (number | null)[][] }>
              }
            }
          ).vrioDashboard.plots['disk-iops']
          const i = u ? u.series.findIndex((s) => s.label === label) : -1
          return i < 0 ? null : u.data[i].slice()
        }, diskLabel)
      for (let i = 0; i < 100 && ((await plotted())?.length ?? 0) < 2; i++) await sleep(200)
      const idle = (await plotted()) ?? []
      assert.ok(idle.length >= 2, 'the disk is plotted before fio starts')
      assert.ok(
        idle.every((v) => v === 0),
        `idle disk plotted at 0 IOPS: ${idle}`,
      )
      job = steadyReads(disk, 500, 10)
      const positive = (vs: (number | null)[]) => vs.filter((v) => v !== null && v > 0).length
      for (let i = 0; i < 75 && positive((await plotted()) ?? []) < 3; i++) await sleep(200)
      // The page the operator sees, with fio running.
      mkdirSync(ARTEFACTS, { recursive: true })
      const shot = join(ARTEFACTS, 'dashboard.png')
      await page.screenshot({ path: shot, fullPage: true })
      assert.ok(statSync(shot).size > 10_000, 'a real screenshot')
      const { code, json, stderr } = await job.result
      assert.equal(code, 0, `fio failed: ${stderr}`)
      // fio's own average (a loaded machine may not reach the rate): the plot must have followed it.
      const fioIops = fioReadIops(json)
      await sleep(1500)
      const busy = (await plotted()) ?? []
      const near = busy.filter((v) => v !== null && v > 0.3 * fioIops)
      assert.ok(
        fioIops > 20 && near.length >= 3,
        `plotted IOPS rose while fio ran (fio: ${fioIops.toFixed(1)}): ${busy.slice(-20)}`,
      )
      assert.ok(
        busy.slice(0, idle.length).every((v) => v === 0),
        'the same plot still holds the idle points',
      )
    } finally {
      job?.child.kill('SIGKILL')
      await browser?.close()
      dashboard.kill('SIGTERM')
      await waitUntil(
        () => dashboard.exitCode !== null || dashboard.signalCode !== null,
        'dashboard exit',
        10_000,
      )
    }
  })

  it("tmux: `vrio top` shows the running disk's IOPS within 10 % of fio's", async () => {
    const server = `vrio-top-${process.pid}`
    const tmux = (args: string[]) => execFileSync('tmux', ['-L', server, ...args], { encoding: 'utf8' })
    tmux([
      '-f',
      '/dev/null',
      'new-session',
      '-d',
      '-s',
      'top',
      '-x',
      '200',
      '-y',
      '40',
      'bash --norc --noprofile',
    ])
    let job: ReturnType<typeof fio> | undefined
    try {
      tmux([
        'send-keys',
        '-t',
        'top',
        `${process.execPath} ${VRIO_BIN} top --control ${pair.sock('iohyp')}`,
        'Enter',
      ])
      const row = new RegExp(`^${pair.guestMac}/dash +(\\d+) `, 'm')
      const screen = () => tmux(['capture-pane', '-p', '-t', 'top'])
      for (let i = 0; i < 75 && !row.test(screen()); i++) await sleep(200)
      assert.match(screen(), row, 'top shows the disk')
      assert.match(screen(), new RegExp(`^${pair.guestMac} +connected`, 'm'))
      const rate = 400
      job = steadyReads(disk, rate, 12)
      // Past fio's start, read top's figure once a second over the steady middle of the run.
      await sleep(3500)
      const seen: number[] = []
      for (let i = 0; i < 6; i++) {
        const m = row.exec(screen())
        if (m) seen.push(Number(m[1]))
        await sleep(1000)
      }
      const { code, json, stderr } = await job.result
      assert.equal(code, 0, `fio failed: ${stderr}`)
      const fioIops = fioReadIops(json)
      assert.ok(fioIops > rate * 0.8, `fio held its rate: ${fioIops}`)
      seen.sort((a, b) => a - b)
      const median = seen[Math.floor(seen.length / 2)]
      assert.ok(seen.length >= 5, `top's row read: ${seen}`)
      assert.ok(
        Math.abs(median - fioIops) <= 0.1 * fioIops,
        `top showed ${median} IOPS (samples ${seen}), fio ${fioIops.toFixed(1)}`,
      )
      // q quits and gives the terminal back.
      tmux(['send-keys', '-t', 'top', 'q'])
      for (let i = 0; i < 50 && row.test(screen()); i++) await sleep(100)
      assert.doesNotMatch(screen(), row, 'top left the alternate screen')
    } finally {
      job?.child.kill('SIGKILL')
      try {
        tmux(['kill-server'])
      } catch {}
    }
  })

  it('top --guest --once --json on the guest agent: its disk, IOPS and end-to-end latency', async () => {
    const job = steadyReads(disk, 300, 6)
    try {
      await sleep(1500)
      const r = await vrioAsync([
        'top',
        '--guest',
        '--once',
        '--json',
        '--interval',
        '2',
        '--control',
        pair.sock('guest'),
      ])
      assert.equal(r.status, 0, r.stderr)
      const f = JSON.parse(r.stdout)
      assert.equal(f.role, 'guest')
      const d = f.disks.find((x: { disk: string }) => x.disk === 'dash')
      assert.ok(d, `the guest agent's disks: ${r.stdout}`)
      assert.equal(d.guest, '')
      assert.ok(d.iops > 150, `iops ${d.iops}`)
      assert.ok(d.p50 > 0 && d.p99 >= d.p50, `p50 ${d.p50} p99 ${d.p99}`)
      assert.equal((await job.result).code, 0)
    } finally {
      job.child.kill('SIGKILL')
    }
  })
})
