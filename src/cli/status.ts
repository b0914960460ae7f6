/** `vrio status`: what a running daemon (IOhyp by default, guest with --guest) reports about itself. */
import type { Command } from 'commander'
import { ROUTES, type StatusInfo } from '../control/api.ts'
import {
  addDaemonChoice,
  chosenDaemonSocket,
  type DaemonChoiceOptions,
  addJsonOption,
  controlClient,
  formatDuration,
  formatFields,
  formatRtt,
  printJson,
  printLines,
} from './common.ts'

export function registerStatusCommand(program: Command): void {
  const status = program.command('status').description('show what a running vrio daemon reports about itself')
  addJsonOption(addDaemonChoice(status)).action(async (options: DaemonChoiceOptions) => {
    const path = chosenDaemonSocket(options)
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
  add('channel', info.channel)
  add('guests', info.guests, () => `${info.guests!.total} configured, ${info.guests!.connected} connected`)
  add('iohyp', info.iohyp, () => {
    const peer = info.iohyp!
    const channel = peer.channel ? `, ${peer.channel}` : ''
    return `${peer.mac} (${peer.address}), ${peer.state}, rtt ${formatRtt(peer.rttMs)}${channel}`
  })
  for (const [disk, io] of Object.entries(info.blockDevices ?? {})) add(`disk ${disk}`, io)
  add('accepts', info.preAuth, () => {
    const p = info.preAuth!
    const from =
      p.iohypAddress === null
        ? 'any address (not learned yet)'
        : `${p.iohypAddress} (${p.iohypAddressSource})`
    return `${from}; ${p.foreignAddress} SYNs from other addresses dropped, ${p.evictedHalfOpen + p.evictedUnauthenticated} unauthenticated evicted`
  })
  return formatFields(fields)
}
