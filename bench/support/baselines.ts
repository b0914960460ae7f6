/**
 * What the benchmarks need around a baseline (qemu-nbd, nbdkit, VXLAN) so that vrio does not tax
 * it: vrio's daemons stopped (SIGSTOP) while it runs, and the packet-filter A/B (BENCH_FILTER=1:
 * the same baseline with vrio's daemons up and idle, their kernel filter on vs off).
 */
import { readFileSync } from 'node:fs'
import { cpuTicks } from '../../test/support/proc.ts'
import type { VrioPair } from '../../test/support/vrio-pair.ts'

export { type FilterSetting, startWithFilter } from '../../test/support/packet-filter.ts'

/** Runs `fn` with both of the pair's daemons stopped (SIGSTOP, SIGCONT after), and says so. */
export async function withDaemonsStopped<T>(
  pair: VrioPair,
  what: string,
  fn: () => T | Promise<T>,
): Promise<T> {
  const pids = [pair.iohyp.child.pid!, pair.guest.child.pid!]
  for (const pid of pids) process.kill(pid, 'SIGSTOP')
  console.log(`${what}: measured with vrio's daemons stopped (SIGSTOP, pids ${pids.join(' ')})`)
  try {
    return await fn()
  } finally {
    for (const pid of pids) process.kill(pid, 'SIGCONT')
  }
}

/** User + system CPU seconds of `pids` (which must be running). */
export function cpuSeconds(pids: readonly number[]): number {
  let ticks = 0
  for (const pid of pids) ticks += cpuTicks(pid) ?? Number.NaN
  return ticks / 100
}

/** Busy seconds of the whole machine (everything but idle and iowait), from /proc/stat. */
export function busySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  const total = f.reduce((a, b) => a + b, 0)
  return (total - f[3] - f[4]) / 100
}

/** `a–b` of a list of figures. */
export function range(xs: readonly number[]): string {
  const f = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(2))
  return `${f(Math.min(...xs))}–${f(Math.max(...xs))}`
}

/** The command line of a baseline NBD server serving `backing` on 10.99.0.1:`port` (the IOhyp's side). */
export function nbdServerArgv(name: 'qemu-nbd' | 'nbdkit', port: number, backing: string): string[] {
  return name === 'qemu-nbd'
    ? [
        'qemu-nbd',
        '--format=raw',
        '--cache=writeback',
        '--persistent',
        '--shared=8',
        '--bind=10.99.0.1',
        `--port=${port}`,
        backing,
      ]
    : [
        'nbdkit',
        '--foreground',
        '--exit-with-parent',
        '--ipaddr=10.99.0.1',
        `--port=${port}`,
        'file',
        backing,
      ]
}
