/** `vrio blk create|list|remove`: remote disks, through the IOhyp's (or, for list, the guest's) control API. */
import { resolve } from 'node:path'
import type { Command } from 'commander'
import { type DiskInfo, type GuestDiskInfo, type ListDisksResponse, ROUTES } from '../control/api.ts'
import { diskRequestSchema } from '../devices/blk/spec.ts'
import { VrioError } from '../errors.ts'
import {
  addIohypOptions,
  addListCommand,
  addRemoveCommand,
  checkedRequest,
  guestFlag,
  numberFlag,
  type ControlOptions,
  controlClient,
  formatBytes,
  printJson,
  printLines,
} from './common.ts'

interface CreateOptions extends ControlOptions {
  guest: string
  backing: string
  name?: string
  readOnly?: boolean
  encrypt?: string
  keyFile?: string
  passphraseFile?: string
  sectorSize?: string
}

/**
 * The `encrypt` part of a disk request from the command line (paths made absolute); the schema
 * says what is wrong with it. A key or sector size without --encrypt makes an `encrypt` without kind.
 */
function encryptionSpec(o: CreateOptions): Record<string, unknown> | undefined {
  if (o.encrypt === undefined && !o.keyFile && !o.passphraseFile && !o.sectorSize) return undefined
  return {
    kind: o.encrypt,
    ...(o.encrypt === 'plain' && { cipher: 'aes-xts-plain64' }),
    ...(o.keyFile && { keyFile: resolve(o.keyFile) }),
    ...(o.passphraseFile && { passphraseFile: resolve(o.passphraseFile) }),
    ...(o.sectorSize && { sectorSize: numberFlag(o.sectorSize) }),
  }
}

export function registerBlkCommands(program: Command): void {
  const blk = program
    .command('blk')
    .description('remote disks: a backing file on the IOhyp, an NBD export (and block device) in the guest')

  const create = blk
    .command('create')
    .description('give a guest a remote disk; returns once the guest has it ready')
    .requiredOption('--guest <mac|ipv4>', 'the guest, by MAC or IPv4 address')
    .requiredOption('--backing <path>', 'raw image file or block device on the IOhyp')
    .option('--name <name>', 'disk name, unique on this IOhyp (default disk0, disk1, ...)')
    .option('--read-only', 'the guest may only read')
    .option(
      '--encrypt <plain|luks>',
      'encrypt on the IOhyp: dm-crypt plain aes-xts-plain64, or a LUKS1/LUKS2 volume (vrio crypt format)',
    )
    .option('--key-file <file>', 'with --encrypt: the raw XTS key (plain), or a LUKS key file')
    .option('--passphrase-file <file>', 'with --encrypt luks: the passphrase')
    .option('--sector-size <512|4096>', 'with --encrypt plain: encryption sector size (default 512)')
  addIohypOptions(create).action(async (o: CreateOptions) => {
    const request = checkedRequest(diskRequestSchema, {
      guest: guestFlag(o.guest),
      backing: resolve(o.backing),
      name: o.name,
      readOnly: o.readOnly === true,
      encrypt: encryptionSpec(o),
    })
    const disk = await controlClient(o.control!).post<DiskInfo>(ROUTES.disks, request)
    if (o.json) printJson(disk)
    else
      printLines([
        `created ${disk.name} (${formatBytes(disk.size)}) for ${disk.guest}: ${disk.nbd}${disk.device ? ` ${disk.device}` : ''}`,
      ])
  })

  addListCommand<DiskInfo | GuestDiskInfo>(blk, {
    description: 'list remote disks (on the IOhyp; with --guest, as the guest sees them)',
    route: ROUTES.disks,
    key: 'disks',
    none: 'no disks',
    columns: [
      ['NAME', 'left', (d) => d.name],
      ['SIZE', 'right', (d) => formatBytes(d.size)],
      ['MODE', 'left', (d) => (d.readOnly ? 'ro' : 'rw')],
      ['GUEST', 'left', (d) => ('guest' in d ? d.guest : '')],
      ['STATE', 'left', (d) => ('state' in d ? d.state : '')],
      ['NBD', 'left', (d) => d.nbd ?? '-'],
      ['DEVICE', 'left', (d) => d.device ?? '-'],
    ],
  })

  const services = blk
    .command('services')
    .description(
      "show a disk's services and their counters (encryption is fixed at create: new keys for existing data mean re-encrypting it offline)",
    )
    .argument('<name>', 'disk name')
  addIohypOptions(services).action(async (name: string, o: ControlOptions & { json?: boolean }) => {
    const answer = await controlClient(o.control!).get<ListDisksResponse<DiskInfo>>(ROUTES.disks)
    const d = answer.disks.find((x) => x.name === name)
    if (!d) throw new VrioError('not-found', `no disk named ${name}`)
    if (o.json) {
      printJson({ name: d.name, services: { encryption: d.encryption } })
      return
    }
    const e = d.encryption
    if (!e) {
      printLines([`${d.name}: none`])
      return
    }
    const { kind, counters, ...rest } = e
    const details = Object.entries(rest)
      .map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
      .join(', ')
    const c = counters as Record<string, number>
    printLines([
      `${d.name}: encryption ${kind}${details ? ` (${details})` : ''}`,
      `  ${Object.entries(c)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    ])
  })

  addRemoveCommand(blk, ROUTES.disk, 'take a disk away from its guest (the backing file stays)', 'disk')
}
