/** Exposition text as the daemons' prom-client registry writes it, for the dashboard's tests. */
import { parseExposition } from '../../src/dashboard/exposition.ts'
import type { Scrape } from '../../src/dashboard/figures.ts'

/** A label value escaped as prom-client escapes it. */
export function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

export type Series = [name: string, labels: Record<string, string>, value: number]

export function exposition(series: readonly Series[]): string {
  const lines: string[] = []
  for (const [name, labels, value] of series) {
    const l = Object.entries(labels)
      .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
      .join(',')
    const text = Number.isNaN(value) ? 'NaN' : value === Infinity ? '+Inf' : String(value)
    lines.push(`${name}${l ? `{${l}}` : ''} ${text}`)
  }
  return `${lines.join('\n')}\n`
}

export const BOUNDS = [0.000025, 0.0001, 0.001, 0.01, 0.1, 1, 10]

/** Cumulative bucket, _sum and _count series of a histogram holding `observations`. */
export function histogram(
  name: string,
  labels: Record<string, string>,
  observations: readonly number[],
): Series[] {
  const out: Series[] = []
  for (const le of [...BOUNDS, Infinity])
    out.push([
      `${name}_bucket`,
      { ...labels, le: le === Infinity ? '+Inf' : String(le) },
      observations.filter((o) => o <= le).length,
    ])
  out.push([`${name}_sum`, labels, observations.reduce((a, b) => a + b, 0)])
  out.push([`${name}_count`, labels, observations.length])
  return out
}

export interface DiskState {
  guest: string
  disk: string
  reads: number
  writes: number
  readBytes: number
  writeBytes: number
  latencies: readonly number[]
  inFlight: number
}

/** An IOhyp's exposition with one guest channel and the given disks (and optionally a NIC). */
export function iohypText(o: {
  guest: string
  state?: string
  channelIn?: number
  channelOut?: number
  drops?: number
  disks: readonly DiskState[]
  nic?: { name: string; inBytes: number; outBytes: number; drops: number; alerts: number }
}): string {
  const s: Series[] = [['vrio_info', { role: 'iohyp', version: '0.1.0' }, 1]]
  for (const st of ['waiting', 'connecting', 'connected', 'closing', 'disconnected'])
    s.push(['vrio_channel_state', { guest: o.guest, state: st }, st === (o.state ?? 'connected') ? 1 : 0])
  s.push(['vrio_channel_up', { guest: o.guest }, (o.state ?? 'connected') === 'connected' ? 1 : 0])
  s.push(['vrio_channel_rtt_seconds', { guest: o.guest }, 0.00025])
  s.push(['vrio_channel_bytes_total', { guest: o.guest, direction: 'in' }, o.channelIn ?? 0])
  s.push(['vrio_channel_bytes_total', { guest: o.guest, direction: 'out' }, o.channelOut ?? 0])
  if (o.drops) s.push(['vrio_channel_drops_total', { guest: o.guest, reason: 'bad-auth' }, o.drops])
  for (const d of o.disks) {
    const l = { guest: d.guest, disk: d.disk }
    s.push(['vrio_disk_requests_total', { ...l, op: 'read' }, d.reads])
    s.push(['vrio_disk_requests_total', { ...l, op: 'write' }, d.writes])
    s.push(['vrio_disk_requests_total', { ...l, op: 'flush' }, 7])
    s.push(['vrio_disk_bytes_total', { ...l, op: 'read' }, d.readBytes])
    s.push(['vrio_disk_bytes_total', { ...l, op: 'write' }, d.writeBytes])
    s.push(['vrio_disk_in_flight', l, d.inFlight])
    s.push(...histogram('vrio_disk_service_seconds', { ...l, op: 'read' }, d.latencies))
  }
  if (o.nic) {
    const l = { guest: o.guest, nic: o.nic.name }
    s.push(['vrio_nic_bytes_total', { ...l, direction: 'in' }, o.nic.inBytes])
    s.push(['vrio_nic_bytes_total', { ...l, direction: 'out' }, o.nic.outBytes])
    s.push(['vrio_nic_drops_total', { ...l, reason: 'firewall' }, o.nic.drops])
    s.push(['vrio_nic_dpi_alerts_total', { nic: o.nic.name, sid: '1000001' }, o.nic.alerts])
  }
  return exposition(s)
}

export function scrapeOf(at: number, text: string): Scrape {
  return { at, exposition: parseExposition(text) }
}
