/** `vrio config check|export`: validate a daemon's config file; turn a live IOhyp into one. */
import { resolve } from 'node:path'
import { type Command, Option } from 'commander'
import { ROUTES } from '../control/api.ts'
import { type ExportableState, exportConfig } from '../config/export.ts'
import {
  describeConfig,
  type GuestConfig,
  type IohypConfig,
  loadGuestConfig,
  loadIohypConfig,
} from '../config/load.ts'
import { writeFileAtomic } from '../daemon/runtime.ts'
import {
  addIohypOptions,
  addJsonOption,
  type ControlOptions,
  controlClient,
  printJson,
  printLines,
} from './common.ts'

interface CheckOptions {
  daemon: 'iohyp' | 'guest'
  json?: boolean
}

interface ExportOptions extends ControlOptions {
  keyDir: string
  out?: string
  force?: boolean
}

export function registerConfigCommands(program: Command): void {
  const config = program.command('config').description("check a daemon's config file, or export an IOhyp's")

  const check = config
    .command('check')
    .description(
      'validate a config file (keys and files it names included); exits non-zero naming every problem',
    )
    .argument('<file>', 'config file (.yaml, .yml or .json)')
    .addOption(
      new Option('--daemon <daemon>', 'which daemon the file is for')
        .choices(['iohyp', 'guest'])
        .makeOptionMandatory(),
    )
  addJsonOption(check).action((file: string, o: CheckOptions) => {
    const c = o.daemon === 'iohyp' ? loadIohypConfig(file) : loadGuestConfig(file)
    if (o.json) printJson({ valid: true, daemon: o.daemon, config: describeConfig(c) })
    else printLines([summary(file, o.daemon, c)])
  })

  const exp = config
    .command('export')
    .description(
      "write a running IOhyp's guests and disks as a config file (YAML); each guest's key goes to a key file in --key-dir, never into the config",
    )
    .requiredOption('--key-dir <dir>', 'where the key files go (guest-<mac>.key, mode 0600)')
    .option(
      '--out <file>',
      'write the config here (mode 0600) instead of stdout; key files are named relative to it',
    )
    .option('--force', 'replace key files in --key-dir that hold another key')
  addIohypOptions(exp).action(async (o: ExportOptions) => {
    const state = await controlClient(o.control!).get<ExportableState>(ROUTES.config)
    try {
      const out = o.out === undefined ? undefined : resolve(o.out)
      const result = exportConfig(state, { keyDir: o.keyDir, configPath: out, force: o.force })
      if (out !== undefined) await writeFileAtomic(out, result.text)
      if (o.json)
        printJson({
          config: out ?? null,
          keyFiles: result.keyFiles,
          ...(out === undefined && { text: result.text }),
        })
      else if (out === undefined) process.stdout.write(result.text)
      else printLines([`wrote ${out} and ${result.keyFiles.length} key file(s) in ${resolve(o.keyDir)}`])
    } finally {
      for (const g of state.guests) g.key = ''
    }
  })
}

function summary(file: string, daemon: string, c: IohypConfig | GuestConfig): string {
  if (!('guests' in c)) return `config ${file} is valid for vrio ${daemon}: interface ${c.interface}`
  const count = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`
  return `config ${file} is valid for vrio ${daemon}: interface ${c.interface}, ${count(c.guests.length, 'guest')}, ${count(c.disks.length, 'disk')}, ${count(c.nics.length, 'NIC')}`
}
