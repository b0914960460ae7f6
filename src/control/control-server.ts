import { listenUnixSocket } from '../io/unix-socket.ts'
/**
 * The daemons' control API: HTTP/JSON over a unix socket. The socket file's mode (0600, in a 0700
 * directory when we create it) is the access control: whoever can connect may add guests and hand
 * over their keys, so nothing here listens on TCP.
 *
 * Answers: a handler's return value is sent as JSON with 200, or 204 with no body when it returns
 * undefined. Failures are `{ "error": { code, message, ...details } }` with the status from
 * `httpStatusForCode`.
 */
import { channel } from 'node:diagnostics_channel'
import { rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { httpStatusForCode, isVrioError, VrioError } from '../errors.ts'

export interface ControlRequest {
  readonly method: string
  /** Path without the query string, as sent (not percent-decoded). */
  readonly path: string
  /** `:name` segments of the route pattern, percent-decoded. */
  readonly params: Readonly<Record<string, string>>
  /** Query string parameters; for a repeated name the last one wins. */
  readonly query: Readonly<Record<string, string>>
  /** Parsed JSON body, undefined when the request had none. */
  readonly body: unknown
}

export type ControlHandler = (request: ControlRequest) => unknown

/** A handler's answer that is not JSON (e.g. the Prometheus exposition): sent with 200 as it is. */
export class RawBody {
  readonly contentType: string
  readonly text: string
  constructor(contentType: string, text: string) {
    this.contentType = contentType
    this.text = text
  }
}

export interface ControlServerOptions {
  /** Path of the unix socket. */
  path: string
  /** Largest accepted request body; larger ones get 413 'request-too-large'. Default 1 MiB. */
  maxBodyBytes?: number
  /**
   * Sees every failure answered with a 5xx status (the client only gets a generic message for
   * those). Also published on the diagnostics channel `vrio:control:error`. Request bodies are
   * never passed here: they may hold keys.
   */
  onError?: (error: unknown, request: { method: string; path: string }) => void
  /** How long close() lets requests in flight finish before cutting them off. Default 2000 ms. */
  closeGraceMs?: number
}

const DEFAULT_MAX_BODY_BYTES = 1024 * 1024

const errorChannel = channel('vrio:control:error')

// Error codes map to HTTP statuses through the catalogue (src/errors.ts); the client maps back by
// code, not status.
export { httpStatusForCode } from '../errors.ts'

interface Route {
  readonly method: string
  readonly pattern: string
  readonly segments: readonly string[]
  readonly handler: ControlHandler
}

type Match = { route: Route; params: Record<string, string> }

export class ControlServer {
  readonly path: string
  readonly maxBodyBytes: number
  private readonly onError: ControlServerOptions['onError']
  private readonly closeGraceMs: number
  private readonly routes: Route[] = []
  private server: Server | undefined

  constructor(options: ControlServerOptions) {
    this.path = options.path
    this.maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES
    this.onError = options.onError
    this.closeGraceMs = options.closeGraceMs ?? 2000
  }

  /** Registers `handler` for `method` on `pattern`, e.g. `route('DELETE', '/v1/guests/:mac', h)`. */
  route(method: string, pattern: string, handler: ControlHandler): this {
    const upper = method.toUpperCase()
    if (!pattern.startsWith('/')) throw new TypeError(`route pattern must start with '/': ${pattern}`)
    if (this.routes.some((r) => r.method === upper && r.pattern === pattern))
      throw new TypeError(`route ${upper} ${pattern} is already registered`)
    this.routes.push({ method: upper, pattern, segments: pattern.split('/'), handler })
    return this
  }

  get listening(): boolean {
    return this.server?.listening ?? false
  }

  /**
   * Creates the socket's directory (0700) if missing, replaces a stale socket left by a dead
   * daemon, refuses with 'control-socket-in-use' when a live process answers on the path, then
   * listens with the socket at mode 0600.
   */
  async listen(): Promise<void> {
    if (this.server)
      throw new VrioError('invalid-state', `control server on ${this.path} is already listening`)
    const server = createServer((req, res) => {
      this.handle(req, res).catch((error: unknown) =>
        this.report(error, { method: req.method ?? '', path: req.url ?? '' }),
      )
    })
    await listenUnixSocket(server, this.path, 'control', '(is a vrio daemon already running?)')
    server.on('error', (error) => this.report(error))
    this.server = server
  }

  /** Stops listening, lets requests in flight finish (within closeGraceMs) and removes the socket. */
  async close(): Promise<void> {
    const server = this.server
    if (!server) return
    this.server = undefined
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => server.closeAllConnections(), this.closeGraceMs)
      timer.unref()
      server.close(() => {
        clearTimeout(timer)
        resolve()
      })
      server.closeIdleConnections()
    })
    await rm(this.path, { force: true })
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET'
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const path = q === -1 ? url : url.slice(0, q)
    const context = { method, path }
    try {
      const match = this.match(method, path)
      const body = await this.readBody(req)
      const result = await match.route.handler({
        method,
        path,
        params: match.params,
        query: Object.fromEntries(new URLSearchParams(q === -1 ? '' : url.slice(q + 1))),
        body,
      })
      if (result === undefined) {
        res.writeHead(204).end()
        return
      }
      if (result instanceof RawBody) {
        send(res, 200, result.text, {}, result.contentType)
        return
      }
      const text = JSON.stringify(result)
      if (text === undefined) throw new TypeError(`handler for ${method} ${path} returned a non-JSON value`)
      send(res, 200, text)
    } catch (error) {
      this.sendError(res, error, context)
    }
  }

  private match(method: string, path: string): Match {
    const segments = path.length > 1 && path.endsWith('/') ? path.slice(0, -1).split('/') : path.split('/')
    const allowed: string[] = []
    for (const route of this.routes) {
      const params = matchSegments(route.segments, segments)
      if (!params) continue
      if (route.method === method) return { route, params }
      allowed.push(route.method)
    }
    if (allowed.length > 0)
      throw new VrioError('method-not-allowed', `method ${method} is not allowed on ${path}`, { allowed })
    throw new VrioError('unknown-route', `no such control route: ${method} ${path}`)
  }

  private async readBody(req: IncomingMessage): Promise<unknown> {
    const limit = this.maxBodyBytes
    const tooLarge = () =>
      new VrioError('request-too-large', `request body exceeds the ${limit}-byte limit`, { limit })
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > limit) throw tooLarge()
    const raw = await readAtMost(req, limit, tooLarge)
    if (raw.length === 0) return undefined
    const type = req.headers['content-type']
    if (type !== undefined && type.split(';')[0].trim().toLowerCase() !== 'application/json')
      throw new VrioError('unsupported-media-type', `request body must be application/json, not ${type}`)
    try {
      return JSON.parse(raw.toString('utf8'))
    } catch {
      // The parser's message quotes the body, which may hold a key: say only that it is malformed.
      throw new VrioError('invalid-json', 'request body is not valid JSON')
    }
  }

  private sendError(res: ServerResponse, error: unknown, request: { method: string; path: string }): void {
    if (res.destroyed || isVrioError(error, 'request-aborted')) return
    let status = 500
    let text: string | undefined
    if (error instanceof VrioError) {
      status = httpStatusForCode(error.code)
      text = stringifyOrUndefined({ error: error.toJSON() })
      // Details that do not serialise must not turn a clean error into a broken answer.
      text ??= JSON.stringify({ error: { code: error.code, message: error.message } })
    }
    // A VrioError is an outcome the catalogue names; anything else (and `internal`) is a bug.
    if (status === 500) this.report(error, request)
    if (text === undefined)
      text = JSON.stringify({
        error: { code: 'internal', message: 'internal error in the vrio daemon (details are in its log)' },
      })
    const headers: Record<string, string> = {}
    if (isVrioError(error, 'method-not-allowed') && Array.isArray(error.details.allowed))
      headers.allow = error.details.allowed.join(', ')
    // A too-large body was not read to the end; the rest is discarded so the answer still arrives.
    if (!res.req.complete) res.req.resume()
    send(res, status, text, headers)
  }

  private report(error: unknown, request?: { method: string; path: string }): void {
    if (errorChannel.hasSubscribers) errorChannel.publish({ error, request })
    try {
      this.onError?.(error, request ?? { method: '', path: '' })
    } catch {
      // A failing log hook must not take the control server down with it.
    }
  }
}

function matchSegments(
  pattern: readonly string[],
  segments: readonly string[],
): Record<string, string> | undefined {
  if (pattern.length !== segments.length) return undefined
  const params: Record<string, string> = {}
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]
    const s = segments[i]
    if (p.startsWith(':')) {
      if (s === '') return undefined
      try {
        params[p.slice(1)] = decodeURIComponent(s)
      } catch {
        throw new VrioError(
          'invalid-argument',
          `malformed percent-encoding in path segment ${JSON.stringify(s)}`,
        )
      }
    } else if (p !== s) return undefined
  }
  return params
}

// Event-based rather than `for await`: leaving a for-await loop early destroys the request and
// with it the socket the 413 answer must go out on.
function readAtMost(req: IncomingMessage, limit: number, tooLarge: () => VrioError): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const finish = (error?: Error) => {
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onAbort)
      req.off('close', onAbort)
      if (error) reject(error)
      else resolve(Buffer.concat(chunks, size))
    }
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) finish(tooLarge())
      else chunks.push(chunk)
    }
    const onEnd = () => finish()
    const onAbort = () =>
      finish(new VrioError('request-aborted', 'the client went away before sending its whole request'))
    req.on('data', onData)
    req.once('end', onEnd)
    req.once('error', onAbort)
    req.once('close', onAbort)
  })
}

function send(
  res: ServerResponse,
  status: number,
  text: string,
  headers: Record<string, string> = {},
  contentType = 'application/json; charset=utf-8',
): void {
  if (res.headersSent) return
  res.writeHead(status, {
    ...headers,
    'content-type': contentType,
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

function stringifyOrUndefined(value: unknown): string | undefined {
  try {
    return JSON.stringify(value)
  } catch {
    return undefined
  }
}
