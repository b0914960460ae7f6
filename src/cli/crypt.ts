/** `vrio crypt format|info`: LUKS volume headers on image files, no daemon needed. */
import { closeSync, openSync, statSync, truncateSync } from 'node:fs'
import { resolve } from 'node:path'
import type { Command } from 'commander'
import { FileDevice } from '../devices/blk/file-device.ts'
import { VrioError } from '../errors.ts'
import { formatLuks, readLuksHeader, summarizeLuks } from '../services/crypt/luks.ts'
import { luksSecret } from '../services/crypt/open.ts'
import { addJsonOption, formatBytes, formatFields, printJson, printLines } from './common.ts'

interface FormatOptions {
  passphraseFile?: string
  keyFile?: string
  type: string
  pbkdf?: string
  sectorSize: string
  size?: string
  json?: boolean
}

function choice(value: string, allowed: readonly string[], option: string): string {
  if (!allowed.includes(value))
    throw new VrioError(
      'invalid-argument',
      `${option} must be one of ${allowed.join(', ')}, not ${JSON.stringify(value)}`,
    )
  return value
}

function byteCount(value: string, option: string): number {
  const m = /^(\d+)([KMGT]i?B?|B)?$/i.exec(value.trim())
  const units: Record<string, number> = { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }
  const n = m ? Number(m[1]) * (m[2] ? (units[m[2][0].toUpperCase()] ?? 1) : 1) : Number.NaN
  if (!Number.isSafeInteger(n) || n <= 0)
    throw new VrioError(
      'invalid-argument',
      `${option} must be a positive byte count (e.g. 1073741824 or 1G), not ${JSON.stringify(value)}`,
    )
  return n
}

export function registerCryptCommands(program: Command): void {
  const crypt = program.command('crypt').description('LUKS-encrypted disk images (aes-xts-plain64), offline')

  const format = crypt
    .command('format')
    .description(
      'write a new LUKS header (random volume key, keyslot 0) at the start of PATH, creating the file if missing; the old payload becomes unreadable',
    )
    .argument('<path>', 'image file')
    .option('--passphrase-file <file>', 'passphrase for keyslot 0 (one trailing newline is ignored)')
    .option('--key-file <file>', 'key file for keyslot 0 (all its bytes, as cryptsetup --key-file)')
    .option('--type <luks1|luks2>', 'header version', 'luks2')
    .option('--pbkdf <pbkdf2|argon2id>', 'keyslot KDF (default: argon2id for luks2, pbkdf2 for luks1)')
    .option('--sector-size <512|4096>', 'encryption sector size (4096: luks2 only)', '512')
    .option('--size <bytes>', 'payload size for a new file (default 1G); an existing file keeps its size')
  addJsonOption(format).action(async (path: string, o: FormatOptions) => {
    const type = choice(o.type, ['luks1', 'luks2'], '--type') as 'luks1' | 'luks2'
    const pbkdf =
      o.pbkdf === undefined
        ? undefined
        : (choice(o.pbkdf, ['pbkdf2', 'argon2id'], '--pbkdf') as 'pbkdf2' | 'argon2id')
    const sectorSize = Number(choice(o.sectorSize, ['512', '4096'], '--sector-size'))
    const payloadSize = o.size === undefined ? undefined : byteCount(o.size, '--size')
    const passphrase = luksSecret({ passphraseFile: o.passphraseFile, keyFile: o.keyFile })
    const file = resolve(path)
    let created = false
    try {
      try {
        closeSync(openSync(file, 'wx', 0o600))
        created = true
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST')
          throw new VrioError('io-error', `cannot create ${file}: ${(error as NodeJS.ErrnoException).code}`, {
            path: file,
          })
      }
      const headerArea = type === 'luks1' ? 2 * 2 ** 20 : 16 * 2 ** 20
      if (created || payloadSize !== undefined) {
        const wanted = headerArea + (payloadSize ?? 2 ** 30)
        if (created || statSync(file).size < wanted) truncateSync(file, wanted)
      }
      const device = await FileDevice.open(file)
      try {
        await formatLuks(device, { type, pbkdf, sectorSize, passphrase })
        // What is on disk now, read back: the summary doubles as a check of the new header.
        const summary = summarizeLuks(await readLuksHeader(device), device.size)
        if (o.json) printJson({ path: file, ...summary })
        else
          printLines([
            `formatted ${file} as ${summary.type} (${summary.cipher}, ${summary.keyBits}-bit key, ${summary.sectorSize}-byte sectors)`,
            `payload: ${formatBytes(summary.payloadSize)} from byte ${summary.payloadOffset}`,
          ])
      } finally {
        await device.close()
      }
    } finally {
      passphrase.fill(0)
    }
  })

  const info = crypt
    .command('info')
    .description('show the LUKS header of PATH (never keys, salts or digests)')
    .argument('<path>', 'image file or block device')
  addJsonOption(info).action(async (path: string, o: { json?: boolean }) => {
    const file = resolve(path)
    const device = await FileDevice.open(file, { readOnly: true, exclusive: false })
    try {
      const summary = summarizeLuks(await readLuksHeader(device), device.size)
      if (o.json) {
        printJson({ path: file, ...summary })
        return
      }
      const fields: [string, string][] = [
        ['type', summary.type],
        ['uuid', summary.uuid],
        ...(summary.label ? [['label', summary.label] as [string, string]] : []),
        ['cipher', `${summary.cipher}, ${summary.keyBits}-bit key`],
        ['sector size', `${summary.sectorSize}`],
        ['payload', `${formatBytes(summary.payloadSize)} from byte ${summary.payloadOffset}`],
        ...(summary.headerCopies
          ? [
              [
                'header copies',
                `primary ${summary.headerCopies.primary ? 'ok' : 'BAD'}, secondary ${summary.headerCopies.secondary ? 'ok' : 'BAD'}`,
              ] as [string, string],
            ]
          : []),
      ]
      for (const s of summary.keyslots)
        fields.push([
          `keyslot ${s.id}`,
          `${s.kdf}, ${s.cost}${s.priority === 1 ? '' : `, priority ${s.priority}`}`,
        ])
      printLines(formatFields(fields))
    } finally {
      await device.close()
    }
  })
}
