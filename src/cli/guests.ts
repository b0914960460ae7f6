/** `vrio guests add|remove|list`: manage the guests an IOhyp serves, through its control API. */
import type { Command } from 'commander'
import { readKeyFile } from '../auth/key-file.ts'
import {
  type AddGuestResponse,
  type GuestInfo,
  type ListGuestsResponse,
  type RemoveGuestResponse,
  ROUTES,
  routePath,
} from '../control/api.ts'
import { VrioError } from '../errors.ts'
import { guestSpecSchema, parseGuestMac } from '../control/guest-spec.ts'
import {
  addIohypOptions,
  checkedRequest,
  type ControlOptions,
  controlClient,
  formatBytes,
  formatRtt,
  type Column,
  columnTable,
  numberFlag,
  printJson,
  printLines,
} from './common.ts'

interface AddOptions extends ControlOptions {
  mac: string
  address: string
  keyFile: string
  pendingReplyBytes?: string
  reassemblyBytes?: string
}

export function registerGuestsCommands(program: Command): void {
  const guests = program.command('guests').description('manage the guests an IOhyp serves')

  const add = guests
    .command('add')
    .description('let a guest connect: its MAC, its IPv4 address and its channel key')
    .requiredOption('--mac <mac>', "guest's MAC address, e.g. 52:54:00:12:34:56")
    .requiredOption('--address <ipv4>', "guest's IPv4 address, e.g. 10.0.0.2")
    .requiredOption('--key-file <file>', 'file holding the guest key (from vrio keygen; mode 0600)')
    .option('--pending-reply-bytes <n>', 'read replies the IOhyp may hold for the guest (default 64 MiB)')
    .option(
      '--reassembly-bytes <n>',
      "the guest's partly received messages the IOhyp may hold (default 12 MiB)",
    )
  addIohypOptions(add).action(async (options: AddOptions) => {
    // Everything that can be checked here is, so a typo never reaches the daemon.
    const { pendingReplyBytes, reassemblyBytes } = options
    const request = checkedRequest(guestSpecSchema, {
      mac: options.mac,
      address: options.address,
      key: readKeyFile(options.keyFile).toString('hex'),
      ...((pendingReplyBytes ?? reassemblyBytes) !== undefined && {
        budgets: {
          pendingReplyBytes: numberFlag(pendingReplyBytes),
          reassemblyBytes: numberFlag(reassemblyBytes),
        },
      }),
    })
    const answer = await controlClient(options.control!).post<AddGuestResponse>(ROUTES.guests, request)
    if (options.json) printJson(answer)
    else printLines([`added guest ${answer.guest.mac} (${answer.guest.address}), ${answer.guest.state}`])
  })

  const remove = guests
    .command('remove')
    .description('disconnect a guest and forget it')
    .argument('<mac>', "guest's MAC address")
  addIohypOptions(remove).action(async (macText: string, options: ControlOptions) => {
    const mac = parseGuestMac(macText)
    const answer = await controlClient(options.control!).delete<RemoveGuestResponse>(guestPath(mac))
    if (options.json) printJson(answer)
    else printLines([`removed guest ${answer.guest.mac} (${answer.guest.address})`])
  })

  const move = guests
    .command('move')
    .description('move a guest, its channel and its devices to another iocore (IOhyp with --iocores N ≥ 2)')
    .argument('<mac>', "guest's MAC address")
    .requiredOption('--iocore <k>', 'the iocore to move it to, from 0 to N − 1')
  addIohypOptions(move).action(async (macText: string, options: ControlOptions & { iocore: string }) => {
    const mac = parseGuestMac(macText)
    if (!/^[0-9]{1,3}$/.test(options.iocore))
      throw new VrioError('invalid-argument', `invalid --iocore '${options.iocore}': expected a number`, {
        field: 'iocore',
      })
    const answer = await controlClient(options.control!).post<RemoveGuestResponse>(
      routePath(ROUTES.guestMove, { mac }),
      { iocore: Number(options.iocore) },
    )
    if (options.json) printJson(answer)
    else printLines([`moved guest ${answer.guest.mac} to iocore ${options.iocore}`])
  })

  const list = guests.command('list').description('show the guests with their state and traffic counters')
  addIohypOptions(list).action(async (options: ControlOptions) => {
    const answer = await controlClient(options.control!).get<ListGuestsResponse>(ROUTES.guests)
    if (options.json) printJson(answer)
    else printLines(answer.guests.length === 0 ? ['no guests'] : columnTable(GUEST_COLUMNS, answer.guests))
  })
}

function guestPath(mac: string): string {
  return routePath(ROUTES.guest, { mac })
}

const GUEST_COLUMNS: readonly Column<GuestInfo>[] = [
  ['MAC', 'left', (g) => g.mac],
  ['ADDRESS', 'left', (g) => g.address],
  ['STATE', 'left', (g) => g.state],
  ['RTT', 'right', (g) => formatRtt(g.rttMs)],
  ['FRAMES IN', 'right', (g) => String(g.framesIn)],
  ['FRAMES OUT', 'right', (g) => String(g.framesOut)],
  ['BYTES IN', 'right', (g) => formatBytes(g.bytesIn)],
  ['BYTES OUT', 'right', (g) => formatBytes(g.bytesOut)],
  ['DROPS', 'right', (g) => String(Object.values(g.drops ?? {}).reduce((sum, n) => sum + n, 0))],
]
