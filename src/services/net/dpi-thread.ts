/**
 * An alert-only DPI on a thread of its own (dpi-worker.ts), so that a NIC's thread forwards frames
 * while another core inspects them: Suricata in IDS mode next to the data path. The chain runs it
 * where it runs an alert-only DPI (after forwarding: see NetServiceChain.observe); inspect() copies
 * the frame into a batch, which goes to the thread once per event-loop turn, and returns.
 *
 * - **Same frames, same order, same alerts** as the DPI on the NIC's thread; alerts reach the
 *   chain's event sink when the thread has seen the frame (well under a millisecond later when it
 *   keeps up), counters at most COUNTERS_EVERY_MS (dpi-worker.ts, 20 ms) after its last batch.
 * - **Bounded**: at most MAX_IN_FLIGHT bytes wait for the thread. Beyond, the NIC's thread waits
 *   for it (`thread.waits`): frames are not forwarded faster than they are inspected, and none is
 *   left out. A thread that makes no progress for STUCK_MS, or has died, is given up: the frames
 *   it did not see are counted (`thread.unwatched`) and `thread.failed` says why.
 * - **Only for rules that cannot drop.** A DPI whose rules drop runs on the NIC's thread
 *   (load.ts decides; a swap to such rules moves it there, starting its flow state afresh).
 */
import { Worker } from 'node:worker_threads'
import type { Packet } from '../../wire/packet.ts'
import type { ReplaceableNetService } from './chain.ts'
import { type CompiledRules, transferables } from './compile.ts'
import type { DpiWorkerData } from './dpi-worker.ts'
import type { NetContext, NetDirection } from './service.ts'

const WORKER = new URL(
  import.meta.url.endsWith('.ts') ? './dpi-worker.ts' : './dpi-worker.js',
  import.meta.url,
)

/** Bytes posted to the thread and not yet inspected, at most (then the NIC's thread waits). */
export const MAX_IN_FLIGHT = 32 * 1024 * 1024
/** A batch goes at the end of the event-loop turn, or once it holds this many bytes. */
const BATCH_BYTES = 256 * 1024
/**
 * A batch of at least this many bytes goes in its buffer itself, which the thread hands back:
 * allocating big buffers at the rate of a fast stream costs both threads full garbage collections.
 */
const LENT_BATCH = 64 * 1024
/** Batch buffers kept for reuse at most. */
const SPARE_BATCHES = 8
/** The NIC's thread gives up on a thread that inspected nothing for this long while it waited. */
const STUCK_MS = 5000

export class DpiThread implements ReplaceableNetService {
  readonly kind = 'dpi'
  /** It never drops (see load.ts): the chain runs it after forwarding. */
  readonly canDrop = false
  readonly #worker: Worker
  /** Shared with the thread: [0] bytes posted and not yet inspected. */
  readonly #shared: Int32Array
  readonly #maxInFlight: number
  /** The batch being filled: frames back to back, their ends and directions (1: from the guest). */
  #batch: Uint8Array = new Uint8Array(BATCH_BYTES)
  #used = 0
  /** Batch buffers the thread handed back (transferred both ways, so none is allocated per batch). */
  readonly #spare: Uint8Array[] = []
  readonly #ends: number[] = []
  readonly #directions: number[] = []
  #now = 0
  #flushQueued = false
  #event: NetContext['event'] | undefined
  #counters: Record<string, unknown> = {}
  #failed: string | undefined
  #waits = 0
  #unwatched = 0
  #nextId = 0
  readonly #pending = new Map<number, (error?: string) => void>()

  private constructor(worker: Worker, shared: Int32Array, maxInFlight: number) {
    this.#worker = worker
    this.#shared = shared
    this.#maxInFlight = maxInFlight
    worker.on('message', (m: Record<string, unknown>) => this.#message(m))
    worker.on('error', (error) => this.#fail(`the DPI thread failed: ${error.message}`))
    worker.on('exit', (code) => this.#fail(`the DPI thread exited (${code})`))
    // A helper of the NIC's: it keeps the process alive only while an answer is awaited (see #ask).
    // (After the listeners, which ref it.)
    worker.unref()
  }

  /** The thread, with `compiled` built (its automata handed over): resolves once it inspects. */
  static start(
    compiled: CompiledRules,
    interfaceName: string,
    maxInFlight = MAX_IN_FLIGHT,
  ): Promise<DpiThread> {
    const inFlight = new Int32Array(new SharedArrayBuffer(4))
    const data: DpiWorkerData = { compiled, interfaceName, inFlight }
    const worker = new Worker(WORKER, { workerData: data, transferList: transferables(compiled.tables) })
    return new Promise((resolve, reject) => {
      const early = (m: Record<string, unknown>): void => {
        worker.off('message', early)
        worker.off('error', failed)
        worker.off('exit', exited)
        if (m.type === 'ready') {
          resolve(new DpiThread(worker, inFlight, maxInFlight))
        } else {
          void worker.terminate()
          reject(new Error(`the DPI thread could not build the rules: ${m.message}`))
        }
      }
      const failed = (error: Error): void => {
        worker.off('message', early)
        reject(new Error(`the DPI thread failed: ${error.message}`))
      }
      const exited = (code: number): void => {
        worker.off('message', early)
        reject(new Error(`the DPI thread exited (${code})`))
      }
      worker.on('message', early)
      worker.once('error', failed)
      worker.once('exit', exited)
    })
  }

  inspect(frame: Uint8Array, _p: Packet, direction: NetDirection, ctx: NetContext): boolean {
    this.#event = ctx.event
    if (this.#failed !== undefined) {
      this.#unwatched++
      return true
    }
    if (this.#used + frame.length > this.#batch.length) {
      this.#flush()
      if (frame.length > this.#batch.length) this.#batch = new Uint8Array(frame.length)
    }
    this.#batch.set(frame, this.#used)
    this.#used += frame.length
    this.#ends.push(this.#used)
    this.#directions.push(direction === 'from-guest' ? 1 : 0)
    this.#now = ctx.now
    if (!this.#flushQueued) {
      this.#flushQueued = true
      setImmediate(this.#flushSoon)
    }
    return true
  }

  readonly #flushSoon = (): void => {
    this.#flushQueued = false
    this.#flush()
  }

  /** Posts the batch (waiting first while the thread has MAX_IN_FLIGHT bytes to do). */
  #flush(): void {
    const count = this.#ends.length
    if (count === 0) return
    const bytes = this.#used
    this.#used = 0
    const ends = Int32Array.from(this.#ends)
    const directions = Uint8Array.from(this.#directions)
    this.#ends.length = 0
    this.#directions.length = 0
    if (this.#failed !== undefined || !this.#waitForRoom()) {
      this.#unwatched += count
      return
    }
    Atomics.add(this.#shared, 0, bytes)
    if (bytes < LENT_BATCH) {
      // A small batch goes as a copy of its own (cheap to allocate); the buffer stays for the next.
      const data = this.#batch.slice(0, bytes)
      this.#worker.postMessage({ type: 'frames', data, ends, directions, now: this.#now }, [
        data.buffer,
        ends.buffer,
        directions.buffer,
      ])
      return
    }
    const batch = this.#batch
    this.#worker.postMessage(
      { type: 'frames', data: batch.subarray(0, bytes), ends, directions, now: this.#now, lent: true },
      [batch.buffer as ArrayBuffer, ends.buffer, directions.buffer],
    )
    this.#batch = this.#spare.pop() ?? new Uint8Array(BATCH_BYTES)
  }

  /** False when the thread made no progress for STUCK_MS (it is then given up). */
  #waitForRoom(): boolean {
    const shared = this.#shared
    const max = this.#maxInFlight
    let last = Atomics.load(shared, 0)
    if (last <= max) return true
    this.#waits++
    let since = performance.now()
    for (;;) {
      Atomics.wait(shared, 0, last, 100)
      const now = Atomics.load(shared, 0)
      if (now <= max) return true
      if (now !== last) {
        last = now
        since = performance.now()
      } else if (performance.now() - since >= STUCK_MS) {
        this.#fail(`the DPI thread inspected nothing for ${STUCK_MS / 1000} s`)
        return false
      }
    }
  }

  #message(m: Record<string, unknown>): void {
    if (m.type === 'free') {
      const spare = m.data as Uint8Array
      if (spare.byteLength === BATCH_BYTES && this.#spare.length < SPARE_BATCHES) this.#spare.push(spare)
    } else if (m.type === 'events') {
      for (const record of m.records as Record<string, unknown>[]) this.#event?.(record)
    } else if (m.type === 'counters') {
      if (m.counters) this.#counters = m.counters as Record<string, unknown>
      if (m.id !== undefined) this.#settle(m.id as number)
    } else if (m.type === 'prepared') {
      this.#settle(m.id as number, m.error as string | undefined)
    }
  }

  #settle(id: number, error?: string): void {
    const done = this.#pending.get(id)
    this.#pending.delete(id)
    if (this.#pending.size === 0) this.#worker.unref()
    done?.(error)
  }

  #fail(reason: string): void {
    if (this.#failed !== undefined) return
    this.#failed = reason
    void this.#worker.terminate()
    for (const done of this.#pending.values()) done(reason)
    this.#pending.clear()
  }

  /** Posts a message that the thread answers with `id` once it has done what came before it. */
  #ask(message: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<string | undefined> {
    this.#flush()
    if (this.#failed !== undefined) return Promise.resolve(this.#failed)
    const id = ++this.#nextId
    return new Promise((resolve) => {
      if (this.#pending.size === 0) this.#worker.ref()
      this.#pending.set(id, resolve)
      this.#worker.postMessage({ ...message, id }, transfer)
    })
  }

  /**
   * Has the thread parse `compiled` (a slice at a time, between frames); the returned swap puts it
   * in force after the frames inspected so far, keeping flow state.
   */
  async prepareReplace(compiled: CompiledRules): Promise<() => void> {
    // The id #ask gives this message (it numbers them synchronously; others may follow meanwhile).
    const id = this.#nextId + 1
    const error = await this.#ask({ type: 'prepare', compiled }, transferables(compiled.tables))
    if (error !== undefined) throw new Error(error)
    return () => {
      this.#flush()
      if (this.#failed === undefined) this.#worker.postMessage({ type: 'commit', id })
    }
  }

  /** Resolves when the thread has inspected every frame so far, delivered their alerts and its counters. */
  async settled(): Promise<void> {
    await this.#ask({ type: 'sync' })
  }

  counters(): Record<string, unknown> {
    return {
      ...this.#counters,
      inline: false,
      thread: {
        inFlightBytes: Atomics.load(this.#shared, 0),
        waits: this.#waits,
        unwatched: this.#unwatched,
        ...(this.#failed !== undefined && { failed: this.#failed }),
      },
    }
  }

  close(): void {
    this.#failed ??= 'closed'
    void this.#worker.terminate()
  }
}
