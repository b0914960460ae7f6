/**
 * Prometheus metrics of a daemon (the list: docs/operations.md, "Metrics"; Prometheus conventions:
 * `vrio_` prefix, base units, `_total` counters). The counters the daemons keep anyway are read at
 * scrape time by each family's rows callback, so the data path does no work for them; the latency
 * histograms are fixed-bucket typed arrays each disk keeps (devices/blk/op-stats.ts: a few
 * additions per request), exposed as they are at scrape time.
 *
 * The exposition (text format 0.0.4) is written here, straight from those rows: a scrape builds no
 * per-series objects, hashes no label sets and loads nothing (prom-client's registry took ~1 ms of
 * CPU per scrape with one disk and ~9 ms with 16, and its default process metrics a GC observer
 * that costs every garbage collection; see bench/metrics-scrape.ts). The process metrics keep
 * prom-client's names and are read at scrape time too; the GC duration histogram is filled by V8's
 * GC callbacks in the addon, with no JavaScript per collection. prom-client
 * stays for merging the iocores' metrics (aggregateMetrics) and for the JSON shape of json().
 *
 * Labels are bounded: guest MAC, device name, direction, operation, status, reason (never request
 * ids). Label values are escaped as the format requires (a drop reason or name with quotes,
 * backslashes or newlines stays one label value).
 */
import { readdirSync, readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { getHeapSpaceStatistics, getHeapStatistics } from 'node:v8'
import type { MetricObjectWithValues, MetricValue } from 'prom-client'
import type { GuestInfo, NicInfo } from '../control/api.ts'
import type { ChannelTotals } from './channel-totals.ts'
import { BLOCK_OP_NAMES, type BlockOpStats, FixedHistogram } from '../devices/blk/op-stats.ts'
import { BlockStatus } from '../devices/blk/protocol.ts'
import { VrioError } from '../errors.ts'
import { native } from '../io/native.ts'
import { parseListenAddress } from './listen-address.ts'
import { GUEST_STATES } from '../control/api.ts'

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

/** prom-client is loaded only to merge iocores' metrics (aggregateMetrics). */
type PromClient = typeof import('prom-client')
let client: Promise<PromClient> | undefined
const loadClient = (): Promise<PromClient> => (client ??= import('prom-client'))

type Labels = Record<string, string>

/** A disk as the IOhyp's metrics see it. */
export interface IohypDiskMetrics {
  guest: string
  disk: string
  ops: BlockOpStats
  /** Requests running on the device or waiting for a slot. */
  inFlight: number
  /** The encryption service's byte counters (encrypted disks only). */
  crypt?: { bytesEncrypted: number; bytesDecrypted: number }
}

/** A daemon's packet socket: its kernel drops, and with polling on its poll rounds and time (µs). */
export interface SocketMetrics {
  interface: string
  kernelDrops: number
  polls?: number
  pollUs?: number
}

/** What the IOhyp's registry reads at scrape time. */
export interface IohypMetricsSource {
  version: string
  guests(): Iterable<GuestInfo>
  disks(): Iterable<IohypDiskMetrics>
  nics(): Iterable<NicInfo>
  socket(): SocketMetrics
}

/** What the guest agent's registry reads at scrape time. */
export interface GuestMetricsSource {
  version: string
  disks(): Iterable<{ disk: string; ops: BlockOpStats; inFlight: number }>
  /** Its channel to the IOhyp, the counters summed over every authenticated session. */
  channel(): ChannelMetrics
  socket(): SocketMetrics
}

/** A daemon's registry, and what must stop with the daemon. */
export interface DaemonMetrics {
  /** The exposition text (text/plain; version=0.0.4). */
  scrape(): Promise<string>
  /** The same in prom-client's JSON shape (for an iocore's main thread to aggregate). */
  json(): Promise<MetricObjectWithValues<MetricValue<string>>[]>
  close(): void
}

/** Names of BlockStatus values as label values: `IoError` -> `io_error`. */
const STATUS_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(BlockStatus).map(([k, v]) => [
    v,
    k.replace(/[A-Z]/g, (c, i) => (i ? '_' : '') + c.toLowerCase()),
  ]),
)

function statusName(status: number): string {
  return STATUS_NAMES.get(status) ?? `status_${status}`
}

/**
 * One sample: `series` is the family's name or, for histograms, `_bucket`, `_sum`, `_count`; `le`
 * a bucket's bound (a label after `labels`: a histogram row passes one `labels` for all its buckets,
 * rendered once).
 */
type Sample = (series: string, labels: Labels, value: number, le?: string) => void

/** A metric family: its rows are produced at scrape time, so removed devices leave no stale series. */
interface Family {
  name: string
  help: string
  type: 'counter' | 'gauge' | 'histogram'
  rows(sample: Sample): void
}

/** The families of a daemon, in exposition order. */
type Registry = Family[]

/** Escapes a label value: backslash, double quote and newline (text format 0.0.4). */
function escapeLabel(v: string): string {
  return /[\\"\n]/.test(v) ? v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : v
}

function formatValue(v: number): string {
  if (Number.isFinite(v)) return `${v}`
  return Number.isNaN(v) ? 'NaN' : v > 0 ? '+Inf' : '-Inf'
}

/** Counts scrapes (expose and toJson run synchronously: one at a time). */
let scrapeEpoch = 0

/**
 * `list()` read once per scrape however many families read it (building a guest's or NIC's info
 * is the costly part of a scrape with many devices).
 */
function perScrape<T>(list: () => Iterable<T>): () => T[] {
  let epoch = -1
  let rows: T[] = []
  return () => {
    if (epoch !== scrapeEpoch) {
      rows = [...list()]
      epoch = scrapeEpoch
    }
    return rows
  }
}

/** The text exposition of `families`. */
function expose(families: Iterable<Family>): string {
  scrapeEpoch++
  const out: string[] = []
  for (const f of families) {
    out.push(
      `# HELP ${f.name} ${f.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n# TYPE ${f.name} ${f.type}\n`,
    )
    let last: Labels | undefined
    let l = ''
    f.rows((series, labels, value, le) => {
      if (labels !== last) {
        last = labels
        l = ''
        for (const k in labels) l += `${l ? ',' : ''}${k}="${escapeLabel(String(labels[k]))}"`
      }
      const all = le === undefined ? l : `${l ? `${l},` : ''}le="${le}"`
      out.push(all ? `${series}{${all}} ${formatValue(value)}\n` : `${series} ${formatValue(value)}\n`)
    })
  }
  return out.join('')
}

/** `families` in prom-client's JSON shape (what AggregatorRegistry.aggregate merges). */
function toJson(families: Iterable<Family>): MetricObjectWithValues<MetricValue<string>>[] {
  scrapeEpoch++
  const out: MetricObjectWithValues<MetricValue<string>>[] = []
  for (const f of families) {
    const values: { labels: Labels; value: number; metricName?: string }[] = []
    f.rows((series, labels, value, le) => {
      const l = le === undefined ? labels : { ...labels, le }
      values.push(series === f.name ? { labels: l, value } : { labels: l, value, metricName: series })
    })
    out.push({
      name: f.name,
      help: f.help,
      type: f.type,
      aggregator: 'sum',
      values,
    } as unknown as MetricObjectWithValues<MetricValue<string>>)
  }
  return out
}

/** A counter when `name` ends in `_total` (the convention every name here follows), else a gauge. */
function collected(
  registry: Registry,
  name: string,
  help: string,
  _labelNames: readonly string[],
  rows: (emit: (labels: Labels, value: number) => void) => void,
): void {
  registry.push({
    name,
    help,
    type: name.endsWith('_total') ? 'counter' : 'gauge',
    rows: (sample) => rows((labels, value) => sample(name, labels, value)),
  })
}

/** A histogram over FixedHistogram rows that live elsewhere (one per disk), enumerated at scrape time. */
function registerHistogram(
  registry: Registry,
  name: string,
  help: string,
  source: () => Iterable<{ labels: Labels; histogram: FixedHistogram; row: number }>,
): void {
  const bucket = `${name}_bucket`
  const les = new Map<readonly number[], string[]>()
  registry.push({
    name,
    help,
    type: 'histogram',
    rows(sample) {
      for (const { labels, histogram: h, row } of source()) {
        let le = les.get(h.bounds)
        if (!le) {
          le = h.bounds.map(formatValue)
          les.set(h.bounds, le)
        }
        const cumulative = h.cumulative(row)
        for (let i = 0; i < le.length; i++) sample(bucket, labels, cumulative[i], le[i])
        sample(bucket, labels, h.count[row], '+Inf')
        sample(`${name}_sum`, labels, h.sum[row])
        sample(`${name}_count`, labels, h.count[row])
      }
    },
  })
}

/** Event-loop delay: how late a 50 ms timer fires, in a fixed-bucket histogram. */
const LOOP_INTERVAL_MS = 50
const LOOP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** prom-client's default GC buckets, and V8's GC kinds as its label values. */
const GC_BUCKETS = [0.001, 0.01, 0.1, 1, 2, 5]
/** Rows of the GC histogram, in the order native/gc_stats.cc fills them. */
const GC_KINDS = ['minor', 'major', 'incremental', 'weakcb']

/**
 * nodejs_gc_duration_seconds: every collection timed by V8's GC callbacks in the addon (gcWatch),
 * which add into this histogram's arrays; no JavaScript runs per collection. (prom-client's
 * PerformanceObserver makes a performance entry and calls JavaScript after each one: ~50 µs per
 * GC here, at a few hundred scavenges a second under load more than the scrapes cost.) Absent
 * where the addon cannot load.
 */
function gcHistogram(registry: Registry): void {
  const h = new FixedHistogram(GC_KINDS.length, GC_BUCKETS)
  try {
    native().gcWatch(h.buckets, h.count, h.sum, new Float64Array(GC_BUCKETS))
  } catch {
    return
  }
  registerHistogram(
    registry,
    'nodejs_gc_duration_seconds',
    'Garbage collection duration by kind, one of major, minor, incremental or weakcb.',
    () => GC_KINDS.map((kind, i) => ({ labels: { kind }, histogram: h, row: i })),
  )
}

/** The limit of open file descriptors, from /proc/self/limits (Linux), or undefined. */
function maxFds(): number | undefined {
  try {
    const m = /Max open files\s+(\d+)/.exec(readFileSync('/proc/self/limits', 'utf8'))
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

/**
 * The process metrics, under prom-client's default names, each read at scrape time from one cheap
 * call (no timers, no observers).
 */
function processMetrics(registry: Registry, lastLoopDelay: () => number): void {
  const startTime = Math.round(Date.now() / 1000 - process.uptime())
  const limit = maxFds()
  const gauge = (name: string, help: string, rows: Family['rows']) =>
    registry.push({ name, help, type: 'gauge', rows })
  const counter = (name: string, help: string, rows: Family['rows']) =>
    registry.push({ name, help, type: 'counter', rows })
  let cpu = process.cpuUsage()
  counter('process_cpu_user_seconds_total', 'Total user CPU time spent in seconds.', (s) => {
    cpu = process.cpuUsage() // read once per scrape: the next two families use the same figures
    s('process_cpu_user_seconds_total', {}, cpu.user / 1e6)
  })
  counter('process_cpu_system_seconds_total', 'Total system CPU time spent in seconds.', (s) =>
    s('process_cpu_system_seconds_total', {}, cpu.system / 1e6),
  )
  counter('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds.', (s) =>
    s('process_cpu_seconds_total', {}, (cpu.user + cpu.system) / 1e6),
  )
  gauge('process_start_time_seconds', 'Start time of the process since unix epoch in seconds.', (s) =>
    s('process_start_time_seconds', {}, startTime),
  )
  gauge('process_resident_memory_bytes', 'Resident memory size in bytes.', (s) =>
    s('process_resident_memory_bytes', {}, process.memoryUsage.rss()),
  )
  gauge('process_open_fds', 'Number of open file descriptors.', (s) => {
    try {
      s('process_open_fds', {}, readdirSync('/proc/self/fd').length - 1)
    } catch {
      // not Linux: no sample
    }
  })
  if (limit !== undefined)
    gauge('process_max_fds', 'Maximum number of open file descriptors.', (s) =>
      s('process_max_fds', {}, limit),
    )
  gauge(
    'nodejs_eventloop_lag_seconds',
    `Lag of event loop in seconds: how late the last ${LOOP_INTERVAL_MS} ms tick fired.`,
    (s) => s('nodejs_eventloop_lag_seconds', {}, lastLoopDelay()),
  )
  gauge(
    'nodejs_active_resources',
    'Number of active resources that are currently keeping the event loop alive, grouped by async resource type.',
    (s) => {
      const byType = new Map<string, number>()
      for (const t of process.getActiveResourcesInfo()) byType.set(t, (byType.get(t) ?? 0) + 1)
      for (const [type, n] of byType) s('nodejs_active_resources', { type }, n)
    },
  )
  let heap = getHeapStatistics()
  gauge('nodejs_heap_size_total_bytes', 'Process heap size from Node.js in bytes.', (s) => {
    heap = getHeapStatistics()
    s('nodejs_heap_size_total_bytes', {}, heap.total_heap_size)
  })
  gauge('nodejs_heap_size_used_bytes', 'Process heap size used from Node.js in bytes.', (s) =>
    s('nodejs_heap_size_used_bytes', {}, heap.used_heap_size),
  )
  gauge('nodejs_external_memory_bytes', 'Node.js external memory size in bytes.', (s) =>
    s('nodejs_external_memory_bytes', {}, (heap as { external_memory?: number }).external_memory ?? 0),
  )
  let spaces = getHeapSpaceStatistics()
  const space = (what: 'total' | 'used' | 'available', of: (sp: (typeof spaces)[number]) => number) =>
    gauge(
      `nodejs_heap_space_size_${what}_bytes`,
      `Process heap space size ${what} from Node.js in bytes.`,
      (s) => {
        if (what === 'total') spaces = getHeapSpaceStatistics()
        for (const sp of spaces)
          s(`nodejs_heap_space_size_${what}_bytes`, { space: sp.space_name.replace(/_space$/, '') }, of(sp))
      },
    )
  space('total', (sp) => sp.space_size)
  space('used', (sp) => sp.space_used_size)
  space('available', (sp) => sp.space_available_size)
  const [major, minor, patch] = process.versions.node.split('.')
  gauge('nodejs_version_info', 'Node.js version info.', (s) =>
    s('nodejs_version_info', { version: process.version, major, minor, patch }, 1),
  )
}

function common(
  registry: Registry,
  role: 'iohyp' | 'guest',
  version: string,
  socket: () => SocketMetrics,
  loop: FixedHistogram,
  lastLoopDelay: () => number,
): void {
  processMetrics(registry, lastLoopDelay)
  gcHistogram(registry)
  collected(
    registry,
    'vrio_info',
    'The daemon: its role and vrio version (always 1)',
    ['role', 'version'],
    (emit) => emit({ role, version }, 1),
  )
  collected(
    registry,
    'vrio_packet_socket_kernel_drops_total',
    "Frames the kernel dropped because the packet socket's receive buffer was full",
    ['interface'],
    (emit) => {
      const s = socket()
      emit({ interface: s.interface }, s.kernelDrops)
    },
  )
  collected(
    registry,
    'vrio_packet_socket_polls_total',
    'Receive rounds the thread made on the packet socket instead of sleeping (polling on only)',
    ['interface'],
    (emit) => {
      const s = socket()
      if (s.polls !== undefined) emit({ interface: s.interface }, s.polls)
    },
  )
  collected(
    registry,
    'vrio_packet_socket_poll_seconds_total',
    'Time the thread spent in those rounds (part of its busy time; polling on only)',
    ['interface'],
    (emit) => {
      const s = socket()
      if (s.pollUs !== undefined) emit({ interface: s.interface }, s.pollUs / 1e6)
    },
  )
  registerHistogram(
    registry,
    'vrio_event_loop_delay_seconds',
    `How late a ${LOOP_INTERVAL_MS} ms timer fires: time the event loop was busy elsewhere`,
    () => [{ labels: {}, histogram: loop, row: 0 }],
  )
}

/** A daemon's metrics: the event-loop timer runs from now; the families are read at each scrape. */
function daemonMetrics(
  role: 'iohyp' | 'guest',
  version: string,
  socket: () => SocketMetrics,
  build: (registry: Registry) => void,
): DaemonMetrics {
  const loop = new FixedHistogram(1, LOOP_BUCKETS)
  let expected = performance.now() + LOOP_INTERVAL_MS
  let lastDelay = 0
  const timer = setInterval(() => {
    const now = performance.now()
    lastDelay = Math.max(0, now - expected) / 1000
    loop.observe(0, lastDelay)
    expected = now + LOOP_INTERVAL_MS
  }, LOOP_INTERVAL_MS)
  timer.unref()
  const registry: Registry = []
  common(registry, role, version, socket, loop, () => lastDelay)
  build(registry)
  return {
    scrape: async () => expose(registry),
    json: async () => toJson(registry),
    close: () => {
      clearInterval(timer)
    },
  }
}

function* opRows(
  base: Labels,
  ops: BlockOpStats,
): Generator<{ labels: Labels; histogram: FixedHistogram; row: number }> {
  for (let i = 0; i < BLOCK_OP_NAMES.length; i++)
    yield { labels: { ...base, op: BLOCK_OP_NAMES[i] }, histogram: ops.latency, row: i }
}

function diskCounters(
  registry: Registry,
  disks: () => Iterable<{ labels: Labels; ops: BlockOpStats; inFlight: number }>,
  labelNames: readonly string[],
): void {
  const disk = perItem(registry, disks, (d) => d.labels)
  disk('vrio_disk_requests_total', 'Block requests by operation', [...labelNames, 'op'], (d, emit, l) => {
    for (let i = 0; i < BLOCK_OP_NAMES.length; i++) emit({ ...l, op: BLOCK_OP_NAMES[i] }, d.ops.requests[i])
  })
  disk('vrio_disk_bytes_total', 'Bytes read and written', [...labelNames, 'op'], (d, emit, l) => {
    emit({ ...l, op: 'read' }, d.ops.bytes[0])
    emit({ ...l, op: 'write' }, d.ops.bytes[1])
  })
  disk(
    'vrio_disk_in_flight',
    'Requests outstanding on the disk now (queue depth)',
    labelNames,
    (d, emit, l) => emit(l, d.inFlight),
  )
}

/** The IOhyp's registry: channels, disks (service side), NICs, process. */
export function createIohypMetrics(source: IohypMetricsSource): DaemonMetrics {
  return daemonMetrics(
    'iohyp',
    source.version,
    () => source.socket(),
    (registry) => buildIohyp(registry, source),
  )
}

type Emit = (labels: Labels, value: number) => void

/** `value_in` and `value_out` as rows with a `direction` label. */
function inOut(emit: Emit, labels: Labels, valueIn: number, valueOut: number): void {
  emit({ ...labels, direction: 'in' }, valueIn)
  emit({ ...labels, direction: 'out' }, valueOut)
}

/** A row per entry of `counts`, its key as label `key`. */
function byKey(emit: Emit, labels: Labels, key: string, counts: Readonly<Record<string, number>>): void {
  for (const [k, n] of Object.entries(counts)) emit({ ...labels, [key]: k }, n)
}

/**
 * A metric with rows per item of `items()`: `rows` emits an item's rows with the labels it adds to
 * `base(item)`'s (`labelNames` are the base's, then those `rows` adds).
 */
function perItem<T>(
  registry: Registry,
  items: () => Iterable<T>,
  base: (item: T) => Labels,
): (
  name: string,
  help: string,
  labelNames: readonly string[],
  rows: (item: T, emit: Emit, labels: Labels) => void,
) => void {
  return (name, help, labelNames, rows) =>
    collected(registry, name, help, labelNames, (emit) => {
      for (const item of items()) rows(item, emit, base(item))
    })
}

/** A channel as the metrics see it: an IOhyp's per guest (GuestInfo), a guest agent's to its IOhyp. */
export type ChannelMetrics = Pick<
  GuestInfo,
  keyof ChannelTotals | 'state' | 'rttMs' | 'sessionFailures' | 'channel'
>

/** `sealed (aes-256-gcm)` -> sealed with its cipher; `plaintext (insecure)` -> cipher `none`. */
function encryption(description: string | undefined): { sealed: boolean; cipher: string } | undefined {
  if (description === undefined) return undefined
  const sealed = description.startsWith('sealed')
  return { sealed, cipher: sealed ? (/\(([^)]+)\)/.exec(description)?.[1] ?? 'unknown') : 'none' }
}

/** The channel families, over the channels of `items()` labelled by `base` (`labelNames`). */
function channelFamilies<T extends ChannelMetrics>(
  registry: Registry,
  items: () => Iterable<T>,
  base: (item: T) => Labels,
  labelNames: readonly string[],
): void {
  const channel = perItem(registry, items, base)
  channel('vrio_channel_up', 'Whether the channel is connected (1) or not (0)', labelNames, (g, emit, l) =>
    emit(l, g.state === 'connected' ? 1 : 0),
  )
  channel(
    'vrio_channel_state',
    "The channel's state: 1 for the current one, 0 for the others",
    [...labelNames, 'state'],
    (g, emit, l) => {
      for (const s of GUEST_STATES) emit({ ...l, state: s }, g.state === s ? 1 : 0)
    },
  )
  channel(
    'vrio_channel_rtt_seconds',
    'Smoothed round-trip time of the channel (absent before the first sample)',
    labelNames,
    (g, emit, l) => {
      if (g.rttMs !== null) emit(l, g.rttMs / 1000)
    },
  )
  channel(
    'vrio_channel_bytes_total',
    'Bytes of channel frames, received (in) and sent (out)',
    [...labelNames, 'direction'],
    (g, emit, l) => inOut(emit, l, g.bytesIn, g.bytesOut),
  )
  channel(
    'vrio_channel_frames_total',
    'Channel frames received (in) and sent (out)',
    [...labelNames, 'direction'],
    (g, emit, l) => inOut(emit, l, g.framesIn, g.framesOut),
  )
  channel('vrio_channel_retransmits_total', 'Segments sent again', labelNames, (g, emit, l) =>
    emit(l, g.retransmits),
  )
  channel('vrio_channel_rto_firings_total', 'Retransmission timeouts that fired', labelNames, (g, emit, l) =>
    emit(l, g.rtoFirings),
  )
  channel(
    'vrio_channel_window_stalls_total',
    "Times a message found the channel's send buffer full (the peer's window or the network held it back)",
    labelNames,
    (g, emit, l) => emit(l, g.windowStalls ?? 0),
  )
  channel(
    'vrio_channel_drops_total',
    'Frames and messages of the channel dropped, by reason',
    [...labelNames, 'reason'],
    (g, emit, l) => byKey(emit, l, 'reason', g.drops),
  )
  channel(
    'vrio_channel_auth_failures_total',
    'Channels that ended because authentication or integrity failed, by reason',
    [...labelNames, 'reason'],
    (g, emit, l) => byKey(emit, l, 'reason', g.sessionFailures),
  )
  channel(
    'vrio_channel_fast_recoveries_total',
    'Fast recoveries: loss seen from SACKs and repaired without a timeout',
    labelNames,
    (g, emit, l) => emit(l, g.fastRecoveries),
  )
  channel(
    'vrio_channel_rekeys_total',
    'Key epochs the sealed channel moved to (sending side)',
    labelNames,
    (g, emit, l) => emit(l, g.rekeys ?? 0),
  )
  channel(
    'vrio_channel_encrypted',
    'Whether the channel seals (authenticates and encrypts) every segment (1, with its cipher) or is plaintext (0, --insecure-plaintext); absent before the first connection',
    [...labelNames, 'cipher'],
    (g, emit, l) => {
      const e = encryption(g.channel)
      if (e) emit({ ...l, cipher: e.cipher }, e.sealed ? 1 : 0)
    },
  )
}

function buildIohyp(registry: Registry, source: IohypMetricsSource): void {
  const guests = perScrape(() => source.guests())
  const guest = perItem(registry, guests, (g) => ({ guest: g.mac }))
  channelFamilies(registry, guests, (g) => ({ guest: g.mac }), ['guest'])
  guest(
    'vrio_fastpath_requests_total',
    "Block requests the IOhyp's native fast path answered on the guest's channel (counted in vrio_disk_* too)",
    ['guest'],
    (g, emit, l) => g.fastPath && emit(l, g.fastPath.requests),
  )
  guest(
    'vrio_fastpath_lends_total',
    "Times the guest's channel was lent to the native fast path",
    ['guest'],
    (g, emit, l) => g.fastPath && emit(l, g.fastPath.lends),
  )
  guest(
    'vrio_fastpath_handbacks_total',
    'Times the native fast path handed the channel back to the TypeScript transport (loss, a request it does not answer)',
    ['guest'],
    (g, emit, l) => g.fastPath && emit(l, g.fastPath.handbacks),
  )
  guest(
    'vrio_guest_held_bytes',
    'Bytes the IOhyp holds for the guest now: read replies (pending_replies) and reassembly of its messages',
    ['guest', 'kind'],
    (g, emit, l) => {
      emit({ ...l, kind: 'pending_replies' }, g.held.pendingReplyBytes)
      emit({ ...l, kind: 'reassembly' }, g.held.reassemblyBytes)
    },
  )
  guest(
    'vrio_guest_budget_bytes',
    "The guest's memory budgets on the IOhyp (what vrio_guest_held_bytes may reach)",
    ['guest', 'kind'],
    (g, emit, l) => {
      emit({ ...l, kind: 'pending_replies' }, g.budgets.pendingReplyBytes)
      emit({ ...l, kind: 'reassembly' }, g.budgets.reassemblyBytes)
    },
  )

  const disks = perScrape(() => {
    const rows: (IohypDiskMetrics & { labels: Labels })[] = []
    for (const d of source.disks()) rows.push({ ...d, labels: { guest: d.guest, disk: d.disk } })
    return rows
  })
  diskCounters(registry, disks, ['guest', 'disk'])
  const disk = perItem(registry, disks, (d) => d.labels)
  disk(
    'vrio_disk_errors_total',
    'Block requests answered with an error, by status',
    ['guest', 'disk', 'status'],
    (d, emit, l) => {
      const errors = d.ops.errors
      for (let status = 0; status < errors.length; status++)
        if (errors[status] > 0) emit({ ...l, status: statusName(status) }, errors[status])
    },
  )
  registerHistogram(
    registry,
    'vrio_disk_service_seconds',
    'IOhyp service time of block requests run on the device: arrival to answer',
    function* () {
      for (const d of disks()) yield* opRows(d.labels, d.ops)
    },
  )
  disk(
    'vrio_disk_crypt_bytes_total',
    'Bytes of encrypted disks decrypted (in: read from the backing) and encrypted (out: written to it)',
    ['disk', 'direction'],
    (d, emit) => {
      if (d.crypt) inOut(emit, { disk: d.disk }, d.crypt.bytesDecrypted, d.crypt.bytesEncrypted)
    },
  )

  const nic = perItem(
    registry,
    perScrape(() => source.nics()),
    (n) => ({ guest: n.guest, nic: n.name }),
  )
  nic(
    'vrio_nic_frames_total',
    'NIC frames from the guest (in) and to the guest (out)',
    ['guest', 'nic', 'direction'],
    (n, emit, l) => inOut(emit, l, n.fromGuest.frames, n.toGuest.frames),
  )
  nic(
    'vrio_nic_bytes_total',
    'NIC bytes from the guest (in) and to the guest (out)',
    ['guest', 'nic', 'direction'],
    (n, emit, l) => inOut(emit, l, n.fromGuest.bytes, n.toGuest.bytes),
  )
  nic(
    'vrio_nic_encrypted_bytes_total',
    "NIC bytes carried on the guest's channel sealed (encrypted and authenticated): all of them unless the IOhyp runs --insecure-plaintext",
    ['guest', 'nic', 'direction'],
    (n, emit, l) => {
      const e = encryption(guests().find((g) => g.mac === n.guest)?.channel)
      if (e) inOut(emit, l, e.sealed ? n.fromGuest.bytes : 0, e.sealed ? n.toGuest.bytes : 0)
    },
  )
  nic('vrio_nic_drops_total', 'NIC frames dropped, by reason', ['guest', 'nic', 'reason'], (n, emit, l) =>
    byKey(emit, l, 'reason', n.drops),
  )
  nic(
    'vrio_nic_firewall_verdicts_total',
    "Packets by firewall rule (`<direction>:<line>`, or `<direction>:policy` for no rule) and the rule's verdict",
    ['nic', 'rule', 'verdict'],
    (n, emit) => firewallRows(n, emit),
  )
  nic('vrio_nic_dpi_alerts_total', 'DPI alerts, by rule sid', ['nic', 'sid'], (n, emit) => {
    const c = n.services.services.dpi?.counters as { alertsBySid?: Record<string, number> } | undefined
    byKey(emit, { nic: n.name }, 'sid', c?.alertsBySid ?? {})
  })
  nic('vrio_nic_dpi_inspected_bytes_total', 'Bytes the DPI service inspected', ['nic'], (n, emit) => {
    const c = n.services.services.dpi?.counters as { bytes?: number } | undefined
    if (c && typeof c.bytes === 'number') emit({ nic: n.name }, c.bytes)
  })
}

/** The firewall's rule counters as rows; the verdict is the rule's action (its text says it). */
function firewallRows(n: NicInfo, emit: Emit): void {
  const fw = n.services.services.firewall?.counters as
    | {
        rules?: { direction: string; line: number; rule: string; packets: number }[]
        'from-guest'?: { policyAccepted?: number; policyDropped?: number }
        'to-guest'?: { policyAccepted?: number; policyDropped?: number }
      }
    | undefined
  if (!fw) return
  for (const r of fw.rules ?? []) {
    const verdict = /\b(accept|drop|reject)\b/.exec(r.rule)?.[1] ?? 'other'
    emit({ nic: n.name, rule: `${r.direction}:${r.line}`, verdict }, r.packets)
  }
  for (const direction of ['from-guest', 'to-guest'] as const) {
    const d = fw[direction]
    if (!d) continue
    emit({ nic: n.name, rule: `${direction}:policy`, verdict: 'accept' }, d.policyAccepted ?? 0)
    emit({ nic: n.name, rule: `${direction}:policy`, verdict: 'drop' }, d.policyDropped ?? 0)
  }
}

/** The guest agent's registry: its disks (end to end) and the process. */
export function createGuestMetrics(source: GuestMetricsSource): DaemonMetrics {
  return daemonMetrics(
    'guest',
    source.version,
    () => source.socket(),
    (registry) => buildGuest(registry, source),
  )
}

function buildGuest(registry: Registry, source: GuestMetricsSource): void {
  channelFamilies(
    registry,
    perScrape(() => [source.channel()]),
    () => ({}),
    [],
  )
  const disks = perScrape(() => {
    const rows: { labels: Labels; ops: BlockOpStats; inFlight: number }[] = []
    for (const d of source.disks()) rows.push({ ...d, labels: { disk: d.disk } })
    return rows
  })
  diskCounters(registry, disks, ['disk'])
  registerHistogram(
    registry,
    'vrio_disk_request_seconds',
    'End-to-end time of block requests as the guest sees it: made to completed',
    function* () {
      for (const d of disks()) yield* opRows(d.labels, d.ops)
    },
  )
}

/**
 * A plain HTTP listener serving `GET /metrics` (and `/`) from `metrics`. Fails at start with
 * 'address-in-use' when the port is taken, 'listen-failed' otherwise.
 */
/**
 * A daemon's start with its metrics: the listener first (when `address` is given), so a port in use
 * fails the start before anything else is set up, then `setUp`; whichever fails, both are undone.
 */
export async function startWithMetrics(
  address: string | undefined,
  metrics: DaemonMetrics,
  setUp: () => Promise<void>,
): Promise<MetricsListener | undefined> {
  let listener: MetricsListener | undefined
  try {
    if (address !== undefined) listener = await MetricsListener.start(address, metrics)
    await setUp()
    return listener
  } catch (error) {
    await listener?.close()
    metrics.close()
    throw error
  }
}

export class MetricsListener {
  readonly server: Server
  private constructor(server: Server) {
    this.server = server
  }

  static async start(address: string, metrics: DaemonMetrics): Promise<MetricsListener> {
    const { host, port } = parseListenAddress(address)
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end()
        return
      }
      if (path !== '/metrics' && path !== '/') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n')
        return
      }
      metrics.scrape().then(
        (text) => {
          res.writeHead(200, {
            'content-type': METRICS_CONTENT_TYPE,
            'content-length': Buffer.byteLength(text),
          })
          res.end(req.method === 'HEAD' ? undefined : text)
        },
        () => res.writeHead(500).end(),
      )
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => {
        const code = error.code === 'EADDRINUSE' ? 'address-in-use' : 'listen-failed'
        const why =
          error.code === 'EADDRINUSE'
            ? 'is already in use'
            : `cannot be listened on (${error.code ?? error.message})`
        reject(new VrioError(code, `metrics address ${address} ${why}`, { address, cause: error.code }))
      })
      server.listen(port, host, () => resolve())
    })
    return new MetricsListener(server)
  }

  /** The bound address (the port the kernel chose when 0 was asked). */
  get address(): { host: string; port: number } {
    const a = this.server.address()
    if (a === null || typeof a === 'string') return { host: '', port: 0 }
    return { host: a.address, port: a.port }
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve())
      this.server.closeAllConnections()
    })
  }
}

/**
 * One exposition from several iocores' metrics (DaemonMetrics.json): families merged, samples with
 * the same labels summed (their guests and devices are disjoint, so sums are exact).
 */
export async function aggregateMetrics(
  lists: MetricObjectWithValues<MetricValue<string>>[][],
): Promise<string> {
  const c = await loadClient()
  return c.AggregatorRegistry.aggregate(lists).metrics()
}
