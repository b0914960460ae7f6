/**
 * A peer that sends many Skip segments (or out-of-order data) fragmenting the receive space: the
 * ranges a connection holds stay bounded by maxIntervals, the work per segment is a binary search
 * (counted in search steps, never timed), and the connection still carries messages afterwards.
 */
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { type ConnectionOptions, Delivery, SEGMENT_SKIP } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { Endpoint } from '../../src/transport/endpoint.ts'
import { decodeTcpFrame, encodeTcpFrame, newTcpFrame } from '../../src/wire/frame.ts'
import { seededRandom } from '../support/random.ts'

function pair(sealedOptions: Partial<ConnectionOptions>, clientOptions?: Partial<ConnectionOptions>) {
  // The frames below are crafted and altered on the way: that needs the unsealed format (a sealed
  // channel drops them as 'auth-failed' before the Skip logic sees them).
  const options = { insecurePlaintext: true, ...sealedOptions }
  let now = 0
  const random = seededRandom(12)
  const toB: Buffer[] = []
  const toA: Buffer[] = []
  const got: Uint8Array[] = []
  let server: Connection | undefined
  const a = new Endpoint({
    mac: 0xa,
    ip: 1,
    sink: (f) => toB.push(Buffer.from(f)),
    clock: () => now,
    random,
    peerPort: 7860,
    options,
  })
  const b = new Endpoint({
    mac: 0xb,
    ip: 2,
    sink: (f) => toA.push(Buffer.from(f)),
    clock: () => now,
    random,
    listenPort: 7860,
    options,
    accept: (_remote, c) => {
      server = c
      return { message: (m) => got.push(Buffer.from(m)) }
    },
  })
  const clientGot: Uint8Array[] = []
  const client = a.connect(
    { mac: 0xb, ip: 2, port: 7860 },
    { message: (m) => clientGot.push(Buffer.from(m)) },
    undefined,
    clientOptions,
  )
  const pump = (tap?: (f: Buffer) => void, tapToA?: (f: Buffer) => void) => {
    for (let i = 0; i < 200 && (toA.length > 0 || toB.length > 0); i++) {
      for (const f of toB.splice(0)) {
        tap?.(f)
        b.receive(f)
      }
      b.flush()
      for (const f of toA.splice(0)) {
        tapToA?.(f)
        a.receive(f)
      }
      a.flush()
      now += 1
    }
  }
  pump()
  assert.equal(client.state, 'established')
  return { a, b, client, server: () => server!, got, clientGot, pump }
}

/**
 * Floods the server with `n` one-byte messages `distance` bytes past the next expected position,
 * a byte apart: Skips for them (`skip`), or their data.
 */
function hostileFlood(p: ReturnType<typeof pair>, n: number, distance: number, skip: boolean): void {
  // A real data segment from the client as the template: addresses, ports, timestamps.
  let template: Buffer | undefined
  p.client.send(Buffer.alloc(10, 1), Delivery.BestEffort)
  p.pump((f) => {
    const d = newTcpFrame()
    if (!template && !decodeTcpFrame(f, d, true) && d.payloadLength > 0) template = Buffer.from(f)
  })
  assert.ok(template)
  const d = newTcpFrame()
  assert.equal(decodeTcpFrame(template, d, true), undefined)
  const base = d.tcp.seq + 10 + distance
  const frame = Buffer.alloc(d.payloadOffset + (skip ? 0 : 1), 0x5a)
  for (let i = 0; i < n; i++) {
    const seq = (base + 2 * i) >>> 0
    d.tcp.seq = seq
    d.tcp.options.vrio.present = true
    d.tcp.options.vrio.messageStart = seq
    d.tcp.options.vrio.messageLength = 1
    d.tcp.options.vrio.flags = skip ? Delivery.BestEffort | SEGMENT_SKIP : Delivery.Reliable
    encodeTcpFrame(frame, d, skip ? 0 : 1, false)
    p.b.receive(frame)
  }
  p.b.flush()
}

it('100k Skip segments: ranges held stay bounded, work is O(n log n), the channel keeps working', () => {
  const maxIntervals = 4096
  const p = pair({ maxIntervals })
  const n = 100_000
  hostileFlood(p, n, 1_000_000, true)
  const s = p.server()
  assert.equal(s.state, 'established')
  assert.ok(s.heldRanges <= 2 * maxIntervals, `ranges held: ${s.heldRanges}`)
  assert.ok(
    (s.stats.drops['interval-limit'] ?? 0) >= n - maxIntervals,
    'the excess Skips are dropped and counted',
  )
  // A binary search per segment: at most ~log2(maxIntervals) + a few steps each.
  assert.ok(s.rangeSteps <= n * 2 * (Math.log2(maxIntervals) + 4), `steps: ${s.rangeSteps}`)
  // Well-formed traffic after the garbage still arrives.
  p.got.length = 0
  const big = Buffer.alloc(100_000, 7)
  assert.ok(p.client.send(big, Delivery.Reliable))
  p.pump()
  assert.equal(p.got.length, 1)
  assert.ok(big.equals(p.got[0]))
})

it('out-of-order data fragmenting the window beyond maxIntervals is dropped and counted', () => {
  const p = pair({ maxIntervals: 64 })
  const s = p.server()
  p.got.length = 0
  hostileFlood(p, 10_000, 100_000, false)
  assert.ok(s.heldRanges <= 2 * 64, `ranges held: ${s.heldRanges}`)
  assert.ok((s.stats.drops['interval-limit'] ?? 0) >= 10_000 - 64)
  // Whole one-byte messages are delivered as they come; the dropped ones are not.
  assert.ok(p.got.length <= 64 + 1, `delivered: ${p.got.length}`)
  p.got.length = 0
  const big = Buffer.alloc(50_000, 9)
  assert.ok(p.client.send(big, Delivery.Reliable))
  p.pump()
  assert.equal(p.got.length, 1)
  assert.ok(big.equals(p.got[0]))
})

it('partly sent messages beyond the per-connection reassembly budget are dropped; closing frees it all', () => {
  // The budget is the client's own (as the IOhyp gives each guest's connection its own).
  const budget = 4 * 1024 * 1024
  const p = pair({}, { maxReassemblyBytes: budget })
  const s = p.server()
  let template: Buffer | undefined
  s.send(Buffer.alloc(10, 1), Delivery.Reliable)
  p.pump(undefined, (f) => {
    const d = newTcpFrame()
    if (!template && !decodeTcpFrame(f, d, true) && d.payloadLength > 0) template = Buffer.from(f)
  })
  assert.ok(template)
  const d = newTcpFrame()
  assert.equal(decodeTcpFrame(template, d, true), undefined)
  // The first 100 bytes of 30 messages of 256 KiB each (7.5 MiB: within the window), a message
  // apart: each needs a 256 KiB buffer.
  const base = d.tcp.seq + 10
  const frame = Buffer.alloc(d.payloadOffset + 100, 0x11)
  let maxHeld = 0
  for (let i = 0; i < 30; i++) {
    const seq = (base + 1 + i * 256 * 1024) >>> 0
    d.tcp.seq = seq
    d.tcp.options.vrio.messageStart = seq
    d.tcp.options.vrio.messageLength = 256 * 1024
    d.tcp.options.vrio.flags = Delivery.Reliable
    encodeTcpFrame(frame, d, 100, false)
    p.a.receive(frame)
    maxHeld = Math.max(maxHeld, p.client.reassemblyMemory)
  }
  assert.ok(maxHeld <= budget, `held ${maxHeld}`)
  assert.equal(p.client.stats.drops['receive-memory'], 30 - budget / (256 * 1024))
  // The server (which got a default budget) is unaffected; the channel still carries messages.
  p.client.send(Buffer.alloc(2000, 3), Delivery.Reliable)
  p.pump()
  assert.ok(p.got.some((m) => m.length === 2000))
  // Leaving frees everything the peer made it hold.
  p.client.abort()
  assert.equal(p.client.reassemblyMemory, 0)
  assert.equal(p.client.heldRanges, 0)
})
