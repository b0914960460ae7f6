/**
 * Client side of the control API, used by the CLI. Every failure is a VrioError: the daemon's own
 * error rebuilt from its `{ "error": ... }` body, or one of 'daemon-not-running',
 * 'permission-denied', 'timeout', 'control-connection-failed', 'bad-response'.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { isVrioError, VrioError } from '../errors.ts'

export interface ControlClientOptions {
  /** Path of the daemon's unix socket. */
  path: string
  /** Deadline for the whole exchange (connect, send, answer). Default 10 000 ms. */
  timeoutMs?: number
}

const DEFAULT_CONTROL_TIMEOUT_MS = 10_000

export class ControlClient {
  readonly path: string
  readonly timeoutMs: number

  constructor(options: ControlClientOptions) {
    this.path = options.path
    this.timeoutMs = options.timeoutMs ?? DEFAULT_CONTROL_TIMEOUT_MS
  }

  // The type parameter is the caller's claim about the route's answer (see api.ts); it is not checked.
  get<T = unknown>(path: string): Promise<T> {
    return this.request<T>('GET', path)
  }

  post<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.request<T>('POST', path, body)
  }

  delete<T = unknown>(path: string): Promise<T> {
    return this.request<T>('DELETE', path)
  }

  /**
   * Resolves with the parsed JSON answer, undefined for 204 No Content, or the text of a
   * `text/plain` success answer (`GET /metrics`: the Prometheus exposition).
   */
  request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), 'utf8')
    return new Promise<T>((resolve, reject) => {
      let settled = false
      const settle = (error: unknown, value?: unknown) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (error === undefined) resolve(value as T)
        else reject(error)
      }
      const req = httpRequest({
        socketPath: this.path,
        method,
        path,
        // No connection reuse: a CLI process must be free to exit as soon as it has its answer.
        agent: false,
        headers: {
          accept: 'application/json',
          ...(payload && { 'content-type': 'application/json', 'content-length': payload.length }),
        },
      })
      const timer = setTimeout(() => {
        const error = new VrioError(
          'timeout',
          `the vrio daemon on ${this.path} did not answer within ${this.timeoutMs} ms`,
          { path: this.path, timeoutMs: this.timeoutMs },
        )
        settle(error)
        req.destroy(error)
      }, this.timeoutMs)
      req.once('error', (error) => settle(this.connectionError(error)))
      req.once('response', (res) => {
        readAll(res).then(
          (text) => {
            try {
              settle(undefined, this.interpret(res.statusCode ?? 0, res.headers['content-type'], text))
            } catch (error) {
              settle(error)
            }
          },
          (error: unknown) => settle(this.connectionError(error)),
        )
      })
      req.end(payload)
    })
  }

  private interpret(status: number, contentType: string | undefined, text: string): unknown {
    if (status === 204 || (text === '' && status >= 200 && status < 300)) return undefined
    if (status >= 200 && status < 300 && contentType?.toLowerCase().startsWith('text/plain')) return text
    let value: unknown
    try {
      if (!contentType?.toLowerCase().startsWith('application/json')) throw new Error('not JSON')
      value = JSON.parse(text)
    } catch {
      throw new VrioError('bad-response', `unexpected answer from ${this.path}: HTTP ${status}, not JSON`, {
        path: this.path,
        status,
      })
    }
    if (status >= 200 && status < 300) return value
    const error = (value as { error?: unknown } | null)?.error
    if (typeof error === 'object' && error !== null && typeof (error as { code?: unknown }).code === 'string')
      throw VrioError.fromJSON(error)
    throw new VrioError('bad-response', `unexpected answer from ${this.path}: HTTP ${status}`, {
      path: this.path,
      status,
    })
  }

  private connectionError(error: unknown): VrioError {
    if (isVrioError(error)) return error
    const code = (error as NodeJS.ErrnoException).code
    const path = this.path
    switch (code) {
      case 'ENOENT':
      case 'ECONNREFUSED':
        return new VrioError(
          'daemon-not-running',
          `no vrio daemon is listening on ${path}`,
          { path, hint: 'start the daemon, or point --control at its socket' },
          { cause: error },
        )
      case 'EACCES':
      case 'EPERM':
        return new VrioError(
          'permission-denied',
          `permission denied on control socket ${path}`,
          { path, hint: "run as root or as the daemon's user (the socket is mode 0600)" },
          { cause: error },
        )
      default:
        return new VrioError(
          'control-connection-failed',
          `cannot talk to the vrio daemon on ${path}: ${(error as Error).message}`,
          { path },
          { cause: error },
        )
    }
  }
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    res.on('data', (chunk: Buffer) => chunks.push(chunk))
    res.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    res.once('error', reject)
    res.once('close', () => {
      if (!res.complete) reject(new Error('the daemon closed the connection mid-answer'))
    })
  })
}
