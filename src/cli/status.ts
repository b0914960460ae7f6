/** `vrio status`: what a running daemon (IOhyp by default, guest with --guest) reports about itself. */
import type { Command } from 'commander'
import { DEFAULT_GUEST_SOCKET, DEFAULT_IOHYP_SOCKET, ROUTES, type StatusInfo } from '../control/api.ts'
import {
  addControlOption,
  addJsonOption,
  type ControlOptions,
  controlClient,
  formatDuration,
  formatFields,
  formatRtt,
  printJson,
  printLines,
} from './common.ts'

interface StatusOptions extends ControlOptions {
  guest?: boolean
}

export function registerStatusCommand(program: Command): void {
  const status = program
    .command('status')
    .description('show what a running vrio daemon reports about itself')
    .option('--guest', `ask the guest daemon (${DEFAULT_GUEST_SOCKET}) instead of the IOhyp`)
  addControlOption(
    status,
    undefined,
    `unix socket of the daemon's control API (default: ${DEFAULT_IOHYP_SOCKET}, or ${DEFAULT_GUEST_SOCKET} with --guest)`,
  )
  addJsonOption(status).action(async (options: StatusOptions) => {
    // --guest only changes the default socket, so `--guest --control PATH` reaches a guest daemon at PATH.
    const path = options.control ?? (options.guest ? DEFAULT_GUEST_SOCKET : DEFAULT_IOHYP_SOCKET)
    const info = await controlClient(path).get<StatusInfo>(ROUTES.status)
    if (options.json) printJson(info)
    else printLines(statusLines(info))
  })
}

export function statusLines(info: StatusInfo): string[] {
  const fields: [string, string][] = []
  // A daemon older or newer than this CLI may leave a field out: print what is there.
  const add = (key: string, value: unknown, text = () => String(value)) => {
    if (value !== undefined && value !== null) fields.push([key, text()])
  }
  add('role', info.role)
  add('version', info.version)
  add('pid', info.pid)
  add('started', info.startedAt, () =>
    info.uptimeMs === undefined ? info.startedAt : `${info.startedAt} (up ${formatDuration(info.uptimeMs)})`,
  )
  add('interface', info.interface)
  add('mac', info.mac)
  add('address', info.address)
  add('guests', info.guests, () => `${info.guests!.total} configured, ${info.guests!.connected} connected`)
  add('iohyp', info.iohyp, () => {
    const peer = info.iohyp!
    return `${peer.mac} (${peer.address}), ${peer.state}, rtt ${formatRtt(peer.rttMs)}`
  })
  return formatFields(fields)
}
