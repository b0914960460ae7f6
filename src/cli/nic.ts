/** `vrio nic create|list|remove`: remote NICs, through the IOhyp's (or, for list, the guest's) control API. */
import type { Command } from 'commander'
import {
  type CreateNicRequest,
  DEFAULT_IOHYP_SOCKET,
  type GuestNicInfo,
  type ListNicsResponse,
  type NicInfo,
  ROUTES,
} from '../control/api.ts'
import { VrioError } from '../errors.ts'
import { parseIPv4, parseMac } from '../wire/address.ts'
import {
  addControlOption,
  addDaemonChoice,
  addJsonOption,
  type ControlOptions,
  chosenDaemonSocket,
  controlClient,
  type DaemonChoiceOptions,
  formatBytes,
  formatTable,
  printJson,
  printLines,
} from './common.ts'

interface CreateOptions extends ControlOptions {
  guest: string
  mac: string
  tap?: string
  bridge?: string
  macvtap?: string
  name?: string
  mtu?: string
}

function describeBackend(n: NicInfo): string {
  if (n.backend.kind === 'macvtap') return `macvtap ${n.backend.device} on ${n.backend.uplink}`
  return `tap ${n.backend.tap}${n.backend.bridge ? ` on bridge ${n.backend.bridge}` : ''}`
}

export function registerNicCommands(program: Command): void {
  const nic = program
    .command('nic')
    .description('remote NICs: an interface in the guest, a TAP (on a bridge) or macvtap on the IOhyp')

  const create = nic
    .command('create')
    .description("give a guest a remote NIC; returns once the guest's interface exists")
    .requiredOption('--guest <mac|ipv4>', 'the guest, by MAC or IPv4 address')
    .requiredOption('--mac <mac>', "MAC address of the guest's interface")
    .option('--tap <name>', 'back-end: a TAP on the IOhyp (created unless it exists)')
    .option('--bridge <bridge>', 'with --tap: the bridge the TAP joins')
    .option('--macvtap <uplink>', 'back-end: a macvtap (bridge mode) on this uplink of the IOhyp')
    .option('--name <ifname>', "the guest's interface name, unique on this IOhyp (default vnic0, vnic1, ...)")
    .option('--mtu <n>', 'MTU of the interface', '1500')
  addControlOption(create, DEFAULT_IOHYP_SOCKET)
  addJsonOption(create).action(async (o: CreateOptions) => {
    if (parseMac(o.guest) === undefined && parseIPv4(o.guest) === undefined) {
      throw new VrioError('invalid-argument', `--guest '${o.guest}' is neither a MAC nor an IPv4 address`)
    }
    if (parseMac(o.mac) === undefined)
      throw new VrioError('invalid-argument', `--mac '${o.mac}' is not a MAC address`)
    if ((o.tap === undefined) === (o.macvtap === undefined))
      throw new VrioError('invalid-argument', 'give exactly one of --tap and --macvtap')
    if (o.bridge !== undefined && o.tap === undefined)
      throw new VrioError('invalid-argument', '--bridge goes with --tap')
    const mtu = Number(o.mtu)
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65_535)
      throw new VrioError('invalid-argument', `--mtu '${o.mtu}' must be an integer from 68 to 65535`)
    const request: CreateNicRequest = {
      guest: o.guest,
      mac: o.mac,
      tap: o.tap,
      bridge: o.bridge,
      macvtap: o.macvtap,
      name: o.name,
      mtu,
    }
    const n = await controlClient(o.control!).post<NicInfo>(ROUTES.nics, request)
    if (o.json) printJson(n)
    else printLines([`created ${n.name} (${n.mac}, mtu ${n.mtu}) for ${n.guest}: ${describeBackend(n)}`])
  })

  const list = nic
    .command('list')
    .description('list remote NICs (on the IOhyp; with --guest, as the guest sees them)')
  addJsonOption(addDaemonChoice(list)).action(async (o: DaemonChoiceOptions) => {
    const answer = await controlClient(chosenDaemonSocket(o)).get<ListNicsResponse<NicInfo | GuestNicInfo>>(
      ROUTES.nics,
    )
    if (o.json) {
      printJson(answer)
      return
    }
    if (answer.nics.length === 0) {
      printLines(['no NICs'])
      return
    }
    const rows = answer.nics.map((n) => [
      n.name,
      n.mac,
      String(n.mtu),
      'guest' in n ? n.guest : '',
      'state' in n ? n.state : '',
      'backend' in n ? describeBackend(n) : '',
      `${n.fromGuest.frames} / ${formatBytes(n.fromGuest.bytes)}`,
      `${n.toGuest.frames} / ${formatBytes(n.toGuest.bytes)}`,
      String(Object.values(n.drops).reduce((a, b) => a + b, 0)),
    ])
    printLines(
      formatTable(
        ['NAME', 'MAC', 'MTU', 'GUEST', 'STATE', 'BACKEND', 'FROM GUEST', 'TO GUEST', 'DROPS'],
        rows,
        ['left', 'left', 'right', 'left', 'left', 'left', 'right', 'right', 'right'],
      ),
    )
  })

  const remove = nic
    .command('remove')
    .description("take a NIC away from its guest (the guest's interface and what the IOhyp created go)")
    .argument('<name>', 'NIC name')
  addControlOption(remove, DEFAULT_IOHYP_SOCKET)
  addJsonOption(remove).action(async (name: string, o: ControlOptions) => {
    const n = await controlClient(o.control!).delete<NicInfo>(
      ROUTES.nic.replace(':name', encodeURIComponent(name)),
    )
    if (o.json) printJson(n)
    else printLines([`removed ${n.name}`])
  })
}
