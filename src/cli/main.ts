#!/usr/bin/env node
import { CommanderError } from 'commander'
import { EXIT, exitStatusForCode, isVrioError } from '../errors.ts'
import { printJson } from './common.ts'
import { buildProgram, oneLine, type RunState } from './program.ts'

async function main(argv: string[]): Promise<number> {
  const state: RunState = { json: false }
  try {
    await buildProgram(state).parseAsync(argv)
    // An action may have chosen its own status (the demo: 130 when interrupted).
    return typeof process.exitCode === 'number' ? process.exitCode : 0
  } catch (error) {
    // Commander's own refusals (unknown option, missing argument) are bad input; help and version are 0.
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : EXIT.usage
    if (isVrioError(error)) {
      const hint = error.details.hint
      process.stderr.write(
        `vrio: ${oneLine(error.message)}${typeof hint === 'string' ? ` (${oneLine(hint)})` : ''}\n`,
      )
      // Scripts get the stable code, not just prose: the same `{ error }` shape the control API uses.
      if (state.json) printJson({ error: error.toJSON() })
      return exitStatusForCode(error.code)
    }
    const message = error instanceof Error ? error.message : String(error)
    process.stderr.write(`vrio: unexpected error: ${oneLine(message)}\n`)
    if (process.env.VRIO_DEBUG) console.error(error)
    return EXIT.internal
  }
}

process.exitCode = await main(process.argv)
