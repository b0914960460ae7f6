/**
 * The crypt service's data path: MB/s per core (bytes / CPU seconds of this process) of an
 * EncryptedDevice (aes-xts-plain64, 512-bit key, 512-byte sectors) over a MemoryDevice, for 1 MiB
 * and 4 KiB sequential reads and writes, one request at a time; next to node:crypto's aes-256-xts
 * over one large buffer (one update() call, the upper bound for anything built on Node's crypto)
 * measured in the same run, the JS fallback of the XTS core, and the MemoryDevice alone (what the
 * encryption is added to).
 *   npm run bench -- crypt           (BENCH_SECONDS per case, default 2)
 */
import { createCipheriv, randomBytes } from 'node:crypto'
import { MemoryDevice } from '../src/devices/blk/memory-device.ts'
import { EncryptedDevice } from '../src/services/crypt/encrypted-device.ts'
import { createXts } from '../src/services/crypt/xts.ts'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 2)
const DEVICE = 64 * 1024 * 1024
const MB = 1e6

function key(): Buffer {
  const k = randomBytes(64)
  k[0] = k[32] ^ 1
  return k
}

/** Runs `op` (bytes per call) for about SECONDS; MB per CPU second. */
async function perCore(bytesPerOp: number, op: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < 20; i++) await op(i) // warm-up
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let n = 0
  while (performance.now() - t0 < SECONDS * 1000) {
    for (let k = 0; k < 16; k++) await op(n++)
  }
  const cpu = process.cpuUsage(cpu0)
  return (n * bytesPerOp) / MB / ((cpu.user + cpu.system) / 1e6)
}

const k = key()
const big = randomBytes(16 * 1024 * 1024)
const one = randomBytes(1024 * 1024)
const raw16 = await perCore(big.length, () => createCipheriv('aes-256-xts', k, Buffer.alloc(16)).update(big))
const raw1 = await perCore(one.length, () => createCipheriv('aes-256-xts', k, Buffer.alloc(16)).update(one))
const raw = Math.max(raw16, raw1)
// The XTS core alone, in place (no device around it): what the device path adds encryption with.
const core = createXts(k, 'native')
const core1 = await perCore(one.length, () => core.crypt(true, one, one, 0, 512, 1))
const small = one.subarray(0, 4096)
const core4k = await perCore(small.length, () => core.crypt(true, small, small, 0, 512, 1))

async function deviceCase(
  impl: 'native' | 'js' | 'none',
  size: number,
  rw: 'read' | 'write',
): Promise<number> {
  const inner = new MemoryDevice({ size: DEVICE })
  const dev = impl === 'none' ? inner : new EncryptedDevice(inner, { cipher: createXts(k, impl) })
  const data = randomBytes(size)
  for (let at = 0; at < DEVICE; at += 1024 * 1024) await dev.write(at, randomBytes(1024 * 1024), false)
  const slots = DEVICE / size
  const rate =
    rw === 'read'
      ? await perCore(size, (i) => dev.read((i % slots) * size, size))
      : await perCore(size, (i) => dev.write((i % slots) * size, data, false))
  if (dev instanceof EncryptedDevice) dev.close()
  return rate
}

const rows: { name: string; mbps: number }[] = [
  { name: 'node:crypto aes-256-xts, one 16 MiB buffer', mbps: raw16 },
  { name: 'node:crypto aes-256-xts, one 1 MiB buffer', mbps: raw1 },
  { name: 'vrio XTS core (native), 1 MiB in place', mbps: core1 },
  { name: 'vrio XTS core (native), 4 KiB in place', mbps: core4k },
]
const results: Record<string, number> = { core_1M: core1, core_4k: core4k }
for (const impl of ['none', 'native', 'js'] as const)
  for (const [label, size] of [
    ['1M', 1024 * 1024],
    ['4k', 4096],
  ] as const)
    for (const rw of ['read', 'write'] as const) {
      if (impl === 'js' && size === 4096) continue
      const mbps = await deviceCase(impl, size, rw)
      rows.push({
        name:
          impl === 'none'
            ? `MemoryDevice alone ${label} ${rw}`
            : `EncryptedDevice ${label} ${rw} (${impl} XTS)`,
        mbps,
      })
      results[`${impl}_${label}_${rw}`] = mbps
    }

const width = Math.max(...rows.map((r) => r.name.length))
console.log(`${'case'.padEnd(width)}  MB/s per core  × raw`)
for (const r of rows)
  console.log(`${r.name.padEnd(width)}  ${r.mbps.toFixed(0).padStart(13)}  ${(r.mbps / raw).toFixed(2)}`)
const ratios = Object.fromEntries(
  Object.entries(results).map(([name, v]) => [name, Number((v / raw).toFixed(3))]),
)
console.log(
  JSON.stringify({
    bench: 'crypt',
    rawMBps: Math.round(raw),
    raw16MBps: Math.round(raw16),
    raw1MBps: Math.round(raw1),
    MBps: Object.fromEntries(Object.entries(results).map(([n, v]) => [n, Math.round(v)])),
    ratios,
  }),
)
