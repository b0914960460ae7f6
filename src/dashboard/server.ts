/**
 * `vrio dashboard`: polls a daemon's /metrics once a second, keeps 10 minutes of every figure
 * (history.ts), and serves a read-only page with live plots. Routes (GET and HEAD only):
 *   /                  the page          /app.js, /app.css   its script and style
 *   /uplot/*.js|css    uPlot's built files, read from node_modules (no CDN, no build step)
 *   /api/figures       the latest figures, plot groups, last scrape error
 *   /api/history       aligned history; `?after=T` (ms) only the points later than T
 * Bound to loopback, it answers only requests whose Host names a loopback address or localhost
 * (a page elsewhere cannot read it through DNS rebinding).
 */
import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { parseListenAddress } from '../daemon/listen-address.ts'
import { VrioError } from '../errors.ts'
import type { Figures } from './figures.ts'
import { History } from './history.ts'
import { PAGE_CSS, PAGE_HTML, PAGE_JS } from './page.ts'
import { historyPoint, PLOT_GROUPS } from './plots.ts'
import { Poller } from './scrape.ts'

export const DEFAULT_DASHBOARD_PORT = 7171
export const DEFAULT_DASHBOARD_HOST = '127.0.0.1'

const UPLOT_FILES: Readonly<Record<string, string>> = {
  '/uplot/uPlot.iife.min.js': 'uplot/dist/uPlot.iife.min.js',
  '/uplot/uPlot.min.css': 'uplot/dist/uPlot.min.css',
}

/** uPlot's built files, read once at start: a missing dependency fails `vrio dashboard` at once. */
function loadUplot(): Map<string, Buffer> {
  const require = createRequire(import.meta.url)
  const files = new Map<string, Buffer>()
  for (const [route, module] of Object.entries(UPLOT_FILES)) {
    try {
      files.set(route, readFileSync(require.resolve(module)))
    } catch (error) {
      throw new VrioError(
        'missing-dependency',
        `cannot load ${module}: ${(error as Error).message}`,
        { hint: 'reinstall vrio with its npm dependencies (npm ci)' },
        { cause: error },
      )
    }
  }
  return files
}

export interface DashboardOptions {
  socketPath: string
  host?: string
  port?: number
  intervalMs?: number
  historyPoints?: number
  onError?: (error: unknown) => void
}

export interface Dashboard {
  readonly url: string
  readonly server: Server
  readonly history: History
  close(): Promise<void>
}

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]', '::1'])

function isLoopbackBind(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}

/** The host part of a Host header (`name:port`, `[v6]:port`), lowercased. */
export function hostName(header: string): string {
  const h = header.trim().toLowerCase()
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1)
  const colon = h.lastIndexOf(':')
  return colon === -1 ? h : h.slice(0, colon)
}

export async function startDashboard(o: DashboardOptions): Promise<Dashboard> {
  const host = o.host ?? DEFAULT_DASHBOARD_HOST
  const port = o.port ?? DEFAULT_DASHBOARD_PORT
  const uplot = loadUplot()
  const history = new History(o.historyPoints)
  let latest: Figures | undefined
  let lastError: string | undefined
  const poller = new Poller({
    socketPath: o.socketPath,
    intervalMs: o.intervalMs ?? 1000,
    onFigures: (f) => {
      latest = f
      lastError = undefined
      if (f.seconds !== null) history.push(f.at, historyPoint(f))
    },
    onError: (error) => {
      lastError = error instanceof Error ? error.message : String(error)
      o.onError?.(error)
    },
  })
  // The first scrape before listening: a wrong socket is an error at start, not a blank page.
  await poller.start()

  const loopbackOnly = isLoopbackBind(host)
  const server = createServer((req, res) => {
    try {
      handle(req, res)
    } catch (error) {
      o.onError?.(error)
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n')
      else res.destroy()
    }
  })
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    if (loopbackOnly && !LOOPBACK_HOSTS.has(hostName(req.headers.host ?? ''))) {
      send(res, 421, 'text/plain; charset=utf-8', 'this dashboard answers to localhost only\n')
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD')
      send(res, 405, 'text/plain; charset=utf-8', 'read-only: GET and HEAD only\n')
      return
    }
    const url = new URL(req.url ?? '/', 'http://dashboard')
    const file = uplot.get(url.pathname)
    if (file) {
      send(res, 200, url.pathname.endsWith('.css') ? 'text/css' : 'text/javascript', file, true)
      return
    }
    switch (url.pathname) {
      case '/':
        send(res, 200, 'text/html; charset=utf-8', PAGE_HTML)
        return
      case '/app.js':
        send(res, 200, 'text/javascript; charset=utf-8', PAGE_JS)
        return
      case '/app.css':
        send(res, 200, 'text/css; charset=utf-8', PAGE_CSS)
        return
      case '/api/figures':
        sendJson(res, {
          source: o.socketPath,
          groups: PLOT_GROUPS,
          figures: latest ?? null,
          error: lastError ?? null,
        })
        return
      case '/api/history': {
        const after = url.searchParams.get('after')
        const t = after === null ? undefined : Number(after)
        if (t !== undefined && !Number.isFinite(t)) {
          send(res, 400, 'text/plain; charset=utf-8', 'after: a time in ms\n')
          return
        }
        sendJson(res, history.points(t))
        return
      }
      default:
        send(res, 404, 'text/plain; charset=utf-8', 'not found\n')
    }
  }

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => {
        server.off('error', reject)
        resolve()
      })
    })
  } catch (error) {
    poller.stop()
    const code = (error as NodeJS.ErrnoException).code
    throw new VrioError(
      code === 'EADDRINUSE' ? 'address-in-use' : 'listen-failed',
      code === 'EADDRINUSE'
        ? `cannot listen on ${host}:${port}: the address is in use`
        : `cannot listen on ${host}:${port}: ${(error as Error).message}`,
      { host, port, hint: code === 'EADDRINUSE' ? 'choose another with --listen ADDR:PORT' : undefined },
      { cause: error },
    )
  }
  const address = server.address() as AddressInfo
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return {
    url: `http://${shownHost}:${address.port}/`,
    server,
    history,
    close: () =>
      new Promise<void>((resolve) => {
        poller.stop()
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer, cache = false): void {
  res.statusCode = status
  res.setHeader('content-type', type)
  res.setHeader('x-content-type-options', 'nosniff')
  res.setHeader('content-security-policy', "default-src 'self'; style-src 'self' 'unsafe-inline'")
  res.setHeader('cache-control', cache ? 'max-age=3600' : 'no-store')
  res.end(res.req.method === 'HEAD' ? undefined : body)
}

function sendJson(res: ServerResponse, value: unknown): void {
  send(res, 200, 'application/json', JSON.stringify(value))
}

/** `ADDR:PORT` (`[v6]:PORT` for IPv6) as given to --listen; a VrioError 'invalid-argument' otherwise. */
export function parseListen(text: string): { host: string; port: number } {
  return parseListenAddress(text, '--listen', DEFAULT_DASHBOARD_PORT)
}
