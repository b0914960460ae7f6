#!/usr/bin/env node
import { readFileSync } from 'node:fs'
import { Command, CommanderError } from 'commander'
import { isVrioError, VrioError } from '../errors.ts'

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
  version: string
}

export function buildProgram(): Command {
  const program = new Command()
    .name('vrio')
    .description(
      'Split I/O in user space: an I/O hypervisor serves virtual disks and NICs to guests over a ' +
        'TCP-looking layer-2 channel, and runs block encryption, firewall and DPI once for everyone.',
    )
    .version(pkg.version, '-V, --version')
    .showHelpAfterError('(run vrio --help for usage)')
    .exitOverride()

  program
    .command('demo')
    .description(
      'set up an IOhyp and two guests in network namespaces, show disks and NICs working, tear down',
    )
    .action(() => {
      throw new VrioError(
        'not-implemented',
        'the demo needs the daemons, which do not exist yet; `npm test` exercises the transport today',
      )
    })
  return program
}

async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv)
    return 0
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode
    if (isVrioError(error)) {
      process.stderr.write(`vrio: ${error.message}\n`)
      return 1
    }
    const message = error instanceof Error ? error.message : String(error)
    process.stderr.write(`vrio: unexpected error: ${message}\n`)
    if (process.env.VRIO_DEBUG) console.error(error)
    return 70 // EX_SOFTWARE
  }
}

process.exitCode = await main(process.argv)
