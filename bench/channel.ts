/**
 * vrio channel vs kernel TCP between two network namespaces over one veth pair, in one run:
 * reliable-message throughput (1 MiB messages) next to iperf3, and message round-trip time (64 B
 * ordered messages) next to a Node TCP socket ping-pong. Issue 3's first target: ≥ 0.5× kernel TCP.
 * With virtio-net headers, the sealed channel (the default) and --insecure-plaintext are run
 * alternately, twice each, and averaged; issue 12's target: sealed ≥ 0.9× plaintext throughput,
 * ≤ 5 µs more per round trip.
 *   npm run bench -- channel        (root; needs iperf3)
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { PACKET_SOCKET_BUFFER } from '../src/daemon/runtime.ts'
import { LinkDriver } from '../src/io/link-driver.ts'
import { PacketSocket } from '../src/io/packet-socket.ts'
import { Delivery } from '../src/transport/config.ts'
import type { Connection } from '../src/transport/connection.ts'
import { parseMac } from '../src/wire/address.ts'
import { cleanupNetns, exec, ip, type Netns } from '../test/support/netns.ts'
import { directLink } from '../test/support/topology.ts'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3)
const ROUND_TRIPS = 2000
/** Both ends' channel key (a bench constant: nothing secret crosses this link). */
const BENCH_KEY = Buffer.alloc(32, 0x42)

function lines(child: ChildProcess): () => Promise<Record<string, unknown>> {
  const rl = createInterface({ input: child.stdout! })
  const queue: string[] = []
  const waiters: ((l: string) => void)[] = []
  rl.on('line', (l) => (waiters.length > 0 ? waiters.shift()!(l) : queue.push(l)))
  return () =>
    new Promise((resolve) => {
      const take = (l: string) => resolve(JSON.parse(l))
      if (queue.length > 0) take(queue.shift()!)
      else waiters.push(take)
    })
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
}

async function vrioRun(
  a: { ns: Netns; ifname: string; ip: number },
  b: { ns: Netns; ifname: string; ip: number },
  vnetHdr: boolean,
  sealed = true,
) {
  const peerPath = fileURLToPath(new URL('./channel-peer.js', import.meta.url))
  const peer = spawn(
    process.execPath,
    [peerPath, b.ifname, b.ns.path, '10.99.0.2', vnetHdr ? 'vnet' : 'plain', sealed ? 'sealed' : 'plaintext'],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  )
  const next = lines(peer)
  const ready = await next()
  const socket = PacketSocket.open({
    ifname: a.ifname,
    netns: a.ns.path,
    vnetHdr,
    ignoreOutgoing: true,
    rcvBuf: PACKET_SOCKET_BUFFER,
    sndBuf: PACKET_SOCKET_BUFFER,
  })
  const driver = new LinkDriver({
    channel: socket,
    mac: parseMac(socket.mac)!,
    ip: a.ip,
    vnetHdr,
    options: { insecurePlaintext: !sealed },
  })
  let echo: (() => void) | undefined
  let up: () => void = () => {}
  const established = new Promise<void>((r) => (up = r))
  let wake: () => void = () => {}
  const c: Connection = driver.connect(
    { mac: parseMac(ready.mac as string)!, ip: b.ip, port: 7860 },
    { message: () => echo?.(), established: () => up(), writable: () => wake() },
    BENCH_KEY,
  )
  await established

  // Throughput: keep the send buffer full of 1 MiB messages for SECONDS.
  const message = new Uint8Array(1 << 20).fill(0x5a)
  const frames0 = socket.stats()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let queued = 0
  while (performance.now() - t0 < SECONDS * 1000) {
    while (c.send(message, Delivery.Reliable)) queued += message.length
    await new Promise<void>((r) => {
      wake = r
      setTimeout(r, 5)
    })
  }
  const acked = queued - c.unacknowledged
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  peer.stdin!.write('x\n')
  const peerReport = await next()
  const frames = socket.stats().txFrames - frames0.txFrames
  await new Promise<void>((r) => {
    const check = () => (c.unacknowledged === 0 ? r() : setTimeout(check, 5))
    check()
  })

  // Round trips of one small ordered message.
  const rtts: number[] = []
  const ping = new Uint8Array(64)
  for (let i = 0; i < ROUND_TRIPS; i++) {
    const start = performance.now()
    await new Promise<void>((r) => {
      echo = r
      c.send(ping, Delivery.Ordered)
    })
    rtts.push((performance.now() - start) * 1000)
  }
  rtts.sort((x, y) => x - y)
  driver.stop({ silent: true })
  socket.close()
  peer.stdin!.end()
  const cpuSeconds = (cpu.user + cpu.system) / 1e6 + (peerReport.cpuSeconds as number)
  return {
    gbps: (acked * 8) / seconds / 1e9,
    framesPerSecond: frames / seconds,
    cpuSecondsPerGB: cpuSeconds / (acked / 1e9),
    rttP50us: percentile(rtts, 0.5),
    rttP99us: percentile(rtts, 0.99),
  }
}

function kernelRun(a: Netns, b: Netns) {
  const server = spawn('ip', ['netns', 'exec', b.name, 'iperf3', '-s', '-1', '-B', '10.98.0.2'], {
    stdio: 'ignore',
  })
  execFileSync('sleep', ['0.5'])
  const out = JSON.parse(exec(a, 'iperf3', ['-c', '10.98.0.2', '-t', String(SECONDS), '-J']))
  server.kill()
  const bps = out.end.sum_received.bits_per_second as number
  const cpuPercent = (out.end.cpu_utilization_percent.host_total +
    out.end.cpu_utilization_percent.remote_total) as number
  const bytes = out.end.sum_received.bytes as number
  const echoServer = spawn(
    'ip',
    [
      'netns',
      'exec',
      b.name,
      process.execPath,
      '-e',
      "require('net').createServer((s) => { s.setNoDelay(true); s.on('data', (d) => s.write(d)) }).listen(7861, '10.98.0.2', () => console.log('up'))",
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  execFileSync('sleep', ['0.5'])
  const client = `
    const s = require('net').connect(7861, '10.98.0.2', async () => {
      s.setNoDelay(true)
      const rtts = []
      const buf = Buffer.alloc(64)
      for (let i = 0; i < ${ROUND_TRIPS}; i++) {
        const t = performance.now()
        await new Promise((r) => { let got = 0; const on = (d) => { got += d.length; if (got >= 64) { s.off('data', on); r() } }; s.on('data', on); s.write(buf) })
        rtts.push((performance.now() - t) * 1000)
      }
      rtts.sort((x, y) => x - y)
      console.log(JSON.stringify({ p50: rtts[Math.floor(rtts.length / 2)], p99: rtts[Math.floor(rtts.length * 0.99)] }))
      s.destroy()
    })`
  const rtt = JSON.parse(exec(a, process.execPath, ['-e', client]))
  echoServer.kill()
  return {
    gbps: bps / 1e9,
    cpuSecondsPerGB: ((cpuPercent / 100) * SECONDS) / (bytes / 1e9),
    rttP50us: rtt.p50 as number,
    rttP99us: rtt.p99 as number,
  }
}

try {
  const t = directLink()
  ip(t.a.ns, ['addr', 'add', '10.98.0.1/24', 'dev', t.a.ifname])
  ip(t.b.ns, ['addr', 'add', '10.98.0.2/24', 'dev', t.b.ifname])
  const plain = await vrioRun(t.a, t.b, false)
  // Sealed and plaintext alternated on the same veth, so drift in the machine's load hits both.
  const sealedRuns: Awaited<ReturnType<typeof vrioRun>>[] = []
  const plaintextRuns: Awaited<ReturnType<typeof vrioRun>>[] = []
  for (let i = 0; i < 2; i++) {
    sealedRuns.push(await vrioRun(t.a, t.b, true, true))
    plaintextRuns.push(await vrioRun(t.a, t.b, true, false))
  }
  const mean = (runs: typeof sealedRuns) => {
    const m = { ...runs[0] }
    for (const k of Object.keys(m) as (keyof typeof m)[])
      m[k] = runs.reduce((sum, r) => sum + r[k], 0) / runs.length
    return m
  }
  const vnet = mean(sealedRuns)
  const insecure = mean(plaintextRuns)
  const k = kernelRun(t.a.ns, t.b.ns)
  const cell = (x: number) => (Math.round(x * 100) / 100).toString().padStart(13)
  const row = (name: string, key: 'gbps' | 'cpuSecondsPerGB' | 'rttP50us' | 'rttP99us') =>
    console.log(
      `${name.padEnd(26)}${cell(plain[key])}${cell(vnet[key])}${cell(insecure[key])}${cell(k[key])}${cell(vnet[key] / insecure[key])}${cell(vnet[key] / k[key])}`,
    )
  console.log(
    `${''.padEnd(26)}${'plain sealed'.padStart(13)}${'vnet sealed'.padStart(13)}${'vnet plaintxt'.padStart(13)}${'kernel TCP'.padStart(13)}${'seal/plain'.padStart(13)}${'vnet/kernel'.padStart(13)}`,
  )
  row('throughput Gbit/s', 'gbps')
  row('CPU s per GB, both ends', 'cpuSecondsPerGB')
  row('round trip p50 µs', 'rttP50us')
  row('round trip p99 µs', 'rttP99us')
  console.log(
    `${'frames/s sent'.padEnd(26)}${cell(plain.framesPerSecond)}${cell(vnet.framesPerSecond)}${cell(insecure.framesPerSecond)}`,
  )
  console.log(
    JSON.stringify({
      bench: 'channel',
      seconds: SECONDS,
      vrioPlain: plain,
      vrioVnet: vnet,
      vrioVnetPlaintext: insecure,
      runs: { sealed: sealedRuns, plaintext: plaintextRuns },
      kernel: k,
      ratio: {
        throughput: vnet.gbps / k.gbps,
        rttP50: vnet.rttP50us / k.rttP50us,
        sealedVsPlaintextThroughput: vnet.gbps / insecure.gbps,
        sealedRttAddedP50us: vnet.rttP50us - insecure.rttP50us,
      },
    }),
  )
} finally {
  cleanupNetns()
}
