/**
 * Remote disk: vrio (guest NBD export → vrio channel → IOhyp → file) next to qemu-nbd serving the
 * same file over TCP across the same veth, in one run; fio's nbd engine drives both from the guest
 * side. Backing: one file on tmpfs (/dev/shm), so the disk is not the limit. Cache: both through
 * the page cache (vrio's FileDevice uses buffered I/O; qemu-nbd --cache=writeback). MTU 1500.
 *   npm run bench -- blk           (root; fio, qemu-nbd from qemu-utils)
 * BENCH_SECONDS (default 5) sets each run's length, BENCH_CASES a comma-separated list of case
 * numbers (1-4) to run, BENCH_QEMU=0 skips qemu-nbd (vrio only, for before/after comparisons).
 * BENCH_ENCRYPT=1 also runs the vrio cases on an encrypted disk (`--encrypt plain`, aes-xts-plain64
 * with a 512-bit key file, the same backing) and prints encryption on vs off.
 * BENCH_MODES=1 instead compares the sealed channel (the default) with --insecure-plaintext on both
 * daemons: fresh daemons per round, alternated (sealed, plaintext, sealed, ...) BENCH_ROUNDS times
 * (default 2), each figure as a range, with the ratio and server CPU s/GB of both.
 * BENCH_METRICS=1 instead compares metrics on (both daemons with --metrics, and /metrics scraped
 * every second on both) with metrics off (no listener, no scrapes), fresh daemons per round,
 * alternated (off, on, off, ...) BENCH_ROUNDS times (default 2), as ranges with the on/off ratio.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { closeSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { cleanupNetns } from '../test/support/netns.ts'
import { directLink, type Topology } from '../test/support/topology.ts'
import { type PairOptions, VrioPair } from '../test/support/vrio-pair.ts'
import { startScraper } from './support/metrics-scraper.ts'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const SIZE = 512 * 1024 * 1024

interface Case {
  name: string
  args: string[]
  kind: 'iops' | 'mbps'
  rw: 'read' | 'write'
}

const ALL_CASES: Case[] = [
  { name: '4k randread QD1', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], kind: 'iops', rw: 'read' },
  { name: '4k randread QD32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'], kind: 'iops', rw: 'read' },
  { name: '1M seq read', args: ['--rw=read', '--bs=1m', '--iodepth=8'], kind: 'mbps', rw: 'read' },
  { name: '1M seq write', args: ['--rw=write', '--bs=1m', '--iodepth=8'], kind: 'mbps', rw: 'write' },
]
const CASES = process.env.BENCH_CASES
  ? process.env.BENCH_CASES.split(',').map((n) => ALL_CASES[Number(n) - 1])
  : ALL_CASES
const WITH_QEMU = process.env.BENCH_QEMU !== '0'
const WITH_ENCRYPT = process.env.BENCH_ENCRYPT === '1'

interface Result {
  value: number
  p50us: number
  p99us: number
  bytes: number
  /** Requests fio completed. */
  requests: number
  serverCpuSeconds: number
  /** Frames both ends of the veth sent during the run (every frame of the channel crosses it once). */
  frames: number
}

function cpuSeconds(pids: number[]): number {
  let ticks = 0
  for (const pid of pids) {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    ticks += Number(f[11]) + Number(f[12])
  }
  return ticks / 100
}

/** Frames sent by both ends of the link so far. */
function linkFrames(link: Topology): number {
  let n = 0
  for (const end of [link.a, link.b]) {
    const path = `/sys/class/net/${end.ifname}/statistics/tx_packets`
    n += Number(execFileSync('ip', ['netns', 'exec', end.ns.name, 'cat', path], { encoding: 'utf8' }))
  }
  return n
}

function fioArgv(uri: string, c: Case): string[] {
  return [
    'fio',
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--runtime=${SECONDS}`,
    '--time_based',
    `--size=${SIZE}`,
    '--output-format=json',
    ...c.args,
  ]
}

function fioResult(out: string, c: Case): Omit<Result, 'serverCpuSeconds' | 'frames'> {
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0][c.rw]
  const pct = job.clat_ns.percentile ?? {}
  return {
    value: c.kind === 'iops' ? job.iops : job.bw_bytes / 1e6,
    p50us: (pct['50.000000'] ?? 0) / 1000,
    p99us: (pct['99.000000'] ?? 0) / 1000,
    bytes: job.io_bytes,
    requests: job.total_ios,
  }
}

function fio(uri: string, c: Case, netns?: string): Omit<Result, 'serverCpuSeconds' | 'frames'> {
  const argv = fioArgv(uri, c)
  const out = netns
    ? execFileSync('ip', ['netns', 'exec', netns, ...argv], { encoding: 'utf8' })
    : execFileSync(argv[0], argv.slice(1), { encoding: 'utf8' })
  return fioResult(out, c)
}

/** Ranges of figures: `a–b`. */
function range(xs: number[]): string {
  const f = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(2))
  return `${f(Math.min(...xs))}–${f(Math.max(...xs))}`
}

/** Metrics off vs on (with a 1 s scrape of both daemons), alternated (BENCH_METRICS=1). */
async function compareMetrics(backing: string): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const results: Record<'off' | 'on', Result[][]> = { off: [], on: [] }
  const on: PairOptions = {
    iohypOptions: ['--metrics', '127.0.0.1:9860'],
    guestOptions: ['--metrics', '127.0.0.1:9861'],
  }
  for (let round = 0; round < rounds; round++) {
    results.off.push(await freshPairRun(backing, {}, false))
    results.on.push(await freshPairRun(backing, on, true))
  }
  const perGB = (r: Result) => r.serverCpuSeconds / (r.bytes / 1e9)
  console.log(
    `${'case'.padEnd(22)}${'metrics off'.padStart(16)}${'on, 1 s scrape'.padStart(16)}${'on/off'.padStart(12)}   server CPU s/GB off | on`,
  )
  const json = CASES.map((c, i) => {
    const off = results.off.map((r) => r[i])
    const onr = results.on.map((r) => r[i])
    const ratios = onr.map((r, k) => r.value / off[k].value)
    console.log(
      `${`${c.name} ${c.kind === 'iops' ? 'IOPS' : 'MB/s'}`.padEnd(22)}${range(off.map((r) => r.value)).padStart(16)}${range(onr.map((r) => r.value)).padStart(16)}${range(ratios).padStart(12)}   ${range(off.map(perGB))} | ${range(onr.map(perGB))}`,
    )
    return { case: c.name, off, on: onr, ratios }
  })
  console.log(JSON.stringify({ bench: 'blk-metrics', seconds: SECONDS, rounds, cases: json }))
}

function measure(uri: string, c: Case, serverPids: number[], netns?: string, link = t): Result {
  const before = cpuSeconds(serverPids)
  const framesBefore = linkFrames(link)
  const r = fio(uri, c, netns)
  return { ...r, serverCpuSeconds: cpuSeconds(serverPids) - before, frames: linkFrames(link) - framesBefore }
}

/** Runs every case on fresh daemons started with `options`; `scrape`: /metrics on both every second. */
async function freshPairRun(backing: string, options: PairOptions, scrape: boolean): Promise<Result[]> {
  const link = directLink()
  const p = new VrioPair(link.a, link.b, options)
  try {
    await p.start()
    const disk = await p.createDisk(backing, 'bench')
    const scraper = scrape ? startScraper([p.sock('iohyp'), p.sock('guest')]) : undefined
    // The scraper is a child process: it keeps its pace while fio runs synchronously here.
    const results = CASES.map((c) =>
      measure(disk.nbd!, c, [p.iohyp.child.pid!, p.guest.child.pid!], undefined, link),
    )
    const s = await scraper?.stop()
    if (s && (s.failures > 0 || s.scrapes === 0)) throw new Error(`scraper: ${JSON.stringify(s)}`)
    return results
  } finally {
    await p.stop()
  }
}

/** vrio alone, sealed vs plaintext, alternated (BENCH_MODES=1). */
async function compareModes(backing: string): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const results: Record<'sealed' | 'plaintext', Result[][]> = { sealed: [], plaintext: [] }
  for (let round = 0; round < rounds; round++) {
    for (const mode of ['sealed', 'plaintext'] as const) {
      results[mode].push(await freshPairRun(backing, { plaintext: mode === 'plaintext' }, false))
    }
  }
  const perGB = (r: Result) => r.serverCpuSeconds / (r.bytes / 1e9)
  console.log(
    `${'case'.padEnd(22)}${'sealed'.padStart(16)}${'plaintext'.padStart(16)}${'ratio'.padStart(12)}   server CPU s/GB sealed | plaintext`,
  )
  const json = CASES.map((c, i) => {
    const sealed = results.sealed.map((r) => r[i])
    const plain = results.plaintext.map((r) => r[i])
    const ratios = sealed.map((r, k) => r.value / plain[k].value)
    console.log(
      `${`${c.name} ${c.kind === 'iops' ? 'IOPS' : 'MB/s'}`.padEnd(22)}${range(sealed.map((r) => r.value)).padStart(16)}${range(plain.map((r) => r.value)).padStart(16)}${range(ratios).padStart(12)}   ${range(sealed.map(perGB))} | ${range(plain.map(perGB))}`,
    )
    return { case: c.name, sealed, plaintext: plain, ratios }
  })
  console.log(JSON.stringify({ bench: 'blk-modes', seconds: SECONDS, rounds, cases: json }))
}

const t = directLink()
const pair = new VrioPair(t.a, t.b)
let qemu: ChildProcess | undefined
const backing = '/dev/shm/vrio-bench-blk.img'
const keyFile = '/dev/shm/vrio-bench-blk.key'
try {
  const fd = openSync(backing, 'w')
  for (let off = 0; off < SIZE; off += 8 << 20) writeSync(fd, randomBytes(8 << 20))
  closeSync(fd)
  if (process.env.BENCH_MODES === '1') await compareModes(backing)
  else if (process.env.BENCH_METRICS === '1') await compareMetrics(backing)
  else await againstQemu(backing)
} finally {
  qemu?.kill()
  await pair.stop()
  cleanupNetns()
  rmSync(backing, { force: true })
  rmSync(keyFile, { force: true })
}

/** vrio next to qemu-nbd (and, with BENCH_ENCRYPT=1, encryption on vs off). */
async function againstQemu(backing: string): Promise<void> {
  await pair.start()
  const disk = await pair.createDisk(backing, 'bench')
  const vrioPids = [pair.iohyp.child.pid!, pair.guest.child.pid!]
  const vrio = CASES.map((c) => measure(disk.nbd!, c, vrioPids))
  await pair.removeDisk('bench')
  if (WITH_ENCRYPT) {
    writeFileSync(keyFile, randomBytes(64), { mode: 0o600 })
    const enc = await pair.createDisk(backing, 'bench-enc', ['--encrypt', 'plain', '--key-file', keyFile])
    const encrypted = CASES.map((c) => measure(enc.nbd!, c, vrioPids))
    await pair.removeDisk('bench-enc')
    console.log(
      `${'case'.padEnd(20)}${'enc off'.padStart(10)}${'enc on'.padStart(10)}${'on/off'.padStart(8)}   server CPU s/GB off | on`,
    )
    for (const [i, c] of CASES.entries()) {
      const [off, on] = [vrio[i], encrypted[i]]
      const perGB = (r: Result) => (r.serverCpuSeconds / (r.bytes / 1e9)).toFixed(2)
      console.log(
        `${`${c.name} ${c.kind === 'iops' ? 'IOPS' : 'MB/s'}`.padEnd(20)}${off.value.toFixed(0).padStart(10)}${on.value.toFixed(0).padStart(10)}${(on.value / off.value).toFixed(2).padStart(8)}   ${perGB(off)} | ${perGB(on)}`,
      )
    }
    console.log(
      JSON.stringify({
        bench: 'blk-encrypt',
        seconds: SECONDS,
        cases: CASES.map((c, i) => ({
          case: c.name,
          off: vrio[i],
          on: encrypted[i],
          ratio: encrypted[i].value / vrio[i].value,
        })),
      }),
    )
  }
  if (!WITH_QEMU) {
    for (const [i, c] of CASES.entries()) {
      const v = vrio[i]
      console.log(
        `${c.name.padEnd(20)}${v.value.toFixed(0).padStart(10)}   p50/p99 µs ${v.p50us.toFixed(0)}/${v.p99us.toFixed(0)}   server CPU s/GB ${(v.serverCpuSeconds / (v.bytes / 1e9)).toFixed(2)}   frames/request ${(v.frames / v.requests).toFixed(2)}   server CPU µs/request ${((v.serverCpuSeconds * 1e6) / v.requests).toFixed(0)}`,
      )
    }
  } else {
    qemu = spawn(
      'ip',
      [
        'netns',
        'exec',
        t.a.ns.name,
        'qemu-nbd',
        '--format=raw',
        '--cache=writeback',
        '--persistent',
        '--shared=8',
        '--bind=10.99.0.1',
        '--port=10809',
        backing,
      ],
      { stdio: 'ignore' },
    )
    await new Promise((r) => setTimeout(r, 1000))
    const kernel = CASES.map((c) => measure('nbd://10.99.0.1:10809/', c, [qemu!.pid!], t.b.ns.name))

    const fmt = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(2)).padStart(10)
    console.log(
      `${'case'.padEnd(20)}${'vrio'.padStart(10)}${'qemu-nbd'.padStart(10)}${'ratio'.padStart(8)}   p50/p99 µs vrio | qemu-nbd      server CPU s/GB vrio | qemu-nbd`,
    )
    CASES.forEach((c, i) => {
      const v = vrio[i]
      const q = kernel[i]
      const unit = c.kind === 'iops' ? 'IOPS' : 'MB/s'
      console.log(
        `${`${c.name} ${unit}`.padEnd(20)}${fmt(v.value)}${fmt(q.value)}${(v.value / q.value).toFixed(2).padStart(8)}   ${v.p50us.toFixed(0)}/${v.p99us.toFixed(0)} | ${q.p50us.toFixed(0)}/${q.p99us.toFixed(0)}        ${(v.serverCpuSeconds / (v.bytes / 1e9)).toFixed(2)} | ${(q.serverCpuSeconds / (q.bytes / 1e9)).toFixed(2)}`,
      )
    })
    console.log(
      JSON.stringify({
        bench: 'blk',
        seconds: SECONDS,
        cases: CASES.map((c, i) => ({
          case: c.name,
          vrio: vrio[i],
          qemuNbd: kernel[i],
          ratio: vrio[i].value / kernel[i].value,
        })),
      }),
    )
  }
}
