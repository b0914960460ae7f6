/**
 * A Prometheus-like scraper for benches: GET /metrics on daemons' control sockets every interval,
 * from a child process, so it keeps its pace while the bench blocks on a synchronous tool run. Like
 * Prometheus, it keeps its connection to each daemon open between scrapes (HTTP keep-alive).
 * startScraper resolves once the first scrape of every socket has answered, so what a daemon does
 * once at its first scrape falls before the measurement, as it would on a long-running daemon.
 */
import { spawn } from 'node:child_process'

export interface Scraper {
  /** Stops scraping; resolves with what it did (a failed scrape makes the bench's figures suspect). */
  stop(): Promise<{ scrapes: number; failures: number; bytes: number }>
}

const SCRAPER = `
const http = require('node:http')
const [interval, ...sockets] = process.argv.slice(1)
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
const stats = { scrapes: 0, failures: 0, bytes: 0 }
let first = sockets.length
const done = () => { if (--first === 0) process.stdout.write('ready\\n') }
const scrape = (socketPath) => {
  const req = http.request({ socketPath, path: '/metrics', agent }, (res) => {
    res.on('data', (d) => (stats.bytes += d.length))
    res.on('end', () => { res.statusCode === 200 ? stats.scrapes++ : stats.failures++; done() })
  })
  req.on('error', () => { stats.failures++; done() })
  req.end()
}
sockets.forEach(scrape)
setInterval(() => sockets.forEach(scrape), Number(interval))
process.on('SIGTERM', () => { process.stdout.write(JSON.stringify(stats)); process.exit(0) })
`

/**
 * Scrapes every socket in `sockets` each `intervalMs` (default 1 s), as one Prometheus would;
 * resolves after the first scrape of each.
 */
export async function startScraper(sockets: readonly string[], intervalMs = 1000): Promise<Scraper> {
  const child = spawn(process.execPath, ['-e', SCRAPER, String(intervalMs), ...sockets], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (d) => {
      out += d
      if (out.includes('ready\n')) resolve()
    })
    exited.then(() => resolve())
  })
  return {
    async stop() {
      child.kill('SIGTERM')
      await exited
      const last = out.split('\n').filter(Boolean).pop() ?? ''
      return JSON.parse(last.startsWith('{') ? last : '{"scrapes":0,"failures":1,"bytes":0}')
    },
  }
}
