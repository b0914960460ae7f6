/**
 * Loading NIC services from their rules files (the I/O around the pure services): files are read,
 * checked against the limits and compiled in a worker thread (compile-worker.ts), so neither a
 * hostile file nor a big one stalls the IOhyp's event loop or takes its heap; what the service's
 * own thread then does (parse the DPI rules again, a slice at a time, around the automata the
 * worker built; compile the firewall's parsed rules) is bounded by those limits.
 */
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import { VrioError } from '../../errors.ts'
import { DpiService } from '../dpi/engine.ts'
import { type ParsedRules, RuleParser } from '../dpi/rules.ts'
import { Firewall } from '../firewall/firewall.ts'
import type { NetServiceKind, ReplaceableNetService } from './chain.ts'
import { type CompiledRules, type CompileRequest, limitsOf } from './compile.ts'
import { DpiThread } from './dpi-thread.ts'

const WORKER = new URL(
  import.meta.url.endsWith('.ts') ? './compile-worker.ts' : './compile-worker.js',
  import.meta.url,
)

/** A compile taking longer than this is stopped and refused (the CLI waits longer: 10 min). */
const COMPILE_TIMEOUT_MS = 300_000

/** One compile at a time: each may use up to LoadLimits.workerHeapMb of memory. */
let queue: Promise<unknown> = Promise.resolve()

/** Checks and compiles rules files in a worker thread; throws the VrioError that refused them. */
export function compileInWorker(request: CompileRequest): Promise<CompiledRules> {
  const run = queue.then(() => runWorker(request))
  queue = run.catch(() => {})
  return run
}

function runWorker(request: CompileRequest): Promise<CompiledRules> {
  const limits = limitsOf(request.limits)
  const what = `${request.kind} rules ${request.files.join(', ')}`
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER, {
      workerData: request,
      resourceLimits: { maxOldGenerationSizeMb: limits.workerHeapMb },
    })
    let settled = false
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      void worker.terminate()
      reject(
        new VrioError('timeout', `${what}: compiling took more than ${COMPILE_TIMEOUT_MS / 1000} s`, {
          field: request.kind,
        }),
      )
    }, COMPILE_TIMEOUT_MS)
    worker.once('exit', () => clearTimeout(timer))
    worker.once('message', (m: { ok: boolean; result?: CompiledRules; error?: unknown }) => {
      if (settled) return
      settled = true
      if (m.ok) resolve(m.result as CompiledRules)
      else reject(VrioError.fromJSON(m.error))
    })
    worker.once('error', (error: Error & { code?: string }) => {
      if (settled) return
      settled = true
      reject(
        error.code === 'ERR_WORKER_OUT_OF_MEMORY'
          ? new VrioError(
              'rules-too-large',
              `${what}: compiling needs more than the limit of ${limits.workerHeapMb} MiB`,
              { field: request.kind, limit: 'workerHeapMb' },
            )
          : new VrioError('invalid-rules', `${what}: compiling failed: ${error.message}`, {
              field: request.kind,
            }),
      )
    })
    worker.once('exit', (code) => {
      if (settled) return
      settled = true
      reject(
        new VrioError('invalid-rules', `${what}: the compiler exited (${code})`, { field: request.kind }),
      )
    })
  })
}

/** Time spent parsing before letting the event loop run. */
const SLICE_MS = 4

/** The DPI rules of `compiled` parsed again here, yielding to the event loop every few ms. */
export async function parseSliced(compiled: CompiledRules): Promise<ParsedRules> {
  const parser = new RuleParser(compiled.parse)
  let t = performance.now()
  for (const { path, text } of compiled.texts) {
    for (const _ of parser.steps(text, path)) {
      if (performance.now() - t < SLICE_MS) continue
      await new Promise((resolve) => setImmediate(resolve))
      t = performance.now()
    }
  }
  return parser.result()
}

/**
 * Where an alert-only DPI runs: on a thread of its own (dpi-thread.ts; the default where the
 * process may use more than one CPU), or on the NIC's thread after forwarding. Rules that drop
 * always run on the NIC's thread.
 */
export interface DpiPlacement {
  thread: boolean
  /** Bytes the thread may have to do before the NIC's thread waits (default: MAX_IN_FLIGHT). */
  maxInFlight?: number
}

/** A new service from a compiled set. */
export async function buildNetService(
  kind: NetServiceKind,
  compiled: CompiledRules,
  nicName: string,
  placement: DpiPlacement = { thread: availableParallelism() > 1 },
): Promise<ReplaceableNetService> {
  if (kind === 'firewall') return new Firewall(compiled.firewall!)
  if (placement.thread && compiled.drops === false)
    return DpiThread.start(compiled, nicName, placement.maxInFlight)
  const parsed = await parseSliced(compiled)
  return new DpiService(parsed, { strict: false, interfaceName: nicName }, compiled.tables)
}

/**
 * Prepares swapping a compiled set into a running service (keeping its flow state): returns the
 * swap, which is synchronous, does not throw, and returns the service now in force. That is
 * `service` itself, except for a DPI on its own thread given rules that drop: those run on the
 * NIC's thread, in a new DpiService (its flow state starts afresh); the chain closes the thread
 * when the new service takes its place.
 */
export async function prepareReplace(
  kind: NetServiceKind,
  service: ReplaceableNetService,
  compiled: CompiledRules,
  nicName: string,
): Promise<() => ReplaceableNetService> {
  if (kind === 'firewall') {
    const set = compiled.firewall!
    return () => {
      ;(service as Firewall).replace(set)
      return service
    }
  }
  if (service instanceof DpiThread) {
    if (compiled.drops !== false) {
      const inline = await buildNetService(kind, compiled, nicName, { thread: false })
      return () => inline
    }
    const swap = await service.prepareReplace(compiled)
    return () => {
      swap()
      return service
    }
  }
  const parsed = await parseSliced(compiled)
  return () => {
    ;(service as DpiService).replaceParsed(parsed, compiled.tables)
    return service
  }
}
