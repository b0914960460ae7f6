/**
 * What one Prometheus scrape (GET /metrics on the control socket) costs each daemon, in CPU time:
 * an IOhyp and a guest with N disks and N NICs (N from BENCH_DEVICES, default 1,4,16), scraped
 * BENCH_SCRAPES times (default 200) back to back, CPU from /proc/PID/task/* /schedstat (ns, every
 * thread) before and after; the daemons' idle CPU over the same time is measured first and taken
 * off. The first scrape (which loads prom-client and builds the registry) is made before and not
 * counted. Idle daemons: a scrape costs the same under load, give or take cache effects.
 *   npm run bench -- metrics-scrape       (root)
 */
import { rmSync, truncateSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { cleanupNetns } from '../test/support/netns.ts'
import { onBridge, pairWithWorld } from '../test/support/vrio-pair.ts'
import { cpuNs } from './support/nic-world.ts'

const SCRAPES = Number(process.env.BENCH_SCRAPES ?? 200)
const DEVICES = (process.env.BENCH_DEVICES ?? '1,4,16').split(',').map(Number)

function scrape(socketPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/metrics', agent: false }, (res) => {
      let bytes = 0
      res.on('data', (d: Buffer) => (bytes += d.length))
      res.on('end', () => (res.statusCode === 200 ? resolve(bytes) : reject(new Error(`${res.statusCode}`))))
    })
    req.on('error', reject)
    req.end()
  })
}

interface Row {
  devices: number
  daemon: 'iohyp' | 'guest'
  cpuMsPerScrape: number
  bytes: number
  series: number
}

const rows: Row[] = []
const files: string[] = []
try {
  for (const n of DEVICES) {
    const { pair } = await pairWithWorld([])
    try {
      for (let i = 0; i < n; i++) {
        const backing = `/dev/shm/vrio-bench-scrape-${process.pid}-${i}.img`
        writeFileSync(backing, '')
        files.push(backing)
        truncateSync(backing, 64 << 20) // sparse
        await pair.createDisk(backing, `d${i}`)
        await pair.createNic(
          `vn${i}`,
          `02:77:00:00:01:${i.toString(16).padStart(2, '0')}`,
          onBridge(`vt${i}`),
        )
      }
      await sleep(500)
      for (const daemon of ['iohyp', 'guest'] as const) {
        const sock = pair.sock(daemon)
        const pid = pair[daemon].child.pid!
        const text = await new Promise<string>((resolve, reject) => {
          request({ socketPath: sock, path: '/metrics', agent: false }, (res) => {
            let s = ''
            res.on('data', (d) => (s += d))
            res.on('end', () => resolve(s))
          })
            .on('error', reject)
            .end()
        })
        const series = text.split('\n').filter((l) => l && !l.startsWith('#')).length
        // Idle CPU over about the time the scrapes take (measured after a warm-up).
        for (let i = 0; i < 20; i++) await scrape(sock)
        const t0 = performance.now()
        const c0 = cpuNs(pid)
        let bytes = 0
        for (let i = 0; i < SCRAPES; i++) bytes = await scrape(sock)
        const c1 = cpuNs(pid)
        const wall = performance.now() - t0
        const i0 = cpuNs(pid)
        await sleep(wall)
        const idle = cpuNs(pid) - i0
        const cpuMsPerScrape = (c1 - c0 - idle) / 1e6 / SCRAPES
        rows.push({ devices: n, daemon, cpuMsPerScrape, bytes, series })
        console.log(
          `${String(n).padStart(3)} disks+NICs  ${daemon.padEnd(6)} ${cpuMsPerScrape.toFixed(2).padStart(7)} CPU ms/scrape   ${String(series).padStart(5)} series ${String(bytes).padStart(7)} bytes   (idle ${(idle / 1e6).toFixed(1)} ms over ${wall.toFixed(0)} ms)`,
        )
      }
    } finally {
      await pair.stop()
      cleanupNetns()
    }
  }
  console.log(JSON.stringify({ bench: 'metrics-scrape', scrapes: SCRAPES, rows }))
} finally {
  for (const f of files) rmSync(f, { force: true })
  cleanupNetns()
}
