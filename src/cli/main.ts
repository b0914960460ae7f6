#!/usr/bin/env node
import { Command, CommanderError } from 'commander'
import { isVrioError, type VrioError } from '../errors.ts'
import { escapeControl } from '../escape.ts'
import { printJson } from './common.ts'
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
        await runDemo({ out: (line) => console.log(line), cli: fileURLToPath(import.meta.url) })
        console.log('demo passed; everything it created has been removed')
      } catch (error) {
        if ((error as VrioError).code === 'interrupted') {
          console.error(`vrio: ${(error as Error).message}; everything it created has been removed`)
          process.exitCode = 130
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
function oneLine(text: string): string {
  return escapeControl(text.trim().replace(/\s*\n\s*/g, ' '))
}

async function main(argv: string[]): Promise<number> {
  const state: RunState = { json: false }
  try {
    await buildProgram(state).parseAsync(argv)
    // An action may have chosen its own status (the demo: 130 when interrupted).
    return typeof process.exitCode === 'number' ? process.exitCode : 0
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode
    if (isVrioError(error)) {
      const hint = error.details.hint
      process.stderr.write(
        `vrio: ${oneLine(error.message)}${typeof hint === 'string' ? ` (${oneLine(hint)})` : ''}\n`,
      )
      // Scripts get the stable code, not just prose: the same `{ error }` shape the control API uses.
      if (state.json) printJson({ error: error.toJSON() })
      return 1
    }
    const message = error instanceof Error ? error.message : String(error)
    process.stderr.write(`vrio: unexpected error: ${oneLine(message)}\n`)
    if (process.env.VRIO_DEBUG) console.error(error)
    return 70 // EX_SOFTWARE
  }
}

process.exitCode = await main(process.argv)
