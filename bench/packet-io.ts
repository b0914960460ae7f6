/**
 * Packet I/O over a veth pair between two namespaces: frames/s and CPU µs per frame.
 *
 *   send:   this process sends with sendmmsg (64 frames per call) vs one frame per call (the
 *           baseline: the project has no JS raw socket). CPU includes the kernel's veth delivery,
 *           which runs on the sender's CPU.
 *   recv:   a child process floods with sendmmsg; this process receives (uv_poll + recvmmsg
 *           on the event loop) and counts frames in JS. CPU is this process's.
 *
 * Run: npm run build && node dist/bench/packet-io.js [seconds-per-case]
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { PacketSocket } from '../src/io/index.ts'
import { cleanupNetns, createNetns, createVethPair } from '../test/support/netns.ts'

const ETHERTYPE = 0x88b5

function frame(size: number, dst: string, src: string): Buffer {
  const f = Buffer.alloc(size, 0xa5)
  Buffer.from(dst.replaceAll(':', ''), 'hex').copy(f, 0)
  Buffer.from(src.replaceAll(':', ''), 'hex').copy(f, 6)
  f.writeUInt16BE(ETHERTYPE, 12)
  return f
}

const tick = () => new Promise<void>((r) => setImmediate(r))

/** Child mode: flood `ifname` for `seconds` with batches of 64 frames. */
async function sender(
  ifname: string,
  netns: string,
  dst: string,
  size: number,
  seconds: number,
): Promise<void> {
  const tx = PacketSocket.open({ ifname, netns, protocol: 0 })
  const batch = Array.from({ length: 64 }, () => frame(size, dst, tx.mac))
  const end = performance.now() + seconds * 1000
  process.stdout.write('GO\n')
  while (performance.now() < end) {
    for (let i = 0; i < 256; i++) tx.send(batch)
    await tick()
  }
  tx.close()
}

interface Row {
  case: string
  frameBytes: number
  framesPerSec: number
  cpuUsPerFrame: number
  kernelDrops?: number
  eagain?: number
  framesPerBatch?: number
}

function cpuMicros(): number {
  const u = process.cpuUsage()
  return u.user + u.system
}

async function benchSend(
  tx: PacketSocket,
  size: number,
  dst: string,
  perCall: number,
  seconds: number,
): Promise<Row> {
  const frames = Array.from({ length: perCall }, () => frame(size, dst, tx.mac))
  const s0 = tx.stats()
  const c0 = cpuMicros()
  const t0 = performance.now()
  const end = t0 + seconds * 1000
  // Yield now and then so the run stays a well-behaved event-loop citizen, as real code would.
  const callsPerTick = perCall === 1 ? 4096 : 128
  while (performance.now() < end) {
    for (let i = 0; i < callsPerTick; i++) tx.send(frames)
    await tick()
  }
  const secs = (performance.now() - t0) / 1000
  const s1 = tx.stats()
  const sent = s1.txFrames - s0.txFrames
  return {
    case: perCall === 1 ? 'send 1/call' : `send sendmmsg ${perCall}/call`,
    frameBytes: size,
    framesPerSec: sent / secs,
    cpuUsPerFrame: (cpuMicros() - c0) / sent,
    eagain: s1.txEagain - s0.txEagain,
  }
}

async function benchRecv(
  rx: PacketSocket,
  txIf: string,
  txNs: string,
  size: number,
  seconds: number,
): Promise<Row> {
  let frames = 0
  rx.onBatch((b) => {
    frames += b.count
  })
  const self = fileURLToPath(import.meta.url)
  const child = spawn(
    process.execPath,
    [self, '--sender', txIf, txNs, rx.mac, String(size), String(seconds + 1.5)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
  const exited = new Promise((r) => child.on('exit', r))
  await new Promise<void>((r) => child.stdout.once('data', () => r()))
  await new Promise((r) => setTimeout(r, 500)) // let the flood settle
  const s0 = rx.stats()
  const f0 = frames
  const c0 = cpuMicros()
  const t0 = performance.now()
  await new Promise((r) => setTimeout(r, seconds * 1000))
  const got = frames - f0
  const cpu = cpuMicros() - c0
  const secs = (performance.now() - t0) / 1000
  const s1 = rx.stats()
  await exited
  return {
    case: 'recv',
    frameBytes: size,
    framesPerSec: got / secs,
    cpuUsPerFrame: cpu / got,
    kernelDrops: s1.kernelDrops - s0.kernelDrops,
    framesPerBatch: (s1.rxFrames - s0.rxFrames) / (s1.rxBatches - s0.rxBatches),
  }
}

async function main(): Promise<void> {
  const seconds = Number(process.argv[2] ?? 2)
  const nsA = createNetns()
  const nsB = createNetns()
  const veth = createVethPair(nsA, nsB, { mtu: 1500 })
  const rows: Row[] = []
  try {
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: 0 })
    const bMac = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, protocol: 0 })
    const dst = bMac.mac
    bMac.close()
    for (const size of [1514, 64]) {
      rows.push(await benchSend(tx, size, dst, 64, seconds))
      rows.push(await benchSend(tx, size, dst, 1, seconds))
    }
    tx.close()
    for (const size of [1514, 64]) {
      const rx = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, rcvBuf: 32 << 20, rxBatch: 64 })
      rows.push(await benchRecv(rx, veth.a.ifname, nsA.path, size, seconds))
      rx.close()
    }
  } finally {
    cleanupNetns()
  }
  const fmt = (n: number | undefined, d: number) => (n === undefined ? '' : n.toFixed(d))
  console.log('case                       bytes   frames/s   CPU µs/frame   drops/eagain   frames/batch')
  for (const r of rows) {
    console.log(
      `${r.case.padEnd(26)} ${String(r.frameBytes).padStart(5)} ${fmt(r.framesPerSec, 0).padStart(10)} ${fmt(r.cpuUsPerFrame, 3).padStart(14)}   ${String(r.kernelDrops ?? r.eagain ?? '').padEnd(12)}   ${fmt(r.framesPerBatch, 1)}`,
    )
  }
  console.log(
    JSON.stringify({
      bench: 'packet-io',
      secondsPerCase: seconds,
      results: rows.map((r) => ({
        ...r,
        framesPerSec: Math.round(r.framesPerSec),
        cpuUsPerFrame: Number(r.cpuUsPerFrame.toFixed(3)),
        framesPerBatch: r.framesPerBatch === undefined ? undefined : Number(r.framesPerBatch.toFixed(1)),
      })),
    }),
  )
}

if (process.argv[2] === '--sender') {
  const [, , , ifname, netns, dst, size, secs] = process.argv
  await sender(ifname, netns, dst, Number(size), Number(secs))
} else {
  await main()
}
