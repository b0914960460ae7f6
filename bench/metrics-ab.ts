/**
 * Metrics on vs off on one loaded machine: one IOhyp and guest (both with --metrics, as a user who
 * turned metrics on), one disk, one fio job running throughout, and the 1 s scrape of both daemons
 * switched on and off in alternating windows (BENCH_WINDOW seconds, default 4; BENCH_WINDOWS pairs,
 * default 8). Fresh daemons per setting, minutes apart (bench/blk.ts BENCH_METRICS=1), compare
 * runs under whatever else the machine did meanwhile; alternating windows of one run share it.
 * Per window: the IOhyp's bytes (from its own counters, read once at each window's edge in both
 * settings) and both daemons' CPU (/proc/PID/task/* /schedstat). BENCH_CASE: fio arguments
 * (default 1 MiB sequential reads, QD8).
 *   npm run bench -- metrics-ab         (root; fio)
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { closeSync, openSync, rmSync, writeSync } from 'node:fs'
import { request } from 'node:http'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { cleanupNetns } from '../test/support/netns.ts'
import { directLink } from '../test/support/topology.ts'
import { VrioPair } from '../test/support/vrio-pair.ts'
import { range } from './support/baselines.ts'
import { cpuNs } from './support/nic-world.ts'
import { startScraper } from './support/metrics-scraper.ts'

const WINDOW = Number(process.env.BENCH_WINDOW ?? 4)
const WINDOWS = Number(process.env.BENCH_WINDOWS ?? 8)
const CASE = (process.env.BENCH_CASE ?? '--rw=read --bs=1m --iodepth=8').split(' ')
const SIZE = 512 * 1024 * 1024

function get(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request({ socketPath, path: '/metrics', agent: false }, (res) => {
      let s = ''
      res.on('data', (d) => (s += d))
      res.on('end', () => resolve(s))
    })
      .on('error', reject)
      .end()
  })
}

/** The IOhyp's bytes read and written so far (vrio_disk_bytes_total). */
async function diskBytes(sock: string): Promise<number> {
  let n = 0
  for (const m of (await get(sock)).matchAll(/^vrio_disk_bytes_total\{[^}]*\} (\S+)$/gm)) n += Number(m[1])
  return n
}

const backing = `/dev/shm/vrio-bench-ab-${process.pid}.img`
const link = directLink()
const pair = new VrioPair(link.a, link.b, {
  iohypOptions: ['--metrics', '127.0.0.1:9860'],
  guestOptions: ['--metrics', '127.0.0.1:9861'],
})
let fio: ChildProcess | undefined
try {
  const fd = openSync(backing, 'w')
  for (let off = 0; off < SIZE; off += 8 << 20) writeSync(fd, randomBytes(8 << 20))
  closeSync(fd)
  await pair.start()
  const disk = await pair.createDisk(backing, 'bench')
  const pids = [pair.iohyp.child.pid!, pair.guest.child.pid!]
  const sock = pair.sock('iohyp')
  fio = spawn(
    'fio',
    [
      '--name=ab',
      '--ioengine=nbd',
      `--uri=${disk.nbd}`,
      `--runtime=${WINDOW * WINDOWS * 2 + 30}`,
      '--time_based',
      `--size=${SIZE}`,
      ...CASE,
    ],
    { stdio: 'ignore' },
  )
  await sleep(3000)
  await get(pair.sock('guest')) // what a first scrape does once, before any window
  const rows: Record<'off' | 'on', { gbps: number; cpuSPerGB: number }[]> = { off: [], on: [] }
  for (let w = 0; w < WINDOWS * 2; w++) {
    const mode = w % 2 === 0 ? 'off' : 'on'
    const scraper = mode === 'on' ? await startScraper([sock, pair.sock('guest')]) : undefined
    const b0 = await diskBytes(sock)
    const c0 = pids.reduce((a, p) => a + cpuNs(p), 0)
    const t0 = performance.now()
    await sleep(WINDOW * 1000)
    const b1 = await diskBytes(sock)
    const c1 = pids.reduce((a, p) => a + cpuNs(p), 0)
    const seconds = (performance.now() - t0) / 1000
    const s = await scraper?.stop()
    if (s && (s.failures > 0 || s.scrapes === 0)) throw new Error(`scraper: ${JSON.stringify(s)}`)
    const gb = (b1 - b0) / 1e9
    rows[mode].push({ gbps: gb / seconds, cpuSPerGB: (c1 - c0) / 1e9 / gb })
  }
  const ratios = rows.on.map((r, i) => r.gbps / rows.off[i].gbps)
  const cpuRatios = rows.on.map((r, i) => r.cpuSPerGB / rows.off[i].cpuSPerGB)
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]
  console.log(`fio ${CASE.join(' ')}; ${WINDOWS} window pairs of ${WINDOW} s (off, on, off, ...)`)
  console.log(
    `GB/s off ${range(rows.off.map((r) => r.gbps))}, on ${range(rows.on.map((r) => r.gbps))}; on/off per pair ${ratios.map((x) => x.toFixed(2)).join(' ')}; mean ${mean(ratios).toFixed(3)}, median ${median(ratios).toFixed(3)}`,
  )
  console.log(
    `daemons' CPU s/GB off ${range(rows.off.map((r) => r.cpuSPerGB))}, on ${range(rows.on.map((r) => r.cpuSPerGB))}; on/off per pair ${cpuRatios.map((x) => x.toFixed(2)).join(' ')}; mean ${mean(cpuRatios).toFixed(3)}, median ${median(cpuRatios).toFixed(3)}`,
  )
  console.log(JSON.stringify({ bench: 'metrics-ab', case: CASE, window: WINDOW, ...rows, ratios, cpuRatios }))
} finally {
  fio?.kill('SIGKILL')
  await pair.stop()
  cleanupNetns()
  rmSync(backing, { force: true })
}
