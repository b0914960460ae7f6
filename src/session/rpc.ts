import { isVrioError, VrioError } from '../errors.ts'
import { MAX_CONTROL_JSON, type Session } from './session.ts'

/** How much of a peer's method name an error message repeats. */
const MAX_METHOD_SHOWN = 64

/**
 * Request/response on top of a session's control messages: `call(method, params)` resolves with
 * the peer's result or rejects with its error (a VrioError with the peer's code). Messages:
 *   {"id": n, "method": "...", "params": {...}}      request
 *   {"id": n, "result": ...}                         success
 *   {"id": n, "error": {"code", "message", ...}}     failure
 * Control messages are authenticated and ordered by the session; this layer adds ids, timeouts
 * and the mapping of errors.
 */
export type RpcHandler = (params: unknown) => unknown | Promise<unknown>

interface Pending {
  resolve(value: unknown): void
  reject(error: Error): void
  timer: NodeJS.Timeout
}

export class Rpc {
  private session: Session | undefined
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  private readonly handlers = new Map<string, RpcHandler>()
  private readonly timeoutMs: number

  constructor(options: { timeoutMs?: number } = {}) {
    this.timeoutMs = options.timeoutMs ?? 10_000
  }

  /** Serves `method` for the peer. */
  handle(method: string, handler: RpcHandler): this {
    this.handlers.set(method, handler)
    return this
  }

  /** Uses `session` from now on (or none); calls in flight on a previous session fail. */
  attach(session: Session | undefined): void {
    if (this.session === session) return
    this.session = session
    this.failAll(new VrioError('not-connected', 'the channel to the peer closed before it answered'))
  }

  call(method: string, params: unknown, timeoutMs = this.timeoutMs): Promise<unknown> {
    const s = this.session
    if (!s?.authenticated)
      return Promise.reject(new VrioError('not-connected', 'no authenticated channel to the peer'))
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new VrioError('timeout', `the peer did not answer ${method} within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, { resolve, reject, timer })
      if (!s.sendControl({ id, method, params })) {
        clearTimeout(timer)
        this.pending.delete(id)
        reject(new VrioError('unavailable', 'the channel cannot take another control message now'))
      }
    })
  }

  /** Feed every control message of the attached session here. */
  onControl(message: unknown): void {
    if (typeof message !== 'object' || message === null) return
    const m = message as {
      id?: unknown
      method?: unknown
      params?: unknown
      result?: unknown
      error?: unknown
    }
    if (typeof m.id !== 'number') return
    if (typeof m.method === 'string') {
      void this.serve(m.id, m.method, m.params)
      return
    }
    const p = this.pending.get(m.id)
    if (!p) return
    this.pending.delete(m.id)
    clearTimeout(p.timer)
    if (m.error !== undefined) p.reject(VrioError.fromJSON(m.error))
    else p.resolve(m.result)
  }

  private async serve(id: number, method: string, params: unknown): Promise<void> {
    const session = this.session
    const handler = this.handlers.get(method)
    let reply: Record<string, unknown>
    try {
      if (!handler)
        throw new VrioError(
          'unknown-method',
          `no such control method: ${JSON.stringify(method.slice(0, MAX_METHOD_SHOWN))}${method.length > MAX_METHOD_SHOWN ? '…' : ''}`,
        )
      reply = { id, result: (await handler(params)) ?? null }
    } catch (error) {
      const e = isVrioError(error)
        ? error
        : new VrioError('internal', 'the peer failed to handle the request')
      reply = { id, error: e.toJSON() }
    }
    // An answer that cannot travel (an error repeating a huge peer-supplied value) is replaced by
    // one that can: a peer's request never makes sendControl throw here, outside any caller.
    if (Buffer.byteLength(JSON.stringify(reply)) > MAX_CONTROL_JSON)
      reply = { id, error: new VrioError('internal', 'the answer is too large to send').toJSON() }
    if (session?.authenticated && session === this.session) session.sendControl(reply)
  }

  private failAll(error: Error): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer)
      p.reject(error)
    }
    this.pending.clear()
  }
}
