/**
 * From two scrapes of a daemon's /metrics to the figures an operator looks at: per guest, disk
 * and NIC rates over the interval between them (IOPS, bytes/s, bits/s, drops/s, alerts/s),
 * latency percentiles from histogram bucket deltas, channel state. Metric names: the contract in
 * docs/operations.md (IOhyp: vrio_disk_service_seconds; a guest agent: vrio_disk_request_seconds,
 * no guest label). Pure: no I/O, no clock.
 *
 * Counter deltas follow Prometheus' rate(): a value lower than before is a reset (the delta is
 * the new value). A series absent from the earlier scrape counts from zero: prom-client creates a
 * labelled series at its first increment, so its whole value happened within the interval.
 */
import { type Exposition, type Labels, labelKey, type Sample } from './exposition.ts'

export interface Scrape {
  /** When it was taken, ms since the epoch. */
  readonly at: number
  readonly exposition: Exposition
}

export interface GuestFigures {
  guest: string
  /** Channel state (waiting|connecting|connected|closing|disconnected), or '-' when not exposed. */
  state: string
  rttSeconds: number | null
  /** Channel bytes per second each way, as the daemon sees them. */
  inBytesPerSec: number | null
  outBytesPerSec: number | null
  dropsPerSec: number | null
  retransmitsPerSec: number | null
  /** Its disks' IOPS and bytes per second, added up. */
  iops: number | null
  diskBytesPerSec: number | null
}

export interface DiskFigures {
  /** '' on a guest agent (its metrics have no guest label). */
  guest: string
  disk: string
  iops: number | null
  readIops: number | null
  writeIops: number | null
  readBytesPerSec: number | null
  writeBytesPerSec: number | null
  /** Latency percentiles in seconds over the interval (reads and writes); null without requests. */
  p50: number | null
  p99: number | null
  inFlight: number | null
  errorsPerSec: number | null
}

export interface NicFigures {
  guest: string
  nic: string
  inBitsPerSec: number | null
  outBitsPerSec: number | null
  inFramesPerSec: number | null
  outFramesPerSec: number | null
  dropsPerSec: number | null
  /** DPI alerts per second on this NIC (all sids). */
  alertsPerSec: number | null
}

export interface Figures {
  /** Time of the later scrape (ms since the epoch). */
  at: number
  /** Seconds between the two scrapes; null for a first scrape (rates are null then). */
  seconds: number | null
  /** vrio_info's role label: 'iohyp', 'guest', or null when not exposed. */
  role: string | null
  guests: GuestFigures[]
  disks: DiskFigures[]
  nics: NicFigures[]
}

const DISK_OPS = new Set(['read', 'write'])

function samples(s: Scrape | undefined, name: string): readonly Sample[] {
  return s?.exposition.byName.get(name) ?? []
}

/** Counter increase per series of `name` from `prev` to `cur`; undefined when there is no `prev`. */
function deltas(
  prev: Scrape | undefined,
  cur: Scrape,
  name: string,
): { labels: Labels; delta: number }[] | undefined {
  if (!prev) return undefined
  const before = new Map<string, number>()
  for (const s of samples(prev, name)) before.set(labelKey(s.labels), s.value)
  return samples(cur, name).map((s) => {
    const old = before.get(labelKey(s.labels))
    const delta = old === undefined || s.value < old ? s.value : s.value - old
    return { labels: s.labels, delta: Number.isFinite(delta) ? delta : 0 }
  })
}

/**
 * A rate per entity: sums deltas of `name` whose labels pass `keep`, grouped by `key(labels)`,
 * divided by `seconds`. Entities without samples get 0 when rates can be computed at all.
 */
function rates(
  prev: Scrape | undefined,
  cur: Scrape,
  seconds: number | null,
  name: string,
  key: (l: Labels) => string,
  keep: (l: Labels) => boolean = () => true,
): (entity: string) => number | null {
  const d = deltas(prev, cur, name)
  if (!d || seconds === null || seconds <= 0) return () => null
  const sums = new Map<string, number>()
  for (const { labels, delta } of d) {
    if (!keep(labels)) continue
    const k = key(labels)
    sums.set(k, (sums.get(k) ?? 0) + delta)
  }
  return (entity) => (sums.get(entity) ?? 0) / seconds
}

/**
 * The q-quantile (0..1) of a histogram given as cumulative bucket counts by upper bound, as
 * Prometheus' histogram_quantile computes it: linear within the bucket holding the rank, the
 * lowest bucket starting at 0, a rank in the +Inf bucket answered with the highest finite bound.
 * Null when the histogram holds no observation.
 */
export function histogramQuantile(
  q: number,
  buckets: readonly { le: number; count: number }[],
): number | null {
  const sorted = [...buckets].sort((a, b) => a.le - b.le)
  if (sorted.length === 0) return null
  const total = sorted[sorted.length - 1].count
  if (!(total > 0)) return null
  if (q <= 0) return 0
  const rank = Math.min(q, 1) * total
  let i = 0
  while (i < sorted.length - 1 && sorted[i].count < rank) i++
  const bucket = sorted[i]
  if (bucket.le === Number.POSITIVE_INFINITY) return i === 0 ? null : sorted[i - 1].le
  const start = i === 0 ? 0 : sorted[i - 1].le
  const below = i === 0 ? 0 : sorted[i - 1].count
  const inBucket = bucket.count - below
  if (inBucket <= 0) return bucket.le
  return start + (bucket.le - start) * ((rank - below) / inBucket)
}

const diskKey = (l: Labels) => JSON.stringify([l.guest ?? '', l.disk ?? ''])
const nicKey = (l: Labels) => JSON.stringify([l.guest ?? '', l.nic ?? ''])
const guestKey = (l: Labels) => l.guest ?? ''

export function computeFigures(prev: Scrape | undefined, cur: Scrape): Figures {
  const seconds = prev ? (cur.at - prev.at) / 1000 : null
  const rate = (name: string, key: (l: Labels) => string, keep?: (l: Labels) => boolean) =>
    rates(prev, cur, seconds, name, key, keep)
  const role = samples(cur, 'vrio_info')[0]?.labels.role ?? null

  // Disks: every (guest, disk) any disk metric names.
  const diskIds = new Map<string, { guest: string; disk: string }>()
  for (const name of [
    'vrio_disk_requests_total',
    'vrio_disk_bytes_total',
    'vrio_disk_in_flight',
    'vrio_disk_service_seconds_count',
    'vrio_disk_request_seconds_count',
  ])
    for (const s of samples(cur, name))
      if (s.labels.disk !== undefined)
        diskIds.set(diskKey(s.labels), { guest: s.labels.guest ?? '', disk: s.labels.disk })
  const isOp = (op: string) => (l: Labels) => l.op === op
  const isRw = (l: Labels) => DISK_OPS.has(l.op ?? '')
  const reads = rate('vrio_disk_requests_total', diskKey, isOp('read'))
  const writes = rate('vrio_disk_requests_total', diskKey, isOp('write'))
  const readBytes = rate('vrio_disk_bytes_total', diskKey, isOp('read'))
  const writeBytes = rate('vrio_disk_bytes_total', diskKey, isOp('write'))
  const errors = rate('vrio_disk_errors_total', diskKey)
  const inFlight = new Map<string, number>()
  for (const s of samples(cur, 'vrio_disk_in_flight'))
    inFlight.set(diskKey(s.labels), (inFlight.get(diskKey(s.labels)) ?? 0) + s.value)
  const histogram = samples(cur, 'vrio_disk_service_seconds_bucket').length
    ? 'vrio_disk_service_seconds_bucket'
    : 'vrio_disk_request_seconds_bucket'
  const bucketDeltas = deltas(prev, cur, histogram)
  const bucketsByDisk = new Map<string, Map<number, number>>()
  for (const { labels, delta } of bucketDeltas ?? []) {
    if (!isRw(labels) || labels.le === undefined) continue
    const le = labels.le === '+Inf' ? Number.POSITIVE_INFINITY : Number(labels.le)
    if (Number.isNaN(le)) continue
    const k = diskKey(labels)
    const m = bucketsByDisk.get(k) ?? new Map<number, number>()
    bucketsByDisk.set(k, m)
    m.set(le, (m.get(le) ?? 0) + delta)
  }
  const addNull = (a: number | null, b: number | null) => (a === null || b === null ? null : a + b)
  const disks: DiskFigures[] = [...diskIds.entries()].map(([k, id]) => {
    const buckets = [...(bucketsByDisk.get(k) ?? new Map<number, number>()).entries()].map(([le, count]) => ({
      le,
      count,
    }))
    const r = reads(k)
    const w = writes(k)
    return {
      ...id,
      iops: addNull(r, w),
      readIops: r,
      writeIops: w,
      readBytesPerSec: readBytes(k),
      writeBytesPerSec: writeBytes(k),
      p50: histogramQuantile(0.5, buckets),
      p99: histogramQuantile(0.99, buckets),
      inFlight: inFlight.get(k) ?? null,
      errorsPerSec: errors(k),
    }
  })
  disks.sort((a, b) => a.guest.localeCompare(b.guest) || a.disk.localeCompare(b.disk))

  // NICs: every (guest, nic) a NIC metric names; DPI alerts are per NIC name.
  const nicIds = new Map<string, { guest: string; nic: string }>()
  for (const name of ['vrio_nic_bytes_total', 'vrio_nic_frames_total', 'vrio_nic_drops_total'])
    for (const s of samples(cur, name))
      if (s.labels.nic !== undefined)
        nicIds.set(nicKey(s.labels), { guest: s.labels.guest ?? '', nic: s.labels.nic })
  const isDir = (d: string) => (l: Labels) => l.direction === d
  const nicIn = rate('vrio_nic_bytes_total', nicKey, isDir('in'))
  const nicOut = rate('vrio_nic_bytes_total', nicKey, isDir('out'))
  const framesIn = rate('vrio_nic_frames_total', nicKey, isDir('in'))
  const framesOut = rate('vrio_nic_frames_total', nicKey, isDir('out'))
  const nicDrops = rate('vrio_nic_drops_total', nicKey)
  const alerts = rate('vrio_nic_dpi_alerts_total', (l) => l.nic ?? '')
  const bits = (v: number | null) => (v === null ? null : v * 8)
  const nics: NicFigures[] = [...nicIds.entries()].map(([k, id]) => ({
    ...id,
    inBitsPerSec: bits(nicIn(k)),
    outBitsPerSec: bits(nicOut(k)),
    inFramesPerSec: framesIn(k),
    outFramesPerSec: framesOut(k),
    dropsPerSec: nicDrops(k),
    alertsPerSec: alerts(id.nic),
  }))
  nics.sort((a, b) => a.guest.localeCompare(b.guest) || a.nic.localeCompare(b.nic))

  // Guests: every guest a channel metric names, and those that own a disk or NIC.
  const guestIds = new Set<string>()
  for (const name of ['vrio_channel_up', 'vrio_channel_state', 'vrio_channel_bytes_total'])
    for (const s of samples(cur, name)) if (s.labels.guest !== undefined) guestIds.add(s.labels.guest)
  for (const d of disks) if (d.guest !== '') guestIds.add(d.guest)
  for (const n of nics) if (n.guest !== '') guestIds.add(n.guest)
  const states = new Map<string, string>()
  for (const s of samples(cur, 'vrio_channel_up'))
    if (s.labels.guest !== undefined) states.set(s.labels.guest, s.value === 1 ? 'connected' : 'down')
  for (const s of samples(cur, 'vrio_channel_state'))
    if (s.labels.guest !== undefined && s.labels.state !== undefined && s.value === 1)
      states.set(s.labels.guest, s.labels.state)
  const rtts = new Map<string, number>()
  for (const s of samples(cur, 'vrio_channel_rtt_seconds'))
    if (s.labels.guest !== undefined && Number.isFinite(s.value)) rtts.set(s.labels.guest, s.value)
  const chIn = rate('vrio_channel_bytes_total', guestKey, isDir('in'))
  const chOut = rate('vrio_channel_bytes_total', guestKey, isDir('out'))
  const chDrops = rate('vrio_channel_drops_total', guestKey)
  const retransmits = rate('vrio_channel_retransmits_total', guestKey)
  const sumOver = (guest: string, pick: (d: DiskFigures) => number | null) => {
    if (seconds === null) return null
    let total = 0
    for (const d of disks) if (d.guest === guest) total += pick(d) ?? 0
    return total
  }
  const guests: GuestFigures[] = [...guestIds].sort().map((guest) => ({
    guest,
    state: states.get(guest) ?? '-',
    rttSeconds: rtts.get(guest) ?? null,
    inBytesPerSec: chIn(guest),
    outBytesPerSec: chOut(guest),
    dropsPerSec: chDrops(guest),
    retransmitsPerSec: retransmits(guest),
    iops: sumOver(guest, (d) => d.iops),
    diskBytesPerSec: sumOver(guest, (d) => addNull(d.readBytesPerSec, d.writeBytesPerSec)),
  }))
  return { at: cur.at, seconds, role, guests, disks, nics }
}
