/**
 * I/O services through a whole remote NIC: iperf3 TCP from the guest to a namespace on the IOhyp's
 * bridge (the topology of bench/nic.ts), in one run, with the NIC's services
 *
 *   off            no services (the chain passes frames untouched)
 *   fw 100         the firewall: ct established first, 100 rules the new flows fall through, then
 *                  an accept for iperf3's port; policy drop both ways
 *   dpi 1k / 10k   DPI with 1 000 / 10 000 content rules (bench/support/dpi-rules.ts, as bench/dpi.ts)
 *   fw + dpi 1k    both
 *   dpi ET Open    DPI with the ET Open fixture (test/fixtures/dpi: every file, unloadable rules
 *                  skipped), issue 13's target: ≥ 0.5× services off
 *   HTTP, ET Open  case 6: HTTP-like text instead of iperf3 (bench/support/http-peer.ts: HTTP/1.1
 *                  keep-alive GETs and form POSTs with browser-like headers, text/html bodies of
 *                  1–16 KiB, from the guest to a server on port 80 in the world), services off and
 *                  the ET Open fixture alternated; MB/s of responses and requests/s per round, their
 *                  ranges and the ratio; the set's load time (`nic services --dpi`), the IOhyp's RSS
 *                  with services off and with the set, and the rule count
 *
 * swapped at runtime with `vrio nic services` between cases (each case starts with fresh services).
 * Per case: Gbit/s (iperf3's receiver), frames/s through the NIC (its counters: GSO super-frames, as
 * the IOhyp sees them) and the MTU-1500 packet equivalent (bytes / 1448), CPU seconds per Gbit of the
 * whole machine and of the IOhyp daemon, and the ratio to "off". A DPI case is valid only if the
 * DPI inspected the traffic and raised no alert (iperf3's payload is clean); a firewall case only if
 * nothing was dropped by it. Each case runs BENCH_ROUNDS times (interleaved); the best round counts.
 * Target (issue 7): DPI with 1 000 rules keeps ≥ 0.5× of the throughput with services off.
 *
 *   npm run bench -- nic-services      (root; iperf3)
 *   BENCH_SECONDS=5 BENCH_ROUNDS=2 BENCH_STREAMS=1,4 BENCH_CASES=1,2,3,4,5 (defaults but STREAMS: 1)
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ListNicsResponse, NicInfo } from '../src/control/api.ts'
import { vrioAsync, vrioJsonAsync } from '../test/support/daemons.ts'
import { execAsync, ip } from '../test/support/netns.ts'
import { onBridge } from '../test/support/vrio-pair.ts'
import { dpiContentRules, etOpenText } from './support/dpi-rules.ts'
import { hundredFirewallRules } from './support/firewall-rules.ts'
import { busySeconds } from './support/baselines.ts'
import { iperf, processCpuSeconds, startNicWorld } from './support/nic-world.ts'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)
const STREAMS = (process.env.BENCH_STREAMS ?? '1').split(',').map(Number)
/** Indexes of the cases to run besides "services off" (1 firewall, 2 DPI 1k, 3 DPI 10k, 4 both, 5 DPI ET Open, 6 HTTP with ET Open); default all. */
const CASES = process.env.BENCH_CASES?.split(',').map(Number)
const WORLD = '192.168.77.100'
const PORT = 5201
const HTTP_PORT = 80
/** Concurrent keep-alive connections of the HTTP client (case 6). */
const HTTP_CONNECTIONS = Number(process.env.BENCH_HTTP_CONNECTIONS ?? 8)
const HTTP_PEER = join(import.meta.dirname, 'support', 'http-peer.js')
/** TCP payload of a 1500-byte packet with timestamps: iperf3's bytes / this = wire packets. */
const MSS = 1448

interface Case {
  name: string
  firewall?: string
  dpi?: string
}

interface Result {
  case: string
  streams: number
  gbps: number
  /** Frames through the NIC per second, both directions (GSO super-frames count once). */
  framesPerSecond: number
  /** Average size of a frame from the guest. */
  avgFrameBytes: number
  /** iperf3 payload as MTU-1500 packets per second. */
  packetsPerSecond: number
  cpuPerGbit: number
  iohypCpuPerGbit: number
  ratio: number
  valid: boolean
  note: string
}

const w = await startNicWorld([`${WORLD}/24`])
try {
  const { pair, guest, world } = w
  const sock = pair.sock('iohyp')
  const files = {
    fw: join(pair.dir, 'fw100.fw'),
    dpi1k: join(pair.dir, 'dpi1k.rules'),
    dpi10k: join(pair.dir, 'dpi10k.rules'),
    et: join(pair.dir, 'et-open.rules'),
  }
  writeFileSync(
    files.fw,
    [
      'policy from-guest drop',
      'policy to-guest drop',
      'from-guest ether type arp accept',
      'to-guest ether type arp accept',
      'from-guest ct state established,related accept',
      'to-guest ct state established,related accept',
      hundredFirewallRules(),
      `from-guest ip daddr ${WORLD} tcp dport ${PORT} ct state new accept`,
      '',
    ].join('\n'),
  )
  writeFileSync(files.dpi1k, `${dpiContentRules(1000)}\n`)
  writeFileSync(files.dpi10k, `${dpiContentRules(10_000)}\n`)
  writeFileSync(files.et, `${etOpenText()}\n`)

  w.serve(world, 'iperf3', ['-s', '-B', WORLD, '-p', String(PORT)])
  w.serve(world, process.execPath, [HTTP_PEER, 'server', WORLD, String(HTTP_PORT)])
  await pair.createNic('vn1', '02:77:00:00:00:01', onBridge('vt1'))
  ip(guest, ['addr', 'add', '192.168.77.1/24', 'dev', 'vn1'])
  await sleep(1000)

  const cases: Case[] = [
    { name: 'services off' },
    { name: 'firewall 100 rules', firewall: files.fw },
    { name: 'DPI 1k rules', dpi: files.dpi1k },
    { name: 'DPI 10k rules', dpi: files.dpi10k },
    { name: 'firewall + DPI 1k', firewall: files.fw, dpi: files.dpi1k },
    { name: 'DPI ET Open', dpi: files.et },
  ].filter((_, i) => i === 0 || CASES === undefined || CASES.includes(i))
  const iperfCases = CASES === undefined || CASES.some((i) => i < 6)

  const nicInfo = async (): Promise<NicInfo> =>
    (await vrioJsonAsync<ListNicsResponse>(['nic', 'list', '--json', '--control', sock])).nics[0]
  const setServices = async (c: Case) => {
    const off = await vrioAsync(['nic', 'services', 'vn1', '--no-firewall', '--no-dpi', '--control', sock])
    if (off.status !== 0) throw new Error(`nic services --no-firewall --no-dpi: ${off.stderr}`)
    const args = [...(c.firewall ? ['--firewall', c.firewall] : []), ...(c.dpi ? ['--dpi', c.dpi] : [])]
    if (args.length === 0) return
    const on = await vrioAsync(['nic', 'services', 'vn1', ...args, '--control', sock])
    if (on.status !== 0) throw new Error(`nic services ${args.join(' ')}: ${on.stderr}`)
  }
  const iohypPid = pair.iohyp.child.pid as number

  /** One iperf3 run through the NIC with case `c`'s services (fresh ones). */
  const runCase = async (c: Case, streams: number): Promise<Omit<Result, 'ratio'>> => {
    await setServices(c)
    const before = await nicInfo()
    const busy0 = busySeconds()
    const iohyp0 = processCpuSeconds(iohypPid)
    const t0 = performance.now()
    const r = iperf(guest, WORLD, streams, SECONDS, ['-p', String(PORT)])
    const wall = (performance.now() - t0) / 1000
    const busy = busySeconds() - busy0
    const iohypCpu = processCpuSeconds(iohypPid) - iohyp0
    const after = await nicInfo()
    const frames =
      after.fromGuest.frames - before.fromGuest.frames + after.toGuest.frames - before.toGuest.frames
    const guestFrames = after.fromGuest.frames - before.fromGuest.frames
    const guestBytes = after.fromGuest.bytes - before.fromGuest.bytes
    // Everything the NIC moved in the run (its counters span the whole run, omitted second included).
    const movedGbit = (guestBytes * 8) / 1e9
    const notes: string[] = []
    const s = after.services
    const dpi = s.services.dpi?.counters as
      | { packets: number; bytes: number; alerts: number; notInspected: number; drops: number }
      | undefined
    if (c.dpi) {
      if (!dpi || dpi.bytes < guestBytes * 0.9)
        notes.push(`DPI inspected ${dpi?.bytes ?? 0} of ${guestBytes} B`)
      if (dpi && dpi.alerts > 0) notes.push(`${dpi.alerts} alerts on clean traffic`)
      if (dpi && dpi.drops > 0) notes.push(`DPI dropped ${dpi.drops} frames`)
    }
    const fw = s.services.firewall?.counters as
      | { 'from-guest': { accepted: number; policyDropped: number; dropped: number } }
      | undefined
    if (c.firewall) {
      if (!fw || fw['from-guest'].accepted === 0) notes.push('the firewall saw nothing')
      else if (fw['from-guest'].policyDropped + fw['from-guest'].dropped > 0)
        notes.push(`the firewall dropped ${fw['from-guest'].policyDropped + fw['from-guest'].dropped}`)
    }
    if (s.malformed > 0) notes.push(`${s.malformed} malformed`)
    return {
      case: c.name,
      streams,
      gbps: r.gbps,
      framesPerSecond: frames / wall,
      avgFrameBytes: guestFrames > 0 ? guestBytes / guestFrames : 0,
      packetsPerSecond: r.bytes / MSS / r.seconds,
      cpuPerGbit: busy / movedGbit,
      iohypCpuPerGbit: iohypCpu / movedGbit,
      valid: notes.length === 0,
      note: notes.join('; '),
    }
  }

  const runs = new Map<string, Omit<Result, 'ratio'>[]>()
  for (let round = 0; round < (iperfCases ? ROUNDS : 0); round++) {
    for (const streams of STREAMS) {
      for (const c of cases) {
        const key = `${c.name}/${streams}`
        runs.set(key, [...(runs.get(key) ?? []), await runCase(c, streams)])
      }
    }
  }
  /** The fastest round; a case with an invalid round is invalid (its note kept). */
  const best = (key: string) => {
    const all = runs.get(key)!
    return all.find((r) => !r.valid) ?? all.reduce((a, b) => (b.gbps > a.gbps ? b : a))
  }
  await setServices({ name: 'off' })

  const results: Result[] = []
  for (const streams of iperfCases ? STREAMS : []) {
    const off = best(`${cases[0].name}/${streams}`)
    for (const c of cases) {
      const r = best(`${c.name}/${streams}`)
      results.push({ ...r, ratio: r.gbps / off.gbps })
    }
  }
  const f = (x: number, d = 2) => x.toFixed(d)
  const k = (x: number) => (x >= 1e6 ? `${f(x / 1e6)} M` : `${f(x / 1e3, 0)} k`)
  console.log(
    `${'case'.padEnd(22)}${'streams'.padStart(8)}${'Gbit/s'.padStart(8)}${'frames/s'.padStart(10)}${'B/frame'.padStart(9)}` +
      `${'pkts/s'.padStart(10)}${'CPU s/Gbit'.padStart(11)}${'IOhyp s/Gbit'.padStart(13)}${'ratio'.padStart(7)}  valid`,
  )
  for (const r of results) {
    console.log(
      `${r.case.padEnd(22)}${String(r.streams).padStart(8)}${f(r.gbps).padStart(8)}${k(r.framesPerSecond).padStart(10)}` +
        `${f(r.avgFrameBytes, 0).padStart(9)}${k(r.packetsPerSecond).padStart(10)}${f(r.cpuPerGbit).padStart(11)}` +
        `${f(r.iohypCpuPerGbit).padStart(13)}${f(r.ratio).padStart(7)}  ${r.valid ? 'yes' : `NO: ${r.note}`}`,
    )
  }
  const http = CASES === undefined || CASES.includes(6) ? await httpCase() : undefined
  const dpi1k = results.find((r) => r.case === 'DPI 1k rules' && r.streams === STREAMS[0])
  const target = dpi1k && {
    case: dpi1k.case,
    ratio: Number(f(dpi1k.ratio, 3)),
    met: dpi1k.valid && dpi1k.ratio >= 0.5,
  }
  console.log(
    JSON.stringify({
      bench: 'nic-services',
      seconds: SECONDS,
      rounds: ROUNDS,
      results: results.map((r) => ({
        ...r,
        gbps: Number(f(r.gbps, 3)),
        framesPerSecond: Math.round(r.framesPerSecond),
        avgFrameBytes: Math.round(r.avgFrameBytes),
        packetsPerSecond: Math.round(r.packetsPerSecond),
        cpuPerGbit: Number(f(r.cpuPerGbit, 3)),
        iohypCpuPerGbit: Number(f(r.iohypCpuPerGbit, 3)),
        ratio: Number(f(r.ratio, 3)),
      })),
      target,
      http,
    }),
  )

  /**
   * Case 6: HTTP-like text through the NIC, services off and the ET Open set alternated, ROUNDS
   * rounds of SECONDS each; the set's load time and the IOhyp's memory growth with it.
   */
  async function httpCase() {
    const url = `http://${WORLD}:${HTTP_PORT}/`
    const rss = () =>
      Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${iohypPid}/status`, 'utf8'))?.[1]) / 1024
    const round = async () => {
      const cpu0 = processCpuSeconds(iohypPid)
      const out = JSON.parse(
        await execAsync(guest, process.execPath, [
          HTTP_PEER,
          'client',
          url,
          String(SECONDS),
          String(HTTP_CONNECTIONS),
        ]),
      ) as { requests: number; bytes: number; seconds: number }
      return {
        mbps: out.bytes / 1e6 / out.seconds,
        rps: out.requests / out.seconds,
        iohypCpuPerRequest: (processCpuSeconds(iohypPid) - cpu0) / out.requests,
      }
    }
    const off: Awaited<ReturnType<typeof round>>[] = []
    const et: Awaited<ReturnType<typeof round>>[] = []
    const loads: { seconds: number; rssMB: number; rules: number; skipped: number }[] = []
    const notes = new Set<string>()
    // The IOhyp's RSS with services off (after this run's earlier cases, if any), then with the set.
    await setServices({ name: 'off' })
    const rssOff = rss()
    await round() // warm-up: connections, JIT
    for (let r = 0; r < ROUNDS; r++) {
      await setServices({ name: 'off' })
      off.push(await round())
      const t0 = performance.now()
      await setServices({ name: 'et', dpi: files.et })
      const seconds = (performance.now() - t0) / 1000
      const before = await nicInfo()
      const report = before.services.services.dpi?.report as
        | { loaded: number; skipped: unknown[] }
        | undefined
      loads.push({
        seconds,
        rssMB: rss(),
        rules: report?.loaded ?? 0,
        skipped: report?.skipped.length ?? 0,
      })
      et.push(await round())
      const dpi = (await nicInfo()).services.services.dpi?.counters as
        | { bytes: number; alerts: number; drops: number; appTransactions: number }
        | undefined
      if (!dpi || dpi.appTransactions === 0) notes.add('DPI saw no HTTP transaction')
      if (dpi && dpi.alerts > 0) notes.add(`${dpi.alerts} alerts`)
      if (dpi && dpi.drops > 0) notes.add(`DPI dropped ${dpi.drops} frames`)
    }
    await setServices({ name: 'off' })
    const range = (xs: number[], d = 1) => `${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}`
    const mid = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
    const ratios = et.map((e, k) => e.mbps / off[k].mbps)
    console.log(
      `\nHTTP through the NIC (${HTTP_CONNECTIONS} keep-alive connections, ${ROUNDS} rounds alternated)`,
    )
    console.log(
      `${'case'.padEnd(22)}${'MB/s'.padStart(14)}${'requests/s'.padStart(16)}${'IOhyp ms/req'.padStart(16)}`,
    )
    for (const [name, xs] of [
      ['services off', off],
      ['DPI ET Open', et],
    ] as const)
      console.log(
        `${name.padEnd(22)}${range(xs.map((x) => x.mbps)).padStart(14)}${range(
          xs.map((x) => x.rps),
          0,
        ).padStart(16)}` +
          `${range(
            xs.map((x) => x.iohypCpuPerRequest * 1000),
            3,
          ).padStart(16)}`,
      )
    console.log(
      `ratio per round ${ratios.map((x) => x.toFixed(2)).join(', ')}; ET Open ${loads[0]?.rules} rules loaded ` +
        `(${loads[0]?.skipped} skipped) in ${range(loads.map((l) => l.seconds))} s, IOhyp RSS ${rssOff.toFixed(0)} MB off, ${range(
          loads.map((l) => l.rssMB),
          0,
        )} MB with the set` +
        (notes.size > 0 ? `; ${[...notes].join('; ')}` : ''),
    )
    return {
      connections: HTTP_CONNECTIONS,
      off: off.map((x) => ({ mbps: Number(f(x.mbps, 1)), rps: Math.round(x.rps) })),
      et: et.map((x) => ({ mbps: Number(f(x.mbps, 1)), rps: Math.round(x.rps) })),
      ratios: ratios.map((x) => Number(f(x, 3))),
      ratio: Number(f(mid(ratios), 3)),
      rssOffMB: Math.round(rssOff),
      loads: loads.map((l) => ({
        ...l,
        seconds: Number(f(l.seconds, 1)),
        rssMB: Math.round(l.rssMB),
      })),
      notes: [...notes],
    }
  }
} finally {
  await w.stop()
}
