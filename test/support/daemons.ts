/** Runs the real `vrio` daemons and CLI as child processes, for integration tests. */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Netns } from './netns.ts'
import { waitUntil } from './wait.ts'

export const VRIO_BIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))

export interface CliResult {
  status: number | null
  stdout: string
  stderr: string
}

/** Runs the CLI to completion (in the root namespace unless `ns` is given). */
export function vrio(args: string[], ns?: Netns): CliResult {
  const argv = ns
    ? ['ip', 'netns', 'exec', ns.name, process.execPath, VRIO_BIN, ...args]
    : [process.execPath, VRIO_BIN, ...args]
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 30_000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

/**
 * The CLI without blocking the event loop: needed when this process also moves frames (an
 * in-process forwarder would starve during a synchronous spawn).
 */
export function vrioAsync(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [VRIO_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (d) => (stdout += d))
    child.stderr?.on('data', (d) => (stderr += d))
    child.on('exit', (status) => resolve({ status, stdout, stderr }))
  })
}

export async function vrioJsonAsync<T>(args: string[]): Promise<T> {
  const r = await vrioAsync([...args, '--json'])
  if (r.status !== 0) throw new Error(`vrio ${args.join(' ')} failed (${r.status}): ${r.stderr.trim()}`)
  return JSON.parse(r.stdout) as T
}

/** Runs the CLI with --json and parses its output; throws with its stderr when it fails. */
export function vrioJson<T>(args: string[]): T {
  const r = vrio([...args, '--json'])
  if (r.status !== 0) throw new Error(`vrio ${args.join(' ')} failed (${r.status}): ${r.stderr.trim()}`)
  return JSON.parse(r.stdout) as T
}

const running = new Set<DaemonProcess>()

/** A daemon in a namespace: its JSON log lines are kept for assertions and failure messages. */
/**
 * Extra node flags for every daemon the tests and benchmarks start, e.g.
 * VRIO_DAEMON_NODE_FLAGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile them (node refuses
 * those in NODE_OPTIONS). A profile is written when the daemon exits cleanly.
 */
const DAEMON_NODE_FLAGS = (process.env.VRIO_DAEMON_NODE_FLAGS ?? '').split(' ').filter(Boolean)

export class DaemonProcess {
  readonly name: string
  readonly child: ChildProcess
  readonly logs: string[] = []
  exitCode: number | null | undefined
  signal: NodeJS.Signals | null = null

  constructor(name: string, ns: Netns, args: string[]) {
    this.name = name
    this.child = spawn(
      'ip',
      ['netns', 'exec', ns.name, process.execPath, ...DAEMON_NODE_FLAGS, VRIO_BIN, ...args],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    )
    let partial = ''
    this.child.stderr?.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n')
      partial = lines.pop() ?? ''
      this.logs.push(...lines)
    })
    this.child.on('exit', (code, signal) => {
      this.exitCode = code
      this.signal = signal
      running.delete(this)
    })
    running.add(this)
  }

  get alive(): boolean {
    return this.exitCode === undefined
  }

  /** Resolves once a log line with this `msg` appears. */
  async waitForLog(msg: string, timeoutMs = 10_000): Promise<void> {
    await waitUntil(
      () => this.logs.some((l) => l.includes(`"msg":"${msg}"`)) || !this.alive,
      `${this.name} to log '${msg}'`,
      timeoutMs,
    )
    if (!this.logs.some((l) => l.includes(`"msg":"${msg}"`))) {
      throw new Error(
        `${this.name} exited (${this.exitCode}) before logging '${msg}':\n${this.logs.join('\n')}`,
      )
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<void> {
    if (!this.alive) return
    this.child.kill(signal)
    await waitUntil(() => !this.alive, `${this.name} to exit after ${signal}`, timeoutMs)
  }
}

/**
 * Stops every daemon still running (test cleanup): SIGTERM first, so a guest detaches its loop
 * devices and ends its nbdfuse children, then SIGKILL for whatever is left after a few seconds.
 */
export async function killDaemons(): Promise<void> {
  const left = [...running]
  for (const d of left) d.child.kill('SIGTERM')
  const deadline = Date.now() + 5000
  while (left.some((d) => d.alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  for (const d of left) if (d.alive) d.child.kill('SIGKILL')
}
