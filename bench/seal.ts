/**
 * What sealing costs the transport itself, on one core, with no link in the way (issue 12): A
 * sends 1 MiB reliable messages to B in 64 000-byte GSO super-frames (as over a veth with
 * virtio-net headers: checksum offload, frames cut from an arena), sealed and --insecure-plaintext
 * alternately; and 64-byte ordered ping-pong round trips. Reports CPU ns per byte for the sender
 * and the receiver, and CPU µs per round trip, as ranges over the rounds. The kernel's share (the
 * packet sockets) is the same in both modes and is left out: bench/channel has the whole path.
 *
 *   npm run bench -- seal        (BENCH_ROUNDS=3 by default; BENCH_MB=512 per transfer round;
 *   BENCH_CASE=transfer|rtt and BENCH_MODE=sealed|plaintext for one of each, BENCH_DEBUG=1 prints
 *   frames per round trip)
 */
import { GSO_MAX_PAYLOAD } from '../src/io/link-driver.ts'
import { Delivery } from '../src/transport/config.ts'
import type { Connection } from '../src/transport/connection.ts'
import { Endpoint } from '../src/transport/endpoint.ts'
import { messageBuffers } from '../src/transport/message-buffers.ts'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const TOTAL = Number(process.env.BENCH_MB ?? 512) * 1024 * 1024
const ROUND_TRIPS = Number(process.env.BENCH_ROUND_TRIPS ?? 20_000)
/** 'transfer' or 'rtt' runs only that case; 'sealed' or 'plaintext' only that mode (for profiling). */
const CASE = process.env.BENCH_CASE ?? ''
const MODE = process.env.BENCH_MODE ?? ''
const KEY = Buffer.alloc(32, 0x42)
const gc = (globalThis as { gc?: () => void }).gc

function cpuNow(): number {
  const c = process.cpuUsage()
  return (c.user + c.system) / 1e6
}

/** An arena like LinkDriver's: frames are cut from it and it is reset once they are "sent". */
function arena(): { allocate: (size: number) => Uint8Array; reset: () => void } {
  const buf = Buffer.allocUnsafeSlow(8 * 1024 * 1024)
  let used = 0
  return {
    allocate(size) {
      const at = (used + 7) & ~7
      if (at + size > buf.length) return Buffer.allocUnsafe(size)
      used = at + size
      return buf.subarray(at, at + size)
    },
    reset() {
      used = 0
    },
  }
}

interface Pair {
  a: Endpoint
  b: Endpoint
  c: Connection
  /** Hands A's frames to B, then B's to A, until both are quiet; `timed`: CPU seconds of each side. */
  exchange(timed?: boolean): void
  sendCpu: number
  receiveCpu: number
  received: number
  echo: number
}

function pair(sealed: boolean, onB: (m: Uint8Array, c: Connection, owned: boolean) => void): Pair {
  const ab: Uint8Array[] = []
  const ba: Uint8Array[] = []
  const arenaA = arena()
  const arenaB = arena()
  const options = {
    checksumOffload: true,
    gsoMaxSize: GSO_MAX_PAYLOAD,
    insecurePlaintext: !sealed,
    receiveBuffer: 16 * 1024 * 1024,
    sendBuffer: 32 * 1024 * 1024,
    // ACK at once: the exchange runs no timers, so a delayed ACK would never leave.
    ackDelay: 0,
  }
  const p = { sendCpu: 0, receiveCpu: 0, received: 0, echo: 0 } as Pair
  p.a = new Endpoint({
    mac: 0xa,
    ip: 0x0a00_0001,
    sink: (f) => ab.push(f),
    allocate: arenaA.allocate,
    options,
  })
  p.b = new Endpoint({
    mac: 0xb,
    ip: 0x0a00_0002,
    sink: (f) => ba.push(f),
    allocate: arenaB.allocate,
    options,
    key: KEY,
    listenPort: 7860,
    accept: (_r, c) => ({
      message: (m, _d, owned) => {
        p.received += m.length
        onB(m, c, owned)
      },
    }),
  })
  p.c = p.a.connect({ mac: 0xb, ip: 0x0a00_0002, port: 7860 }, { message: () => p.echo++ }, KEY)
  p.exchange = (timed = true) => {
    while (ab.length > 0 || ba.length > 0) {
      if (!timed) {
        for (const f of ab) p.b.receive(f, true)
        ab.length = 0
        arenaA.reset()
        p.b.flush()
        for (const f of ba) p.a.receive(f, true)
        ba.length = 0
        arenaB.reset()
        p.a.flush()
        continue
      }
      const t0 = cpuNow()
      for (const f of ab) p.b.receive(f, true)
      ab.length = 0
      arenaA.reset()
      p.b.flush()
      const t1 = cpuNow()
      for (const f of ba) p.a.receive(f, true)
      ba.length = 0
      arenaB.reset()
      p.a.flush()
      const t2 = cpuNow()
      p.receiveCpu += t1 - t0
      p.sendCpu += t2 - t1
    }
  }
  p.exchange()
  return p
}

function transfer(sealed: boolean): { sendNsPerByte: number; receiveNsPerByte: number; frames: number } {
  const p = pair(sealed, (m, _c, owned) => {
    if (owned) messageBuffers.giveBack(m)
  })
  const message = new Uint8Array(1 << 20).fill(7)
  let queued = 0
  gc?.()
  p.sendCpu = p.receiveCpu = p.received = 0
  while (p.received < TOTAL) {
    const t0 = cpuNow()
    while (queued < TOTAL && p.c.send(message, Delivery.Reliable)) queued += message.length
    p.a.flush()
    p.sendCpu += cpuNow() - t0
    p.exchange()
  }
  const frames = p.c.stats.framesSent
  p.c.abort()
  return {
    sendNsPerByte: (p.sendCpu * 1e9) / TOTAL,
    receiveNsPerByte: (p.receiveCpu * 1e9) / TOTAL,
    frames,
  }
}

function pingPong(sealed: boolean): number {
  const p = pair(sealed, (m, c) => c.send(Uint8Array.from(m), Delivery.Ordered))
  const message = new Uint8Array(64).fill(1)
  gc?.()
  const t0 = cpuNow()
  for (let i = 0; i < ROUND_TRIPS; i++) {
    p.c.send(message, Delivery.Ordered)
    p.a.flush()
    p.exchange(false)
  }
  const us = ((cpuNow() - t0) * 1e6) / ROUND_TRIPS
  if (process.env.BENCH_DEBUG) {
    const server = [...p.b.connections()][0]
    console.log(
      sealed,
      'frames per round trip',
      (p.c.stats.framesSent + server.stats.framesSent) / ROUND_TRIPS,
    )
  }
  if (p.echo !== ROUND_TRIPS) throw new Error(`ping-pong: ${p.echo} of ${ROUND_TRIPS} echoed`)
  p.c.abort()
  return us
}

function range(v: number[], digits = 3): string {
  if (v.length === 0 || v.some((n) => !Number.isFinite(n))) return '-'
  const s = [...v].sort((x, y) => x - y)
  const f = (n: number) => n.toFixed(digits)
  return s.length === 1 ? f(s[0]) : `${f(s[0])}–${f(s[s.length - 1])}`
}

const out: Record<string, { send: number[]; receive: number[]; total: number[]; rtt: number[] }> = {
  sealed: { send: [], receive: [], total: [], rtt: [] },
  plaintext: { send: [], receive: [], total: [], rtt: [] },
}
const modes = MODE === 'sealed' ? [true] : MODE === 'plaintext' ? [false] : [true, false]
// Warm-up (JIT), not counted.
for (const sealed of modes) {
  if (CASE !== 'rtt') transfer(sealed)
  if (CASE !== 'transfer') pingPong(sealed)
}
for (let r = 0; r < ROUNDS; r++) {
  for (const sealed of r % 2 === 0 ? modes : [...modes].reverse()) {
    const o = out[sealed ? 'sealed' : 'plaintext']
    if (CASE !== 'rtt') {
      const t = transfer(sealed)
      o.send.push(t.sendNsPerByte)
      o.receive.push(t.receiveNsPerByte)
      o.total.push(t.sendNsPerByte + t.receiveNsPerByte)
    }
    if (CASE !== 'transfer') o.rtt.push(pingPong(sealed))
  }
}
console.log('mode        send ns/B      recv ns/B      total (= CPU s/GB)   CPU µs per 64 B round trip')
for (const [mode, o] of Object.entries(out)) {
  console.log(
    `${mode.padEnd(12)}${range(o.send).padEnd(15)}${range(o.receive).padEnd(15)}${range(o.total).padEnd(21)}${range(o.rtt, 2)}`,
  )
}
const ratio = out.sealed.total.map((s, i) => out.plaintext.total[i] / s)
const addedRtt = out.sealed.rtt.map((s, i) => s - out.plaintext.rtt[i])
console.log(
  `plaintext/sealed CPU per byte: ${range(ratio, 2)}; sealed adds ${range(addedRtt, 2)} µs CPU per round trip`,
)
console.log(JSON.stringify({ bench: 'seal', node: process.version, rounds: ROUNDS, totalBytes: TOTAL, out }))
