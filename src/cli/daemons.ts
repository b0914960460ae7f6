/** `vrio iohyp` and `vrio guest`: the two daemons, each a foreground process. */
import { join } from 'node:path'
import type { Command } from 'commander'
import { readKeyFile } from '../auth/key-file.ts'
import { DEFAULT_GUEST_SOCKET, DEFAULT_IOHYP_SOCKET } from '../control/api.ts'
import { createLogger } from '../daemon/log.ts'
import { stopOnSignals } from '../daemon/runtime.ts'
import { GuestDaemon } from '../guest/daemon.ts'
import { IohypDaemon } from '../iohyp/daemon.ts'
import { VrioError } from '../errors.ts'
import { VERSION } from './version.ts'

export const DEFAULT_STATE_DIR = '/var/lib/vrio'
export const DEFAULT_RUN_DIR = '/run/vrio'

interface IohypCliOptions {
  interface: string
  address?: string
  stateDir: string
  control: string
}

interface GuestCliOptions {
  interface: string
  address?: string
  keyFile: string
  runDir: string
  control?: string
  attach?: boolean
  ioTimeout: string
}

export function registerDaemonCommands(program: Command): void {
  program
    .command('iohyp')
    .description(
      'run the I/O hypervisor daemon in the foreground (JSON logs on stderr; stops on SIGINT/SIGTERM)',
    )
    .requiredOption('--interface <if>', 'network interface that reaches the guests')
    .option('--address <ipv4>', "vrio address on that interface (default: the interface's IPv4 address)")
    .option('--state-dir <dir>', 'where enrolled guests are kept', DEFAULT_STATE_DIR)
    .option('--control <path>', 'unix socket of the control API', DEFAULT_IOHYP_SOCKET)
    .action(async (o: IohypCliOptions) => {
      const log = createLogger('iohyp')
      const daemon = await IohypDaemon.start(
        {
          interface: o.interface,
          address: o.address,
          stateDir: o.stateDir,
          control: o.control,
          version: VERSION,
        },
        log,
      )
      stopOnSignals(log, () => daemon.stop())
    })

  program
    .command('guest')
    .description('run the guest agent in the foreground (JSON logs on stderr; stops on SIGINT/SIGTERM)')
    .requiredOption('--interface <if>', 'network interface that reaches the IOhyp')
    .option('--address <ipv4>', "vrio address on that interface (default: the interface's IPv4 address)")
    .requiredOption('--key-file <file>', "this guest's key, as enrolled on the IOhyp (see vrio keygen)")
    .option('--run-dir <dir>', 'runtime files (sockets of exported disks)', DEFAULT_RUN_DIR)
    .option('--control <path>', `unix socket of the control API (default: ${DEFAULT_GUEST_SOCKET})`)
    .option(
      '--attach',
      'also attach each remote disk as a block device (nbdfuse + loop device with direct I/O)',
    )
    .option(
      '--io-timeout <seconds>',
      'a disk request the IOhyp has not answered by then fails with an I/O error',
      '30',
    )
    .action(async (o: GuestCliOptions) => {
      const key = readKeyFile(o.keyFile)
      const log = createLogger('guest')
      const daemon = await GuestDaemon.start(
        {
          interface: o.interface,
          address: o.address,
          key,
          control:
            o.control ?? (o.runDir === DEFAULT_RUN_DIR ? DEFAULT_GUEST_SOCKET : join(o.runDir, 'guest.sock')),
          runDir: o.runDir,
          attach: o.attach === true,
          ioTimeoutMs: seconds(o.ioTimeout, '--io-timeout'),
          version: VERSION,
        },
        log,
      )
      stopOnSignals(log, () => daemon.stop())
    })
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
