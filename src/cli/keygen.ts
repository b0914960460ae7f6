/** `vrio keygen`: create a guest's channel key file. */
import { resolve } from 'node:path'
import type { Command } from 'commander'
import { generateKey, writeKeyFile } from '../auth/key-file.ts'
import { addJsonOption, printJson, printLines } from './common.ts'

interface KeygenOptions {
  out: string
  force?: boolean
  json?: boolean
}

export function registerKeygenCommand(program: Command): void {
  const keygen = program
    .command('keygen')
    .description('write a new random 32-byte guest key to a file (mode 0600); the key is never printed')
    .requiredOption('--out <file>', 'where to write the key')
    .option('--force', 'replace the file if it exists')
  addJsonOption(keygen).action((options: KeygenOptions) => {
    const path = resolve(options.out)
    const key = generateKey()
    try {
      writeKeyFile(path, key, { force: options.force })
    } finally {
      key.fill(0)
    }
    if (options.json) printJson({ path })
    else printLines([`wrote a new key to ${path} (mode 0600)`])
  })
}
