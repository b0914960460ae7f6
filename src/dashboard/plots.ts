/**
 * Which plots the dashboard draws and which figure goes into each: one series per disk, NIC or
 * guest (and per direction or percentile where a plot has several). The page draws whatever
 * groups and series the server sends, so the list lives here only. Pure.
 */
import type { Figures } from './figures.ts'
import type { SeriesMeta } from './history.ts'

export interface PlotGroup {
  readonly id: string
  readonly title: string
  readonly unit: string
}

export const PLOT_GROUPS: readonly PlotGroup[] = [
  { id: 'disk-iops', title: 'Disk IOPS (read + write)', unit: 'IOPS' },
  { id: 'disk-mbps', title: 'Disk MB/s (read + write)', unit: 'MB/s' },
  { id: 'disk-latency', title: 'Disk latency percentiles', unit: 'ms' },
  { id: 'guest-iops', title: 'Guest IOPS (all its disks)', unit: 'IOPS' },
  { id: 'guest-mbps', title: 'Guest channel MB/s (in + out)', unit: 'MB/s' },
  { id: 'nic-gbps', title: 'NIC Gbit/s', unit: 'Gbit/s' },
  { id: 'drops', title: 'Drops and DPI alerts', unit: 'per s' },
  { id: 'channel-up', title: 'Channel connected (1) or not (0)', unit: '' },
]

/** How a disk or NIC is named in legends and tables: `guest/name`, or the name alone on a guest agent. */
export function deviceLabel(guest: string, name: string): string {
  return guest === '' ? name : `${guest}/${name}`
}

const scale = (v: number | null, by: number) => (v === null ? null : v / by)
const sum = (a: number | null, b: number | null) => (a === null || b === null ? null : a + b)

/** The values one set of figures adds to the history. */
export function historyPoint(f: Figures): (SeriesMeta & { value: number | null })[] {
  const out: (SeriesMeta & { value: number | null })[] = []
  const add = (group: string, label: string, value: number | null) => out.push({ group, label, value })
  for (const d of f.disks) {
    const name = deviceLabel(d.guest, d.disk)
    add('disk-iops', name, d.iops)
    add('disk-mbps', name, scale(sum(d.readBytesPerSec, d.writeBytesPerSec), 1e6))
    add('disk-latency', `${name} p50`, scale(d.p50, 1e-3))
    add('disk-latency', `${name} p99`, scale(d.p99, 1e-3))
  }
  for (const g of f.guests) {
    add('guest-iops', g.guest, g.iops)
    add('guest-mbps', g.guest, scale(sum(g.inBytesPerSec, g.outBytesPerSec), 1e6))
    add('drops', `${g.guest} channel drops`, g.dropsPerSec)
    add('channel-up', g.guest, g.state === '-' ? null : g.state === 'connected' ? 1 : 0)
  }
  for (const n of f.nics) {
    const name = deviceLabel(n.guest, n.nic)
    add('nic-gbps', `${name} in`, scale(n.inBitsPerSec, 1e9))
    add('nic-gbps', `${name} out`, scale(n.outBitsPerSec, 1e9))
    add('drops', `${name} drops`, n.dropsPerSec)
    add('drops', `${name} DPI alerts`, n.alertsPerSec)
  }
  return out
}
