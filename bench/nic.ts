/**
 * Remote NIC: the guest reaches a "world" namespace on the IOhyp's bridge through vrio (guest TAP →
 * vrio channel → IOhyp TAP on the bridge), next to the same path through a kernel VXLAN tunnel over
 * the same veth (a VXLAN device in the guest, its peer on the same bridge), in one run.
 * Throughput: iperf3 TCP with 1 and 4 streams, guest → world, and 1 stream world → guest. Latency: ping (ICMP) and a TCP
 * request/response ping-pong (1-byte messages, python on both ends). CPU: the whole machine's busy
 * time (/proc/stat: the kernel's softirq work of VXLAN counts as much as vrio's daemons), per Gbit
 * moved. MTU 1500 on the link (the VXLAN device gets 1450). VXLAN is measured with vrio's daemons
 * stopped (SIGSTOP; the run prints so): idle daemons must not tax it.
 *   npm run bench -- nic           (root; iperf3)
 * BENCH_MODES=1 instead compares vrio's sealed channel (the default) with --insecure-plaintext on
 * both daemons: fresh daemons per round, alternated BENCH_ROUNDS times (default 2), as ranges.
 * BENCH_METRICS=1 instead compares metrics off with metrics on (both daemons with --metrics, and
 * /metrics scraped every second on both), fresh daemons per round, alternated, as ranges.
 * BENCH_FILTER=1 instead measures VXLAN alone with vrio's daemons up and idle on the same veth,
 * their packet filter off vs on, and stopped (SIGSTOP) as the reference, fresh daemons per round,
 * alternated BENCH_ROUNDS times (default 2): what the idle daemons cost a neighbour.
 * BENCH_RELAY=1 instead measures the native relay (bench/support/nic-relay.c, built with cc against
 * libipsec-mb, or OpenSSL's libcrypto without it or with VRIO_AEAD=openssl; BENCH_RELAY_PLAIN=1
 * without encryption) and vrio against VXLAN, alternated in the same rounds (vrio's daemons stopped
 * while the relay and VXLAN run): the floor of two user-space hops that a native NIC path would
 * start from.
 * BENCH_KPATH=1 instead measures the kernel frame path (bench/support/nic-kpath.bpf.c, tc eBPF built
 * with clang and libbpf's headers: encapsulation in the kernel at both ends, no user space, no
 * encryption or authentication) and vrio against VXLAN, in the same rounds as the relay mode: what
 * moving the NIC's frames into the kernel would give, and (in the C file) what it gives up.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { VethEnd } from '../test/support/harness.ts'
import { exec, ip, linkMac, type Netns } from '../test/support/netns.ts'
import { onBridge, type PairOptions } from '../test/support/vrio-pair.ts'
import {
  busySeconds,
  cpuSeconds,
  type FilterSetting,
  range,
  startWithFilter,
  withDaemonsStopped,
} from './support/baselines.ts'
import { startScraper } from './support/metrics-scraper.ts'
import { iperf as iperfRun, type NicWorld, startNicWorld } from './support/nic-world.ts'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const PINGPONGS = Number(process.env.BENCH_PINGPONGS ?? 5000)

const PINGPONG_SERVER = `
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7000)); s.listen(4)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(1)
        if not d: break
        c.sendall(d)
    c.close()
`
const PINGPONG_CLIENT = `
import socket, sys, time
n = int(sys.argv[2]); c = socket.create_connection((sys.argv[1], 7000)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(200): c.sendall(b'x'); c.recv(1)
t = []
for _ in range(n):
    a = time.perf_counter_ns(); c.sendall(b'x'); c.recv(1); t.append(time.perf_counter_ns() - a)
t.sort(); print(t[len(t)//2] / 1000, t[len(t)*99//100] / 1000)
`

interface PathResult {
  tcp1Gbps: number
  tcp4Gbps: number
  /** 1 stream, world → guest (iperf3 -R). */
  tcp1ReverseGbps: number
  cpuSecondsPerGbit: number
  /** vrio's two daemons' CPU seconds (not the machine's) per Gbit over the same runs (NaN: not measured). */
  daemonCpuSecondsPerGbit: number
  pingAvgUs: number
  pingP50Us: number
  rrP50Us: number
  rrP99Us: number
}

function iperf(ns: Netns, target: string, streams: number, reverse = false): { gbps: number; gbit: number } {
  return iperfRun(ns, target, streams, SECONDS, reverse ? ['-R'] : [])
}

function ping(ns: Netns, target: string): { avg: number; p50: number } {
  const out = exec(ns, 'ping', ['-c', '500', '-i', '0.002', '-q', target])
  const out2 = exec(ns, 'ping', ['-c', '200', '-i', '0.005', target])
  const times = [...out2.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]) * 1000).sort((a, b) => a - b)
  const avg = Number(/= [\d.]+\/([\d.]+)\//.exec(out)![1]) * 1000
  return { avg, p50: times[times.length >> 1] }
}

function measure(guest: Netns, target: string, daemons?: readonly number[]): PathResult {
  const busy0 = busySeconds()
  const cpu0 = daemons ? cpuSeconds(daemons) : 0
  const one = iperf(guest, target, 1)
  const four = iperf(guest, target, 4)
  const busy = busySeconds() - busy0
  const daemonCpu = daemons ? cpuSeconds(daemons) - cpu0 : undefined
  const reverse = iperf(guest, target, 1, true)
  const p = ping(guest, target)
  const [rrP50Us, rrP99Us] = exec(guest, 'python3', ['-c', PINGPONG_CLIENT, target, String(PINGPONGS)])
    .trim()
    .split(' ')
    .map(Number)
  return {
    tcp1Gbps: one.gbps,
    tcp4Gbps: four.gbps,
    tcp1ReverseGbps: reverse.gbps,
    cpuSecondsPerGbit: busy / (one.gbit + four.gbit),
    daemonCpuSecondsPerGbit: daemonCpu === undefined ? Number.NaN : daemonCpu / (one.gbit + four.gbit),
    pingAvgUs: p.avg,
    pingP50Us: p.p50,
    rrP50Us,
    rrP99Us,
  }
}

/** A fresh IOhyp, guest and world with `options`, measured; `scrape`: /metrics on both every second. */
async function freshWorldRun(options: PairOptions, scrape: boolean): Promise<PathResult> {
  const m = await startNicWorld(['192.168.77.100/24'], options)
  try {
    m.serve(m.world, 'iperf3', ['-s'])
    m.serve(m.world, 'python3', ['-c', PINGPONG_SERVER])
    await m.pair.createNic('vn1', '02:77:00:00:00:01', onBridge('vt1'))
    ip(m.guest, ['addr', 'add', '192.168.77.1/24', 'dev', 'vn1'])
    await sleep(1000)
    const scraper = scrape ? await startScraper([m.pair.sock('iohyp'), m.pair.sock('guest')]) : undefined
    const r = measure(m.guest, '192.168.77.100', [m.pair.iohyp.child.pid!, m.pair.guest.child.pid!])
    const s = await scraper?.stop()
    if (s && (s.failures > 0 || s.scrapes === 0)) throw new Error(`scraper: ${JSON.stringify(s)}`)
    return r
  } finally {
    await m.stop()
  }
}

/** Metrics off vs on (with a 1 s scrape of both daemons), alternated (BENCH_METRICS=1). */
async function compareMetrics(): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const results: Record<'off' | 'on', PathResult[]> = { off: [], on: [] }
  const on: PairOptions = {
    iohypOptions: ['--metrics', '127.0.0.1:9860'],
    guestOptions: ['--metrics', '127.0.0.1:9861'],
  }
  // Off, on, on, off, ...: drift over the run falls on both settings alike.
  for (let round = 0; round < rounds; round++) {
    for (const setting of round % 2 === 0 ? (['off', 'on'] as const) : (['on', 'off'] as const))
      results[setting].push(await freshWorldRun(setting === 'on' ? on : {}, setting === 'on'))
  }
  const f = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(2))
  const range = (xs: number[]) => `${f(Math.min(...xs))}–${f(Math.max(...xs))}`
  console.log(
    `${'case'.padEnd(28)}${'metrics off'.padStart(16)}${'on, 1 s scrape'.padStart(16)}${'on/off'.padStart(12)}`,
  )
  for (const key of Object.keys(results.off[0]) as (keyof PathResult)[]) {
    const off = results.off.map((r) => r[key])
    const onr = results.on.map((r) => r[key])
    const ratios = onr.map((x, i) => x / off[i])
    console.log(
      `${key.padEnd(28)}${range(off).padStart(16)}${range(onr).padStart(16)}${range(ratios).padStart(12)}`,
    )
  }
  console.log(JSON.stringify({ bench: 'nic-metrics', seconds: SECONDS, rounds, ...results }))
}

/** vrio alone, sealed vs plaintext, alternated (BENCH_MODES=1). */
async function compareModes(): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const results: Record<'sealed' | 'plaintext', PathResult[]> = { sealed: [], plaintext: [] }
  for (let round = 0; round < rounds; round++) {
    for (const mode of ['sealed', 'plaintext'] as const) {
      results[mode].push(await freshWorldRun({ plaintext: mode === 'plaintext' }, false))
    }
  }
  const f = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(2))
  const range = (xs: number[]) => `${f(Math.min(...xs))}–${f(Math.max(...xs))}`
  console.log(
    `${'case'.padEnd(28)}${'sealed'.padStart(16)}${'plaintext'.padStart(16)}${'ratio'.padStart(12)}`,
  )
  for (const key of Object.keys(results.sealed[0]) as (keyof PathResult)[]) {
    const sealed = results.sealed.map((r) => r[key])
    const plain = results.plaintext.map((r) => r[key])
    const ratios = sealed.map((x, i) => x / plain[i])
    console.log(
      `${key.padEnd(28)}${range(sealed).padStart(16)}${range(plain).padStart(16)}${range(ratios).padStart(12)}`,
    )
  }
  console.log(JSON.stringify({ bench: 'nic-modes', seconds: SECONDS, rounds, ...results }))
}

/** VXLAN over the pair's veth: kernel tunnel endpoints in the guest and on the IOhyp's bridge; the world at 192.168.88.100. */
async function addVxlan(w: NicWorld): Promise<void> {
  const add = (ns: Netns, local: string, remote: string) =>
    ip(ns, [
      'link',
      'add',
      'vx0',
      'type',
      'vxlan',
      'id',
      '42',
      'local',
      local,
      'remote',
      remote,
      'dstport',
      '4789',
    ])
  add(w.guest, '10.99.0.2', '10.99.0.1')
  add(w.iohyp, '10.99.0.1', '10.99.0.2')
  ip(w.iohyp, ['link', 'set', 'vx0', 'master', 'brw', 'up'])
  ip(w.guest, ['addr', 'add', '192.168.88.1/24', 'dev', 'vx0'])
  ip(w.guest, ['link', 'set', 'vx0', 'up'])
  await sleep(1000)
}

/**
 * VXLAN alone, with vrio's idle daemons on the same veth: their packet filter off, on, and the
 * daemons stopped (BENCH_FILTER=1). Fresh daemons and world per round and setting.
 */
async function compareFilter(): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  type Setting = FilterSetting | 'stopped'
  const settings: Setting[] = ['off', 'on', 'stopped']
  const results = new Map<Setting, PathResult[]>()
  for (let round = 0; round < rounds; round++) {
    for (const setting of settings) {
      const w = await startWithFilter(setting === 'off' ? 'off' : 'on', () =>
        startNicWorld(['192.168.88.100/24']),
      )
      try {
        w.serve(w.world, 'iperf3', ['-s'])
        w.serve(w.world, 'python3', ['-c', PINGPONG_SERVER])
        await addVxlan(w)
        const run = () => measure(w.guest, '192.168.88.100')
        let r: PathResult
        if (setting === 'stopped') r = await withDaemonsStopped(w.pair, `round ${round + 1}, reference`, run)
        else {
          console.log(`round ${round + 1}: VXLAN with vrio's daemons running idle, packet filter ${setting}`)
          r = run()
        }
        results.set(setting, [...(results.get(setting) ?? []), r])
      } finally {
        await w.stop()
      }
    }
  }
  console.log(
    `${'VXLAN'.padEnd(28)}${'filter off'.padStart(16)}${'filter on'.padStart(16)}${'stopped'.padStart(16)}`,
  )
  for (const key of Object.keys(results.get('on')![0]) as (keyof PathResult)[]) {
    const cells = settings.map((s) => range((results.get(s) ?? []).map((r) => r[key])).padStart(16))
    console.log(`${key.padEnd(28)}${cells.join('')}`)
  }
  console.log(
    JSON.stringify({ bench: 'nic-filter', seconds: SECONDS, rounds, ...Object.fromEntries(results) }),
  )
}

/**
 * A world for vrio (192.168.77.100), VXLAN (192.168.88.100) and one more path at `other`, its
 * servers running and VXLAN up (the relay and kernel-path modes).
 */
async function worldWithVxlan(other: string): Promise<NicWorld> {
  const w = await startNicWorld(['192.168.77.100/24', other, '192.168.88.100/24'])
  try {
    w.serve(w.world, 'iperf3', ['-s'])
    w.serve(w.world, 'python3', ['-c', PINGPONG_SERVER])
    await addVxlan(w)
    return w
  } catch (error) {
    await w.stop()
    throw error
  }
}

/** The native relay's source (bench/support/nic-relay.c), from dist/bench or bench. */
const RELAY_SOURCE = fileURLToPath(new URL('../../bench/support/nic-relay.c', import.meta.url))

/**
 * The native relay (BENCH_RELAY=1; BENCH_RELAY_PLAIN=1 without encryption) and vrio against VXLAN
 * on the same veth, BENCH_ROUNDS rounds (default 2) of vrio, then the relay and VXLAN with vrio's
 * daemons stopped: the floor a native NIC fast path could reach (see bench/support/nic-relay.c: two
 * single-threaded user-space hops, a packet socket and a TAP on each, per-frame AES-256-GCM, no
 * ACKs or window), and how far vrio is from it.
 */
async function againstRelay(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vrio-relay-'))
  const bin = join(dir, 'nic-relay')
  // AES-256-GCM as vrio's addon does it: through libipsec-mb when its header is there.
  const ipsecMb = existsSync('/usr/include/intel-ipsec-mb.h') && process.env.VRIO_AEAD !== 'openssl'
  const aead = ipsecMb ? 'AES-256-GCM, libipsec-mb' : 'AES-256-GCM, OpenSSL'
  try {
    execFileSync(
      'cc',
      [
        '-O2',
        ...(ipsecMb ? ['-DUSE_IPSEC_MB'] : []),
        '-o',
        bin,
        RELAY_SOURCE,
        ...(ipsecMb ? ['-lIPSec_MB'] : []),
        '-lcrypto',
      ],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    )
  } catch {
    throw new Error(
      `cannot build ${RELAY_SOURCE}: BENCH_RELAY needs cc and OpenSSL's headers (apt-get install libssl-dev)`,
    )
  }
  const w = await worldWithVxlan('192.168.99.100/24')
  const relays: ChildProcess[] = []
  try {
    const { pair, guest, iohyp } = w
    const g = pair.guestEnd
    const h = pair.iohypEnd
    const key = randomBytes(32).toString('hex')
    const plain = process.env.BENCH_RELAY_PLAIN === '1' ? ['plain'] : []
    const start = (end: VethEnd, tap: string, peer: VethEnd, local: string, remote: string) => {
      const child = spawn(
        'ip',
        [
          'netns',
          'exec',
          end.ns.name,
          bin,
          tap,
          end.ifname,
          linkMac(end.ns, end.ifname),
          linkMac(peer.ns, peer.ifname),
          local,
          remote,
          key,
          ...plain,
        ],
        {
          stdio: ['ignore', 'ignore', 'inherit'],
        },
      )
      relays.push(child)
    }
    // Addresses on no interface: the kernels on both ends drop the relay's segments unanswered.
    start(g, 'nr0', h, '10.250.0.2', '10.250.0.1')
    start(h, 'nr1', g, '10.250.0.1', '10.250.0.2')
    const up = (ns: Netns, dev: string) => spawnSync('ip', ['-n', ns.name, 'link', 'show', dev]).status === 0
    for (let i = 0; i < 100 && !(up(guest, 'nr0') && up(iohyp, 'nr1')); i++) await sleep(50)
    if (!(up(guest, 'nr0') && up(iohyp, 'nr1')))
      throw new Error('the relays made no TAP within 5 s (their errors above)')
    // As vrio's guest interface: a GSO super-frame and its headers fit one segment.
    ip(guest, ['link', 'set', 'nr0', 'gso_max_size', '62000', 'up'])
    ip(guest, ['addr', 'add', '192.168.99.1/24', 'dev', 'nr0'])
    ip(iohyp, ['link', 'set', 'nr1', 'master', 'brw', 'up'])
    await sleep(1000)
    await sameRounds(w, {
      name: 'relay',
      target: '192.168.99.100',
      pids: relays.map((r) => r.pid!),
      title: `native relay (${plain.length ? 'plaintext' : aead}) and vrio against VXLAN`,
      json: { bench: 'nic-relay', aead: plain.length ? 'none' : aead },
    })
  } finally {
    for (const r of relays) r.kill('SIGKILL')
    await w.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * BENCH_ROUNDS rounds (default 2) of vrio (a remote NIC made here, its daemons running), then
 * `alt` and VXLAN with vrio's daemons stopped, in one world where `alt` and VXLAN are already up;
 * a table of ranges and the vrio/VXLAN, alt/VXLAN and vrio/alt ratios, then the JSON.
 */
async function sameRounds(
  w: NicWorld,
  alt: { name: string; target: string; pids?: number[]; title: string; json: Record<string, unknown> },
): Promise<void> {
  const { pair, guest } = w
  await pair.createNic('vn1', '02:77:00:00:00:01', onBridge('vt1'))
  ip(guest, ['addr', 'add', '192.168.77.1/24', 'dev', 'vn1'])
  await sleep(1000)
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const results: Record<'vrio' | 'alt' | 'vxlan', PathResult[]> = { vrio: [], alt: [], vxlan: [] }
  for (let round = 0; round < rounds; round++) {
    results.vrio.push(measure(guest, '192.168.77.100'))
    await withDaemonsStopped(pair, `round ${round + 1}: the ${alt.name} and VXLAN`, () => {
      results.alt.push(measure(guest, alt.target, alt.pids))
      results.vxlan.push(measure(guest, '192.168.88.100'))
    })
  }
  console.log(`${alt.title}, ${rounds} rounds`)
  console.log(
    `${'case'.padEnd(28)}${'vrio'.padStart(14)}${alt.name.padStart(14)}${'VXLAN'.padStart(14)}${'vrio/VXLAN'.padStart(12)}${`${alt.name}/VXLAN`.padStart(14)}${`vrio/${alt.name}`.padStart(14)}`,
  )
  for (const key of Object.keys(results.alt[0]) as (keyof PathResult)[]) {
    const [v, a, b] = (['vrio', 'alt', 'vxlan'] as const).map((k) => results[k].map((r) => r[key]))
    if ([v, a, b].some((xs) => xs.some((x) => !Number.isFinite(x)))) continue
    const ratio = (x: number[], y: number[]) => range(x.map((n, i) => n / y[i]))
    console.log(
      `${key.padEnd(28)}${range(v).padStart(14)}${range(a).padStart(14)}${range(b).padStart(14)}${ratio(v, b).padStart(12)}${ratio(a, b).padStart(14)}${ratio(v, a).padStart(14)}`,
    )
  }
  console.log(
    JSON.stringify({
      ...alt.json,
      seconds: SECONDS,
      rounds,
      vrio: results.vrio,
      [alt.name]: results.alt,
      vxlan: results.vxlan,
    }),
  )
}

/** The kernel frame path's tc programs (bench/support/nic-kpath.bpf.c), from dist/bench or bench. */
const KPATH_SOURCE = fileURLToPath(new URL('../../bench/support/nic-kpath.bpf.c', import.meta.url))

/**
 * The NIC's frame path in the kernel (BENCH_KPATH=1), issue 15 item 5's prototype: tc eBPF
 * programs at both ends carry the guest's frames over the pair's veth as TCP-looking segments, no
 * user space on the path and none of the channel's guarantees (see the C file). Measured with vrio
 * and VXLAN in the same rounds, as the relay is.
 */
async function againstKernelPath(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vrio-kpath-'))
  const w = await worldWithVxlan('192.168.66.100/24')
  try {
    const { pair, guest, iohyp } = w
    const g = pair.guestEnd
    const h = pair.iohypEnd
    // The guest's NIC kp0 (its frames enter the path at kp0p's ingress); on the IOhyp, kp1 on the
    // bridge (frames toward the guest enter at kp1p's ingress). 1446 leaves room for the 68 bytes
    // of outer headers and the inner Ethernet header in a 1514-byte frame, as VXLAN's 1450 does.
    ip(guest, ['link', 'add', 'kp0', 'type', 'veth', 'peer', 'name', 'kp0p'])
    ip(iohyp, ['link', 'add', 'kp1', 'type', 'veth', 'peer', 'name', 'kp1p'])
    ip(guest, ['link', 'set', 'kp0', 'mtu', '1446', 'gso_max_size', '62000', 'up'])
    ip(guest, ['link', 'set', 'kp0p', 'up'])
    ip(guest, ['addr', 'add', '192.168.66.1/24', 'dev', 'kp0'])
    ip(iohyp, ['link', 'set', 'kp1', 'master', 'brw', 'up'])
    ip(iohyp, ['link', 'set', 'kp1p', 'up'])
    const index = (ns: Netns, dev: string) =>
      JSON.parse(ip(ns, ['-j', 'link', 'show', 'dev', dev]))[0].ifindex
    const hex = (mac: string) => `0x${mac.replaceAll(':', '')}ULL`
    // Addresses on no interface, as the relay's: no kernel answers the path's segments.
    const ends = [
      {
        end: g,
        peer: h,
        local: '0x0afb0002',
        remote: '0x0afb0001',
        lport: 47002,
        pport: 47001,
        inner: 'kp0p',
      },
      {
        end: h,
        peer: g,
        local: '0x0afb0001',
        remote: '0x0afb0002',
        lport: 47001,
        pport: 47002,
        inner: 'kp1p',
      },
    ]
    for (const e of ends) {
      for (const [way, out, dev] of [
        ['ENCAP', e.end.ifname, e.inner],
        ['DECAP', e.inner, e.end.ifname],
      ] as const) {
        const obj = join(dir, `${e.end.ns.name}-${way}.o`)
        try {
          execFileSync(
            'clang',
            [
              '-O2',
              '-g',
              '-target',
              'bpf',
              '-mcpu=v3',
              `-I/usr/include/${execFileSync('uname', ['-m']).toString().trim()}-linux-gnu`,
              `-D${way}`,
              `-DLOCAL_IP=${e.local}`,
              `-DPEER_IP=${e.remote}`,
              `-DLOCAL_PORT=${e.lport}`,
              `-DPEER_PORT=${e.pport}`,
              `-DLOCAL_MAC=${hex(linkMac(e.end.ns, e.end.ifname))}`,
              `-DPEER_MAC=${hex(linkMac(e.peer.ns, e.peer.ifname))}`,
              `-DOUT_IFINDEX=${index(e.end.ns, out)}`,
              '-c',
              KPATH_SOURCE,
              '-o',
              obj,
            ],
            { stdio: ['ignore', 'ignore', 'inherit'] },
          )
        } catch {
          throw new Error(
            `cannot build ${KPATH_SOURCE}: BENCH_KPATH needs clang and libbpf's headers (apt-get install clang libbpf-dev)`,
          )
        }
        const tc = (args: string[]) =>
          execFileSync('tc', ['-n', e.end.ns.name, ...args], { stdio: 'inherit' })
        tc(['qdisc', 'replace', 'dev', dev, 'clsact'])
        tc(['filter', 'replace', 'dev', dev, 'ingress', 'bpf', 'direct-action', 'obj', obj, 'sec', 'tc'])
      }
    }
    await sleep(1000)
    await sameRounds(w, {
      name: 'kpath',
      target: '192.168.66.100',
      title: 'the kernel frame path (tc eBPF, no encryption or authentication) and vrio against VXLAN',
      json: { bench: 'nic-kpath' },
    })
  } finally {
    await w.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

if (process.env.BENCH_MODES === '1') await compareModes()
else if (process.env.BENCH_METRICS === '1') await compareMetrics()
else if (process.env.BENCH_FILTER === '1') await compareFilter()
else if (process.env.BENCH_RELAY === '1') await againstRelay()
else if (process.env.BENCH_KPATH === '1') await againstKernelPath()
else await againstVxlan()

async function againstVxlan(): Promise<void> {
  const w = await startNicWorld(['192.168.77.100/24', '192.168.88.100/24'])
  try {
    const { pair, guest, world } = w
    w.serve(world, 'iperf3', ['-s'])
    w.serve(world, 'python3', ['-c', PINGPONG_SERVER])

    // vrio: a remote NIC whose IOhyp end is a TAP on the bridge.
    await pair.createNic('vn1', '02:77:00:00:00:01', onBridge('vt1'))
    ip(guest, ['addr', 'add', '192.168.77.1/24', 'dev', 'vn1'])

    await addVxlan(w)

    const vrio = measure(guest, '192.168.77.100')
    const vxlan = await withDaemonsStopped(pair, 'VXLAN', () => measure(guest, '192.168.88.100'))

    const rows: [string, keyof PathResult, 'higher' | 'lower'][] = [
      ['TCP 1 stream, Gbit/s', 'tcp1Gbps', 'higher'],
      ['TCP 4 streams, Gbit/s', 'tcp4Gbps', 'higher'],
      ['TCP 1 stream world→guest', 'tcp1ReverseGbps', 'higher'],
      ['CPU s per Gbit (machine)', 'cpuSecondsPerGbit', 'lower'],
      ['ping avg, µs', 'pingAvgUs', 'lower'],
      ['ping p50, µs', 'pingP50Us', 'lower'],
      ['TCP req/resp p50, µs', 'rrP50Us', 'lower'],
      ['TCP req/resp p99, µs', 'rrP99Us', 'lower'],
    ]
    const fmt = (x: number) => (x >= 100 ? Math.round(x).toString() : x.toFixed(2)).padStart(10)
    console.log(
      `${'case'.padEnd(28)}${'vrio'.padStart(10)}${'VXLAN'.padStart(10)}${'vrio/VXLAN'.padStart(12)}`,
    )
    for (const [name, key] of rows) {
      console.log(
        `${name.padEnd(28)}${fmt(vrio[key])}${fmt(vxlan[key])}${(vrio[key] / vxlan[key]).toFixed(2).padStart(12)}`,
      )
    }
    console.log(
      JSON.stringify({
        bench: 'nic',
        seconds: SECONDS,
        vxlanWithVrioStopped: true,
        vrio,
        vxlan,
        ratios: Object.fromEntries(rows.map(([, key]) => [key, vrio[key] / vxlan[key]])),
      }),
    )
  } finally {
    await w.stop()
  }
}
