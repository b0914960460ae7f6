import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { FileDevice } from '../../src/devices/blk/file-device.ts'
import { RemoteBlockDevice } from '../../src/devices/blk/frontend.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import {
  BLOCK_ID_WINDOW,
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockFlag,
  type BlockHandle,
  BlockOp,
  BlockStatus,
  encodeBlockBatchHead,
  encodeBlockRequestHead,
  encodeBlockResponseHead,
  MAX_REQUEST_ID,
} from '../../src/devices/blk/protocol.ts'
import { Delivery } from '../../src/transport/config.ts'
import { decodeMessageHeader, newMessageHeader } from '../../src/wire/message-header.ts'
import { isVrioError } from '../../src/errors.ts'
import { fallocateAvailable } from '../../src/io/fallocate.ts'
import type { FaultModel } from '../support/memory-link.ts'
import { seededRandom } from '../support/random.ts'
import { assertBytes, BlkPair, pattern } from './blk-harness.ts'

const KiB = 1024
const MiB = 1024 * KiB

const HARSH: FaultModel = {
  loss: 0.1,
  duplicate: 0.1,
  reorder: 0.1,
  reorderDelay: 2,
  corrupt: 0,
  delay: 0.1,
  jitter: 0.05,
  gro: 0,
  mtu: 65_535,
}

/** Seed of the random workload; set VRIO_BLK_SEED to explore others. */
const SEED = Number(process.env.VRIO_BLK_SEED ?? 42)

const code = (e: unknown) => (isVrioError(e) ? e.code : String(e))

/** Records how a promise settled, without making it an unhandled rejection. */
function track<T>(p: Promise<T>) {
  const t: { settled: boolean; value?: T; error?: unknown } = { settled: false }
  p.then(
    (v) => {
      t.settled = true
      t.value = v
    },
    (e) => {
      t.settled = true
      t.error = e
    },
  )
  return t
}

/** A hand-made request, for what a well-behaved front-end never sends. */
function rawRequest(
  device: BlockHandle,
  epoch: number,
  id: number,
  r: { op: number; flags?: number; length: number; offset: number; floor?: number },
  data?: Uint8Array,
): Buffer {
  const head = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
  encodeBlockRequestHead(head, 0, device, epoch, id, {
    op: r.op,
    flags: r.flags ?? 0,
    length: r.length,
    offset: r.offset,
    floor: r.floor ?? id,
  })
  return Buffer.concat(data ? [head, data] : [head])
}

/** A gate: `hold` returns promises that all settle on `open()`. */
function gate() {
  let open!: () => void
  const opened = new Promise<void>((resolve) => (open = resolve))
  return { opened, open }
}

describe('remote block device over the simulated link', () => {
  it('reads, writes, FUA, flush, trim and write-zeroes end to end', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 8 * MiB }))
    await h.connect()
    const f = h.front
    assert.equal(f.size, 8 * MiB)
    const a = pattern(1, 300 * KiB)
    await h.settle(f.write(4096, a, false))
    await h.settle(f.write(2 * MiB, pattern(2, 4096), true))
    await h.settle(f.flush())
    assertBytes(await h.settle(f.read(4096, a.length)), a)
    await h.settle(f.trim(4096, 64 * KiB))
    await h.settle(f.writeZeroes(2 * MiB, 4096, false, true))
    assertBytes(await h.settle(f.read(2 * MiB, 4096)), new Uint8Array(4096))
    const log = h.device.log.map((l) => l.op)
    assert.deepEqual(log, ['write', 'write', 'flush', 'trim', 'writeZeroes'])
    assert.equal(f.outstanding, 0)
  })

  it('splits calls larger than maxTransfer and reassembles reads', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 8 * MiB }), { frontend: { maxTransfer: 64 * KiB } })
    await h.connect()
    const data = pattern(3, 3 * MiB + 123)
    await h.settle(h.front.write(1000, data, false))
    assert.equal(h.device.log.length, Math.ceil(data.length / (64 * KiB)))
    assertBytes(await h.settle(h.front.read(1000, data.length)), data)
  })

  const randomTraffic = async (batch?: number) => {
    const size = 32 * MiB
    const h = new BlkPair(new MemoryDevice({ size }), {
      seed: SEED,
      faults: HARSH,
      frontend: { queueDepth: 16 },
      batch,
    })
    await h.connect()
    const shadow = new Uint8Array(size)
    const random = seededRandom(SEED * 101)
    const busy: { start: number; end: number }[] = []
    const overlaps = (s: number, e: number) => busy.some((b) => b.start < e && s < b.end)
    const TOTAL = 2000
    let issued = 0
    let completed = 0
    let readBytes = 0
    let failures = 0
    let writes = 0
    const worker = async () => {
      while (issued < TOTAL) {
        // Lengths log-uniform from 1 byte to 1 MiB; ranges never overlap a request in flight.
        let offset = 0
        let length = 0
        do {
          length = Math.max(1, Math.floor(2 ** (random() * 20)))
          offset = Math.floor(random() * (size - length))
        } while (overlaps(offset, offset + length))
        const range = { start: offset, end: offset + length }
        busy.push(range)
        const n = issued++
        try {
          if (random() < 0.5) {
            writes++
            const data = pattern(n, length)
            await h.front.write(offset, data, random() < 0.1)
            shadow.set(data, offset)
          } else {
            const got = await h.front.read(offset, length)
            assertBytes(got, shadow.subarray(offset, offset + length), `read ${n} at ${offset}+${length}`)
            readBytes += length
          }
        } catch (e) {
          failures++
          throw e
        } finally {
          busy.splice(busy.indexOf(range), 1)
          completed++
        }
      }
    }
    const workers = Array.from({ length: 24 }, worker)
    const done = Promise.all(workers)
    await h.settle(done)
    assert.equal(completed, TOTAL)
    assert.equal(failures, 0)
    assert.ok(readBytes > 0)
    assert.ok(h.sim.link.stats.lost > 100, 'the link did lose frames')
    assert.ok(h.sim.link.stats.duplicated > 100, 'and duplicated them')
    // The device saw each write once.
    assert.equal(h.device.log.length, writes)
    assert.ok(h.device.maxActive <= 16, `at most queueDepth requests at once (${h.device.maxActive})`)
    assert.ok(h.backend.ops.errors.every((n) => n === 0))
    // And the whole device matches the shadow.
    assertBytes(await h.settle(h.front.read(0, size)), shadow)
    return h
  }

  it('thousands of random reads and writes over a link with 10% loss, duplication and reordering', async () => {
    const h = await randomTraffic()
    assert.equal(h.front.stats.batches, 0)
  })

  it('the same with reads and writes in batches (the IOhyp announced them): lost, duplicated and re-sent batches too', async () => {
    const h = await randomTraffic(64)
    assert.ok(h.front.stats.batches > 0, 'reads left in batches')
    assert.ok(h.backend.stats.batches > 0, 'and the back-end took them')
    assert.equal(h.backend.stats.badBatches, 0)
  })

  it('reads made in one tick leave as one batch, each answered alone; a new session sends none until told', async () => {
    const h = new BlkPair(new MemoryDevice({ size: MiB }), { batch: 64 })
    await h.connect()
    await h.settle(h.front.write(0, pattern(4, 64 * KiB), false))
    h.captureRequests = true
    const reads = Array.from({ length: 10 }, (_, i) => h.front.read(i * 4096, 4096))
    const got = await h.settle(Promise.all(reads))
    for (const [i, b] of got.entries())
      assertBytes(b, pattern(4, 64 * KiB).subarray(i * 4096, (i + 1) * 4096))
    assert.equal(h.requests.length, 1, 'one message')
    const m = h.requests[0]
    assert.equal(m.readUInt16BE(2), 1, 'flag BATCH')
    assert.equal(m.length, 32 + 10 * BLOCK_REQUEST_HEAD_LENGTH)
    assert.equal(h.front.stats.batches, 1)
    assert.equal(h.front.stats.sent, 11, 'the write and ten reads')
    assert.equal(h.backend.stats.batches, 1)
    // A single read is a request of its own.
    h.requests.length = 0
    await h.settle(h.front.read(0, 4096))
    assert.equal(h.requests.length, 1)
    assert.equal(h.requests[0].readUInt16BE(2), 0)
    // On a session the IOhyp has not announced batches on (an older IOhyp after a restart), none.
    h.front.useBatch(undefined)
    h.requests.length = 0
    await h.settle(Promise.all(Array.from({ length: 4 }, (_, i) => h.front.read(i * 4096, 4096))))
    assert.equal(h.requests.length, 4)
    assert.ok(h.requests.every((r) => r.readUInt16BE(2) === 0))
  })

  it('malformed batches are dropped and counted, unanswered; a batch with a bad read answers it with its error in the batch response', async () => {
    const h = new BlkPair(new MemoryDevice({ size: MiB }), { handle: { high: 7, low: 0x1234_5678 } })
    await h.connect()
    h.captureResponses = true
    const E = 0x4444_0002
    const good = h.handle
    const batch = (device: BlockHandle, entries: Buffer[]) => {
      const head = Buffer.alloc(32)
      encodeBlockBatchHead(head, 0, device, 0) // the body length follows below
      const m = Buffer.concat([head, ...entries])
      m.writeUInt32BE(m.length - 32, 4) // a well-formed message, whatever its body
      return m
    }
    const read = (id: number, offset = 0, length = 512) =>
      rawRequest(good, E, id, { op: BlockOp.In, length, offset })
    const malformed = [
      batch(good, [read(1)]),
      batch(good, [read(2), rawRequest(good, E, 3, { op: BlockOp.Flush, length: 0, offset: 0 })]),
      batch(good, [
        read(4),
        rawRequest({ high: 7, low: 0x1234_5679 }, E, 5, { op: BlockOp.In, length: 512, offset: 0 }),
      ]),
    ]
    for (const m of malformed) assert.ok(h.guestSession!.sendData(m, Delivery.Reliable))
    // One batch with a read past the end: that read gets OutOfRange, the others their data.
    assert.ok(
      h.guestSession!.sendData(
        batch(good, [read(10), read(11, MiB - 256), read(12, 4096)]),
        Delivery.Reliable,
      ),
    )
    assert.ok(await h.run(() => h.responses.length === 3))
    const status = (id: number) => h.responses.find((r) => r.header.requestLow === id)?.header.status
    assert.equal(status(10), BlockStatus.Ok)
    assert.equal(status(11), BlockStatus.OutOfRange)
    assert.equal(status(12), BlockStatus.Ok)
    assert.ok(
      h.responses.every((r) => r.batched),
      'in one batch response',
    )
    assert.equal(h.front.stats.batchResponses, 1)
    assert.equal(h.backend.stats.badBatches, malformed.length)
    assert.equal(h.backend.stats.batches, 1)
    assert.ok(h.guestSession, 'the session is still up')
    assertBytes(await h.settle(h.front.read(0, 4096)), new Uint8Array(4096))
  })

  it('session lost in the middle of writes: every write runs exactly once', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 16 * MiB }), {
      seed: SEED + 7,
      faults: { ...HARSH, loss: 0.02, duplicate: 0.02, delay: 0.5 },
      frontend: { queueDepth: 32 },
    })
    await h.connect()
    // Every tenth write is held on the device across the session change, so that its re-sent
    // copy arrives while the first one still runs.
    const held = gate()
    const late = gate()
    let lateWrites = 0
    h.device.gate = (op) => {
      if (op.op !== 'write') return undefined
      if ((op.offset / 65_536) % 10 === 0) return held.opened
      if (lateWrites > 0) {
        lateWrites++
        return late.opened
      }
      return undefined
    }
    const COUNT = 200
    const writes = Array.from({ length: COUNT }, (_, i) =>
      track(h.front.write(i * 65_536, pattern(i, 8000), false)),
    )
    assert.ok(await h.run(() => h.device.log.length >= 60))
    // Then some complete while the link is down, so their answers are lost with the session.
    lateWrites = 1
    assert.ok(await h.run(() => lateWrites > 10))
    h.faults.loss = 1
    late.open()
    await h.run(() => h.device.log.length >= 60 + lateWrites - 1)
    const answered = writes.filter((w) => w.settled).length
    assert.ok(answered < COUNT - 20, `some writes still unanswered (${answered})`)
    h.killSessions()
    await h.run(() => h.guestSession === undefined && h.iohypSession === undefined)
    h.faults.loss = 0.02
    await h.connect()
    assert.ok(await h.run(() => h.backend.stats.duplicatesRunning > 0))
    held.open()
    assert.ok(await h.run(() => writes.every((w) => w.settled)))
    for (const w of writes) assert.equal(w.error, undefined)
    // Exactly once: one device write per offset, with its data.
    const seen = new Map<number, number>()
    for (const l of h.device.log) seen.set(l.offset, (seen.get(l.offset) ?? 0) + 1)
    assert.equal(seen.size, COUNT)
    for (const [offset, n] of seen) assert.equal(n, 1, `write at ${offset} ran ${n} times`)
    assert.ok(h.front.stats.resent > 0, 're-sent on the new session')
    assert.ok(h.backend.stats.replayed >= 10, 'completed duplicates answered from the record')
    assert.ok(h.backend.stats.duplicatesRunning > 0, 'running duplicates ignored')
    for (let i = 0; i < COUNT; i += 17)
      assertBytes(await h.settle(h.front.read(i * 65_536, 8000)), pattern(i, 8000))
  })

  it('a late duplicate of a completed write never overwrites a newer write', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 4 * MiB }), { seed: 3 })
    await h.connect()
    h.captureRequests = true
    // A read held on the device keeps the front-end's floor below the writes, so the back-end
    // must answer the duplicate from its record.
    const held = gate()
    h.device.gate = (op) => (op.op === 'read' && op.offset === 3 * MiB ? held.opened : undefined)
    const stuck = track(h.front.read(3 * MiB, 512))
    await h.run(() => h.device.active === 1)
    const R = 64 * KiB
    const first = pattern(1, 16 * KiB)
    const second = pattern(2, 16 * KiB)
    await h.settle(h.front.write(R, first, false))
    const w1 = h.requests.find((m) => m[32] === BlockOp.Out && m.readUInt32BE(44) === R)!
    assert.ok(w1, 'captured the first write as sent')
    await h.settle(h.front.write(R, second, false))
    assert.equal(h.device.log.filter((l) => l.op === 'write').length, 2)

    // The first write's bytes arrive again, late (as a copy delayed in an old connection would).
    const replayed = h.backend.stats.replayed
    h.guestSession!.connection.send(Buffer.from(w1), Delivery.Reliable)
    assert.ok(await h.run(() => h.backend.stats.replayed === replayed + 1))
    assert.equal(h.device.log.filter((l) => l.op === 'write').length, 2, 'not run again')
    assertBytes(await h.settle(h.front.read(R, second.length)), second)
    assert.ok(h.front.stats.unexpectedResponses >= 1, 'its answer is ignored by the front-end')

    // Once the floor has passed it, a copy is Stale: still not run.
    held.open()
    assert.ok(await h.run(() => stuck.settled))
    await h.settle(h.front.write(2 * MiB, pattern(9, 512), false)) // carries the new floor
    const stale = h.backend.stats.stale
    h.guestSession!.connection.send(Buffer.from(w1), Delivery.Reliable)
    assert.ok(await h.run(() => h.backend.stats.stale === stale + 1))
    assert.equal(h.device.log.filter((l) => l.offset === R).length, 2)
    assertBytes(await h.settle(h.front.read(R, second.length)), second)
  })

  it('IOhyp restart (record lost) while writes are pending: they are re-sent and complete', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 16 * MiB }), {
      seed: SEED + 11,
      faults: { ...HARSH, loss: 0.05, duplicate: 0.02, delay: 0.5 },
    })
    await h.connect()
    const COUNT = 150
    const writes = Array.from({ length: COUNT }, (_, i) =>
      track(h.front.write(i * 65_536 + 512, pattern(1000 + i, 20_000), i % 5 === 0)),
    )
    assert.ok(await h.run(() => h.device.log.length >= 40))
    assert.ok(writes.some((w) => !w.settled))
    const oldBackend = h.backend
    h.restartBackend()
    await h.run(() => h.guestSession === undefined && h.iohypSession === undefined)
    assert.notEqual(h.backend, oldBackend)
    await h.connect()
    assert.ok(await h.run(() => writes.every((w) => w.settled)))
    for (const w of writes) assert.equal(w.error, undefined)
    assert.ok(h.front.stats.resent > 0)
    for (let i = 0; i < COUNT; i++)
      assertBytes(await h.settle(h.front.read(i * 65_536 + 512, 20_000)), pattern(1000 + i, 20_000))
  })

  it('IOhyp stopping: running writes are answered, queued ones stay unanswered and complete on the next IOhyp', async () => {
    const h = new BlkPair(new MemoryDevice({ size: MiB }), { backend: { depth: 1 } })
    await h.connect()
    const held = gate()
    h.device.gate = () => held.opened
    const writes = Array.from({ length: 6 }, (_, i) =>
      track(h.front.write(i * 4096, pattern(70 + i, 4096), false)),
    )
    assert.ok(await h.run(() => h.device.active === 1 && h.backend.stats.requests === 6))
    let closed = false
    h.backend.close('handover').then(() => (closed = true))
    held.open()
    assert.ok(await h.run(() => closed))
    assert.ok(await h.run(() => writes[0].settled))
    assert.equal(writes[0].error, undefined, 'the running write was answered')
    await h.advance(2000)
    assert.ok(
      writes.slice(1).every((w) => !w.settled),
      'nothing else was answered, not even with an error',
    )
    h.restartBackend()
    await h.run(() => h.guestSession === undefined && h.iohypSession === undefined)
    await h.connect()
    assert.ok(await h.run(() => writes.every((w) => w.settled)))
    for (const w of writes) assert.equal(w.error, undefined)
    assert.equal(h.device.log.length, 6, 'each write ran once')
    for (let i = 0; i < 6; i++)
      assertBytes(await h.settle(h.front.read(i * 4096, 4096)), pattern(70 + i, 4096))
  })

  it('with the link cut, calls fail with timeout at the deadline, not before, and never hang', async () => {
    // The agent's polling gate: raised by each call outstanding, lowered when it settles, however.
    const awaiting = new Int32Array(1)
    const h = new BlkPair(new MemoryDevice({ size: 4 * MiB }), {
      seed: 5,
      frontend: { deadline: 5000, queueDepth: 2, awaiting },
    })
    await h.connect()
    await h.settle(h.front.write(0, pattern(1, 4096), false))
    assert.equal(awaiting[0], 0)
    h.faults.loss = 1
    const start = h.sim.clock.now
    const calls = [
      track(h.front.write(0, pattern(2, 4096), false)),
      track(h.front.read(8192, 4096)),
      track(h.front.flush()), // waits for a slot: queue depth 2
      track(h.front.trim(0, 4096)),
    ]
    await h.advance(4900)
    assert.ok(
      calls.every((c) => !c.settled),
      'nothing fails before the deadline',
    )
    assert.equal(awaiting[0], 4, 'every call outstanding counts, the one waiting for a slot too')
    await h.advance(200)
    assert.ok(h.sim.clock.now - start <= 5100)
    for (const c of calls) {
      assert.ok(c.settled, 'settled at the deadline')
      assert.equal(code(c.error), 'timeout')
    }
    assert.equal(h.front.stats.timeouts, 4)
    assert.equal(awaiting[0], 0, 'calls that timed out are no longer awaited')
    // The write was sent: it may still run on the IOhyp, so it stays a zombie until answered.
    assert.equal(h.front.stats.zombies, 1)
    // A new write over the same range waits for the zombie's answer.
    h.faults.loss = 0
    await h.advance(20_000, 500) // the dead connection times out
    const next = track(h.front.write(0, pattern(3, 4096), false))
    await h.connect()
    assert.ok(await h.run(() => next.settled))
    assert.equal(next.error, undefined)
    assert.equal(h.front.outstanding, 0, 'the zombie got its answer')
    assert.equal(awaiting[0], 0)
    const writesAt0 = h.device.log.filter((l) => l.op === 'write' && l.offset === 0)
    assertBytes(writesAt0[writesAt0.length - 1].data!, pattern(3, 4096), 'the newer write ran last')
    assertBytes(await h.settle(h.front.read(0, 4096)), pattern(3, 4096))
  })

  it('bounds requests in flight by the queue depth; excess callers wait', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 4 * MiB }), { frontend: { queueDepth: 4 } })
    await h.connect()
    const held = gate()
    h.device.gate = () => held.opened
    const writes = Array.from({ length: 20 }, (_, i) =>
      track(h.front.write(i * 4096, pattern(i, 4096), false)),
    )
    await h.run(() => h.device.active === 4)
    await h.advance(100)
    assert.equal(h.device.active, 4)
    assert.equal(h.front.outstanding, 20)
    held.open()
    h.device.gate = undefined
    assert.ok(await h.run(() => writes.every((w) => w.settled)))
    assert.equal(h.device.maxActive, 4)
  })

  it('moves to a new epoch when request ids run out', async () => {
    const h = new BlkPair(new MemoryDevice({ size: 4 * MiB }), {
      frontend: { firstRequestId: MAX_REQUEST_ID - 5, queueDepth: 8 },
    })
    await h.connect()
    const writes = Array.from({ length: 30 }, (_, i) => h.front.write(i * 4096, pattern(i, 4096), false))
    await h.settle(Promise.all(writes))
    assert.equal(h.front.stats.epochs, 2)
    for (let i = 0; i < 30; i++) assertBytes(await h.settle(h.front.read(i * 4096, 4096)), pattern(i, 4096))
  })

  it('hostile requests get error answers and the back-end keeps serving', async () => {
    const h = new BlkPair(new MemoryDevice({ size: MiB }), { handle: { high: 7, low: 0x1234_5678 } })
    await h.connect()
    h.captureResponses = true
    const E = 0x4444_0001
    const good = h.handle
    const cases: [string, Buffer, number][] = [
      [
        'wrong tag',
        rawRequest({ high: 7, low: 0x1234_5679 }, E, 1, { op: BlockOp.In, length: 512, offset: 0 }),
        BlockStatus.NoDevice,
      ],
      [
        'wrong slot',
        rawRequest({ high: 8, low: 0x1234_5678 }, E, 2, { op: BlockOp.In, length: 512, offset: 0 }),
        BlockStatus.NoDevice,
      ],
      [
        'read past the end',
        rawRequest(good, E, 3, { op: BlockOp.In, length: 1024, offset: MiB - 512 }),
        BlockStatus.OutOfRange,
      ],
      [
        'write past the end',
        rawRequest(good, E, 4, { op: BlockOp.Out, length: 4, offset: MiB - 2 }, Buffer.alloc(4)),
        BlockStatus.OutOfRange,
      ],
      [
        'trim past the end',
        rawRequest(good, E, 5, { op: BlockOp.Discard, length: 2 * MiB, offset: 0 }),
        BlockStatus.OutOfRange,
      ],
      ['unknown op', rawRequest(good, E, 6, { op: 77, length: 0, offset: 0 }), BlockStatus.Unsupported],
      [
        'unknown flag',
        rawRequest(good, E, 7, { op: BlockOp.Discard, flags: 0x40, length: 512, offset: 0 }),
        BlockStatus.BadRequest,
      ],
      [
        'floor above the id',
        rawRequest(good, E, 8, { op: BlockOp.Flush, length: 0, offset: 0, floor: 9 }),
        BlockStatus.BadRequest,
      ],
      [
        'id beyond the window',
        rawRequest(good, E, 8 + BLOCK_ID_WINDOW, { op: BlockOp.Flush, length: 0, offset: 0, floor: 8 }),
        BlockStatus.BadRequest,
      ],
      [
        'fua read',
        rawRequest(good, E, 10, { op: BlockOp.In, flags: BlockFlag.Fua, length: 512, offset: 0 }),
        BlockStatus.BadRequest,
      ],
    ]
    const truncated = rawRequest(good, E, 11, { op: BlockOp.In, length: 512, offset: 0 }).subarray(0, 40)
    truncated.writeUInt32BE(8, 4)
    truncated.writeUInt32BE(0, 24)
    cases.push(['truncated descriptor', Buffer.from(truncated), BlockStatus.BadRequest])
    const lying = rawRequest(good, E, 12, { op: BlockOp.Out, length: 4096, offset: 0 }, Buffer.alloc(100))
    lying.writeUInt32BE(lying.length - 32, 4)
    cases.push(['write data shorter than its length', lying, BlockStatus.BadRequest])
    for (const [, m] of cases) assert.ok(h.guestSession!.sendData(m, Delivery.Reliable))
    assert.ok(await h.run(() => h.responses.length === cases.length))
    const h2 = newMessageHeader()
    for (const [name, m, status] of cases) {
      assert.equal(decodeMessageHeader(m, 0, m.length, h2), undefined, name)
      const r = h.responses.find((x) => x.header.requestLow === h2.requestLow && x.header.requestHigh === E)
      assert.ok(r, `${name}: answered`)
      assert.equal(r.header.status, status, name)
      assert.equal(r.body.length, 0, name)
      assert.equal(
        r.header.deviceHigh,
        h2.deviceHigh,
        `${name}: the handle is echoed, never another device's`,
      )
      assert.equal(r.header.deviceLow, h2.deviceLow)
    }
    assert.equal(h.device.log.length, 0, 'nothing reached the device')
    assert.ok(
      h.front.stats.unexpectedResponses >= cases.length,
      'the front-end ignores answers it did not ask for',
    )
    assert.ok(h.guestSession, 'the session is still up')
    // And the back-end still serves the real front-end.
    await h.settle(h.front.write(0, pattern(1, 4096), false))
    assertBytes(await h.settle(h.front.read(0, 4096)), pattern(1, 4096))
  })

  it('a read-only device refuses changes with read-only', async () => {
    const h = new BlkPair(new MemoryDevice({ size: MiB, readOnly: true }))
    await h.connect()
    h.captureResponses = true
    const E = 0x5555_0001
    for (const [i, m] of [
      rawRequest(h.handle, E, 1, { op: BlockOp.Out, length: 4, offset: 0 }, Buffer.alloc(4)),
      rawRequest(h.handle, E, 2, { op: BlockOp.Discard, length: 512, offset: 0 }),
      rawRequest(h.handle, E, 3, { op: BlockOp.WriteZeroes, flags: BlockFlag.Unmap, length: 512, offset: 0 }),
    ].entries()) {
      assert.ok(h.guestSession!.sendData(m, Delivery.Reliable), `case ${i}`)
    }
    assert.ok(await h.run(() => h.responses.length === 3))
    for (const r of h.responses) assert.equal(r.header.status, BlockStatus.ReadOnly)
    // The front-end knows too, and says so without a round trip.
    await assert.rejects(h.front.write(0, new Uint8Array(512), false), (e) => code(e) === 'read-only')
    assertBytes(await h.settle(h.front.read(0, 512)), new Uint8Array(512))
  })

  it('a back-end flooded beyond its queue answers Busy instead of growing', async () => {
    const h = new BlkPair(new MemoryDevice({ size: MiB }), { backend: { depth: 1, maxQueued: 2 } })
    await h.connect()
    h.captureResponses = true
    const held = gate()
    h.device.gate = () => held.opened
    const E = 0x6666_0001
    for (let id = 1; id <= 6; id++)
      h.guestSession!.sendData(
        rawRequest(h.handle, E, id, { op: BlockOp.In, length: 512, offset: 0, floor: 1 }),
        Delivery.Reliable,
      )
    assert.ok(await h.run(() => h.responses.length === 3))
    assert.ok(h.responses.every((r) => r.header.status === BlockStatus.Busy))
    held.open()
    assert.ok(await h.run(() => h.responses.length === 6))
    assert.equal(h.responses.filter((r) => r.header.status === BlockStatus.Ok).length, 3)
  })

  it('a malformed answer fails its request with io-error; forged answers are ignored', async () => {
    const h = new BlkPair(new MemoryDevice({ size: MiB }))
    await h.connect()
    h.captureRequests = true
    const held = gate()
    h.device.gate = () => held.opened
    const read = track(h.front.read(0, 4096))
    await h.run(() => h.device.active === 1)
    const sent = h.requests[h.requests.length - 1]
    const req = newMessageHeader()
    decodeMessageHeader(sent, 0, sent.length, req)
    const answer = (status: number, body: Uint8Array, requestLow = req.requestLow) => {
      const m = Buffer.alloc(32 + body.length)
      encodeBlockResponseHead(m, 0, h.handle, req.requestHigh, requestLow, status, body.length)
      m.set(body, 32)
      h.iohypSession!.sendData(m, Delivery.Reliable)
    }
    answer(BlockStatus.Ok, new Uint8Array(4096), req.requestLow + 1000) // no such request
    answer(BlockStatus.Ok, new Uint8Array(100)) // wrong length
    assert.ok(await h.run(() => read.settled))
    assert.equal(code(read.error), 'io-error')
    assert.equal(h.front.stats.unexpectedResponses, 1)
    assert.equal(h.front.stats.badResponses, 1)
    held.open()
    await h.run(() => h.device.active === 0)
    await h.advance(50)
    assert.equal(h.front.stats.unexpectedResponses, 2, 'the real answer came too late')
    h.device.gate = undefined
    await h.settle(h.front.write(0, pattern(5, 4096), false))
  })

  it('serves a sparse image file: trims through the link punch holes on the IOhyp', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vrio-blk-remote-'))
    const path = join(dir, 'disk.img')
    writeFileSync(path, '')
    truncateSync(path, 32 * MiB)
    const file = await FileDevice.open(path)
    try {
      const h = new BlkPair(file, { faults: { ...HARSH, loss: 0.05 } })
      await h.connect()
      const empty = statSync(path).blocks
      const data = pattern(8, 4 * MiB)
      await h.settle(h.front.write(8 * MiB, data, false))
      await h.settle(h.front.flush())
      assert.ok(statSync(path).blocks > empty)
      assertBytes(await h.settle(h.front.read(8 * MiB, data.length)), data)
      if (fallocateAvailable()) {
        await h.settle(h.front.trim(8 * MiB, 4 * MiB))
        assert.equal(statSync(path).blocks, empty, 'the image is sparse again')
        await h.settle(h.front.writeZeroes(0, 16 * MiB, true, true))
        assert.equal(statSync(path).blocks, empty, 'zeroing with unmap allocates nothing')
      }
      await h.settle(h.front.writeZeroes(8 * MiB + 10, 100, false, false))
      assertBytes(await h.settle(h.front.read(8 * MiB, 200)), new Uint8Array(200))
    } finally {
      await file.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('its own sweep timer fails calls with no session at the deadline, then stops', async () => {
    const front = new RemoteBlockDevice({
      info: {
        size: MiB,
        blockSize: 512,
        readOnly: false,
        canFlush: true,
        canFua: true,
        canTrim: true,
        canWriteZeroes: true,
      },
      handle: { high: 1, low: 2 },
      deadline: 100,
      sweepInterval: 20,
    })
    const t0 = performance.now()
    await assert.rejects(front.read(0, 512), (e) => code(e) === 'timeout')
    const waited = performance.now() - t0
    assert.ok(waited >= 99 && waited < 1000, `failed after ${waited} ms`)
    assert.equal((front as unknown as { timer?: unknown }).timer, undefined, 'no timer left running')
    await assert.rejects(front.read(MiB, 1), (e) => code(e) === 'out-of-range')
    front.close()
    await assert.rejects(front.flush(), (e) => code(e) === 'not-connected')
  })
})
