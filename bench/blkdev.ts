/**
 * The guest's block device: fio (libaio, O_DIRECT) on the /dev/loopN the guest agent attaches
 * (its own FUSE file under a loop device with direct I/O; requests go over the vrio channel to
 * the IOhyp's file) next to the same kind of stack built from other parts, nbdfuse + loop (direct
 * I/O) over qemu-nbd and over nbdkit serving the same file across the same veth, and next to
 * vrio's own NBD export (fio's nbd engine on the guest's unix socket). The targets take turns
 * (vrio device, qemu-nbd stack, nbdkit stack, vrio export; again) BENCH_ROUNDS times (default 2),
 * each figure printed as a range; the device against the better peer and against the export, best
 * of rounds and round by round with the median. Backing: one file on tmpfs (/dev/shm), so the disk
 * is not the limit; qemu-nbd --cache=writeback, nbdkit's file plugin and vrio's FileDevice all go through
 * the page cache. Server CPU per request: the processes serving each target (vrio: both daemons;
 * peers: nbdfuse and the NBD server); machine CPU per request: everything the machine ran (fio, the
 * kernel, every process), with the share of its CPU left idle (is a target bound by one thread or
 * by the machine?).
 *   npm run bench -- blkdev        (root; fio, nbdfuse, qemu-nbd, nbdkit)
 * BENCH_SECONDS (default 5) sets each run's length, BENCH_CASES a comma-separated list of case
 * numbers (1-4), BENCH_TARGETS a comma-separated subset of vrio-dev,qemu-nbd,nbdkit,vrio-nbd,vrio-nbdfuse
 * (the last: the previous device path, nbdfuse + loop over vrio's NBD export, for before/after).
 * BENCH_PIN=LIST (a taskset CPU list, e.g. 0) runs every target's processes and fio on those CPUs
 * alike: vrio's daemons with `--cpus LIST`, the peers' servers and nbdfuse through taskset (the
 * loop devices' kernel workers stay where the kernel puts them, for every target).
 * BENCH_PIN=CLIENT/SERVER (e.g. 0/1) splits the machine in two, as two machines would be: the
 * guest's side (fio, the guest agent, nbdfuse) on the CPUs before the slash, the server's side
 * (the IOhyp, qemu-nbd, nbdkit) on those after it, for every target alike. Unset: the scheduler
 * places everything, as by default. The guest agent polls while disk requests are
 * outstanding, its default; VRIO_TEST_POLL=off runs it with --no-poll (runs alternated for an A/B),
 * =guest with --poll (after every frame). The peers do not poll.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import type { GuestDiskInfo } from '../src/control/api.ts'
import { cleanupNetns } from '../test/support/netns.ts'
import { directLink } from '../test/support/topology.ts'
import { VrioPair } from '../test/support/vrio-pair.ts'
import { busySeconds, cpuSeconds, nbdServerArgv } from './support/baselines.ts'
import { writeRandomFile } from './support/random-file.ts'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)
const PIN = process.env.BENCH_PIN
/** Where the guest's side and the server's side run (BENCH_PIN, split at a slash or not). */
const [CLIENT_CPUS, SERVER_CPUS] = PIN?.includes('/') ? PIN.split('/') : [PIN, PIN]
if (PIN && (!CLIENT_CPUS || !SERVER_CPUS)) throw new Error(`BENCH_PIN=${PIN}: expected LIST or CLIENT/SERVER`)
const SIZE = 512 * 1024 * 1024

interface Case {
  name: string
  args: string[]
  /** What the figure is: p50 latency (µs), IOPS, or MB/s. */
  kind: 'p50' | 'iops' | 'mbps'
  rw: 'read' | 'write'
}

const ALL_CASES: Case[] = [
  {
    name: '4k randread QD1 p50 µs',
    args: ['--rw=randread', '--bs=4k', '--iodepth=1'],
    kind: 'p50',
    rw: 'read',
  },
  {
    name: '4k randread QD32 IOPS',
    args: ['--rw=randread', '--bs=4k', '--iodepth=32'],
    kind: 'iops',
    rw: 'read',
  },
  { name: '1M read MB/s', args: ['--rw=read', '--bs=1m', '--iodepth=8'], kind: 'mbps', rw: 'read' },
  { name: '1M write MB/s', args: ['--rw=write', '--bs=1m', '--iodepth=8'], kind: 'mbps', rw: 'write' },
]
const CASES = process.env.BENCH_CASES
  ? process.env.BENCH_CASES.split(',').map((n) => ALL_CASES[Number(n) - 1])
  : ALL_CASES
const ALL_TARGETS = ['vrio-dev', 'qemu-nbd', 'nbdkit', 'vrio-nbd', 'vrio-nbdfuse'] as const
type TargetName = (typeof ALL_TARGETS)[number]
const TARGETS = (process.env.BENCH_TARGETS?.split(',') ?? ALL_TARGETS) as TargetName[]

interface Result {
  value: number
  p50us: number
  p99us: number
  requests: number
  serverCpuSeconds: number
  /** vrio targets: the guest agent's share of serverCpuSeconds. */
  agentCpuSeconds?: number
  /** The whole machine's busy CPU seconds during the run (fio, the kernel, every process). */
  machineCpuSeconds: number
  /** The share of the machine's CPU time left idle during the run (0–1). */
  idle: number
}

interface Target {
  name: TargetName
  /** fio's target options. */
  fioArgs: string[]
  /** Processes doing the serving, for CPU accounting. */
  pids: () => number[]
  /** vrio targets: the guest agent. */
  agent?: () => number
}

function median(xs: readonly number[]): number {
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = sorted.length / 2
  return sorted.length % 2 ? sorted[Math.floor(mid)] : (sorted[mid - 1] + sorted[mid]) / 2
}

function fio(t: Target, c: Case): Result {
  const before = cpuSeconds(t.pids())
  const agentBefore = t.agent ? cpuSeconds([t.agent()]) : 0
  const busyBefore = busySeconds()
  const startedAt = performance.now()
  const out = execFileSync(
    CLIENT_CPUS ? 'taskset' : 'fio',
    [
      ...(CLIENT_CPUS ? ['-c', CLIENT_CPUS, 'fio'] : []),
      '--name=bench',
      ...t.fioArgs,
      `--runtime=${SECONDS}`,
      '--time_based',
      `--size=${SIZE}`,
      '--output-format=json',
      ...c.args,
    ],
    { encoding: 'utf8' },
  )
  const machineCpuSeconds = busySeconds() - busyBefore
  const idle = Math.max(
    0,
    1 - machineCpuSeconds / (((performance.now() - startedAt) / 1000) * availableParallelism()),
  )
  const serverCpuSeconds = cpuSeconds(t.pids()) - before
  const agentCpuSeconds = t.agent ? cpuSeconds([t.agent()]) - agentBefore : undefined
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0][c.rw]
  const pct = job.clat_ns.percentile ?? {}
  const p50us = (pct['50.000000'] ?? 0) / 1000
  return {
    value: c.kind === 'p50' ? p50us : c.kind === 'iops' ? job.iops : job.bw_bytes / 1e6,
    p50us,
    p99us: (pct['99.000000'] ?? 0) / 1000,
    requests: job.total_ios,
    serverCpuSeconds,
    ...(agentCpuSeconds === undefined ? {} : { agentCpuSeconds }),
    machineCpuSeconds,
    idle,
  }
}

/** nbdfuse (in the guest's network namespace, our mount namespace) + a loop device with direct I/O. */
async function nbdfuseLoop(
  netns: string,
  uri: string,
  dir: string,
): Promise<{ device: string; proc: ChildProcess; close(): Promise<void> }> {
  mkdirSync(dir, { recursive: true })
  const file = `${dir}/disk`
  const proc = spawn('nsenter', [`--net=/run/netns/${netns}`, 'nbdfuse', file, uri], { stdio: 'ignore' })
  const deadline = Date.now() + 10_000
  while (!existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`nbdfuse did not show ${uri}`)
    await sleep(20)
  }
  const device = execFileSync('losetup', ['--direct-io=on', '--find', '--show', file], {
    encoding: 'utf8',
  }).trim()
  return {
    device,
    proc,
    async close() {
      execFileSync('losetup', ['-d', device])
      const exited = new Promise((r) => proc.once('exit', r))
      proc.kill('SIGTERM')
      await Promise.race([exited, sleep(5000)])
      try {
        execFileSync('umount', ['-l', dir], { stdio: 'ignore' })
      } catch {}
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

const libaio = (device: string) => [`--filename=${device}`, '--ioengine=libaio', '--direct=1']
/** The pids of a process and its children (nsenter execs; this also covers wrappers). */
const tree = (pid: number | undefined): number[] => {
  if (!pid) return []
  const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)
  return [pid, ...kids.flatMap((k) => tree(Number(k)))]
}

const t = directLink()
const cpus = (list: string | undefined) => (list ? ['--cpus', list] : [])
const pair = new VrioPair(t.a, t.b, { iohypOptions: cpus(SERVER_CPUS), guestOptions: cpus(CLIENT_CPUS) })
/** The peers' processes (and their threads) on BENCH_PIN's CPUs for their side, as --cpus puts vrio's. */
const pin = (pids: readonly number[], list: string | undefined) => {
  if (list)
    for (const pid of pids)
      execFileSync('taskset', ['-a', '-p', '-c', list, String(pid)], { stdio: 'ignore' })
}
if (PIN)
  console.error(
    CLIENT_CPUS === SERVER_CPUS
      ? `BENCH_PIN=${PIN}: every target's processes and fio run on CPUs ${PIN}`
      : `BENCH_PIN=${PIN}: fio, the guest agent and nbdfuse on CPUs ${CLIENT_CPUS}; the IOhyp, qemu-nbd and nbdkit on CPUs ${SERVER_CPUS}`,
  )
const backing = `/dev/shm/vrio-bench-blkdev-${process.pid}.img`
const work = `/tmp/vrio-bench-blkdev-${process.pid}`
const servers: ChildProcess[] = []
const closers: (() => Promise<void>)[] = []
try {
  writeRandomFile(backing, SIZE)
  await pair.start()
  const disk = await pair.createDisk(backing, 'bench')
  let device: string | undefined
  for (const deadline = Date.now() + 15_000; !device && Date.now() < deadline; await sleep(100)) {
    const r = await pair.list<{ disks: GuestDiskInfo[] }>('blk', 'guest')
    device = r.disks.find((d) => d.name === 'bench')?.device ?? undefined
  }
  if (!device) throw new Error('the guest agent attached no block device')
  const vrioPids = () => [pair.iohyp.child.pid!, pair.guest.child.pid!]
  const targets: Target[] = []
  for (const name of TARGETS) {
    const agent = () => pair.guest.child.pid!
    if (name === 'vrio-dev') targets.push({ name, fioArgs: libaio(device), pids: vrioPids, agent })
    if (name === 'vrio-nbd')
      targets.push({ name, fioArgs: ['--ioengine=nbd', `--uri=${disk.nbd}`], pids: vrioPids, agent })
    if (name === 'vrio-nbdfuse') {
      const stack = await nbdfuseLoop(t.b.ns.name, disk.nbd!, `${work}/${name}`)
      closers.push(() => stack.close())
      pin(tree(stack.proc.pid), CLIENT_CPUS)
      targets.push({
        name,
        fioArgs: libaio(stack.device),
        pids: () => [...vrioPids(), ...tree(stack.proc.pid)],
        agent,
      })
    }
    if (name === 'qemu-nbd' || name === 'nbdkit') {
      const port = name === 'qemu-nbd' ? 10809 : 10810
      const argv = nbdServerArgv(name, port, backing)
      const server = spawn('ip', ['netns', 'exec', t.a.ns.name, ...argv], { stdio: 'ignore' })
      servers.push(server)
      await sleep(1000)
      const stack = await nbdfuseLoop(t.b.ns.name, `nbd://10.99.0.1:${port}/`, `${work}/${name}`)
      closers.push(() => stack.close())
      pin(tree(server.pid), SERVER_CPUS)
      pin(tree(stack.proc.pid), CLIENT_CPUS)
      targets.push({
        name,
        fioArgs: libaio(stack.device),
        pids: () => [...tree(server.pid), ...tree(stack.proc.pid)],
      })
    }
  }
  const results = new Map<string, Result[]>()
  for (let round = 0; round < ROUNDS; round++)
    for (const target of targets)
      for (const c of CASES) {
        const key = `${target.name}|${c.name}`
        const r = fio(target, c)
        results.set(key, [...(results.get(key) ?? []), r])
        console.error(
          `round ${round + 1} ${target.name.padEnd(9)} ${c.name.padEnd(24)} ${r.value.toFixed(0)}`,
        )
      }

  const f = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(1))
  const range = (xs: number[]) => `${f(Math.min(...xs))}–${f(Math.max(...xs))}`
  const best = (c: Case, xs: number[]) => (c.kind === 'p50' ? Math.min(...xs) : Math.max(...xs))
  console.log(`${'case'.padEnd(24)}${targets.map((x) => x.name.padStart(16)).join('')}`)
  for (const c of CASES) {
    const cells = targets.map((x) => range(results.get(`${x.name}|${c.name}`)!.map((r) => r.value)))
    console.log(`${c.name.padEnd(24)}${cells.map((s) => s.padStart(16)).join('')}`)
  }
  console.log(`\nserver CPU µs per request (median of rounds)`)
  for (const c of CASES) {
    const cells = targets.map((x) => {
      const rs = results.get(`${x.name}|${c.name}`)!.map((r) => (r.serverCpuSeconds * 1e6) / r.requests)
      return f(rs.sort((a, b) => a - b)[Math.floor(rs.length / 2)])
    })
    console.log(`${c.name.padEnd(24)}${cells.map((s) => s.padStart(16)).join('')}`)
  }
  console.log(
    `\nmachine CPU µs per request (fio, kernel, every process; median of rounds) / idle % of the machine`,
  )
  for (const c of CASES) {
    const cells = targets.map((x) => {
      const rs = results.get(`${x.name}|${c.name}`)!
      const us = median(rs.map((r) => (r.machineCpuSeconds * 1e6) / r.requests))
      return `${f(us)} / ${Math.round(100 * median(rs.map((r) => r.idle)))}`
    })
    console.log(`${c.name.padEnd(24)}${cells.map((s) => s.padStart(16)).join('')}`)
  }
  console.log(`\nguest agent CPU µs per request (median of rounds)`)
  for (const c of CASES) {
    const cells = targets.map((x) => {
      const rs = results.get(`${x.name}|${c.name}`)!
      if (rs[0].agentCpuSeconds === undefined) return '-'
      const us = rs.map((r) => (r.agentCpuSeconds! * 1e6) / r.requests).sort((a, b) => a - b)
      return f(us[Math.floor(us.length / 2)])
    })
    console.log(`${c.name.padEnd(24)}${cells.map((s) => s.padStart(16)).join('')}`)
  }
  // The targets: the device against the better peer, and against vrio's own export.
  const has = (n: TargetName) => targets.some((x) => x.name === n)
  if (has('vrio-dev')) {
    console.log('')
    for (const c of CASES) {
      const dev = results.get(`vrio-dev|${c.name}`)!.map((r) => r.value)
      const peers = (['qemu-nbd', 'nbdkit'] as const).filter(has)
      const ratio = (a: number, b: number) => (c.kind === 'p50' ? b / a : a / b).toFixed(2)
      const parts = [] as string[]
      if (peers.length > 0) {
        const peer = best(
          c,
          peers.flatMap((p) => results.get(`${p}|${c.name}`)!.map((r) => r.value)),
        )
        parts.push(`vs better peer ${ratio(best(c, dev), peer)}×`)
      }
      if (has('vrio-nbd'))
        parts.push(
          `vs vrio's NBD export ${ratio(
            best(c, dev),
            best(
              c,
              results.get(`vrio-nbd|${c.name}`)!.map((r) => r.value),
            ),
          )}×`,
        )
      console.log(`${c.name.padEnd(24)} device (best of rounds) ${parts.join(', ')}`)
      // Round by round (the targets take turns within a round), with the median.
      const values = (n: TargetName) => results.get(`${n}|${c.name}`)!.map((r) => r.value)
      const perRound = (other: (round: number) => number) => {
        const rs = dev.map((d, i) => (c.kind === 'p50' ? other(i) / d : d / other(i)))
        return `${rs.map((r) => r.toFixed(2)).join(', ')} (median ${median(rs).toFixed(2)})`
      }
      const rounds = [] as string[]
      if (peers.length > 0)
        rounds.push(
          `vs better peer ${perRound((i) =>
            best(
              c,
              peers.map((p) => values(p)[i]),
            ),
          )}`,
        )
      if (has('vrio-nbd')) rounds.push(`vs export ${perRound((i) => values('vrio-nbd')[i])}`)
      if (rounds.length > 0) console.log(`${''.padEnd(24)} per round: ${rounds.join('; ')}`)
    }
  }
  console.log(
    JSON.stringify({
      bench: 'blkdev',
      seconds: SECONDS,
      rounds: ROUNDS,
      ...(PIN && { pinned: PIN }),
      cases: CASES.map((c) => ({
        case: c.name,
        ...Object.fromEntries(targets.map((x) => [x.name, results.get(`${x.name}|${c.name}`)])),
      })),
    }),
  )
} finally {
  for (const close of closers) await close().catch(() => {})
  for (const s of servers) s.kill()
  await pair.stop()
  cleanupNetns()
  rmSync(backing, { force: true })
  rmSync(work, { recursive: true, force: true })
}
