/** `vrio blk create|list|remove`: remote disks, through the IOhyp's (or, for list, the guest's) control API. */
import { resolve } from 'node:path'
import type { Command } from 'commander'
import {
  type CreateDiskRequest,
  DEFAULT_IOHYP_SOCKET,
  type DiskInfo,
  type GuestDiskInfo,
  type ListDisksResponse,
  ROUTES,
} from '../control/api.ts'
import { VrioError } from '../errors.ts'
import { parseIPv4, parseMac } from '../wire/address.ts'
import {
  addControlOption,
  addDaemonChoice,
  chosenDaemonSocket,
  type DaemonChoiceOptions,
  addJsonOption,
  type ControlOptions,
  controlClient,
  formatBytes,
  formatTable,
  printJson,
  printLines,
} from './common.ts'

interface CreateOptions extends ControlOptions {
  guest: string
  backing: string
  name?: string
  readOnly?: boolean
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
  addControlOption(create, DEFAULT_IOHYP_SOCKET)
  addJsonOption(create).action(async (o: CreateOptions) => {
    if (parseMac(o.guest) === undefined && parseIPv4(o.guest) === undefined) {
      throw new VrioError('invalid-argument', `--guest '${o.guest}' is neither a MAC nor an IPv4 address`)
    }
    const request: CreateDiskRequest = {
      guest: o.guest,
      backing: resolve(o.backing),
      name: o.name,
      readOnly: o.readOnly === true,
    }
    const disk = await controlClient(o.control!).post<DiskInfo>(ROUTES.disks, request)
    if (o.json) printJson(disk)
    else
      printLines([
        `created ${disk.name} (${formatBytes(disk.size)}) for ${disk.guest}: ${disk.nbd}${disk.device ? ` ${disk.device}` : ''}`,
      ])
  })

  const list = blk
    .command('list')
    .description('list remote disks (on the IOhyp; with --guest, as the guest sees them)')
  addJsonOption(addDaemonChoice(list)).action(async (o: DaemonChoiceOptions) => {
    const path = chosenDaemonSocket(o)
    const answer = await controlClient(path).get<ListDisksResponse<DiskInfo | GuestDiskInfo>>(ROUTES.disks)
    if (o.json) {
      printJson(answer)
      return
    }
    if (answer.disks.length === 0) {
      printLines(['no disks'])
      return
    }
    const rows = answer.disks.map((d) => [
      d.name,
      formatBytes(d.size),
      d.readOnly ? 'ro' : 'rw',
      'guest' in d ? d.guest : '',
      'state' in d ? d.state : '',
      d.nbd ?? '-',
      d.device ?? '-',
    ])
    printLines(
      formatTable(['NAME', 'SIZE', 'MODE', 'GUEST', 'STATE', 'NBD', 'DEVICE'], rows, [
        'left',
        'right',
        'left',
        'left',
        'left',
        'left',
        'left',
      ]),
    )
  })

  const remove = blk
    .command('remove')
    .description('take a disk away from its guest (the backing file stays)')
    .argument('<name>', 'disk name')
  addControlOption(remove, DEFAULT_IOHYP_SOCKET)
  addJsonOption(remove).action(async (name: string, o: ControlOptions) => {
    const disk = await controlClient(o.control!).delete<DiskInfo>(
      ROUTES.disk.replace(':name', encodeURIComponent(name)),
    )
    if (o.json) printJson(disk)
    else printLines([`removed ${disk.name}`])
  })
}
