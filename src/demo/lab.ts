/**
 * What the demo creates on the machine, recorded as it is created so that everything is removed
 * again — in reverse order, also after a failed step or Ctrl-C: network namespaces (and with them
 * their interfaces), daemon processes, mounts, and a work directory.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { VrioError } from '../errors.ts'

export interface RunOptions {
  /** Network namespace to run in. */
  ns?: string
  timeoutMs?: number
}

export class Lab {
  readonly dir: string
  readonly prefix: string
  private readonly namespaces: string[] = []
  private readonly mounts: string[] = []
  private readonly processes: { name: string; child: ChildProcess; log: string }[] = []
  private readonly abort = new AbortController()

  constructor(prefix = `vrio-demo-${process.pid}`) {
    this.prefix = prefix
    this.dir = mkdtempSync(join(tmpdir(), `${prefix}-`))
  }

  /** Stops commands in progress (their promises reject); cleanup() still has to run. */
  interrupt(): void {
    this.abort.abort()
  }

  get interrupted(): boolean {
    return this.abort.signal.aborted
  }

  /** Runs a command (in a namespace); resolves with stdout, rejects naming the command and its stderr. */
  run(cmd: string, args: readonly string[], o: RunOptions = {}): Promise<string> {
    const argv = o.ns ? ['netns', 'exec', o.ns, cmd, ...args] : [...args]
    const file = o.ns ? 'ip' : cmd
    return new Promise((resolve, reject) => {
      execFile(
        file,
        argv,
        { encoding: 'utf8', timeout: o.timeoutMs ?? 120_000, maxBuffer: 64 << 20, signal: this.abort.signal },
        (error, stdout, stderr) => {
          if (!error) return resolve(stdout)
          if (this.interrupted) return reject(new VrioError('interrupted', 'interrupted'))
          const why = (stderr || error.message).trim().split('\n').slice(-3).join(' / ')
          reject(new VrioError('command-failed', `${cmd} ${args.join(' ')}: ${why}`))
        },
      )
    })
  }

  async netns(role: string): Promise<string> {
    const name = `${this.prefix}-${role}`
    this.namespaces.push(name)
    await this.run('ip', ['netns', 'add', name])
    await this.run('ip', ['-n', name, 'link', 'set', 'lo', 'up'])
    return name
  }

  /** A veth pair with one end in each namespace, both up. */
  async veth(a: { ns: string; name: string }, b: { ns: string; name: string }): Promise<void> {
    await this.run('ip', [
      'link',
      'add',
      a.name,
      'netns',
      a.ns,
      'type',
      'veth',
      'peer',
      'name',
      b.name,
      'netns',
      b.ns,
    ])
    await this.run('ip', ['-n', a.ns, 'link', 'set', a.name, 'up'])
    await this.run('ip', ['-n', b.ns, 'link', 'set', b.name, 'up'])
  }

  /** Starts a long-running process in a namespace; its output goes to a log file in the work dir. */
  start(name: string, ns: string, cmd: string, args: readonly string[]): ChildProcess {
    const log = join(this.dir, `${name}.log`)
    const fd = openSync(log, 'a')
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', fd, fd] })
    this.processes.push({ name, child, log })
    return child
  }

  /** The last lines a started process wrote (for error reports). */
  logTail(name: string, lines = 5): string {
    const p = this.processes.find((x) => x.name === name)
    if (!p) return ''
    try {
      return readFileSync(p.log, 'utf8').trim().split('\n').slice(-lines).join('\n')
    } catch {
      return ''
    }
  }

  async mount(device: string, dir: string): Promise<void> {
    await this.run('mkdir', ['-p', dir])
    await this.run('mount', [device, dir])
    this.mounts.push(dir)
  }

  async unmount(dir: string): Promise<void> {
    await this.run('umount', [dir])
    this.mounts.splice(this.mounts.indexOf(dir), 1)
  }

  /** Removes everything, newest first; never throws (reports what it could not undo). */
  async cleanup(): Promise<string[]> {
    const problems: string[] = []
    const quiet = (cmd: string, args: string[]) =>
      new Promise<void>((resolve) =>
        execFile(cmd, args, { timeout: 30_000 }, (e) => {
          if (e) problems.push(`${cmd} ${args.join(' ')}: ${e.message.split('\n')[0]}`)
          resolve()
        }),
      )
    for (const dir of this.mounts.reverse()) await quiet('umount', ['-l', dir])
    // Daemons first politely (the guest detaches its loop devices and FUSE mounts), then firmly.
    for (const p of [...this.processes].reverse()) {
      if (p.child.exitCode !== null || p.child.signalCode !== null) continue
      p.child.kill('SIGTERM')
      const exited = await new Promise<boolean>((resolve) => {
        const t = setTimeout(() => resolve(false), 10_000)
        p.child.once('exit', () => {
          clearTimeout(t)
          resolve(true)
        })
      })
      if (!exited) {
        p.child.kill('SIGKILL')
        problems.push(`${p.name} did not stop on SIGTERM; killed`)
      }
    }
    for (const ns of this.namespaces.reverse()) {
      // Anything still running in the namespace goes with it.
      await new Promise<void>((resolve) =>
        execFile('ip', ['netns', 'pids', ns], (e, out) => {
          if (!e)
            for (const pid of out.split('\n').filter(Boolean)) {
              try {
                process.kill(Number(pid), 'SIGKILL')
              } catch {}
            }
          resolve()
        }),
      )
      await quiet('ip', ['netns', 'del', ns])
    }
    rmSync(this.dir, { recursive: true, force: true })
    return problems
  }
}
