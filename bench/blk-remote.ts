/**
 * Remote block device benchmark (not a test): what the blk protocol costs on one core, in process.
 * RemoteBlockDevice -> session -> transport -> in-memory link (no faults, virtual clock) -> session
 * -> BlockBackend -> MemoryDevice, next to calling the same MemoryDevice directly at the same
 * queue depth. Both ends run on this one thread, so the figures are CPU cost, not latency: the
 * ratio says how much of a core the remote path needs per request compared with the direct call.
 * TCP and IPv4 checksums are computed in JS on both sides (no offload in the simulation).
 *
 *   npm run bench -- blk-remote          (or: node --expose-gc dist/bench/blk-remote.js)
 */
import type { BlockDevice } from '../src/devices/blk/device.ts'
import { MemoryDevice } from '../src/devices/blk/memory-device.ts'
import { NO_FAULTS } from '../test/support/memory-link.ts'
import { seededRandom } from '../test/support/random.ts'
import { BlkPair } from '../test/devices/blk-harness.ts'

const gc = (globalThis as { gc?: () => void }).gc
const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 256 * MiB

interface Spec {
  name: string
  op: 'read' | 'write'
  pattern: 'random' | 'sequential'
  blockSize: number
  queueDepth: number
  requests: number
}

interface Row {
  case: string
  path: 'direct' | 'remote'
  requests: number
  seconds: number
  iops: number
  megabytesPerSecond: number
  cpuMicrosPerRequest: number
  framesPerRequest?: number
}

const SPECS: Spec[] = [
  {
    name: '4k-randread-qd1',
    op: 'read',
    pattern: 'random',
    blockSize: 4 * KiB,
    queueDepth: 1,
    requests: 10_000,
  },
  {
    name: '4k-randread-qd32',
    op: 'read',
    pattern: 'random',
    blockSize: 4 * KiB,
    queueDepth: 32,
    requests: 40_000,
  },
  {
    name: '4k-randwrite-qd32',
    op: 'write',
    pattern: 'random',
    blockSize: 4 * KiB,
    queueDepth: 32,
    requests: 40_000,
  },
  { name: '1m-seqread-qd4', op: 'read', pattern: 'sequential', blockSize: MiB, queueDepth: 4, requests: 512 },
  {
    name: '1m-seqwrite-qd4',
    op: 'write',
    pattern: 'sequential',
    blockSize: MiB,
    queueDepth: 4,
    requests: 512,
  },
]

async function workload(device: BlockDevice, spec: Spec, drive: (p: Promise<unknown>) => Promise<unknown>) {
  const random = seededRandom(1)
  const blocks = SIZE / spec.blockSize
  const data = Buffer.alloc(spec.blockSize, 0x5a)
  let issued = 0
  let next = 0
  const worker = async () => {
    while (issued < spec.requests) {
      issued++
      const block = spec.pattern === 'random' ? Math.floor(random() * blocks) : next++ % blocks
      const offset = block * spec.blockSize
      if (spec.op === 'read') {
        const got = await device.read(offset, spec.blockSize)
        if (got.length !== spec.blockSize) throw new Error('short read')
      } else await device.write(offset, data, false)
    }
  }
  await drive(Promise.all(Array.from({ length: spec.queueDepth }, worker)))
}

async function measure(
  spec: Spec,
  path: Row['path'],
  device: BlockDevice,
  drive: (p: Promise<unknown>) => Promise<unknown>,
  frames?: () => number,
): Promise<Row> {
  gc?.()
  const f0 = frames?.() ?? 0
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  await workload(device, spec, drive)
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(c0)
  const row: Row = {
    case: spec.name,
    path,
    requests: spec.requests,
    seconds: round(seconds, 3),
    iops: Math.round(spec.requests / seconds),
    megabytesPerSecond: round((spec.requests * spec.blockSize) / seconds / 1e6, 1),
    cpuMicrosPerRequest: round((cpu.user + cpu.system) / spec.requests, 1),
  }
  if (frames) row.framesPerRequest = round((frames() - f0) / spec.requests, 1)
  return row
}

function round(v: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(v * f) / f
}

async function main(): Promise<void> {
  const memory = new MemoryDevice({ size: SIZE })
  await memory.write(0, Buffer.alloc(SIZE, 0xa5), false) // allocate every chunk: reads copy real data
  const pair = new BlkPair(memory, {
    faults: NO_FAULTS,
    backend: { depth: 64 },
    frontend: { queueDepth: 64, maxTransfer: MiB },
  })
  await pair.connect()
  const frames = () => pair.sim.link.stats.delivered

  const rows: Row[] = []
  for (const spec of SPECS) {
    // One untimed warm-up of each path, then the measured runs.
    const warm = { ...spec, requests: Math.max(spec.queueDepth, Math.floor(spec.requests / 10)) }
    await workload(memory, warm, (p) => p)
    await workload(pair.front, warm, (p) => pair.settle(p))
    rows.push(await measure(spec, 'direct', memory, (p) => p))
    rows.push(await measure(spec, 'remote', pair.front, (p) => pair.settle(p), frames))
  }

  const ratios: Record<string, { iops: number; cpuPerRequest: number }> = {}
  console.log(
    'case                 path     requests    IOPS      MB/s   CPU µs/req  frames/req',
    '\n--------------------------------------------------------------------------------',
  )
  for (const r of rows) {
    console.log(
      `${r.case.padEnd(20)} ${r.path.padEnd(7)} ${String(r.requests).padStart(9)} ${String(r.iops).padStart(8)} ${String(r.megabytesPerSecond).padStart(9)} ${String(r.cpuMicrosPerRequest).padStart(12)} ${String(r.framesPerRequest ?? '').padStart(11)}`,
    )
  }
  console.log('')
  for (const spec of SPECS) {
    const d = rows.find((r) => r.case === spec.name && r.path === 'direct')!
    const m = rows.find((r) => r.case === spec.name && r.path === 'remote')!
    ratios[spec.name] = {
      iops: round(m.iops / d.iops, 4),
      cpuPerRequest: round(m.cpuMicrosPerRequest / d.cpuMicrosPerRequest, 1),
    }
    console.log(
      `${spec.name.padEnd(20)} remote/direct: ${ratios[spec.name].iops} of the IOPS, ${ratios[spec.name].cpuPerRequest}x the CPU per request`,
    )
  }
  console.log(JSON.stringify({ bench: 'blk-remote', node: process.version, rows, ratios }))
}

await main()
