/** `vrio nic create|list|remove`: remote NICs, through the IOhyp's (or, for list, the guest's) control API. */
import { resolve } from 'node:path'
import type { Command } from 'commander'
import { type GuestNicInfo, type ListNicsResponse, type NicInfo, ROUTES, routePath } from '../control/api.ts'
import { nicRequestSchema } from '../devices/net/spec.ts'
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
  mac: string
  tap?: string
  bridge?: string
  macvtap?: string
  name?: string
  mtu: string
  firewall?: string
  dpi?: string
  ip?: string
  allowSpoofing?: boolean
}

interface ServicesOptions extends ControlOptions {
  firewall?: string | false
  dpi?: string | false
  strict?: boolean
  json?: boolean
}

/**
 * How long a request that loads rules files may take: big DPI sets take seconds to compile, more
 * on a busy IOhyp; longer than the IOhyp's own compile timeout, so the answer is never lost.
 */
const RULES_TIMEOUT_MS = 600_000

/** Skipped rules listed by `nic services` (all of them are in --json). */
const SKIPPED_SHOWN = 20

function describeServices(n: NicInfo): string {
  const s = n.services.services
  const parts = (['firewall', 'dpi'] as const).flatMap((kind) => {
    const slot = s[kind]
    if (!slot) return []
    const r = slot.report
    const counts = r
      ? ` (${r.loaded} rules loaded${r.skipped.length > 0 ? `, ${r.skipped.length} skipped` : ''})`
      : ''
    return [`${kind} ${slot.file}${counts}`]
  })
  return parts.length > 0 ? parts.join(', ') : 'none'
}

function describeSkipped(n: NicInfo): string[] {
  const skipped = n.services.services.dpi?.report?.skipped ?? []
  const lines = skipped
    .slice(0, SKIPPED_SHOWN)
    .map((s) => `  skipped ${s.file}:${s.line}:${s.sid !== undefined ? ` sid ${s.sid}:` : ''} ${s.reason}`)
  if (skipped.length > SKIPPED_SHOWN)
    lines.push(`  ... and ${skipped.length - SKIPPED_SHOWN} more (--json lists all)`)
  return lines
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
    .option('--firewall <file>', 'firewall rules for the NIC (docs/services.md)')
    .option('--dpi <file>', 'DPI rules (Suricata syntax) for the NIC; alerts go to <state-dir>/eve.json')
    .option(
      '--ip <ipv4[/prefix]>',
      'IPv4 address (or prefix) the guest may send from on this NIC; other IPv4 and ARP senders are dropped',
    )
    .option(
      '--allow-spoofing',
      "turn source enforcement off (by default frames whose source is not the NIC's MAC are dropped)",
    )
  addIohypOptions(create).action(async (o: CreateOptions) => {
    const request = checkedRequest(nicRequestSchema, {
      guest: guestFlag(o.guest),
      mac: o.mac,
      tap: o.tap,
      bridge: o.bridge,
      macvtap: o.macvtap,
      name: o.name,
      mtu: numberFlag(o.mtu),
      firewall: o.firewall === undefined ? undefined : resolve(o.firewall),
      dpi: o.dpi === undefined ? undefined : resolve(o.dpi),
      ip: o.ip,
      allowSpoofing: o.allowSpoofing === true ? true : undefined,
    })
    const n = await controlClient(o.control!, RULES_TIMEOUT_MS).post<NicInfo>(ROUTES.nics, request)
    if (o.json) printJson(n)
    else
      printLines([
        `created ${n.name} (${n.mac}, mtu ${n.mtu}) for ${n.guest}: ${describeBackend(n)}`,
        ...(request.firewall || request.dpi
          ? [`services: ${describeServices(n)}`, ...describeSkipped(n)]
          : []),
      ])
  })

  addListCommand<NicInfo | GuestNicInfo>(nic, {
    description: 'list remote NICs (on the IOhyp; with --guest, as the guest sees them)',
    route: ROUTES.nics,
    key: 'nics',
    none: 'no NICs',
    columns: [
      ['NAME', 'left', (n) => n.name],
      ['MAC', 'left', (n) => n.mac],
      ['MTU', 'right', (n) => String(n.mtu)],
      ['GUEST', 'left', (n) => ('guest' in n ? n.guest : '')],
      ['STATE', 'left', (n) => ('state' in n ? n.state : '')],
      ['BACKEND', 'left', (n) => ('backend' in n ? describeBackend(n) : '')],
      ['FROM GUEST', 'right', (n) => `${n.fromGuest.frames} / ${formatBytes(n.fromGuest.bytes)}`],
      ['TO GUEST', 'right', (n) => `${n.toGuest.frames} / ${formatBytes(n.toGuest.bytes)}`],
      ['DROPS', 'right', (n) => String(Object.values(n.drops).reduce((x, y) => x + y, 0))],
    ],
  })

  const services = nic
    .command('services')
    .description("show, add, replace or remove a NIC's services at runtime (flow state is kept on replace)")
    .argument('<name>', 'NIC name')
    .option('--firewall <file>', 'load or replace the firewall rules')
    .option('--no-firewall', 'remove the firewall')
    .option('--dpi <file>', 'load or replace the DPI rules')
    .option('--no-dpi', 'remove the DPI')
    .option(
      '--strict',
      'refuse a DPI rules file with any unusable rule (by default they are skipped and listed)',
    )
  addIohypOptions(services).action(async (name: string, o: ServicesOptions) => {
    const client = controlClient(o.control!, RULES_TIMEOUT_MS)
    const body: Record<string, string | boolean | null> = {}
    for (const kind of ['firewall', 'dpi'] as const) {
      const v = o[kind]
      if (v === false) body[kind] = null
      else if (typeof v === 'string') body[kind] = resolve(v)
    }
    const change = Object.keys(body).length > 0
    if (o.strict) body.strict = true
    const n = !change
      ? (await client.get<ListNicsResponse>(ROUTES.nics)).nics.find((x) => x.name === name)
      : await client.post<NicInfo>(routePath(ROUTES.nicServices, { name }), body)
    if (!n) throw new VrioError('not-found', `no NIC named ${name}`)
    if (o.json) printJson({ name: n.name, services: n.services })
    else printLines([`${n.name}: ${describeServices(n)}`, ...describeSkipped(n)])
  })

  const alerts = nic
    .command('alerts')
    .description("a NIC's latest DPI alerts (EVE records; all of them are in <state-dir>/eve.json)")
    .argument('<name>', 'NIC name')
  addIohypOptions(alerts).action(async (name: string, o: ControlOptions & { json?: boolean }) => {
    const answer = await controlClient(o.control!).get<{ alerts: Record<string, unknown>[] }>(
      routePath(ROUTES.nicAlerts, { name }),
    )
    if (o.json) {
      printJson(answer)
      return
    }
    if (answer.alerts.length === 0) {
      printLines(['no alerts'])
      return
    }
    printLines(
      answer.alerts.map((a) => {
        const al = a.alert as { action: string; signature_id: number; signature: string }
        return `${a.timestamp} ${al.action} [${al.signature_id}] ${al.signature} ${a.src_ip}:${a.src_port ?? ''} -> ${a.dest_ip}:${a.dest_port ?? ''}`
      }),
    )
  })

  addRemoveCommand(
    nic,
    ROUTES.nic,
    "take a NIC away from its guest (the guest's interface and what the IOhyp created go)",
    'NIC',
  )
}
