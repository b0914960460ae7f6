/**
 * The IOhyp's capacity with many tenants (issue 16): N guests (BENCH_GUESTS, default 1,2,4,8), each
 * its own agent in its own namespace on one bridge with the IOhyp, each with a disk (a 64 MiB file
 * of random bytes on tmpfs) and fio's nbd engine running 4k random reads at QD32 on its export, all
 * at once for BENCH_SECONDS (default 5). Reports aggregate IOPS, the IOhyp's CPU seconds, and its
 * capacity: requests per IOhyp CPU-second (the figure that more iocores must raise: issue 16's target
 * is ≥ 1.8× one iocore's with two), with the guests' agents' CPU next to it.
 *
 * Variants, alternated round by round (BENCH_ROUNDS, default 1): BENCH_VARIANTS is a `;`-separated
 * list of extra `vrio iohyp` option sets (default: one, with no extra options), e.g.
 * BENCH_VARIANTS='--iocores 1;--iocores 2'. A variant with `--poll` runs the guests' agents with
 * `--poll` too (polling on both ends), e.g.
 * BENCH_VARIANTS='--iocores 1;--iocores 1 --poll;--iocores 2;--iocores 2 --poll'.
 * BENCH_QD (default 32) is fio's queue depth: BENCH_QD=1 for the latency of one request at a time
 * (p50 reported next to the p99).
 *
 *   npm run bench -- scale        (root; fio)
 */
import { execFile } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import type { GuestDiskInfo, ListDisksResponse } from '../src/control/api.ts'
import { vrioJsonAsync } from '../test/support/daemons.ts'
import { bridgedLan } from '../test/support/lan.ts'
import { cleanupNetns } from '../test/support/netns.ts'
import { VrioPair } from '../test/support/vrio-pair.ts'
import { writeRandomFile } from './support/random-file.ts'

const run = promisify(execFile)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 1)
const GUESTS = (process.env.BENCH_GUESTS ?? '1,2,4,8').split(',').map(Number)
const VARIANTS = (process.env.BENCH_VARIANTS ?? '')
  .split(';')
  .map((v) => v.trim().split(/\s+/).filter(Boolean))
const DISK_SIZE = 64 * 1024 * 1024
const QD = Number(process.env.BENCH_QD ?? 32)

interface Figures {
  iops: number
  iohypCpu: number
  guestsCpu: number
  /** Requests per IOhyp CPU-second. */
  capacity: number
  /** p99 completion latency of the slowest guest, µs. */
  worstP99us: number
  /** p50 completion latency of the slowest guest, µs. */
  worstP50us: number
  /** IOhyp CPU µs per request. */
  cpuPerRequestUs: number
}

function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(f[11]) + Number(f[12])) / 100
}

function backingFile(i: number): string {
  const path = `/dev/shm/vrio-bench-scale-${process.pid}-${i}.img`
  writeRandomFile(path, DISK_SIZE)
  return path
}

/** The guest's NBD export of its one disk, once it has it. */
async function exportOf(sock: string): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const list = await vrioJsonAsync<ListDisksResponse<GuestDiskInfo>>([
      'blk',
      'list',
      '--json',
      '--control',
      sock,
    ])
    if (list.disks[0]?.nbd) return list.disks[0].nbd
    await sleep(50)
  }
  throw new Error(`no disk appeared on ${sock}`)
}

async function fio(netns: string, uri: string): Promise<{ iops: number; p99us: number; p50us: number }> {
  const { stdout } = await run(
    'ip',
    [
      'netns',
      'exec',
      netns,
      'fio',
      '--name=scale',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randread',
      '--bs=4k',
      `--iodepth=${QD}`,
      `--runtime=${SECONDS}`,
      '--time_based',
      `--size=${DISK_SIZE}`,
      '--output-format=json',
    ],
    { maxBuffer: 16 << 20 },
  )
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0].read
  return {
    iops: job.iops,
    p99us: (job.clat_ns.percentile?.['99.000000'] ?? 0) / 1000,
    p50us: (job.clat_ns.percentile?.['50.000000'] ?? 0) / 1000,
  }
}

async function once(n: number, iohypOptions: string[], backings: string[]): Promise<Figures> {
  const lan = bridgedLan(n + 1)
  // --poll [--poll-idle-us N]: the agents poll too (vrio-pair.ts reads VRIO_TEST_POLL and
  // VRIO_TEST_POLL_IDLE_US as each daemon starts).
  const idle = iohypOptions.indexOf('--poll-idle-us')
  process.env.VRIO_TEST_POLL = iohypOptions.includes('--poll') ? '1' : '0'
  process.env.VRIO_TEST_POLL_IDLE_US = idle >= 0 ? iohypOptions[idle + 1] : ''
  const pair = new VrioPair(lan[0], lan[1], {
    iohypOptions: iohypOptions.filter(
      (o, i) => o !== '--poll' && (idle < 0 || (i !== idle && i !== idle + 1)),
    ),
  })
  try {
    await pair.start()
    const socks = [pair.sock('guest')]
    for (let i = 2; i <= n; i++) socks.push((await pair.addGuest(lan[i])).sock)
    const macs = [pair.guestMac, ...pair.extraGuests.map((g) => g.mac)]
    for (const [i, mac] of macs.entries())
      await vrioJsonAsync([
        'blk',
        'create',
        '--guest',
        mac,
        '--backing',
        backings[i],
        '--name',
        `d${i}`,
        '--control',
        pair.sock('iohyp'),
      ])
    const uris = await Promise.all(socks.map(exportOf))
    const iohypPid = pair.iohyp.child.pid!
    const guestPids = [pair.guest.child.pid!, ...pair.extraGuests.map((g) => g.daemon.child.pid!)]
    const cpu0 = cpuSeconds(iohypPid)
    const g0 = guestPids.reduce((s, p) => s + cpuSeconds(p), 0)
    const results = await Promise.all(uris.map((uri, i) => fio(lan[i + 1].ns.name, uri)))
    const iohypCpu = cpuSeconds(iohypPid) - cpu0
    const guestsCpu = guestPids.reduce((s, p) => s + cpuSeconds(p), 0) - g0
    const iops = results.reduce((s, r) => s + r.iops, 0)
    return {
      iops,
      iohypCpu,
      guestsCpu,
      capacity: (iops * SECONDS) / iohypCpu,
      worstP99us: Math.max(...results.map((r) => r.p99us)),
      worstP50us: Math.max(...results.map((r) => r.p50us)),
      cpuPerRequestUs: (iohypCpu * 1e6) / (iops * SECONDS),
    }
  } finally {
    await pair.stop()
    cleanupNetns()
  }
}

function range(xs: number[]): string {
  const f = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(2))
  return `${f(Math.min(...xs))}–${f(Math.max(...xs))}`
}

const backings = Array.from({ length: Math.max(...GUESTS) }, (_, i) => backingFile(i))
const out: { guests: number; variant: string; rounds: Figures[] }[] = []
try {
  for (const n of GUESTS) {
    const byVariant = VARIANTS.map(() => [] as Figures[])
    for (let r = 0; r < ROUNDS; r++)
      for (const [v, options] of VARIANTS.entries()) byVariant[v].push(await once(n, options, backings))
    for (const [v, options] of VARIANTS.entries()) {
      const f = byVariant[v]
      const name = options.join(' ') || '(default)'
      console.log(
        `${String(n).padStart(2)} guests ${name.padEnd(16)} IOPS ${range(f.map((x) => x.iops)).padStart(13)}   IOhyp CPU s ${range(f.map((x) => x.iohypCpu)).padStart(11)}   requests per IOhyp CPU-s ${range(f.map((x) => x.capacity)).padStart(13)}   agents' CPU s ${range(f.map((x) => x.guestsCpu))}   IOhyp CPU µs/request ${range(f.map((x) => x.cpuPerRequestUs))}   worst p50 µs ${range(f.map((x) => x.worstP50us))}   worst p99 µs ${range(f.map((x) => x.worstP99us))}`,
      )
      out.push({ guests: n, variant: name, rounds: f })
    }
  }
  console.log(JSON.stringify({ bench: 'scale', seconds: SECONDS, rounds: ROUNDS, qd: QD, results: out }))
} finally {
  for (const b of backings) rmSync(b, { force: true })
  cleanupNetns()
}
