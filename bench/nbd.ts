/**
 * The guest's NBD server with the in-memory device, next to nbdkit's `memory` plugin, both on a
 * unix socket, measured by fio's nbd engine in the same run: 4 KiB random read at queue depth 1
 * and 32 (IOPS, p50/p99 completion latency), 1 MiB sequential read and write at queue depth 8
 * (MB/s), and the server's CPU time per GB moved. Both exports are filled with data first, so
 * reads are not answered from holes. Prints a table, then one JSON line.
 *
 *   npm run bench -- nbd                  (needs fio and nbdkit: scripts/setup.sh installs them)
 *   BENCH_SECONDS=10 BENCH_SIZE_MIB=1024 npm run bench -- nbd
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { MemoryDevice } from '../src/devices/blk/memory-device.ts'
import { NbdServer } from '../src/devices/blk/nbd-server.ts'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const SIZE_MIB = Number(process.env.BENCH_SIZE_MIB ?? 512)
const CLK_TCK = 100

interface Case {
  name: string
  rw: 'randread' | 'read' | 'write'
  bs: string
  iodepth: number
}

const CASES: Case[] = [
  { name: '4k randread QD1', rw: 'randread', bs: '4k', iodepth: 1 },
  { name: '4k randread QD32', rw: 'randread', bs: '4k', iodepth: 32 },
  { name: '1M seq read QD8', rw: 'read', bs: '1M', iodepth: 8 },
  { name: '1M seq write QD8', rw: 'write', bs: '1M', iodepth: 8 },
]

interface Result {
  iops: number
  megabytesPerSecond: number
  p50us: number
  p99us: number
  /** Server CPU seconds (user + system) per GB moved. */
  cpuSecondsPerGB: number
  /** Server CPU use during the run, in % of one core. */
  cpuPercent: number
}

interface Target {
  name: string
  uri: string
  /** Server CPU seconds so far. */
  cpu: () => number
}

function run(
  command: string,
  args: string[],
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s
    })
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr += s
    })
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, stdout, stderr }))
  })
}

interface FioSide {
  iops: number
  bw_bytes: number
  io_bytes: number
  runtime: number
  clat_ns?: { percentile?: Record<string, number> }
}

interface FioJob {
  error: number
  read: FioSide
  write: FioSide
}

async function fio(uri: string, args: string[]): Promise<FioJob> {
  const r = await run('fio', [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--size=${SIZE_MIB}M`,
    '--output-format=json',
    ...args,
  ])
  if (r.status !== 0) throw new Error(`fio failed (${r.status}): ${r.stderr}`)
  // fio may print notices before the JSON document.
  const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: FioJob[] }).jobs[0]
  if (job.error !== 0) throw new Error(`fio job error ${job.error}`)
  return job
}

async function measure(target: Target, c: Case): Promise<Result> {
  const cpu0 = target.cpu()
  const job = await fio(target.uri, [
    `--rw=${c.rw}`,
    `--bs=${c.bs}`,
    `--iodepth=${c.iodepth}`,
    '--time_based',
    `--runtime=${SECONDS}`,
    '--ramp_time=1',
  ])
  const cpu = target.cpu() - cpu0
  const side = c.rw === 'write' ? job.write : job.read
  const pct = side.clat_ns?.percentile ?? {}
  const bytes = side.io_bytes
  const seconds = side.runtime / 1000
  return {
    iops: side.iops,
    megabytesPerSecond: side.bw_bytes / 1e6,
    p50us: (pct['50.000000'] ?? 0) / 1000,
    p99us: (pct['99.000000'] ?? 0) / 1000,
    // The CPU window includes the ramp-up second; scale bytes to the same window.
    cpuSecondsPerGB: bytes > 0 ? cpu / ((bytes * (seconds + 1)) / seconds / 1e9) : 0,
    cpuPercent: (100 * cpu) / (seconds + 1),
  }
}

function nbdkitCpu(child: ChildProcess): () => number {
  return () => {
    const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1].split(' ')
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the command name).
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
  }
}

async function waitForSocket(uri: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await run('nbdinfo', ['--size', uri]).catch(() => undefined)
    if (r?.status === 0) return
    await sleep(50)
  }
  throw new Error(`nothing answers on ${uri}`)
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vrio-bench-nbd-'))
  const size = SIZE_MIB * 1024 * 1024
  const device = new MemoryDevice({ size })
  const server = new NbdServer({
    path: join(dir, 'vrio.sock'),
    lookup: (n) => (n === 'bench' ? device : undefined),
  })
  await server.listen()
  const kitSocket = join(dir, 'nbdkit.sock')
  const kit = spawn('nbdkit', ['--foreground', '--unix', kitSocket, 'memory', `${SIZE_MIB}M`], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const kitExited = new Promise<void>((resolve) => kit.once('exit', () => resolve()))
  try {
    const vrio: Target = {
      name: 'vrio',
      uri: `nbd+unix:///bench?socket=${server.path}`,
      cpu: () => {
        const u = process.cpuUsage()
        return (u.user + u.system) / 1e6
      },
    }
    const nbdkit: Target = { name: 'nbdkit', uri: `nbd+unix:///?socket=${kitSocket}`, cpu: nbdkitCpu(kit) }
    await waitForSocket(nbdkit.uri)

    // Fill both exports so reads return data, not holes.
    for (const t of [vrio, nbdkit]) await fio(t.uri, ['--rw=write', '--bs=1M', '--iodepth=8'])

    const results: Record<string, Record<string, Result>> = { vrio: {}, nbdkit: {} }
    for (const c of CASES) {
      for (const t of [vrio, nbdkit]) {
        ;(globalThis as { gc?: () => void }).gc?.()
        results[t.name][c.name] = await measure(t, c)
      }
    }

    const ratios: Record<string, number> = {}
    const rows: string[][] = [['case', 'metric', 'vrio', 'nbdkit', 'vrio/nbdkit']]
    const fmt = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(1))
    for (const c of CASES) {
      const a = results.vrio[c.name]
      const b = results.nbdkit[c.name]
      const main = c.bs === '4k' ? 'iops' : 'megabytesPerSecond'
      ratios[c.name] = a[main] / b[main]
      rows.push([
        c.name,
        c.bs === '4k' ? 'IOPS' : 'MB/s',
        fmt(a[main]),
        fmt(b[main]),
        ratios[c.name].toFixed(2),
      ])
      if (c.bs === '4k')
        rows.push([
          '',
          'p50/p99 µs',
          `${fmt(a.p50us)}/${fmt(a.p99us)}`,
          `${fmt(b.p50us)}/${fmt(b.p99us)}`,
          '',
        ])
      rows.push(['', 'server CPU %', fmt(a.cpuPercent), fmt(b.cpuPercent), ''])
      rows.push(['', 'CPU s/GB', a.cpuSecondsPerGB.toFixed(2), b.cpuSecondsPerGB.toFixed(2), ''])
    }
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
    console.log(
      `NBD over a unix socket, fio nbd engine, ${SECONDS} s per case, ${SIZE_MIB} MiB export, ` +
        `vrio MemoryDevice vs nbdkit memory plugin`,
    )
    for (const r of rows)
      console.log(r.map((cell, i) => (i < 2 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  '))
    console.log(
      JSON.stringify({
        bench: 'nbd',
        seconds: SECONDS,
        sizeMiB: SIZE_MIB,
        vrio: results.vrio,
        nbdkit: results.nbdkit,
        ratios,
        serverStats: server.stats().exports.bench,
      }),
    )
  } finally {
    kit.kill('SIGTERM')
    await kitExited
    await server.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
