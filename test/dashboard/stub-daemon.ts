/**
 * A stand-in for a daemon's control socket serving only GET /metrics: each scrape sees the disk's
 * read counter `step` higher than the one before, so any two scrapes show IOPS > 0. For testing
 * the dashboard and `vrio top` without daemons.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { iohypText } from './fixtures.ts'

export const STUB_GUEST = '02:00:00:00:00:0a'

export class StubDaemon {
  readonly dir = mkdtempSync(join(tmpdir(), 'vrio-stub-'))
  readonly path = join(this.dir, 'iohyp.sock')
  scrapes = 0
  /** Disk name; may hold characters a terminal or a page must not obey. */
  diskName = 'd1'
  private server: Server | undefined

  readonly step: number

  constructor(step = 100) {
    this.step = step
  }

  text(): string {
    const n = this.scrapes * this.step
    return iohypText({
      guest: STUB_GUEST,
      channelIn: n * 4200,
      channelOut: n * 4200,
      disks: [
        {
          guest: STUB_GUEST,
          disk: this.diskName,
          reads: n,
          writes: 0,
          readBytes: n * 4096,
          writeBytes: 0,
          latencies: Array(Math.min(n, 500)).fill(0.0002),
          inFlight: 1,
        },
      ],
      nic: { name: 'eth1', inBytes: n * 1500, outBytes: n * 100, drops: 0, alerts: 0 },
    })
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.statusCode = 404
        res.end('{}')
        return
      }
      this.scrapes++
      res.setHeader('content-type', 'text/plain; version=0.0.4; charset=utf-8')
      res.end(this.text())
    })
    await new Promise<void>((resolve) => this.server?.listen(this.path, resolve))
    return this
  }

  /** Stops answering (as a daemon that went away); start() again to come back. */
  async close(): Promise<void> {
    const server = this.server
    this.server = undefined
    if (!server) return
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    server.closeAllConnections()
    await closed
  }

  async stop(): Promise<void> {
    await this.close()
    rmSync(this.dir, { recursive: true, force: true })
  }
}
