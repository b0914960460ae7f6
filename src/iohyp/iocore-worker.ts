/**
 * One iocore (iohyp/iocores.ts): a worker thread running an IohypDaemon for its share of the guests,
 * with its own packet socket. The main thread calls it by message: `{ id, method, args }`, answered
 * `{ id, ok, result | error }`.
 */
import { performance } from 'node:perf_hooks'
import { parentPort, workerData } from 'node:worker_threads'
import { createLogger } from '../daemon/log.ts'
import { isVrioError } from '../errors.ts'
import { IohypDaemon, type IohypOptions } from './daemon.ts'
import type { IohypState } from './state-file.ts'

export interface IocoreWorkerData {
  options: Omit<IohypOptions, 'iocore' | 'access'>
  index: number
  count: number
  state: IohypState
}

/** What the main thread may call, and how. */
const METHODS = {
  status: (d) => d.status(),
  guests: (d) => d.guests(),
  addGuest: (d, body) => d.addGuest(body),
  removeGuest: (d, mac) => d.removeGuest(mac as string),
  exportable: (d) => d.exportable(),
  listDevices: (d, kind) => d.listDevices(kind as 'disks' | 'nics'),
  createDevice: (d, kind, body) => d.createDevice(kind as 'disks' | 'nics', body),
  removeDevice: (d, kind, name) => d.removeDevice(kind as 'disks' | 'nics', name as string),
  setNicServices: (d, name, body) => d.setNicServices(name as string, body),
  nicAlerts: (d, name) => d.nicAlerts(name as string),
  state: (d) => d.state(),
  exportGuest: (d, mac) => d.exportGuest(mac as string),
  importGuests: (d, part) => d.importGuests(part as IohypState),
  metrics: (d) => d.metrics.json(),
  load: () => performance.eventLoopUtilization(),
  stop: (d) => d.stop(),
  /** Test hook (VRIO_TEST_HOOKS=1): the iocore throws outside any request, as a bug would. */
  crash: () => {
    if (process.env.VRIO_TEST_HOOKS !== '1') throw new Error('test hooks are off')
    // After the answer has gone.
    setTimeout(() => {
      throw new Error('iocore crash (test hook)')
    }, 100)
  },
} satisfies Record<string, (d: IohypDaemon, ...args: unknown[]) => unknown>

async function main(): Promise<void> {
  const port = parentPort!
  const data = workerData as IocoreWorkerData
  const log = createLogger(`iohyp iocore ${data.index}`)
  const options = {
    ...data.options,
    // Keys cross the thread boundary as Uint8Arrays.
    guests: data.options.guests?.map((g) => ({ ...g, key: Buffer.from(g.key) })),
    iocore: { index: data.index, count: data.count, state: data.state },
  }
  const daemon = await IohypDaemon.start(options, log)
  port.on('message', async (m: { id: number; method: keyof typeof METHODS; args: unknown[] }) => {
    try {
      const call = METHODS[m.method] as (d: IohypDaemon, ...args: unknown[]) => unknown
      if (!call) throw new Error(`no iocore method ${String(m.method)}`)
      const result = await call(daemon, ...m.args)
      port.postMessage({ id: m.id, ok: true, result })
    } catch (error) {
      const e = isVrioError(error)
        ? error.toJSON()
        : { code: 'internal', message: (error as Error)?.message ?? String(error) }
      port.postMessage({ id: m.id, ok: false, error: e })
    }
  })
  port.postMessage({ ready: true })
}

main().catch((error) => {
  parentPort!.postMessage({
    ready: false,
    error: isVrioError(error) ? error.toJSON() : { message: String(error) },
  })
})
