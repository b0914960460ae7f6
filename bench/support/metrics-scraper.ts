/**
 * A Prometheus-like scraper for benches: GET /metrics on daemons' control sockets every interval,
 * from a child process, so it keeps its pace while the bench blocks on a synchronous tool run.
 */
import { spawn } from 'node:child_process'

export interface Scraper {
  /** Stops scraping; resolves with what it did (a failed scrape makes the bench's figures suspect). */
  stop(): Promise<{ scrapes: number; failures: number; bytes: number }>
}

const SCRAPER = `
const http = require('node:http')
const [interval, ...sockets] = process.argv.slice(1)
const stats = { scrapes: 0, failures: 0, bytes: 0 }
const scrape = (socketPath) => {
  const req = http.request({ socketPath, path: '/metrics', agent: false }, (res) => {
    res.on('data', (d) => (stats.bytes += d.length))
    res.on('end', () => (res.statusCode === 200 ? stats.scrapes++ : stats.failures++))
  })
  req.on('error', () => stats.failures++)
  req.end()
}
setInterval(() => sockets.forEach(scrape), Number(interval))
process.on('SIGTERM', () => { process.stdout.write(JSON.stringify(stats)); process.exit(0) })
`

/** Scrapes every socket in `sockets` each `intervalMs` (default 1 s), as one Prometheus would. */
export function startScraper(sockets: readonly string[], intervalMs = 1000): Scraper {
  const child = spawn(process.execPath, ['-e', SCRAPER, String(intervalMs), ...sockets], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  return {
    async stop() {
      child.kill('SIGTERM')
      await exited
      return JSON.parse(out || '{"scrapes":0,"failures":1,"bytes":0}')
    },
  }
}
