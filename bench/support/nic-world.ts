/**
 * Shared set-up of the remote-NIC benches (bench/nic.ts, bench/nic-services.ts): an IOhyp and a
 * guest in two namespaces joined by a veth, a "world" namespace on the IOhyp's bridge `brw`, servers
 * in the world, and the measuring helpers (iperf3, the machine's busy time).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { cleanupNetns, exec, type Netns } from '../../test/support/netns.ts'
import { type PairOptions, pairWithWorld, type VrioPair } from '../../test/support/vrio-pair.ts'

export interface NicWorld {
  pair: VrioPair
  iohyp: Netns
  guest: Netns
  world: Netns
  /** Starts a long-running command in a namespace; it is killed by stop(). */
  serve(ns: Netns, cmd: string, args: readonly string[]): ChildProcess
  /** Kills the servers, stops the daemons, removes the namespaces. */
  stop(): Promise<void>
}

/** Starts the IOhyp and guest daemons (guest enrolled and connected) and the world with `addresses`. */
export async function startNicWorld(
  addresses: readonly string[],
  options: PairOptions = {},
): Promise<NicWorld> {
  const servers: ChildProcess[] = []
  let pair: VrioPair | undefined
  const stop = async () => {
    for (const s of servers) s.kill('SIGKILL')
    await pair?.stop()
    cleanupNetns()
  }
  try {
    const set = await pairWithWorld(addresses, options)
    pair = set.pair
    return {
      pair,
      iohyp: set.iohyp,
      guest: set.guest,
      world: set.world.ns,
      serve(ns, cmd, args) {
        const child = spawn('ip', ['netns', 'exec', ns.name, cmd, ...args], { stdio: 'ignore' })
        servers.push(child)
        return child
      },
      stop,
    }
  } catch (error) {
    await stop()
    throw error
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc/PID/stat. */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / 100
}

/** CPU nanoseconds every thread of `pid` has run so far (/proc/PID/task/TID/schedstat: finer than /proc/PID/stat). */
export function cpuNs(pid: number): number {
  let ns = 0
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])
    } catch {
      // a thread that ended meanwhile
    }
  }
  return ns
}

export interface IperfResult {
  gbps: number
  /** Gbit received by the server. */
  gbit: number
  bytes: number
  seconds: number
}

/** An iperf3 TCP run from `ns` to `target` (an iperf3 -s there): the receiver's figures. */
export function iperf(
  ns: Netns,
  target: string,
  streams: number,
  seconds: number,
  extra: readonly string[] = [],
): IperfResult {
  const out = JSON.parse(
    exec(ns, 'iperf3', [
      '-c',
      target,
      '-J',
      '-t',
      String(seconds),
      '-P',
      String(streams),
      '-O',
      '1',
      ...extra,
    ]),
  )
  const s = out.end.sum_received
  return { gbps: s.bits_per_second / 1e9, gbit: (s.bytes * 8) / 1e9, bytes: s.bytes, seconds: s.seconds }
}
