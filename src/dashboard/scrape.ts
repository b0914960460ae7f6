/**
 * Reading a daemon's `GET /metrics` over its control socket, and polling it: each poll yields the
 * figures over the interval since the previous one (figures.ts). The only I/O of the dashboard's
 * data side.
 */
import { request as httpRequest } from 'node:http'
import { isVrioError, VrioError } from '../errors.ts'
import { parseExposition } from './exposition.ts'
import { computeFigures, type Figures, type Scrape } from './figures.ts'

export const METRICS_PATH = '/metrics'

/** The exposition text a daemon serves on `socketPath`; failures are VrioErrors like the control client's. */
export function fetchMetricsText(socketPath: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      socketPath,
      method: 'GET',
      path: METRICS_PATH,
      agent: false,
      headers: { accept: 'text/plain' },
      timeout: timeoutMs,
    })
    req.once('timeout', () =>
      req.destroy(
        new VrioError('timeout', `the vrio daemon on ${socketPath} did not answer within ${timeoutMs} ms`, {
          path: socketPath,
          timeoutMs,
        }),
      ),
    )
    req.once('error', (error) => reject(connectionError(socketPath, error)))
    req.once('response', (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.once('error', (error) => reject(connectionError(socketPath, error)))
      res.once('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        if (res.statusCode === 200) resolve(text)
        else
          reject(
            new VrioError(
              'bad-response',
              `the vrio daemon on ${socketPath} answered HTTP ${res.statusCode} to GET ${METRICS_PATH}`,
              {
                path: socketPath,
                status: res.statusCode,
                hint: res.statusCode === 404 ? 'this daemon is too old to serve metrics' : undefined,
              },
            ),
          )
      })
    })
    req.end()
  })
}

function connectionError(path: string, error: unknown): VrioError {
  if (isVrioError(error)) return error
  const code = (error as NodeJS.ErrnoException).code
  if (code === 'ENOENT' || code === 'ECONNREFUSED')
    return new VrioError(
      'daemon-not-running',
      `no vrio daemon is listening on ${path}`,
      { path, hint: 'start the daemon, or point --control at its socket' },
      { cause: error },
    )
  if (code === 'EACCES' || code === 'EPERM')
    return new VrioError(
      'permission-denied',
      `permission denied on control socket ${path}`,
      { path, hint: "run as root or as the daemon's user (the socket is mode 0600)" },
      { cause: error },
    )
  return new VrioError(
    'control-connection-failed',
    `cannot talk to the vrio daemon on ${path}: ${(error as Error).message}`,
    { path },
    { cause: error },
  )
}

/** One scrape of `socketPath`, parsed, stamped with the time its answer arrived. */
export async function scrape(socketPath: string, now: () => number = Date.now): Promise<Scrape> {
  const text = await fetchMetricsText(socketPath)
  return { at: now(), exposition: parseExposition(text) }
}

export interface PollerOptions {
  socketPath: string
  intervalMs: number
  /** Called with the figures of every scrape after the first good one. */
  onFigures: (figures: Figures) => void
  /** Called when a scrape fails; polling goes on (the daemon may be restarting). */
  onError?: (error: unknown) => void
}

/** Scrapes every `intervalMs` (the next one starts when the last has ended, at the interval's tick). */
export class Poller {
  private readonly o: PollerOptions
  private previous: Scrape | undefined
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  /** The last error, cleared by a good scrape. */
  lastError: unknown

  constructor(options: PollerOptions) {
    this.o = options
  }

  /** Takes the first scrape now (rejects if it fails: the operator should hear at once), then polls. */
  async start(): Promise<void> {
    this.previous = await scrape(this.o.socketPath)
    this.o.onFigures(computeFigures(undefined, this.previous))
    this.schedule()
  }

  private schedule(): void {
    if (this.stopped) return
    const now = Date.now()
    const next = Math.ceil((now + 1) / this.o.intervalMs) * this.o.intervalMs
    this.timer = setTimeout(() => void this.tick(), next - now)
  }

  private async tick(): Promise<void> {
    try {
      const cur = await scrape(this.o.socketPath)
      if (this.stopped) return
      const figures = computeFigures(this.previous, cur)
      this.previous = cur
      this.lastError = undefined
      this.o.onFigures(figures)
    } catch (error) {
      this.lastError = error
      this.o.onError?.(error)
    }
    this.schedule()
  }

  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
  }
}
