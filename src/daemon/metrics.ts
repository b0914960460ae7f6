/**
 * Prometheus metrics of a daemon (the list: docs/operations.md, "Metrics"; Prometheus conventions:
 * `vrio_` prefix, base units, `_total` counters). One prom-client Registry per daemon. The
 * counters the daemons keep anyway are read at scrape time by collect() callbacks, so the data path
 * does no work for them; the latency histograms are fixed-bucket typed arrays each disk keeps
 * (devices/blk/op-stats.ts: a few additions per request), exposed as they are at scrape time.
 *
 * Labels are bounded: guest MAC, device name, direction, operation, status, reason (never request
 * ids). Label values are escaped by prom-client's registry (a drop reason or name with quotes,
 * backslashes or newlines stays one label value).
 */
import { createServer, type Server } from 'node:http'
import type { Metric, MetricObjectWithValues, MetricValue, Registry } from 'prom-client'
import type { GuestInfo, NicInfo } from '../control/api.ts'
import { BLOCK_OP_NAMES, type BlockOpStats, FixedHistogram } from '../devices/blk/op-stats.ts'
import { BlockStatus } from '../devices/blk/protocol.ts'
import { VrioError } from '../errors.ts'
import { parseListenAddress } from './listen-address.ts'
import { GUEST_STATES } from '../control/api.ts'

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

/**
 * prom-client is loaded at a daemon's first scrape, not at start: every `vrio` command imports the
 * daemons' modules, and most never serve a scrape.
 */
type PromClient = typeof import('prom-client')
let client: Promise<PromClient> | undefined
const loadClient = (): Promise<PromClient> => (client ??= import('prom-client'))

/** A registry being built, and the prom-client it belongs to. */
interface Reg {
  client: PromClient
  registry: Registry
}

type Labels = Record<string, string>

/** A disk as the IOhyp's metrics see it. */
export interface IohypDiskMetrics {
  guest: string
  disk: string
  ops: BlockOpStats
  /** Non-OK answers by BlockStatus number. */
  errors: Readonly<Record<number, number>>
  /** Requests running on the device or waiting for a slot. */
  inFlight: number
  /** The encryption service's byte counters (encrypted disks only). */
  crypt?: { bytesEncrypted: number; bytesDecrypted: number }
}

/** What the IOhyp's registry reads at scrape time. */
export interface IohypMetricsSource {
  version: string
  guests(): Iterable<GuestInfo>
  disks(): Iterable<IohypDiskMetrics>
  nics(): Iterable<NicInfo>
  socket(): { interface: string; kernelDrops: number }
}

/** What the guest agent's registry reads at scrape time. */
export interface GuestMetricsSource {
  version: string
  disks(): Iterable<{ disk: string; ops: BlockOpStats; inFlight: number }>
  socket(): { interface: string; kernelDrops: number }
}

/** A daemon's registry, and what must stop with the daemon. */
export interface DaemonMetrics {
  /** The exposition text (text/plain; version=0.0.4). */
  scrape(): Promise<string>
  /** The same as prom-client's JSON (for an iocore's main thread to aggregate). */
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
 * A metric whose values are rows produced at scrape time, through prom-client's collect() hook:
 * each scrape starts from nothing, so removed devices leave no stale series. A counter when its
 * name ends in `_total` (the Prometheus convention every name here follows), else a gauge.
 */
function collected(
  registry: Reg,
  name: string,
  help: string,
  labelNames: readonly string[],
  rows: (emit: (labels: Labels, value: number) => void) => void,
): void {
  if (name.endsWith('_total')) {
    new registry.client.Counter({
      name,
      help,
      labelNames,
      registers: [registry.registry],
      collect() {
        this.reset()
        rows((labels, value) => this.inc(labels, value))
      },
    })
  } else {
    new registry.client.Gauge({
      name,
      help,
      labelNames,
      registers: [registry.registry],
      collect() {
        this.reset()
        rows((labels, value) => this.set(labels, value))
      },
    })
  }
}

/**
 * A histogram over FixedHistogram rows that live elsewhere (one per disk): enumerated at scrape
 * time, exposed with their label sets. prom-client's registry formats (and escapes) it like its own.
 */
class ExternalHistogram {
  readonly name: string
  readonly help: string
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  private readonly source: () => Iterable<{ labels: Labels; histogram: FixedHistogram; row: number }>

  constructor(
    name: string,
    help: string,
    source: () => Iterable<{ labels: Labels; histogram: FixedHistogram; row: number }>,
  ) {
    this.name = name
    this.help = help
    this.source = source
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: unknown[] } {
    const values: unknown[] = []
    for (const { labels, histogram: h, row } of this.source()) {
      const cumulative = h.cumulative(row)
      for (let i = 0; i < h.bounds.length; i++)
        values.push({
          labels: { ...labels, le: h.bounds[i] },
          value: cumulative[i],
          metricName: `${this.name}_bucket`,
        })
      values.push({
        labels: { ...labels, le: '+Inf' },
        value: h.count[row],
        metricName: `${this.name}_bucket`,
      })
      values.push({ labels, value: h.sum[row], metricName: `${this.name}_sum` })
      values.push({ labels, value: h.count[row], metricName: `${this.name}_count` })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  reset(): void {}
}

function registerHistogram(registry: Reg, metric: ExternalHistogram): void {
  registry.registry.registerMetric(metric as unknown as Metric)
}

/** Event-loop delay: how late a 50 ms timer fires, in a fixed-bucket histogram. */
const LOOP_INTERVAL_MS = 50
const LOOP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

function common(
  registry: Reg,
  role: 'iohyp' | 'guest',
  version: string,
  socket: () => { interface: string; kernelDrops: number },
  loop: FixedHistogram,
): void {
  registry.client.collectDefaultMetrics({ register: registry.registry })
  // Gauges named like counters, which promtool flags; the same counts stay, by type, in
  // nodejs_active_handles / _requests / _resources.
  for (const name of [
    'nodejs_active_handles_total',
    'nodejs_active_requests_total',
    'nodejs_active_resources_total',
  ])
    registry.registry.removeSingleMetric(name)
  const info = new registry.client.Gauge({
    name: 'vrio_info',
    help: 'The daemon: its role and vrio version (always 1)',
    labelNames: ['role', 'version'],
    registers: [registry.registry],
  })
  info.set({ role, version }, 1)
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
  registerHistogram(
    registry,
    new ExternalHistogram(
      'vrio_event_loop_delay_seconds',
      `How late a ${LOOP_INTERVAL_MS} ms timer fires: time the event loop was busy elsewhere`,
      () => [{ labels: {}, histogram: loop, row: 0 }],
    ),
  )
}

/**
 * A daemon's metrics: the event-loop timer runs from now; the registry (prom-client, `build`'s
 * metrics) is made at the first scrape.
 */
function daemonMetrics(
  role: 'iohyp' | 'guest',
  version: string,
  socket: () => { interface: string; kernelDrops: number },
  build: (registry: Reg) => void,
): DaemonMetrics {
  const loop = new FixedHistogram(1, LOOP_BUCKETS)
  let expected = performance.now() + LOOP_INTERVAL_MS
  const timer = setInterval(() => {
    const now = performance.now()
    loop.observe(0, Math.max(0, now - expected) / 1000)
    expected = now + LOOP_INTERVAL_MS
  }, LOOP_INTERVAL_MS)
  timer.unref()
  let ready: Promise<Registry> | undefined
  const registry = () =>
    (ready ??= loadClient().then((c) => {
      const registry: Reg = { client: c, registry: new c.Registry() }
      common(registry, role, version, socket, loop)
      build(registry)
      return registry.registry
    }))
  return {
    scrape: async () => (await registry()).metrics(),
    json: async () => (await registry()).getMetricsAsJSON(),
    close: () => clearInterval(timer),
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
  registry: Reg,
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
  registry: Reg,
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

function buildIohyp(registry: Reg, source: IohypMetricsSource): void {
  const guest = perItem(
    registry,
    () => source.guests(),
    (g) => ({ guest: g.mac }),
  )
  guest(
    'vrio_channel_up',
    'Whether the channel to the guest is connected (1) or not (0)',
    ['guest'],
    (g, emit, l) => emit(l, g.state === 'connected' ? 1 : 0),
  )
  guest(
    'vrio_channel_state',
    "The channel's state: 1 for the current one, 0 for the others",
    ['guest', 'state'],
    (g, emit, l) => {
      for (const s of GUEST_STATES) emit({ ...l, state: s }, g.state === s ? 1 : 0)
    },
  )
  guest(
    'vrio_channel_rtt_seconds',
    'Smoothed round-trip time of the channel (absent before the first sample)',
    ['guest'],
    (g, emit, l) => {
      if (g.rttMs !== null) emit(l, g.rttMs / 1000)
    },
  )
  guest(
    'vrio_channel_bytes_total',
    'Bytes of channel frames, received (in) and sent (out)',
    ['guest', 'direction'],
    (g, emit, l) => inOut(emit, l, g.bytesIn, g.bytesOut),
  )
  guest(
    'vrio_channel_frames_total',
    'Channel frames received (in) and sent (out)',
    ['guest', 'direction'],
    (g, emit, l) => inOut(emit, l, g.framesIn, g.framesOut),
  )
  guest('vrio_channel_retransmits_total', 'Segments sent again', ['guest'], (g, emit, l) =>
    emit(l, g.retransmits),
  )
  guest('vrio_channel_rto_firings_total', 'Retransmission timeouts that fired', ['guest'], (g, emit, l) =>
    emit(l, g.rtoFirings),
  )
  guest(
    'vrio_channel_window_stalls_total',
    "Times a message found the channel's send buffer full (the peer's window or the network held it back)",
    ['guest'],
    (g, emit, l) => emit(l, g.windowStalls ?? 0),
  )
  guest(
    'vrio_channel_drops_total',
    'Frames and messages of the channel dropped, by reason',
    ['guest', 'reason'],
    (g, emit, l) => byKey(emit, l, 'reason', g.drops),
  )
  guest(
    'vrio_channel_auth_failures_total',
    'Channels that ended because authentication or integrity failed, by reason',
    ['guest', 'reason'],
    (g, emit, l) => byKey(emit, l, 'reason', g.sessionFailures),
  )

  const disks = () => {
    const rows: (IohypDiskMetrics & { labels: Labels })[] = []
    for (const d of source.disks()) rows.push({ ...d, labels: { guest: d.guest, disk: d.disk } })
    return rows
  }
  diskCounters(registry, disks, ['guest', 'disk'])
  const disk = perItem(registry, disks, (d) => d.labels)
  disk(
    'vrio_disk_errors_total',
    'Block requests answered with an error, by status',
    ['guest', 'disk', 'status'],
    (d, emit, l) => {
      for (const [status, n] of Object.entries(d.errors))
        emit({ ...l, status: statusName(Number(status)) }, n)
    },
  )
  registerHistogram(
    registry,
    new ExternalHistogram(
      'vrio_disk_service_seconds',
      'IOhyp service time of block requests run on the device: arrival to answer',
      function* () {
        for (const d of disks()) yield* opRows(d.labels, d.ops)
      },
    ),
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
    () => source.nics(),
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

function buildGuest(registry: Reg, source: GuestMetricsSource): void {
  const disks = () => {
    const rows: { labels: Labels; ops: BlockOpStats; inFlight: number }[] = []
    for (const d of source.disks()) rows.push({ ...d, labels: { disk: d.disk } })
    return rows
  }
  diskCounters(registry, disks, ['disk'])
  registerHistogram(
    registry,
    new ExternalHistogram(
      'vrio_disk_request_seconds',
      'End-to-end time of block requests as the guest sees it: made to completed',
      function* () {
        for (const d of disks()) yield* opRows(d.labels, d.ops)
      },
    ),
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
