/** `vrio iohyp` and `vrio guest`: the two daemons, each a foreground process. */
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import type { Command } from 'commander'
import { readKeyFile } from '../auth/key-file.ts'
import { DEFAULT_GUEST_SOCKET, DEFAULT_IOHYP_SOCKET } from '../control/api.ts'
import { loadGuestConfig, loadIohypConfig } from '../config/load.ts'
import { cpuListSchema, DEFAULT_POLL_IDLE_US, ipv4Schema, pollIdleUsSchema } from '../config/schema.ts'
import { createLogger, type Logger } from '../daemon/log.ts'
import { pinToCpus, stopOnSignals, tuneAllocator } from '../daemon/runtime.ts'
import { parseListenAddress } from '../daemon/listen-address.ts'
import { GuestDaemon } from '../guest/daemon.ts'
import { IohypDaemon, type IohypOptions } from '../iohyp/daemon.ts'
import { defaultIocores, IocoreRouter } from '../iohyp/iocores.ts'
import { VrioError } from '../errors.ts'
import { VERSION } from './version.ts'

const DEFAULT_STATE_DIR = '/var/lib/vrio'
const DEFAULT_RUN_DIR = '/run/vrio'

// No commander defaults for options a config file may set: an option given on the command line
// overrides the file, and only what neither gives falls back to the default.
interface IohypCliOptions {
  config?: string
  interface?: string
  address?: string
  stateDir?: string
  control?: string
  insecurePlaintext?: boolean
  metrics?: string
  iocores?: string
  poll?: boolean
  pollIdleUs?: string
  cpus?: string
}

interface GuestCliOptions {
  config?: string
  interface?: string
  address?: string
  keyFile?: string
  runDir?: string
  control?: string
  attach?: boolean
  ioTimeout?: string
  insecurePlaintext?: boolean
  iohyp?: string
  metrics?: string
  poll?: boolean
  pollIdleUs?: string
  cpus?: string
}

const CONFIG_HELP = 'config file (.yaml, .yml or .json); options given here override its settings'
const PLAINTEXT_HELP =
  'channel segments neither encrypted nor authenticated (protocol version 1), only for a segment you alone own; both daemons must agree'
const POLL_HELP =
  'poll the packet socket instead of sleeping: the thread (each iocore) keeps draining it until --poll-idle-us pass without work, then sleeps as without it (off by default; costs CPU)'
const GUEST_POLL_HELP =
  'poll the packet socket after every frame, not only while disk requests are outstanding (the default): the agent keeps draining it until --poll-idle-us pass without work, then sleeps'
const GUEST_NO_POLL_HELP =
  'never poll: the agent sleeps until a frame or a disk request wakes it (by default it polls while disk requests are outstanding, and --poll-idle-us after)'
const POLL_IDLE_HELP = `with polling on: microseconds without work before the thread sleeps (default: ${DEFAULT_POLL_IDLE_US})`
const CPUS_HELP =
  "run the daemon's threads on these CPUs only, as taskset lists them: 0, 0-3, 0,2 (default: all it may use)"
const METRICS_HELP =
  'also serve Prometheus metrics over HTTP on this address, e.g. 127.0.0.1:9860 (they are always at GET /metrics on the control socket)'

export function registerDaemonCommands(program: Command): void {
  program
    .command('iohyp')
    .description(
      'run the I/O hypervisor daemon in the foreground (JSON logs on stderr; stops on SIGINT/SIGTERM)',
    )
    .option('--config <file>', `${CONFIG_HELP}; its guests and disks are applied at start`)
    .option('--interface <if>', 'network interface that reaches the guests (required, here or in --config)')
    .option('--address <ipv4>', "vrio address on that interface (default: the interface's IPv4 address)")
    .option('--state-dir <dir>', `where enrolled guests are kept (default: ${DEFAULT_STATE_DIR})`)
    .option('--control <path>', `unix socket of the control API (default: ${DEFAULT_IOHYP_SOCKET})`)
    .option('--insecure-plaintext', PLAINTEXT_HELP)
    .option('--metrics <addr:port>', METRICS_HELP)
    .option(
      '--iocores <n>',
      `worker threads running the guests' channels and devices (default: cores − 1, at least 1; here ${defaultIocores(availableParallelism())}); with 1, the main thread runs them`,
    )
    .option('--poll', POLL_HELP)
    .option('--poll-idle-us <us>', POLL_IDLE_HELP)
    .option('--cpus <list>', CPUS_HELP)
    .action(async (o: IohypCliOptions) => {
      // The config is checked before anything starts: a bad one leaves nothing behind.
      const c = o.config === undefined ? undefined : loadIohypConfig(o.config)
      const cpus = cpusOption(o.cpus) ?? c?.cpus
      const log = createLogger('iohyp')
      log.debug('malloc', { tuning: tuneAllocator() })
      if (cpus) {
        await pinToCpus(cpus)
        log.info('threads pinned', { cpus: cpus.join(',') })
      }
      const iocores =
        o.iocores !== undefined
          ? iocoresOption(o.iocores)
          : (c?.iocores ?? defaultIocores(availableParallelism()))
      const pollIdleUs = pollOption(o, c)?.idleUs
      const start = (options: IohypOptions, log: Logger) =>
        iocores > 1 ? IocoreRouter.start({ ...options, iocores }, log) : IohypDaemon.start(options, log)
      const daemon = await start(
        {
          interface: required(o.interface ?? c?.interface, '--interface'),
          address: o.address ?? c?.address,
          stateDir: o.stateDir ?? c?.stateDir ?? DEFAULT_STATE_DIR,
          control: o.control ?? c?.control ?? DEFAULT_IOHYP_SOCKET,
          insecurePlaintext: o.insecurePlaintext === true || c?.insecurePlaintext === true,
          version: VERSION,
          metrics: metricsOption(o.metrics) ?? c?.metrics,
          pollIdleUs,
          ...(c && { guests: c.guests, devices: { disks: c.disks, nics: c.nics } }),
          ...(c?.budgets && { budgets: c.budgets }),
        },
        log,
      )
      stopOnSignals(log, () => daemon.stop())
    })

  program
    .command('guest')
    .description('run the guest agent in the foreground (JSON logs on stderr; stops on SIGINT/SIGTERM)')
    .option('--config <file>', CONFIG_HELP)
    .option('--interface <if>', 'network interface that reaches the IOhyp (required, here or in --config)')
    .option('--address <ipv4>', "vrio address on that interface (default: the interface's IPv4 address)")
    .option(
      '--key-file <file>',
      "this guest's key, as enrolled on the IOhyp (see vrio keygen; required, here or in --config)",
    )
    .option('--run-dir <dir>', `runtime files (sockets of exported disks; default: ${DEFAULT_RUN_DIR})`)
    .option('--control <path>', `unix socket of the control API (default: ${DEFAULT_GUEST_SOCKET})`)
    .option(
      '--attach',
      'also attach each remote disk as a block device (a FUSE file the agent serves + loop device with direct I/O)',
    )
    .option(
      '--io-timeout <seconds>',
      'a disk request the IOhyp has not answered by then fails with an I/O error (default: 30)',
    )
    .option('--insecure-plaintext', PLAINTEXT_HELP)
    .option(
      '--iohyp <ipv4>',
      'accept connections only from the IOhyp at this address (default: the first IOhyp that authenticates, remembered in the run dir)',
    )
    .option('--metrics <addr:port>', METRICS_HELP)
    .option('--poll', GUEST_POLL_HELP)
    .option('--no-poll', GUEST_NO_POLL_HELP)
    .option('--poll-idle-us <us>', POLL_IDLE_HELP)
    .option('--cpus <list>', CPUS_HELP)
    .action(async (o: GuestCliOptions) => {
      const c = o.config === undefined ? undefined : loadGuestConfig(o.config)
      const poll = pollOption(o, c, 'disks')
      const cpus = cpusOption(o.cpus) ?? c?.cpus
      const ifname = required(o.interface ?? c?.interface, '--interface')
      const key = o.keyFile !== undefined ? readKeyFile(o.keyFile) : c?.key
      const runDir = o.runDir ?? c?.runDir ?? DEFAULT_RUN_DIR
      const log = createLogger('guest')
      log.debug('malloc', { tuning: tuneAllocator() })
      if (cpus) {
        await pinToCpus(cpus)
        log.info('threads pinned', { cpus: cpus.join(',') })
      }
      const daemon = await GuestDaemon.start(
        {
          interface: ifname,
          address: o.address ?? c?.address,
          key: required(key, '--key-file'),
          control:
            o.control ??
            c?.control ??
            (runDir === DEFAULT_RUN_DIR ? DEFAULT_GUEST_SOCKET : join(runDir, 'guest.sock')),
          runDir,
          attach: o.attach === true || c?.attach === true,
          insecurePlaintext: o.insecurePlaintext === true || c?.insecurePlaintext === true,
          ioTimeoutMs:
            o.ioTimeout !== undefined
              ? seconds(o.ioTimeout, '--io-timeout')
              : Math.round((c?.ioTimeout ?? 30) * 1000),
          iohyp: o.iohyp !== undefined ? ipv4Option(o.iohyp, '--iohyp') : c?.iohyp,
          version: VERSION,
          metrics: metricsOption(o.metrics) ?? c?.metrics,
          ...(poll && { pollIdleUs: poll.idleUs, pollDisksOnly: poll.disksOnly }),
        },
        log,
      )
      stopOnSignals(log, () => daemon.stop())
    })
}

/** --cpus LIST: the sorted CPU numbers, or undefined when not given. */
export function cpusOption(list: string | undefined): number[] | undefined {
  if (list === undefined) return undefined
  const r = cpuListSchema.safeParse(list)
  if (!r.success)
    throw new VrioError('invalid-argument', `--cpus '${list}': ${r.error.issues[0].message}`, {
      field: 'cpus',
    })
  return r.data
}

/** How a daemon's thread polls (see pollOption). */
export interface PollSetting {
  /** µs without a frame before the polling thread sleeps. */
  idleUs: number
  /** Only while disk calls are outstanding, and idleUs after the last (FrameChannel.setPoll's gate). */
  disksOnly: boolean
}

/**
 * --poll / --no-poll / --poll-idle-us (or the config's poll / pollIdleUs; the command line wins):
 * how the thread polls, or undefined when it does not. Asked for (true): after every frame. Not
 * said: `byDefault`, off or only for disk calls (the guest agent's). An idle time with polling off
 * is refused.
 */
export function pollOption(
  o: { poll?: boolean; pollIdleUs?: string },
  c: { poll?: boolean; pollIdleUs?: number } | undefined,
  byDefault: 'off' | 'disks' = 'off',
): PollSetting | undefined {
  const asked = o.poll ?? c?.poll
  const on = asked ?? byDefault === 'disks'
  let idle = c?.pollIdleUs
  if (o.pollIdleUs !== undefined) {
    const r = pollIdleUsSchema.safeParse(/^[0-9]+$/.test(o.pollIdleUs) ? Number(o.pollIdleUs) : Number.NaN)
    if (!r.success)
      throw new VrioError(
        'invalid-argument',
        `--poll-idle-us '${o.pollIdleUs}': ${r.error.issues[0].message}`,
        {
          field: 'pollIdleUs',
        },
      )
    idle = r.data
  }
  if (!on) {
    if (idle !== undefined)
      throw new VrioError(
        'invalid-argument',
        `${o.pollIdleUs !== undefined ? '--poll-idle-us' : 'pollIdleUs'} is set but polling is off: ${byDefault === 'disks' && asked === false ? 'drop --no-poll (or poll: false)' : 'add --poll (or poll: true)'}`,
        { field: 'pollIdleUs' },
      )
    return undefined
  }
  return { idleUs: idle ?? DEFAULT_POLL_IDLE_US, disksOnly: asked === undefined }
}

function required<T>(value: T | undefined, option: string): T {
  if (value === undefined)
    throw new VrioError(
      'invalid-argument',
      `required option '${option}' not specified (give it, or set it in --config)`,
    )
  return value
}

function seconds(text: string, option: string): number {
  const n = Number(text)
  if (!Number.isFinite(n) || n <= 0 || n > 86_400) {
    throw new VrioError(
      'invalid-argument',
      `${option} '${text}' must be a number of seconds between 0 and 86400`,
    )
  }
  return Math.round(n * 1000)
}

/** `--metrics ADDR:PORT`, checked before anything starts. */
/** --iocores: a whole number from 1 to 64. */
function iocoresOption(text: string): number {
  if (!/^[0-9]{1,2}$/.test(text) || Number(text) < 1 || Number(text) > 64)
    throw new VrioError('invalid-argument', `--iocores '${text}': expected a number from 1 to 64`, {
      field: 'iocores',
    })
  return Number(text)
}

function metricsOption(text: string | undefined): string | undefined {
  if (text !== undefined) parseListenAddress(text)
  return text
}

/** A unicast IPv4 address given as an option, in canonical form. */
function ipv4Option(text: string, option: string): string {
  const r = ipv4Schema.safeParse(text)
  if (!r.success) throw new VrioError('invalid-argument', `${option}: ${r.error.issues[0].message}`)
  return r.data
}
