/**
 * Metrics on vs off on one loaded machine: one IOhyp and guest (both with --metrics, as a user who
 * turned metrics on), one disk, one fio job running throughout, and the 1 s scrape of both daemons
 * switched on and off in alternating windows (BENCH_WINDOW seconds, default 4; BENCH_WINDOWS pairs,
 * default 8). Fresh daemons per setting, minutes apart (bench/blk.ts BENCH_METRICS=1), compare
 * runs under whatever else the machine did meanwhile; alternating windows of one run share it.
 * Per window: the IOhyp's bytes (from its own counters, read once at each window's edge in both
 * settings) and both daemons' CPU (/proc/PID/task/* /schedstat). BENCH_CASE: fio arguments
 * (default 1 MiB sequential reads, QD8). BENCH_LOAD=nic: a remote NIC instead, iperf3 from the guest
 * to a server on the IOhyp's bridge throughout (BENCH_STREAMS, default 1), measured by the IOhyp's
 * NIC bytes.
 *   npm run bench -- metrics-ab         (root; fio, iperf3)
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { request } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { directLink } from '../test/support/topology.ts'
import { cleanupNetns, ip } from '../test/support/netns.ts'
import { onBridge, type PairOptions, VrioPair } from '../test/support/vrio-pair.ts'
import { range } from './support/baselines.ts'
import { cpuNs, startNicWorld } from './support/nic-world.ts'
import { startScraper } from './support/metrics-scraper.ts'
import { writeRandomFile } from './support/random-file.ts'

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

const DURATION = WINDOW * WINDOWS * 2 + 30
const ON: PairOptions = {
  iohypOptions: ['--metrics', '127.0.0.1:9860'],
  guestOptions: ['--metrics', '127.0.0.1:9861'],
}

/** What runs through the daemons throughout, and the IOhyp counter that measures it. */
interface Load {
  pair: VrioPair
  /** The metric family whose samples, summed, are the bytes moved so far. */
  family: string
  what: string
  stop(): Promise<void>
}

/** One disk with fio running (BENCH_CASE) on a fresh pair. */
async function diskLoad(): Promise<Load> {
  const backing = `/dev/shm/vrio-bench-ab-${process.pid}.img`
  const link = directLink()
  const pair = new VrioPair(link.a, link.b, ON)
  let fio: ChildProcess | undefined
  const stop = async () => {
    fio?.kill('SIGKILL')
    await pair.stop()
    cleanupNetns()
    rmSync(backing, { force: true })
  }
  try {
    writeRandomFile(backing, SIZE)
    await pair.start()
    const disk = await pair.createDisk(backing, 'bench')
    fio = spawn(
      'fio',
      [
        '--name=ab',
        '--ioengine=nbd',
        `--uri=${disk.nbd}`,
        `--runtime=${DURATION}`,
        '--time_based',
        `--size=${SIZE}`,
        ...CASE,
      ],
      { stdio: 'ignore' },
    )
    return { pair, family: 'vrio_disk_bytes_total', what: `fio ${CASE.join(' ')}`, stop }
  } catch (error) {
    await stop()
    throw error
  }
}

/** One remote NIC on a world bridge with iperf3 (BENCH_STREAMS, default 1) from the guest throughout. */
async function nicLoad(): Promise<Load> {
  const streams = process.env.BENCH_STREAMS ?? '1'
  const m = await startNicWorld(['192.168.77.100/24'], ON)
  try {
    m.serve(m.world, 'iperf3', ['-s'])
    await m.pair.createNic('vn1', '02:77:00:00:00:01', onBridge('vt1'))
    ip(m.guest, ['addr', 'add', '192.168.77.1/24', 'dev', 'vn1'])
    await sleep(1000)
    m.serve(m.guest, 'iperf3', ['-c', '192.168.77.100', '-t', String(DURATION), '-P', streams])
    return { pair: m.pair, family: 'vrio_nic_bytes_total', what: `iperf3 -P ${streams}`, stop: m.stop }
  } catch (error) {
    await m.stop()
    throw error
  }
}

/** The IOhyp's bytes moved so far: `family`'s samples summed. */
async function counted(sock: string, family: string): Promise<number> {
  let n = 0
  for (const m of (await get(sock)).matchAll(new RegExp(`^${family}\\{[^}]*\\} (\\S+)$`, 'gm')))
    n += Number(m[1])
  return n
}

const load = process.env.BENCH_LOAD === 'nic' ? await nicLoad() : await diskLoad()
try {
  const pair = load.pair
  const pids = [pair.iohyp.child.pid!, pair.guest.child.pid!]
  const sock = pair.sock('iohyp')
  await sleep(3000)
  await get(pair.sock('guest')) // what a first scrape does once, before any window
  const rows: Record<'off' | 'on', { gbps: number; cpuSPerGB: number }[]> = { off: [], on: [] }
  for (let w = 0; w < WINDOWS * 2; w++) {
    const mode = w % 2 === 0 ? 'off' : 'on'
    const scraper = mode === 'on' ? await startScraper([sock, pair.sock('guest')]) : undefined
    const b0 = await counted(sock, load.family)
    const c0 = pids.reduce((a, p) => a + cpuNs(p), 0)
    const t0 = performance.now()
    await sleep(WINDOW * 1000)
    const b1 = await counted(sock, load.family)
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
  console.log(`${load.what}; ${WINDOWS} window pairs of ${WINDOW} s (off, on, off, ...)`)
  console.log(
    `GB/s off ${range(rows.off.map((r) => r.gbps))}, on ${range(rows.on.map((r) => r.gbps))}; on/off per pair ${ratios.map((x) => x.toFixed(2)).join(' ')}; mean ${mean(ratios).toFixed(3)}, median ${median(ratios).toFixed(3)}`,
  )
  console.log(
    `daemons' CPU s/GB off ${range(rows.off.map((r) => r.cpuSPerGB))}, on ${range(rows.on.map((r) => r.cpuSPerGB))}; on/off per pair ${cpuRatios.map((x) => x.toFixed(2)).join(' ')}; mean ${mean(cpuRatios).toFixed(3)}, median ${median(cpuRatios).toFixed(3)}`,
  )
  console.log(
    JSON.stringify({ bench: 'metrics-ab', load: load.what, window: WINDOW, ...rows, ratios, cpuRatios }),
  )
} finally {
  await load.stop()
}
