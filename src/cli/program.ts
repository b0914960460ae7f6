/** The `vrio` command line: every command and option (main.ts runs it). */
import { Command } from 'commander'
import { EXIT, type VrioError } from '../errors.ts'
import { escapeControl } from '../escape.ts'
import { fileURLToPath } from 'node:url'
import { runDemo } from '../demo/demo.ts'
import { registerBlkCommands } from './blk.ts'
import { registerConfigCommands } from './config.ts'
import { registerCryptCommands } from './crypt.ts'
import { registerDaemonCommands } from './daemons.ts'
import { registerDpiCommands } from './dpi.ts'
import { registerGuestsCommands } from './guests.ts'
import { registerKeygenCommand } from './keygen.ts'
import { registerNicCommands } from './nic.ts'
import { registerStatusCommand } from './status.ts'
import { registerTopCommands } from './top.ts'
import { VERSION } from './version.ts'

/** What main needs to learn from the command that ran, to report its failure the right way. */
export interface RunState {
  json: boolean
}

export function buildProgram(state: RunState = { json: false }): Command {
  const program = new Command()
    .name('vrio')
    .description(
      'Split I/O in user space: an I/O hypervisor serves virtual disks and NICs to guests over a ' +
        'TCP-looking layer-2 channel, and runs block encryption, firewall and DPI once for everyone.',
    )
    .version(VERSION, '-V, --version')
    .exitOverride()
    // One line on stderr, same shape as every other failure; subcommands inherit this.
    .configureOutput({
      outputError: (text, write) =>
        write(`vrio: ${oneLine(text.replace(/^error: /, ''))} (see vrio --help)\n`),
    })
    .hook('preAction', (_program, action) => {
      state.json = action.opts().json === true
    })

  program
    .command('demo')
    .description(
      'set up an IOhyp and two guests in network namespaces, show disks and NICs working, tear down',
    )
    .action(async () => {
      try {
        await runDemo({
          out: (line) => console.log(line),
          cli: fileURLToPath(new URL('./main.js', import.meta.url)),
        })
        console.log('demo passed; everything it created has been removed')
      } catch (error) {
        if ((error as VrioError).code === 'interrupted') {
          console.error(`vrio: ${(error as Error).message}; everything it created has been removed`)
          process.exitCode = EXIT.interrupted
          return
        }
        throw error
      }
    })
  registerDaemonCommands(program)
  registerKeygenCommand(program)
  registerGuestsCommands(program)
  registerStatusCommand(program)
  registerBlkCommands(program)
  registerNicCommands(program)
  registerDpiCommands(program)
  registerConfigCommands(program)
  registerCryptCommands(program)
  registerTopCommands(program)
  return program
}

/** A message on one line, its control characters escaped (it may quote what a peer sent). */
export function oneLine(text: string): string {
  return escapeControl(text.trim().replace(/\s*\n\s*/g, ' '))
}
