/** `vrio dpi check FILE...`: parses and compiles DPI rule files without a daemon, like `suricata -T`. */
import type { Command } from 'commander'
import { EXIT, VrioError } from '../errors.ts'
import { compileRules, type LoadReport } from '../services/net/compile.ts'
import { addJsonOption, printJson, printLines } from './common.ts'

interface CheckOptions {
  strict?: boolean
  json?: boolean
  var?: string[]
}

/** The set is usable: some rule loaded or nothing was skipped, and with --strict nothing was. */
function usable(report: LoadReport, strict: boolean): boolean {
  if (report.skipped.length === 0) return true
  return !strict && report.loaded > 0
}

export function registerDpiCommands(program: Command): void {
  const dpi = program.command('dpi').description('DPI rule files (Suricata syntax; docs/services.md)')
  const check = dpi
    .command('check')
    .description(
      'parse and compile rule files as a NIC would load them, without a daemon; lists skipped rules ' +
        'with FILE:LINE and reason; exit status 0 when the set is usable',
    )
    .argument('<file...>', 'rule files, loaded as one set (sids unique across them)')
    .option('--strict', 'any skipped rule makes the set unusable (as `nic services --strict` refuses it)')
    .option(
      '--var <name=value>',
      'a rule variable, e.g. HOME_NET=[10.0.0.0/8] (repeatable)',
      (v: string, all: string[] = []) => [...all, v],
    )
  addJsonOption(check).action((files: string[], o: CheckOptions) => {
    const vars: Record<string, string> = {}
    for (const v of o.var ?? []) {
      const eq = v.indexOf('=')
      if (eq < 1) throw new VrioError('invalid-argument', `--var '${v}' is not NAME=VALUE`)
      vars[v.slice(0, eq).replace(/^\$/, '')] = v.slice(eq + 1)
    }
    const paths = files
    let report: LoadReport
    try {
      report = compileRules({ kind: 'dpi', files: paths, vars }).report
    } catch (error) {
      // No rule usable at all: still a report, with every skip.
      const details = error instanceof VrioError ? error.details : {}
      if (!(error instanceof VrioError) || error.code !== 'invalid-rules' || !Array.isArray(details.errors))
        throw error
      report = {
        kind: 'dpi',
        files: paths,
        strict: false,
        loaded: 0,
        skipped: details.errors as LoadReport['skipped'],
        compiledBytes: 0,
        compileMs: 0,
      }
    }
    const ok = usable(report, o.strict === true)
    if (o.json) {
      printJson({
        loaded: report.loaded,
        skipped: report.skipped.map((s) => ({
          file: s.file,
          line: s.line,
          sid: s.sid ?? null,
          reason: s.reason,
        })),
      })
    } else {
      printLines([
        ...report.skipped.map(
          (s) => `${s.file}:${s.line}:${s.sid !== undefined ? ` sid ${s.sid}:` : ''} ${s.reason}`,
        ),
        `${report.loaded} rules loaded, ${report.skipped.length} skipped${
          ok ? '' : o.strict ? ' (refused: --strict)' : ' (refused: no usable rule)'
        }`,
      ])
    }
    if (!ok) process.exitCode = EXIT.usage
  })
}
