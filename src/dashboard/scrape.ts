/**
 * Reading a daemon's `GET /metrics` over its control socket, and polling it: each poll yields the
 * figures over the interval since the previous one (figures.ts). The only I/O of the dashboard's
 * data side.
 */
import { ControlClient } from '../control/control-client.ts'
import { isVrioError, VrioError } from '../errors.ts'
import { parseExposition } from './exposition.ts'
import { computeFigures, type Figures, type Scrape } from './figures.ts'

const METRICS_PATH = '/metrics'

/** The exposition text a daemon serves on `socketPath`; failures are the control client's VrioErrors. */
async function fetchMetricsText(socketPath: string, timeoutMs = 5000): Promise<string> {
  const badResponse = (status: number, hint?: string) =>
    new VrioError(
      'bad-response',
      `the vrio daemon on ${socketPath} answered HTTP ${status} to GET ${METRICS_PATH}`,
      { path: socketPath, status, hint },
    )
  const text = await new ControlClient({ path: socketPath, timeoutMs })
    .get(METRICS_PATH)
    .catch((error: unknown) => {
      if (isVrioError(error, 'unknown-route'))
        throw badResponse(404, 'this daemon is too old to serve metrics')
      throw error
    })
  if (typeof text !== 'string') throw badResponse(200)
  return text
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
