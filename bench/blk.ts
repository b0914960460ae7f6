/**
 * Remote disk: vrio (guest NBD export → vrio channel → IOhyp → file) next to qemu-nbd and nbdkit
 * (file plugin) serving the same file over TCP across the same veth, in one run; fio's nbd engine
 * drives all from the guest side. Rounds alternate (vrio, the baselines; again) BENCH_ROUNDS times
 * (default 2); each figure is printed as a range, the ratio to the better baseline round by round
 * with its median. The baselines run with vrio's daemons stopped (SIGSTOP; the run prints so):
 * idle daemons must not tax them. Backing: one file on tmpfs (/dev/shm), so the disk is
 * not the limit. Cache: all through the page cache (vrio's FileDevice uses buffered I/O; qemu-nbd
 * --cache=writeback; nbdkit's file plugin's default). MTU 1500. Server CPU per GB: vrio's both
 * daemons, with the IOhyp's share alone in brackets (the guest agent runs on the guest's side,
 * where nbdkit's counterpart is fio's NBD client); the baselines' server process.
 *   npm run bench -- blk           (root; fio, qemu-nbd from qemu-utils, nbdkit)
 * BENCH_SECONDS (default 5) sets each run's length, BENCH_CASES a comma-separated list of case
 * numbers (1-5) to run, BENCH_QEMU=0 skips the baselines (vrio only, for before/after comparisons).
 * BENCH_FILTER=1 instead measures the baselines alone with vrio's daemons up and idle on the same
 * veth, their packet filter off vs on, and stopped (SIGSTOP) as the reference, fresh daemons per
 * round, alternated BENCH_ROUNDS times (default 2): what the idle daemons cost a neighbour.
 * BENCH_ENCRYPT=1 also runs the vrio cases on an encrypted disk (`--encrypt plain`, aes-xts-plain64
 * with a 512-bit key file, the same backing) and prints encryption on vs off.
 * BENCH_MODES=1 instead compares the sealed channel (the default) with --insecure-plaintext on both
 * daemons: fresh daemons per round, alternated (sealed, plaintext, sealed, ...) BENCH_ROUNDS times
 * (default 2), each figure as a range, with the ratio and server CPU s/GB of both.
 * BENCH_FASTPATH=1 instead compares the IOhyp's native fast path off and on (VRIO_FASTPATH), fresh
 * daemons per round, alternated BENCH_ROUNDS times (default 2), as ranges with the off/on ratio.
 * BENCH_METRICS=1 instead compares metrics on (both daemons with --metrics, and /metrics scraped
 * every second on both) with metrics off (no listener, no scrapes), fresh daemons per round,
 * alternated (off, on, on, off, off, ...) BENCH_ROUNDS times (default 2), as ranges with the on/off ratio.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { rmSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import type { VethEnd } from '../test/support/harness.ts'
import { cleanupNetns } from '../test/support/netns.ts'
import { directLink, type Topology } from '../test/support/topology.ts'
import { type PairOptions, VrioPair } from '../test/support/vrio-pair.ts'
import {
  cpuSeconds,
  type FilterSetting,
  nbdServerArgv,
  range,
  startWithFilter,
  withDaemonsStopped,
} from './support/baselines.ts'
import { startScraper } from './support/metrics-scraper.ts'
import { writeRandomFile } from './support/random-file.ts'

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
  {
    name: '4k randwrite QD32',
    args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'],
    kind: 'iops',
    rw: 'write',
  },
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
  /** vrio: the IOhyp's share of serverCpuSeconds (the rest is the guest agent's). */
  iohypCpuSeconds?: number
  /** Frames both ends of the veth sent during the run (every frame of the channel crosses it once). */
  frames: number
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

/** Metrics off vs on (with a 1 s scrape of both daemons), alternated (BENCH_METRICS=1). */
async function compareMetrics(backing: string): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const results: Record<'off' | 'on', Result[][]> = { off: [], on: [] }
  const on: PairOptions = {
    iohypOptions: ['--metrics', '127.0.0.1:9860'],
    guestOptions: ['--metrics', '127.0.0.1:9861'],
  }
  // Off, on, on, off, off, on, ...: whatever drifts over the run (the machine, the page cache)
  // falls on both settings alike.
  for (let round = 0; round < rounds; round++) {
    for (const setting of round % 2 === 0 ? (['off', 'on'] as const) : (['on', 'off'] as const))
      results[setting].push(await freshPairRun(backing, setting === 'on' ? on : {}, setting === 'on'))
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

/** fio against `uri`, with the CPU of `serverPids` (vrio: the IOhyp first, then the guest agent). */
function measure(uri: string, c: Case, serverPids: number[], netns?: string, link = t): Result {
  const before = cpuSeconds(serverPids)
  const firstBefore = cpuSeconds(serverPids.slice(0, 1))
  const framesBefore = linkFrames(link)
  const r = fio(uri, c, netns)
  return {
    ...r,
    serverCpuSeconds: cpuSeconds(serverPids) - before,
    ...(serverPids.length > 1 && { iohypCpuSeconds: cpuSeconds(serverPids.slice(0, 1)) - firstBefore }),
    frames: linkFrames(link) - framesBefore,
  }
}

/** Runs every case on fresh daemons started with `options`; `scrape`: /metrics on both every second. */
async function freshPairRun(backing: string, options: PairOptions, scrape: boolean): Promise<Result[]> {
  const link = directLink()
  const p = new VrioPair(link.a, link.b, options)
  try {
    await p.start()
    const disk = await p.createDisk(backing, 'bench')
    const scraper = scrape ? await startScraper([p.sock('iohyp'), p.sock('guest')]) : undefined
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
function compareModes(backing: string): Promise<void> {
  return compareAlternated('blk-modes', ['sealed', 'plaintext'], (mode) =>
    freshPairRun(backing, { plaintext: mode === 'plaintext' }, false),
  )
}

/**
 * vrio alone, the IOhyp's native fast path off vs on (VRIO_FASTPATH, inherited by the daemons),
 * alternated with fresh daemons per round (BENCH_FASTPATH=1).
 */
function compareFastPath(backing: string): Promise<void> {
  return compareAlternated('blk-fastpath', ['off', 'on'], (mode) => {
    process.env.VRIO_FASTPATH = mode === 'on' ? '1' : '0'
    return freshPairRun(backing, {}, false)
  })
}

/** Runs every case under the two settings, alternated BENCH_ROUNDS times; ranges and ratios (first / second). */
async function compareAlternated(
  bench: string,
  labels: [string, string],
  run: (label: string) => Promise<Result[]>,
): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const results: Result[][][] = [[], []]
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < 2; k++) results[k].push(await run(labels[k]))
  }
  const perGB = (r: Result) => r.serverCpuSeconds / (r.bytes / 1e9)
  console.log(
    `${'case'.padEnd(22)}${labels[0].padStart(16)}${labels[1].padStart(16)}${'ratio'.padStart(12)}   server CPU s/GB ${labels[0]} | ${labels[1]}`,
  )
  const json = CASES.map((c, i) => {
    const a = results[0].map((r) => r[i])
    const b = results[1].map((r) => r[i])
    const ratios = a.map((r, k) => r.value / b[k].value)
    console.log(
      `${`${c.name} ${c.kind === 'iops' ? 'IOPS' : 'MB/s'}`.padEnd(22)}${range(a.map((r) => r.value)).padStart(16)}${range(b.map((r) => r.value)).padStart(16)}${range(ratios).padStart(12)}   ${range(a.map(perGB))} | ${range(b.map(perGB))}   p50 µs ${range(a.map((r) => r.p50us))} | ${range(b.map((r) => r.p50us))}`,
    )
    return { case: c.name, [labels[0]]: a, [labels[1]]: b, ratios }
  })
  console.log(JSON.stringify({ bench, seconds: SECONDS, rounds, cases: json }))
}

/** A baseline NBD server on the IOhyp side of a link. */
interface Baseline {
  name: 'qemu-nbd' | 'nbdkit'
  uri: string
  child: ChildProcess
}

/** qemu-nbd and nbdkit serving `backing` on `end` (the IOhyp's side), ready to take connections. */
async function startBaselines(end: VethEnd, backing: string): Promise<Baseline[]> {
  const inNs = (argv: string[]) => spawn('ip', ['netns', 'exec', end.ns.name, ...argv], { stdio: 'ignore' })
  const baselines = (['qemu-nbd', 'nbdkit'] as const).map((name, i) => {
    const port = 10809 + i
    return { name, uri: `nbd://10.99.0.1:${port}/`, child: inNs(nbdServerArgv(name, port, backing)) }
  })
  baselinesRunning.push(...baselines)
  await new Promise((r) => setTimeout(r, 1000))
  return baselines
}

const baselinesRunning: Baseline[] = []

/** Every case on `b` from the guest's side (`guest`: its namespace). */
function measureBaseline(b: Baseline, guest: VethEnd): Result[] {
  return CASES.map((c) => measure(b.uri, c, [b.child.pid!], guest.ns.name))
}

const perGB = (r: Result) => r.serverCpuSeconds / (r.bytes / 1e9)
const iohypPerGB = (r: Result) => (r.iohypCpuSeconds ?? Number.NaN) / (r.bytes / 1e9)
const unitOf = (c: Case) => (c.kind === 'iops' ? 'IOPS' : 'MB/s')

/**
 * The baselines alone, with vrio's idle daemons on the same veth: their packet filter off, on, and
 * the daemons stopped (BENCH_FILTER=1). Fresh link and daemons per round and setting.
 */
async function compareFilter(backing: string): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  type Setting = FilterSetting | 'stopped'
  const settings: Setting[] = ['off', 'on', 'stopped']
  const results = new Map<string, Result[][]>() // `${setting} ${baseline}` → per round, per case
  const idleCpu = new Map<Setting, number[]>() // the idle daemons' CPU seconds over the baselines' runs
  for (let round = 0; round < rounds; round++) {
    for (const setting of settings) {
      const link = directLink()
      const p = new VrioPair(link.a, link.b)
      await startWithFilter(setting === 'off' ? 'off' : 'on', () => p.start())
      const baselines = await startBaselines(link.a, backing)
      try {
        const daemons = [p.iohyp.child.pid!, p.guest.child.pid!]
        const run = () => {
          const before = cpuSeconds(daemons)
          for (const b of baselines) {
            const key = `${setting} ${b.name}`
            results.set(key, [...(results.get(key) ?? []), measureBaseline(b, link.b)])
          }
          idleCpu.set(setting, [...(idleCpu.get(setting) ?? []), cpuSeconds(daemons) - before])
        }
        if (setting === 'stopped') await withDaemonsStopped(p, `round ${round + 1}, reference`, run)
        else {
          console.log(
            `round ${round + 1}: baselines with vrio's daemons running idle, packet filter ${setting}`,
          )
          run()
        }
      } finally {
        for (const b of baselines) b.child.kill()
        await p.stop()
      }
    }
  }
  console.log(
    `${'baseline, case'.padEnd(30)}${'filter off'.padStart(14)}${'filter on'.padStart(14)}${'stopped'.padStart(14)}   p50 µs off | on | stopped`,
  )
  const json: unknown[] = []
  for (const name of ['qemu-nbd', 'nbdkit'] as const) {
    CASES.forEach((c, i) => {
      const of = (setting: Setting) => (results.get(`${setting} ${name}`) ?? []).map((r) => r[i])
      const [off, on, stopped] = settings.map(of)
      console.log(
        `${`${name} ${c.name} ${unitOf(c)}`.padEnd(30)}${range(off.map((r) => r.value)).padStart(14)}${range(on.map((r) => r.value)).padStart(14)}${range(stopped.map((r) => r.value)).padStart(14)}   ${range(off.map((r) => r.p50us))} | ${range(on.map((r) => r.p50us))} | ${range(stopped.map((r) => r.p50us))}`,
      )
      json.push({ baseline: name, case: c.name, off, on, stopped })
    })
  }
  const cpu = (s: Setting) => range(idleCpu.get(s) ?? [])
  console.log(
    `vrio's idle daemons' CPU while the baselines ran (s): filter off ${cpu('off')}, on ${cpu('on')}, stopped ${cpu('stopped')}`,
  )
  console.log(
    JSON.stringify({
      bench: 'blk-filter',
      seconds: SECONDS,
      rounds,
      cases: json,
      idleCpu: Object.fromEntries(idleCpu),
    }),
  )
}

const t = directLink()
const pair = new VrioPair(t.a, t.b)
const backing = `/dev/shm/vrio-bench-blk-${process.pid}.img`
const keyFile = `/dev/shm/vrio-bench-blk-${process.pid}.key`
try {
  writeRandomFile(backing, SIZE)
  if (process.env.BENCH_MODES === '1') await compareModes(backing)
  else if (process.env.BENCH_FASTPATH === '1') await compareFastPath(backing)
  else if (process.env.BENCH_METRICS === '1') await compareMetrics(backing)
  else if (process.env.BENCH_FILTER === '1') await compareFilter(backing)
  else await againstBaselines(backing)
} finally {
  for (const b of baselinesRunning) b.child.kill()
  await pair.stop()
  cleanupNetns()
  rmSync(backing, { force: true })
  rmSync(keyFile, { force: true })
}

/**
 * vrio next to qemu-nbd and nbdkit, alternated BENCH_ROUNDS times (default 2): each round runs
 * every case on vrio, then on the baselines with vrio's daemons stopped. With BENCH_ENCRYPT=1,
 * then encryption on against the last round's vrio figures.
 */
async function againstBaselines(backing: string): Promise<void> {
  await pair.start()
  const disk = await pair.createDisk(backing, 'bench')
  const vrioPids = [pair.iohyp.child.pid!, pair.guest.child.pid!]
  if (!WITH_QEMU) {
    const vrio = CASES.map((c) => measure(disk.nbd!, c, vrioPids))
    for (const [i, c] of CASES.entries()) {
      const v = vrio[i]
      console.log(
        `${c.name.padEnd(20)}${v.value.toFixed(0).padStart(10)}   p50/p99 µs ${v.p50us.toFixed(0)}/${v.p99us.toFixed(0)}   server CPU s/GB ${perGB(v).toFixed(2)} (IOhyp alone ${iohypPerGB(v).toFixed(2)})   frames/request ${(v.frames / v.requests).toFixed(2)}   server CPU µs/request ${((v.serverCpuSeconds * 1e6) / v.requests).toFixed(0)}`,
      )
    }
    if (WITH_ENCRYPT) await againstEncryption(backing, vrio, vrioPids)
    return
  }
  const baselines = await startBaselines(t.a, backing)
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  /** Per round, per case. */
  const vrio: Result[][] = []
  const qemu: Result[][] = []
  const kit: Result[][] = []
  for (let round = 0; round < rounds; round++) {
    vrio.push(CASES.map((c) => measure(disk.nbd!, c, vrioPids)))
    const [q, k] = await withDaemonsStopped(pair, `round ${round + 1}: qemu-nbd and nbdkit`, () =>
      baselines.map((b) => measureBaseline(b, t.b)),
    )
    qemu.push(q)
    kit.push(k)
    for (const [i, c] of CASES.entries())
      console.error(
        `round ${round + 1} ${`${c.name} ${unitOf(c)}`.padEnd(24)} vrio ${vrio[round][i].value.toFixed(0)}, qemu-nbd ${q[i].value.toFixed(0)}, nbdkit ${k[i].value.toFixed(0)}`,
      )
  }
  console.log(
    `${'case'.padEnd(24)}${'vrio'.padStart(14)}${'qemu-nbd'.padStart(14)}${'nbdkit'.padStart(14)}   ${'vrio/best per round (median)'.padEnd(30)} p50 µs vrio | nbdkit      server CPU s/GB vrio (IOhyp alone) | qemu-nbd | nbdkit`,
  )
  const json = CASES.map((c, i) => {
    const [v, q, k] = [vrio, qemu, kit].map((rs) => rs.map((r) => r[i]))
    const ratios = v.map((r, n) => r.value / Math.max(q[n].value, k[n].value))
    const sorted = [...ratios].sort((a, b) => a - b)
    const median = (sorted[(sorted.length - 1) >> 1] + sorted[sorted.length >> 1]) / 2
    const values = (rs: Result[]) => range(rs.map((r) => r.value)).padStart(14)
    const perRound = `${ratios.map((x) => x.toFixed(2)).join(', ')} (${median.toFixed(2)})`
    console.log(
      `${`${c.name} ${unitOf(c)}`.padEnd(24)}${values(v)}${values(q)}${values(k)}   ${perRound.padEnd(30)} ${range(v.map((r) => r.p50us))} | ${range(k.map((r) => r.p50us))}      ${range(v.map(perGB))} (${range(v.map(iohypPerGB))}) | ${range(q.map(perGB))} | ${range(k.map(perGB))}`,
    )
    return { case: c.name, vrio: v, qemuNbd: q, nbdkit: k, ratios, median }
  })
  console.log(
    JSON.stringify({ bench: 'blk', seconds: SECONDS, rounds, baselinesWithVrioStopped: true, cases: json }),
  )
  if (WITH_ENCRYPT) await againstEncryption(backing, vrio[rounds - 1], vrioPids)
}

/** BENCH_ENCRYPT=1: the same cases on an encrypted disk over the same backing, against `plain`. */
async function againstEncryption(backing: string, plain: Result[], vrioPids: number[]): Promise<void> {
  await pair.removeDisk('bench')
  writeFileSync(keyFile, randomBytes(64), { mode: 0o600 })
  const enc = await pair.createDisk(backing, 'bench-enc', ['--encrypt', 'plain', '--key-file', keyFile])
  const encrypted = CASES.map((c) => measure(enc.nbd!, c, vrioPids))
  await pair.removeDisk('bench-enc')
  console.log(
    `${'case'.padEnd(20)}${'enc off'.padStart(10)}${'enc on'.padStart(10)}${'on/off'.padStart(8)}   server CPU s/GB off | on`,
  )
  for (const [i, c] of CASES.entries()) {
    const [off, on] = [plain[i], encrypted[i]]
    console.log(
      `${`${c.name} ${unitOf(c)}`.padEnd(20)}${off.value.toFixed(0).padStart(10)}${on.value.toFixed(0).padStart(10)}${(on.value / off.value).toFixed(2).padStart(8)}   ${perGB(off).toFixed(2)} | ${perGB(on).toFixed(2)}`,
    )
  }
  console.log(
    JSON.stringify({
      bench: 'blk-encrypt',
      seconds: SECONDS,
      cases: CASES.map((c, i) => ({
        case: c.name,
        off: plain[i],
        on: encrypted[i],
        ratio: encrypted[i].value / plain[i].value,
      })),
    }),
  )
}
