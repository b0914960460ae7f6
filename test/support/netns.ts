/**
 * Network namespaces and veth pairs for integration tests, with cleanup that always runs.
 *
 * Names carry this process's pid (`vrio-<pid>-<random>-<n>`), so concurrent runs never collide,
 * and leftovers of runs that died (SIGKILL) are recognisable and swept on the next run.
 * Register `after(cleanupNetns)` in each test file; a process 'exit' hook (and SIGINT/SIGTERM)
 * is the last resort.
 */
import assert from 'node:assert/strict'
import { execFile, execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'

export interface Netns {
  name: string
  /** Bind-mount path, as taken by PacketSocket/TapDevice `netns` options. */
  path: string
}

export interface VethPair {
  a: { ns: Netns; ifname: string }
  b: { ns: Netns; ifname: string }
}

const NS_PREFIX = 'vrio-'
const runTag = `${process.pid}-${randomBytes(3).toString('hex')}`
/** Prefix of every namespace this process creates. */
export const RUN_PREFIX = `${NS_PREFIX}${runTag}-`

const created = new Set<string>()
let counter = 0
let hooksInstalled = false

/** Fails (does not skip) when not root: CI runs as root, and these tests must run there. */
export function requireRoot(): void {
  if (process.getuid?.() !== 0) {
    assert.fail(
      'this test needs root (it creates network namespaces, veth pairs and TAP devices); run it as root — CI does',
    )
  }
}

/** Runs a command, returns stdout; throws with the command's stderr on failure. */
export function run(cmd: string, args: readonly string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (e) {
    const err = e as { stderr?: string; status?: number }
    throw new Error(`${cmd} ${args.join(' ')} failed (exit ${err.status}): ${err.stderr?.trim() ?? e}`)
  }
}

/**
 * Runs a command inside a namespace without blocking the event loop (needed while an in-process
 * forwarder such as impairedLink must keep running). Rejects with stderr on failure or timeout.
 */
export function execAsync(
  ns: Netns,
  cmd: string,
  args: readonly string[],
  timeoutMs = 120_000,
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'ip',
      ['netns', 'exec', ns.name, cmd, ...args],
      { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 },
      (error, stdout, stderr) => {
        if (error)
          reject(
            new Error(`${cmd} ${args.join(' ')} failed in ${ns.name}: ${stderr.trim() || error.message}`),
          )
        else resolve(stdout)
      },
    )
  })
}

/** Runs a command inside a namespace (`ip netns exec`). */
export function exec(ns: Netns | string, cmd: string, args: readonly string[] = []): string {
  return run('ip', ['netns', 'exec', typeof ns === 'string' ? ns : ns.name, cmd, ...args])
}

/** `ip` inside a namespace, without the cost of exec'ing a second binary. */
export function ip(ns: Netns, args: readonly string[]): string {
  return run('ip', ['-n', ns.name, ...args])
}

/** The MAC address of `ifname` in `ns`, as `ip` prints it (aa:bb:cc:dd:ee:ff). */
export function linkMac(ns: Netns, ifname: string): string {
  return JSON.parse(ip(ns, ['-j', 'link', 'show', ifname]))[0].address
}

export function createNetns(options: { ipv6?: boolean } = {}): Netns {
  installHooks()
  const name = `${RUN_PREFIX}${counter++}`
  created.add(name) // before creation: a half-made namespace gets removed too
  run('ip', ['netns', 'add', name])
  const ns = { name, path: `/run/netns/${name}` }
  ip(ns, ['link', 'set', 'lo', 'up'])
  if (!options.ipv6) {
    // Keeps tests deterministic: no router solicitations, MLD or DAD frames on the links.
    exec(ns, 'sh', [
      '-c',
      'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6',
    ])
  }
  return ns
}

/** Unique interface name of at most 15 bytes. */
export function uniqueIfname(tag: string): string {
  const name = `v${process.pid.toString(36)}${randomBytes(2).toString('hex')}${(counter++).toString(36)}${tag}`
  assert.ok(name.length <= 15, `interface name too long: ${name}`)
  return name
}

/**
 * A veth pair with one end in each namespace, both up. The ends are created directly inside the
 * namespaces, so they never appear in the root namespace; deleting either namespace removes them.
 */
export function createVethPair(nsA: Netns, nsB: Netns, options: { mtu?: number } = {}): VethPair {
  const a = uniqueIfname('a')
  const b = uniqueIfname('b')
  run('ip', ['link', 'add', a, 'netns', nsA.name, 'type', 'veth', 'peer', 'name', b, 'netns', nsB.name])
  for (const [ns, ifname] of [
    [nsA, a],
    [nsB, b],
  ] as const) {
    if (options.mtu) ip(ns, ['link', 'set', ifname, 'mtu', String(options.mtu)])
    ip(ns, ['link', 'set', ifname, 'up'])
  }
  return { a: { ns: nsA, ifname: a }, b: { ns: nsB, ifname: b } }
}

/** Namespaces of this run that still exist. */
export function remainingNetns(prefix = RUN_PREFIX): string[] {
  return listNetns().filter((n) => n.startsWith(prefix))
}

/** Removes every namespace this process created (and with them their interfaces). Idempotent. */
export function cleanupNetns(): void {
  for (const name of created) {
    deleteNetns(name)
    created.delete(name)
  }
}

function deleteNetns(name: string): void {
  // Processes left in it go first: a killed guest agent's FUSE holders (`sleep infinity`) would
  // otherwise keep its block devices alive after the test.
  try {
    const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8' }).split('\n').filter(Boolean)
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {}
    }
  } catch {}
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' })
  } catch {
    // already gone
  }
}

function listNetns(): string[] {
  try {
    return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .map((l) => l.split(' ')[0])
      .filter(Boolean)
  } catch {
    return []
  }
}

/** Removes namespaces left by runs whose process no longer exists. */
function sweepStale(): void {
  for (const name of listNetns()) {
    const m = /^vrio-(\d+)-[0-9a-f]+-\d+$/.exec(name)
    if (!m || Number(m[1]) === process.pid) continue
    try {
      process.kill(Number(m[1]), 0)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') deleteNetns(name)
    }
  }
}

function installHooks(): void {
  if (hooksInstalled) return
  hooksInstalled = true
  sweepStale()
  process.on('exit', cleanupNetns)
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      cleanupNetns()
      process.kill(process.pid, signal) // our listener is gone now: default action
    })
  }
}
