/** Memory and CPU of another process, from /proc (Linux). */
import { readFileSync } from 'node:fs'
import { EXIT } from '../../src/errors.ts'

/** Resident set size (VmRSS) of `pid` in bytes, or undefined once the process is gone. */
export function rssBytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}

/** User + system CPU seconds `pid` has used, or undefined once it is gone. */
export function cpuSeconds(pid: number): number | undefined {
  const ticks = cpuTicks(pid)
  return ticks === undefined ? undefined : ticks / 100 // clock ticks (USER_HZ = 100)
}

/** User + system CPU time of `pid` in clock ticks (utime + stime of /proc/PID/stat), or undefined once it is gone. */
export function cpuTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(f[11]) + Number(f[12])
  } catch {
    return undefined
  }
}

/** Samples a process's RSS every `intervalMs` until stopped; keeps the peak. */
export class RssSampler {
  readonly pid: number
  peak = 0
  /** Milliseconds from the sampler's start to the peak sample. */
  peakAt = 0
  samples = 0
  private readonly started = performance.now()
  private readonly timer: NodeJS.Timeout
  private readonly onSample: ((rss: number) => void) | undefined

  constructor(pid: number, intervalMs = 50, onSample?: (rss: number) => void) {
    this.pid = pid
    this.onSample = onSample
    this.sample()
    this.timer = setInterval(() => this.sample(), intervalMs)
    this.timer.unref()
  }

  sample(): number | undefined {
    const rss = rssBytes(this.pid)
    if (rss === undefined) return undefined
    this.samples++
    if (rss > this.peak) {
      this.peak = rss
      this.peakAt = performance.now() - this.started
    }
    this.onSample?.(rss)
    return rss
  }

  stop(): number {
    clearInterval(this.timer)
    this.sample()
    return this.peak
  }
}

/** Whether `status` is one of the exit statuses the error catalogue gives a refusal (not 0, not a crash). */
export function isRefusalExit(status: number | null): boolean {
  return (
    status !== null && status !== EXIT.internal && status !== 0 && Object.values(EXIT).includes(status as 1)
  )
}
