/**
 * `vrio top` and `vrio dashboard`: a daemon's metrics (GET /metrics on its control socket) as a
 * refreshing terminal table, or as a web page with live plots (src/dashboard/). Both read only.
 */
import type { Command } from 'commander'
import { setTimeout as sleep } from 'node:timers/promises'
import { computeFigures, type Figures } from '../dashboard/figures.ts'
import { deviceLabel } from '../dashboard/plots.ts'
import { scrape, Poller } from '../dashboard/scrape.ts'
import {
  DEFAULT_DASHBOARD_HOST,
  DEFAULT_DASHBOARD_PORT,
  parseListen,
  startDashboard,
} from '../dashboard/server.ts'
import { VrioError } from '../errors.ts'
import { escapeControl, escapeJsonText } from '../escape.ts'
import {
  addDaemonChoice,
  chosenDaemonSocket,
  type DaemonChoiceOptions,
  formatTable,
  printJson,
  printLines,
} from './common.ts'

interface SocketOptions extends DaemonChoiceOptions {
  socket?: string
}

interface TopOptions extends SocketOptions {
  interval: string
  once?: boolean
  json?: boolean
}

interface DashboardCliOptions extends SocketOptions {
  listen: string
}

/** The options of `vrio status` and the device lists, and `--socket`, the same as --control. */
function addSocketOptions(command: Command): Command {
  return addDaemonChoice(command).option('--socket <path>', 'the same as --control')
}

function socketOf(o: SocketOptions): string {
  return chosenDaemonSocket({ ...o, control: o.control ?? o.socket })
}

function parseInterval(text: string): number {
  const s = Number(text)
  if (!Number.isFinite(s) || s < 0.1 || s > 3600)
    throw new VrioError(
      'invalid-argument',
      `--interval ${JSON.stringify(text)}: expected seconds, 0.1 to 3600`,
      {
        interval: text,
      },
    )
  return s
}

export function registerTopCommands(program: Command): void {
  const top = program
    .command('top')
    .description(
      "a daemon's disks, NICs and guest channels, refreshing in the terminal (q or Ctrl-C to quit)",
    )
    .option('--interval <seconds>', 'seconds between refreshes (rates are over this interval)', '1')
    .option('--once', 'print one table, with rates over one interval, and exit')
    .option('--json', 'print the figures as JSON: one document with --once, else one line per refresh')
  addSocketOptions(top).action(async (o: TopOptions) => {
    const seconds = parseInterval(o.interval)
    const socket = socketOf(o)
    if (o.once) {
      const first = await scrape(socket)
      await sleep(seconds * 1000)
      const figures = computeFigures(first, await scrape(socket))
      if (o.json) printJson(figures)
      else printLines(topLines(figures, socket))
      return
    }
    await runTop(socket, seconds, o.json === true)
  })

  const dashboard = program
    .command('dashboard')
    .description(
      "serve a read-only web page with live plots (last 10 min, 1 s resolution) of a daemon's metrics",
    )
    .option(
      '--listen <addr:port>',
      'where the page is served; keep it on localhost unless others may see these figures',
      `${DEFAULT_DASHBOARD_HOST}:${DEFAULT_DASHBOARD_PORT}`,
    )
  addSocketOptions(dashboard).action(async (o: DashboardCliOptions) => {
    const { host, port } = parseListen(o.listen)
    const socket = socketOf(o)
    let lastError = ''
    const d = await startDashboard({
      socketPath: socket,
      host,
      port,
      onError: (error) => {
        // One line per change of trouble, not one a second.
        const text = error instanceof Error ? error.message : String(error)
        if (text !== lastError) process.stderr.write(`vrio dashboard: ${escapeControl(text)}\n`)
        lastError = text
      },
    })
    process.stdout.write(
      `vrio dashboard: serving ${d.url} (metrics from ${escapeControl(socket)}; Ctrl-C to stop)\n`,
    )
    await new Promise<void>((resolve) => {
      const stop = () => void d.close().then(resolve)
      process.once('SIGINT', stop)
      process.once('SIGTERM', stop)
    })
  })
}

/** Refreshes the screen (or prints a JSON line) at every interval until Ctrl-C, q, or the end of input. */
async function runTop(socket: string, seconds: number, json: boolean): Promise<void> {
  const tty = process.stdout.isTTY === true && !json
  let last: Figures | undefined
  let error = ''
  const draw = () => {
    if (json) return
    const lines = last ? topLines(last, socket) : [`vrio top: ${socket}: waiting for a second scrape…`]
    if (error) lines.push('', `scrape failing: ${error}`)
    // Home, then each line cleared to its end, then the rest of the screen cleared: no flicker.
    process.stdout.write(
      tty
        ? `\x1b[H${lines.map((l) => `${escapeControl(l)}\x1b[K`).join('\n')}\n\x1b[J`
        : `${lines.map(escapeControl).join('\n')}\n\n`,
    )
  }
  const poller = new Poller({
    socketPath: socket,
    intervalMs: seconds * 1000,
    onFigures: (f) => {
      error = ''
      if (f.seconds === null) return
      last = f
      if (json) process.stdout.write(`${escapeJsonText(JSON.stringify(f))}\n`)
      draw()
    },
    onError: (e) => {
      error = e instanceof Error ? e.message : String(e)
      draw()
    },
  })
  if (tty) process.stdout.write('\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J')
  const restore = () => {
    if (tty) process.stdout.write('\x1b[?25h\x1b[?1049l')
  }
  try {
    await poller.start()
    draw()
  } catch (e) {
    restore()
    throw e
  }
  await new Promise<void>((resolve) => {
    const keys = process.stdin.isTTY === true
    let stopped = false
    const stop = () => {
      if (stopped) return
      stopped = true
      poller.stop()
      if (keys) {
        process.stdin.setRawMode(false)
        process.stdin.pause()
      }
      restore()
      resolve()
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
    if (keys) {
      process.stdin.setRawMode(true)
      process.stdin.resume()
      process.stdin.on('data', (d: Buffer) => {
        // q, Q, Ctrl-C (raw mode turns it into a byte), Ctrl-D.
        if ([0x71, 0x51, 0x03, 0x04].includes(d[0])) stop()
      })
    }
  })
}

const num = (v: number | null, digits = 0) => (v === null || !Number.isFinite(v) ? '-' : v.toFixed(digits))
const per = (v: number | null, by: number, digits: number) => (v === null ? '-' : num(v / by, digits))

/** The screen of `vrio top` for one set of figures: a title line, then guest, disk and NIC tables. */
export function topLines(f: Figures, source: string): string[] {
  const when = new Date(f.at).toISOString().slice(11, 19)
  const lines = [
    `vrio top  ${source}${f.role ? ` (${f.role})` : ''}  ${when} UTC  rates over ${num(f.seconds, 1)} s`,
    '',
  ]
  if (f.guests.length > 0) {
    lines.push(
      ...formatTable(
        ['GUEST', 'CHANNEL', 'RTT ms', 'IN MB/s', 'OUT MB/s', 'DROPS/s', 'RETRANS/s', 'IOPS', 'DISK MB/s'],
        f.guests.map((g) => [
          g.guest,
          g.state,
          per(g.rttSeconds, 1e-3, 2),
          per(g.inBytesPerSec, 1e6, 2),
          per(g.outBytesPerSec, 1e6, 2),
          num(g.dropsPerSec, 1),
          num(g.retransmitsPerSec, 1),
          num(g.iops),
          per(g.diskBytesPerSec, 1e6, 2),
        ]),
        ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
      ),
      '',
    )
  }
  lines.push(
    ...(f.disks.length === 0
      ? ['no disks']
      : formatTable(
          [
            'DISK',
            'IOPS',
            'READ/s',
            'WRITE/s',
            'READ MB/s',
            'WRITE MB/s',
            'p50 ms',
            'p99 ms',
            'IN FLIGHT',
            'ERRORS/s',
          ],
          f.disks.map((d) => [
            deviceLabel(d.guest, d.disk),
            num(d.iops),
            num(d.readIops),
            num(d.writeIops),
            per(d.readBytesPerSec, 1e6, 2),
            per(d.writeBytesPerSec, 1e6, 2),
            per(d.p50, 1e-3, 3),
            per(d.p99, 1e-3, 3),
            num(d.inFlight),
            num(d.errorsPerSec, 1),
          ]),
          ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
        )),
    '',
  )
  lines.push(
    ...(f.nics.length === 0
      ? ['no NICs']
      : formatTable(
          ['NIC', 'IN Gbit/s', 'OUT Gbit/s', 'IN frames/s', 'OUT frames/s', 'DROPS/s', 'DPI ALERTS/s'],
          f.nics.map((n) => [
            deviceLabel(n.guest, n.nic),
            per(n.inBitsPerSec, 1e9, 3),
            per(n.outBitsPerSec, 1e9, 3),
            num(n.inFramesPerSec),
            num(n.outFramesPerSec),
            num(n.dropsPerSec, 1),
            num(n.alertsPerSec, 1),
          ]),
          ['left', 'right', 'right', 'right', 'right', 'right', 'right'],
        )),
  )
  return lines
}
