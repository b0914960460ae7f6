/**
 * Worker thread: an alert-only DPI (dpi-thread.ts) on its own core. It builds the DpiService from a
 * compiled set (the automata handed over, not built again), then inspects the frame batches the NIC's
 * thread posts, in order, and posts back the alerts and its counters. Messages are handled in the
 * order they were posted, so a rule swap applies between the frames sent before it and after it.
 *
 * In: `{ type: 'frames', data, ends, directions, now, lent? }` (frame i is data[ends[i-1], ends[i]),
 * direction 1 is from the guest; `lent`: data's buffer is to be handed back), `{ type: 'prepare',
 * compiled, id }` then `{ type: 'commit', id }` (a rule swap), `{ type: 'sync', id }`. Out:
 * `{ type: 'ready' }` or `{ type: 'failed', message }` once, then `{ type: 'events', records }`,
 * `{ type: 'counters', counters, id? }`, `{ type: 'prepared', id, error? }`, and
 * `{ type: 'free', data }` (a lent batch buffer, handed back to be filled again).
 */
import { parentPort, workerData } from 'node:worker_threads'
import { DpiService } from '../dpi/engine.ts'
import type { ParsedRules } from '../dpi/rules.ts'
import { dissectPacket, newPacket } from '../../wire/packet.ts'
import type { CompiledRules } from './compile.ts'
import { parseSliced } from './load.ts'
import type { NetContext } from './service.ts'

export interface DpiWorkerData {
  compiled: CompiledRules
  interfaceName: string
  /** Shared [bytes posted and not yet inspected]: the NIC's thread waits on it when it is too high. */
  inFlight: Int32Array
}

/** Counters are posted at most this often, and this long after the last batch at the latest. */
const COUNTERS_EVERY_MS = 20

const port = parentPort
if (port) {
  const data = workerData as DpiWorkerData
  const inFlight = data.inFlight
  const events: Record<string, unknown>[] = []
  let now = 0
  const ctx: NetContext = {
    get now() {
      return now
    },
    reply: () => {},
    event: (record) => {
      events.push(record)
    },
  }
  let dpi: DpiService | undefined
  let countersAt = 0
  const packet = newPacket()
  let countersTimer: ReturnType<typeof setTimeout> | undefined
  const postCounters = (id?: number): void => {
    countersAt = performance.now()
    port.postMessage({ type: 'counters', counters: dpi?.counters(), ...(id !== undefined && { id }) })
  }
  /** Posts the counters now, or when COUNTERS_EVERY_MS has passed since the last post. */
  const countersSoon = (): void => {
    if (countersTimer !== undefined) return
    const wait = COUNTERS_EVERY_MS - (performance.now() - countersAt)
    if (wait <= 0) {
      postCounters()
      return
    }
    countersTimer = setTimeout(() => {
      countersTimer = undefined
      postCounters()
    }, wait)
  }
  /** The swap parsed and waiting for its commit (at most one). */
  const prepared = new Map<number, { parsed: ParsedRules; tables: CompiledRules['tables'] }>()
  const handle = async (m: Record<string, unknown>): Promise<void> => {
    const service = dpi as DpiService
    if (m.type === 'frames') {
      const bytes = m.data as Uint8Array
      const ends = m.ends as Int32Array
      const directions = m.directions as Uint8Array
      now = m.now as number
      let start = 0
      for (let i = 0; i < ends.length; i++) {
        const frame = bytes.subarray(start, ends[i])
        start = ends[i]
        if (dissectPacket(frame, packet) !== undefined) continue
        service.inspect(frame, packet, directions[i] === 1 ? 'from-guest' : 'to-guest', ctx)
      }
      Atomics.sub(inFlight, 0, bytes.length)
      Atomics.notify(inFlight, 0)
      // A lent batch buffer goes back to be filled again (see LENT_BATCH in dpi-thread.ts).
      if (m.lent === true) {
        const whole = new Uint8Array(bytes.buffer)
        port.postMessage({ type: 'free', data: whole }, [whole.buffer as ArrayBuffer])
      }
      if (events.length > 0) port.postMessage({ type: 'events', records: events.splice(0) })
      countersSoon()
    } else if (m.type === 'prepare') {
      // Parsed a slice at a time: the frames posted meanwhile wait behind it, in order.
      const compiled = m.compiled as CompiledRules
      try {
        const parsed = await parseSliced(compiled)
        // One swap waits at a time: a newer one (its request's) replaces one never committed.
        prepared.clear()
        prepared.set(m.id as number, { parsed, tables: compiled.tables })
        port.postMessage({ type: 'prepared', id: m.id })
      } catch (error) {
        port.postMessage({ type: 'prepared', id: m.id, error: (error as Error).message })
      }
    } else if (m.type === 'commit') {
      const p = prepared.get(m.id as number)
      prepared.clear()
      if (p) service.replaceParsed(p.parsed, p.tables)
      postCounters()
    } else if (m.type === 'sync') {
      postCounters(m.id as number)
    }
  }
  // Messages wait here while the set is built and while a swap is parsed, and run in order.
  const backlog: Record<string, unknown>[] = []
  let ready = false
  let draining = false
  const pump = async (): Promise<void> => {
    if (!ready || draining) return
    draining = true
    try {
      while (backlog.length > 0) await handle(backlog.shift() as Record<string, unknown>)
    } finally {
      draining = false
    }
  }
  port.on('message', (m: Record<string, unknown>) => {
    backlog.push(m)
    void pump()
  })
  void (async () => {
    try {
      const parsed = await parseSliced(data.compiled)
      dpi = new DpiService(parsed, { strict: false, interfaceName: data.interfaceName }, data.compiled.tables)
    } catch (error) {
      port.postMessage({ type: 'failed', message: (error as Error).message })
      return
    }
    port.postMessage({ type: 'ready' })
    postCounters()
    ready = true
    await pump()
  })()
}
