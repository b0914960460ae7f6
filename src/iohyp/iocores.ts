/**
 * The IOhyp on several cores: `--iocores N` (N ≥ 2) runs N worker threads, the iocores, each an
 * IohypDaemon for its share of the guests with its own packet socket, whose kernel filter passes
 * only those guests' segments. A guest's channel, devices and services live on one iocore. This
 * main thread keeps what is shared: the control API (routes.ts, answered by asking the iocore
 * that holds the guest), the state file, the kernel guard, the metrics (every iocore's, merged),
 * and the sprinkler that moves guests off a busy iocore. A guest moves as across an IOhyp restart:
 * its channel closes, its disks finish what they run and flush, the other iocore takes its devices
 * (same handles) and dials it; the agent re-sends what was not answered. An iocore that dies is
 * started again with its guests.
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { type EventLoopUtilization, performance } from 'node:perf_hooks'
import { Worker } from 'node:worker_threads'
import type { MetricObjectWithValues, MetricValue } from 'prom-client'
import type { GuestInfo, IocoreInfo, StatusInfo } from '../control/api.ts'
import { ControlServer } from '../control/control-server.ts'
import { parseAddGuestRequest } from '../control/guest-spec.ts'
import type { ExportableState } from '../config/export.ts'
import type { Logger } from '../daemon/log.ts'
import { aggregateMetrics, type MetricsListener, startWithMetrics } from '../daemon/metrics.ts'
import { linkAddress, packetFilterEnabled, VRIO_PORT } from '../daemon/runtime.ts'
import { VrioError } from '../errors.ts'
import { KernelGuard } from '../io/kernel-guard.ts'
import { formatMac, parseIPv4, parseMac } from '../wire/address.ts'
import type { DeviceKindName, IohypApi } from './api.ts'
import type { IohypOptions } from './daemon.ts'
import { backingConflict } from './disks.ts'
import type { IocoreWorkerData } from './iocore-worker.ts'
import { iohypRoutes } from './routes.ts'
import { EMPTY_STATE, type IohypState, readStateFile, writeStateFile } from './state-file.ts'

const WORKER = new URL(
  import.meta.url.endsWith('.ts') ? './iocore-worker.ts' : './iocore-worker.js',
  import.meta.url,
)

/** How often the sprinkler compares the iocores' load, and what imbalance makes it move a guest. */
const SPRINKLE_INTERVAL_MS = 2000
const SPRINKLE_IMBALANCE = 0.3
/** Windows in a row the imbalance must last, and the quiet time after a move. */
const SPRINKLE_WINDOWS = 3
const SPRINKLE_HOLD_MS = 10_000

/** The default: one iocore per core but one (for the guests' agents, the control API, the kernel). */
export function defaultIocores(cores: number): number {
  return Math.max(1, cores - 1)
}

interface Call {
  resolve(value: unknown): void
  reject(error: unknown): void
}

/** One worker thread and its calls in flight. */
class Iocore {
  readonly index: number
  worker!: Worker
  private readonly calls = new Map<number, Call>()
  private nextId = 1
  restarts = 0
  movesIn = 0
  movesOut = 0
  /** The last load sample and the utilization of the window before it. */
  lastLoad: EventLoopUtilization | undefined
  utilization = 0
  stopping = false

  constructor(index: number) {
    this.index = index
  }

  /**
   * Starts the thread with `state`; resolves when its daemon is up. `onDeath` runs once when the
   * thread throws or exits after that (an uncaught exception is reported before the thread has
   * finished tearing down, which can take a while: the iocore is replaced at once).
   */
  start(data: IocoreWorkerData, onDeath: (why: unknown) => void): Promise<void> {
    const worker = new Worker(WORKER, { workerData: data })
    this.worker = worker
    this.lastLoad = undefined
    let ready = false
    let dead = false
    const die = (why: unknown) => {
      if (dead || this.worker !== worker) return
      dead = true
      for (const c of this.calls.values())
        c.reject(new VrioError('destroyed', `iocore ${this.index} stopped while the request ran`))
      this.calls.clear()
      if (ready) onDeath(why)
    }
    return new Promise((resolve, reject) => {
      worker.on(
        'message',
        (m: { id?: number; ok?: boolean; result?: unknown; error?: unknown; ready?: boolean }) => {
          if (m.id === undefined) {
            if (m.ready) {
              ready = true
              resolve()
            } else reject(VrioError.fromJSON(m.error))
            return
          }
          const call = this.calls.get(m.id)
          if (!call) return
          this.calls.delete(m.id)
          if (m.ok) call.resolve(m.result)
          else call.reject(VrioError.fromJSON(m.error))
        },
      )
      worker.on('error', (error) => {
        if (!ready) reject(error)
        die(error)
      })
      worker.on('exit', (code) => {
        if (!ready)
          reject(new VrioError('internal', `iocore ${this.index} exited (${code}) before it started`))
        die(`exit code ${code}`)
      })
    })
  }

  call<T>(method: string, ...args: unknown[]): Promise<T> {
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      this.calls.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.worker.postMessage({ id, method, args })
    })
  }
}

/** The main thread of an IOhyp with several iocores (see the file comment). */
export class IocoreRouter implements IohypApi {
  private readonly o: IohypOptions
  private readonly log: Logger
  private readonly cores: Iocore[]
  /** Which iocore holds each guest, by MAC; and the guests' addresses. */
  private readonly owner = new Map<number, number>()
  private readonly addresses = new Map<number, number>()
  private control!: ControlServer
  private guard!: KernelGuard
  private metricsListener: MetricsListener | undefined
  private sprinkler: NodeJS.Timeout | undefined
  private imbalanced = 0
  private holdUntil = 0
  private stopped = false
  /** Mutations one at a time: a move never interleaves with a create on the same guest. */
  private queue: Promise<unknown> = Promise.resolve()
  private readonly startedAt = Date.now()

  private constructor(o: IohypOptions, log: Logger, count: number) {
    this.o = o
    this.log = log
    this.cores = Array.from({ length: count }, (_, i) => new Iocore(i))
  }

  static async start(o: IohypOptions & { iocores: number }, log: Logger): Promise<IocoreRouter> {
    if (o.access)
      throw new VrioError('invalid-argument', 'iocores run on the kernel link only', { field: 'iocores' })
    if (!packetFilterEnabled())
      throw new VrioError(
        'invalid-config',
        '--iocores needs the packet filter (it steers each guest to its iocore): unset VRIO_PACKET_FILTER=off',
        { field: 'iocores' },
      )
    const r = new IocoreRouter(o, log, o.iocores)
    r.metricsListener = await startWithMetrics(
      o.metrics,
      { scrape: () => r.scrape(), json: async () => [], close() {} },
      () => r.open(),
    )
    return r
  }

  private statePath(): string {
    return join(this.o.stateDir, 'iohyp-state.json')
  }

  private async open(): Promise<void> {
    const { ip } = linkAddress(this.o.interface, this.o.address)
    const state = await readStateFile(this.statePath())
    this.guard = new KernelGuard({
      ifname: this.o.interface,
      address: ip,
      remotePort: this.o.port ?? VRIO_PORT,
      role: 'iohyp',
    })
    await this.guard.install()
    // Guests spread round-robin; the config's guests and devices go with their guest's iocore.
    const shares = this.cores.map(() => structuredClone(EMPTY_STATE))
    const declared = this.cores.map(() => ({ guests: [] as NonNullable<IohypOptions['guests']>[number][] }))
    const macs = new Set<number>()
    for (const g of state.guests) macs.add(parseMac(g.mac)!)
    for (const g of this.o.guests ?? []) macs.add(parseMac(g.mac)!)
    let next = 0
    for (const mac of [...macs].sort((a, b) => a - b)) this.owner.set(mac, next++ % this.cores.length)
    const at = (text: string) => this.owner.get(parseMac(text) ?? -1) ?? 0
    for (const g of state.guests) shares[at(g.mac)].guests.push(g)
    for (const d of state.disks) shares[at(d.guest)].disks.push(d)
    for (const n of state.nics) shares[at(n.guest)].nics.push(n)
    for (const g of this.o.guests ?? []) declared[at(g.mac)].guests.push(g)
    try {
      await Promise.all(
        this.cores.map((c) =>
          this.startCore(c, shares[c.index], {
            guests: declared[c.index].guests,
            devices: {
              disks: (this.o.devices?.disks ?? []).filter((d) => at(d.guest) === c.index),
              nics: (this.o.devices?.nics ?? []).filter((n) => at(n.guest) === c.index),
            },
          }),
        ),
      )
      await this.refreshGuests()
      await this.saveState()
      this.control = new ControlServer({
        path: this.o.control,
        onError: (error, req) => this.log.error('control request failed', { error, ...req }),
      })
      iohypRoutes(this.control, this)
      if (process.env.VRIO_TEST_HOOKS === '1')
        this.control.route('POST', '/v1/test/iocores/:k/crash', async (req) => {
          await this.crash(Number(req.params.k))
          return {}
        })
      await this.control.listen()
    } catch (error) {
      await this.stopCores()
      await this.guard.remove()
      throw error
    }
    this.sprinkler = setInterval(() => void this.sprinkle(), SPRINKLE_INTERVAL_MS)
    this.sprinkler.unref()
    this.log.info('iohyp started', {
      iocores: this.cores.length,
      interface: this.o.interface,
      guests: this.owner.size,
      control: this.o.control,
    })
  }

  private startCore(
    c: Iocore,
    state: IohypState,
    declared: Pick<IohypOptions, 'guests' | 'devices'> = {},
  ): Promise<void> {
    const { access: _, ...options } = this.o
    return c.start(
      { options: { ...options, ...declared }, index: c.index, count: this.cores.length, state },
      (why) => void this.restart(c, why),
    )
  }

  /** An iocore died: started again with the guests it held, as the state file last had them. */
  private async restart(c: Iocore, why: unknown): Promise<void> {
    if (this.stopped || c.stopping) return
    c.restarts++
    this.log.error('iocore stopped: starting it again with its guests', { iocore: c.index, error: why })
    const old = c.worker
    void old.terminate()
    const state = await readStateFile(this.statePath())
    const mine = (text: string) => this.owner.get(parseMac(text) ?? -1) === c.index
    const share: IohypState = {
      version: 1,
      guests: state.guests.filter((g) => mine(g.mac)),
      disks: state.disks.filter((d) => mine(d.guest)),
      nics: state.nics.filter((n) => mine(n.guest)),
    }
    try {
      await this.startCore(c, share)
      this.log.info('iocore started again', { iocore: c.index, guests: share.guests.length })
    } catch (error) {
      this.log.error('iocore could not be started again', { iocore: c.index, error })
    }
  }

  private serial<T>(run: () => Promise<T>): Promise<T> {
    const p = this.queue.then(run)
    this.queue = p.catch(() => {})
    return p
  }

  private async all<T>(method: string, ...args: unknown[]): Promise<T[]> {
    return Promise.all(this.cores.map((c) => c.call<T>(method, ...args)))
  }

  /** The iocore of a guest named by MAC or address. */
  private coreOf(text: string): Iocore {
    const mac = parseMac(text)
    const ip = parseIPv4(text)
    for (const [m, k] of this.owner) if (m === mac || this.addresses.get(m) === ip) return this.cores[k]
    throw new VrioError('not-found', `no enrolled guest ${text}`, { field: 'guest' })
  }

  private async refreshGuests(): Promise<void> {
    for (const [k, list] of (await this.all<GuestInfo[]>('guests')).entries()) {
      for (const g of list) {
        const mac = parseMac(g.mac)!
        this.owner.set(mac, k)
        this.addresses.set(mac, parseIPv4(g.address)!)
      }
    }
  }

  async saveState(): Promise<void> {
    const parts = await this.all<IohypState>('state')
    await writeStateFile(this.statePath(), {
      version: 1,
      guests: parts.flatMap((p) => p.guests),
      disks: parts.flatMap((p) => p.disks),
      nics: parts.flatMap((p) => p.nics),
    })
  }

  async status(): Promise<StatusInfo> {
    const all = await this.all<StatusInfo>('status')
    const s = structuredClone(all[0])
    s.pid = process.pid
    s.uptimeMs = Date.now() - this.startedAt
    for (const other of all.slice(1)) {
      if (s.guests && other.guests) {
        s.guests.total += other.guests.total
        s.guests.connected += other.guests.connected
      }
      for (const [k, v] of Object.entries(other.drops ?? {})) s.drops![k] = (s.drops![k] ?? 0) + v
      if (s.socket && other.socket) {
        // The counters add up; `poll` (how it polls) is the same on every iocore.
        const sum = s.socket as unknown as Record<string, unknown>
        for (const [k, v] of Object.entries(other.socket))
          if (typeof v === 'number') sum[k] = ((sum[k] as number | undefined) ?? 0) + v
      }
    }
    return { ...s, iocores: await this.iocores() }
  }

  /** Per iocore: guests, event-loop busy and idle time, restarts, moves, frames. */
  async iocores(): Promise<IocoreInfo[]> {
    const statuses = await this.all<StatusInfo>('status')
    const loads = await this.all<EventLoopUtilization>('load')
    return this.cores.map((c, k) => ({
      index: k,
      guests: statuses[k].guests?.total ?? 0,
      busyMs: Math.round(loads[k].active),
      idleMs: Math.round(loads[k].idle),
      utilization: c.utilization,
      restarts: c.restarts,
      movesIn: c.movesIn,
      movesOut: c.movesOut,
      frames: { rx: statuses[k].socket?.rxFrames ?? 0, tx: statuses[k].socket?.txFrames ?? 0 },
      ...(this.o.pollIdleUs && {
        polls: statuses[k].socket?.polls ?? 0,
        pollHits: statuses[k].socket?.pollHits ?? 0,
        pollMs: Math.round((statuses[k].socket?.pollUs ?? 0) / 1000),
      }),
    }))
  }

  async scrape(): Promise<string> {
    const lists = await this.all<MetricObjectWithValues<MetricValue<string>>[]>('metrics')
    // Process-wide metrics once (the first iocore's); every iocore's vrio_ metrics, summed.
    const merged = lists.map((list, k) =>
      k === 0 ? list : list.filter((m) => m.name.startsWith('vrio_') && m.name !== 'vrio_info'),
    )
    const cores = await this.iocores()
    const family = (
      name: string,
      type: 'counter' | 'gauge',
      help: string,
      value: (c: IocoreInfo) => number,
    ) =>
      ({
        name,
        help,
        type,
        aggregator: 'sum',
        values: cores.map((c) => ({ labels: { iocore: String(c.index) }, value: value(c) })),
      }) as unknown as MetricObjectWithValues<MetricValue<string>>
    merged.push([
      family(
        'vrio_iocore_busy_seconds_total',
        'counter',
        "Time the iocore's event loop was busy",
        (c) => c.busyMs / 1000,
      ),
      family(
        'vrio_iocore_idle_seconds_total',
        'counter',
        "Time the iocore's event loop waited for work",
        (c) => c.idleMs / 1000,
      ),
      family('vrio_iocore_guests', 'gauge', 'Guests the iocore holds', (c) => c.guests),
      family('vrio_iocore_moves_in_total', 'counter', 'Guests moved to the iocore', (c) => c.movesIn),
      family(
        'vrio_iocore_moves_out_total',
        'counter',
        'Guests moved away from the iocore',
        (c) => c.movesOut,
      ),
      family(
        'vrio_iocore_polls_total',
        'counter',
        'Receive rounds the iocore made instead of sleeping (--poll)',
        (c) => c.polls ?? 0,
      ),
      family(
        'vrio_iocore_poll_seconds_total',
        'counter',
        'Time the iocore spent polling its packet socket (--poll; part of its busy time)',
        (c) => (c.pollMs ?? 0) / 1000,
      ),
      family(
        'vrio_iocore_restarts_total',
        'counter',
        'Times the iocore was started again after it died',
        (c) => c.restarts,
      ),
    ])
    return aggregateMetrics(merged)
  }

  async guests(): Promise<GuestInfo[]> {
    const lists = await this.all<GuestInfo[]>('guests')
    return lists
      .flatMap((list, iocore) => list.map((g) => ({ ...g, iocore })))
      .sort((a, b) => a.mac.localeCompare(b.mac))
  }

  addGuest(body: unknown): Promise<GuestInfo> {
    return this.serial(async () => {
      const request = parseAddGuestRequest(body)
      const mac = parseMac(request.mac)!
      const ip = parseIPv4(request.address)!
      if (this.owner.has(mac))
        throw new VrioError('conflict', `a guest with MAC ${formatMac(mac)} is already enrolled`)
      for (const [m, a] of this.addresses)
        if (a === ip)
          throw new VrioError(
            'conflict',
            `address ${request.address} is already used by guest ${formatMac(m)}`,
          )
      const c = this.leastLoaded()
      const info = await c.call<GuestInfo>('addGuest', body)
      this.owner.set(mac, c.index)
      this.addresses.set(mac, ip)
      await this.saveState()
      return info
    })
  }

  removeGuest(text: string): Promise<GuestInfo> {
    return this.serial(async () => {
      const c = this.coreOf(text)
      const info = await c.call<GuestInfo>('removeGuest', text)
      const mac = parseMac(info.mac)!
      this.owner.delete(mac)
      this.addresses.delete(mac)
      await this.saveState()
      return info
    })
  }

  moveGuest(text: string, body: unknown): Promise<GuestInfo> {
    const k = (body as { iocore?: unknown } | null)?.iocore
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k >= this.cores.length)
      return Promise.reject(
        new VrioError('invalid-argument', `iocore must be an integer from 0 to ${this.cores.length - 1}`, {
          field: 'iocore',
        }),
      )
    return this.serial(() => this.move(text, this.cores[k], 'by hand'))
  }

  private async move(text: string, to: Iocore, why: string): Promise<GuestInfo> {
    const from = this.coreOf(text)
    if (from === to)
      return (await from.call<GuestInfo[]>('guests')).find(
        (g) => g.mac === formatMac(parseMac(text) ?? -1) || g.address === text,
      )!
    const part = await from.call<IohypState>('exportGuest', text)
    const mac = parseMac(part.guests[0].mac)!
    // Held by no iocore until the other one has it: a restart meanwhile finds it in the file.
    this.owner.set(mac, to.index)
    const [info] = await to.call<GuestInfo[]>('importGuests', part)
    from.movesOut++
    to.movesIn++
    this.log.info('guest moved', { mac: formatMac(mac), from: from.index, to: to.index, why })
    await this.saveState()
    return info
  }

  private leastLoaded(): Iocore {
    const count = this.cores.map(() => 0)
    for (const k of this.owner.values()) count[k]++
    let best = this.cores[0]
    for (const c of this.cores) if (count[c.index] < count[best.index]) best = c
    return best
  }

  /**
   * The sprinkler: every interval, each iocore's event-loop utilization over the last window; when
   * the busiest is more than SPRINKLE_IMBALANCE above the idlest for SPRINKLE_WINDOWS windows in a
   * row and holds two guests or more, its least busy guest moves (then nothing for a while).
   */
  private async sprinkle(): Promise<void> {
    if (this.stopped) return
    let loads: EventLoopUtilization[]
    try {
      loads = await this.all<EventLoopUtilization>('load')
    } catch {
      return
    }
    for (const c of this.cores) {
      const now = loads[c.index]
      c.utilization = c.lastLoad ? performance.eventLoopUtilization(now, c.lastLoad).utilization : 0
      c.lastLoad = now
    }
    const sorted = [...this.cores].sort((a, b) => b.utilization - a.utilization)
    const busy = sorted[0]
    const idle = sorted[sorted.length - 1]
    const held = [...this.owner.values()].filter((k) => k === busy.index).length
    if (busy.utilization - idle.utilization < SPRINKLE_IMBALANCE || held < 2) {
      this.imbalanced = 0
      return
    }
    if (++this.imbalanced < SPRINKLE_WINDOWS || Date.now() < this.holdUntil) return
    this.imbalanced = 0
    this.holdUntil = Date.now() + SPRINKLE_HOLD_MS
    const guests = await busy.call<GuestInfo[]>('guests')
    const quiet = guests.sort((a, b) => framesOf(a) - framesOf(b))[0]
    if (!quiet) return
    await this.serial(() => this.move(quiet.mac, idle, 'sprinkler')).catch((error) =>
      this.log.warn('sprinkler could not move a guest', { mac: quiet.mac, error }),
    )
  }

  async exportable(): Promise<ExportableState> {
    const all = await this.all<ExportableState>('exportable')
    return {
      ...all[0],
      iocores: this.cores.length,
      guests: all.flatMap((e) => e.guests).sort((a, b) => a.mac.localeCompare(b.mac)),
      disks: all.flatMap((e) => e.disks),
      nics: all.flatMap((e) => e.nics ?? []),
    }
  }

  async listDevices(kind: DeviceKindName): Promise<unknown[]> {
    const all = (await this.all<{ name: string }[]>('listDevices', kind)).flat()
    return all.sort((a, b) => a.name.localeCompare(b.name))
  }

  createDevice(kind: DeviceKindName, body: unknown): Promise<unknown> {
    return this.serial(async () => {
      if (typeof body !== 'object' || body === null || Array.isArray(body))
        throw new VrioError('invalid-argument', 'expected a JSON object', { field: 'body' })
      const req = body as { guest?: unknown; name?: unknown; backing?: unknown; readOnly?: unknown }
      const c = this.coreOf(typeof req.guest === 'string' ? req.guest : '')
      const existing = (await this.all<{ name: string }[]>('listDevices', kind)).flat()
      const names = new Set(existing.map((d) => d.name))
      // Names are the IOhyp's, not an iocore's: the free one is picked here.
      let name = req.name
      if (name === undefined) {
        const prefix = kind === 'disks' ? 'disk' : 'vnic'
        for (let i = 0; ; i++)
          if (!names.has(`${prefix}${i}`)) {
            name = `${prefix}${i}`
            break
          }
      } else if (typeof name === 'string' && names.has(name)) {
        const noun = kind === 'disks' ? 'disk' : 'NIC'
        throw new VrioError('conflict', `a ${noun} named ${name} exists already`, { field: 'name' })
      }
      if (kind === 'disks' && typeof req.backing === 'string')
        await this.checkBacking(req.backing, req.readOnly === true, c)
      const info = await c.call('createDevice', kind, { ...req, name })
      await this.saveState()
      return info
    })
  }

  /**
   * One file backs one writable disk across all iocores (each iocore checks its own disks): the
   * same file by device and inode on another iocore is refused, as IohypDisks does on one.
   */
  private async checkBacking(backing: string, readOnly: boolean, target: Iocore): Promise<void> {
    let id: { dev: number; ino: number }
    try {
      id = await stat(backing)
    } catch {
      return // the iocore reports the missing file
    }
    const parts = await this.all<IohypState>('state')
    for (const [k, part] of parts.entries()) {
      if (k === target.index) continue
      for (const d of part.disks) {
        if (readOnly && d.readOnly) continue
        const other = await stat(d.backing).catch(() => undefined)
        if (other && other.dev === id.dev && other.ino === id.ino) throw backingConflict(backing, d)
      }
    }
  }

  private async coreWithDevice(kind: DeviceKindName, name: string): Promise<Iocore> {
    const lists = await this.all<{ name: string }[]>('listDevices', kind)
    const k = lists.findIndex((l) => l.some((d) => d.name === name))
    if (k < 0) throw new VrioError('not-found', `no ${kind === 'disks' ? 'disk' : 'NIC'} named ${name}`)
    return this.cores[k]
  }

  removeDevice(kind: DeviceKindName, name: string): Promise<unknown> {
    return this.serial(async () => {
      const info = await (await this.coreWithDevice(kind, name)).call('removeDevice', kind, name)
      await this.saveState()
      return info
    })
  }

  setNicServices(name: string, body: unknown): Promise<unknown> {
    return this.serial(async () => {
      const info = await (await this.coreWithDevice('nics', name)).call('setNicServices', name, body)
      await this.saveState()
      return info
    })
  }

  async nicAlerts(name: string): Promise<unknown[]> {
    return (await this.coreWithDevice('nics', name)).call('nicAlerts', name)
  }

  /** Test hook (VRIO_TEST_HOOKS=1 in the daemon's environment): iocore `k` throws. */
  crash(k: number): Promise<void> {
    return this.cores[k].call('crash')
  }

  private async stopCores(): Promise<void> {
    await Promise.all(
      this.cores.map(async (c) => {
        if (!c.worker) return
        c.stopping = true
        await c.call('stop').catch(() => {})
        await c.worker.terminate()
      }),
    )
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearInterval(this.sprinkler)
    await this.queue
    await this.stopCores()
    await this.control?.close()
    await this.guard?.remove()
    await this.metricsListener?.close()
  }
}

function framesOf(g: GuestInfo): number {
  return g.framesIn
}
