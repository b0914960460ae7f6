import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BlockBackend, ReplyBudget } from '../../src/devices/blk/backend.ts'
import { RemoteBlockDevice } from '../../src/devices/blk/frontend.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import {
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockMessageFlag,
  BlockOp,
  BlockStatus,
  encodeBlockBatchHead,
  encodeBlockBatchResponseHead,
  encodeBlockRequestHead,
  encodeBlockResponseHead,
  MAX_BATCH_BYTES,
  nextBatchedResponse,
} from '../../src/devices/blk/protocol.ts'
import type { Delivery } from '../../src/transport/config.ts'
import { decodeMessageHeader, type MessageHeader, newMessageHeader } from '../../src/wire/message-header.ts'
import { assertBytes, immediate, InstrumentedDevice, pattern } from './blk-harness.ts'

// Batches of reads and writes and their batch responses (docs/protocol.md §8.1b, §8.2b), on each side
// alone: the back-end gathers the answers of a batch's running reads into one message; the
// front-end takes a batch response apart.

const DEVICE = { high: 5, low: 0x77 }
const EPOCH = 0x1234

/** What a session was given to send, each message whole. */
class Captured {
  readonly messages: Buffer[] = []
  sendData(parts: Uint8Array | readonly Uint8Array[], _delivery: Delivery): boolean {
    const list = parts instanceof Uint8Array ? [parts] : parts
    this.messages.push(Buffer.concat(list.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length))))
    return true
  }

  /** Every answer sent, by request id: its status, data and whether it came in a batch response. */
  answers(): Map<number, { status: number; data: Buffer; batched: boolean }> {
    const out = new Map<number, { status: number; data: Buffer; batched: boolean }>()
    const h = newMessageHeader()
    for (const m of this.messages) {
      assert.equal(decodeMessageHeader(m, 0, m.length, h), undefined)
      if (h.flags === BlockMessageFlag.Batch) {
        const e = newMessageHeader()
        for (let at = 32; at < m.length; ) {
          const end = nextBatchedResponse(m, at, e)
          assert.ok(end > 0, 'a whole response')
          out.set(e.requestLow, { status: e.status, data: m.subarray(at + 32, end), batched: true })
          at = end
        }
      } else out.set(h.requestLow, { status: h.status, data: m.subarray(32), batched: false })
    }
    return out
  }

  batchResponses(): number {
    return this.messages.filter((m) => m.readUInt16BE(2) === BlockMessageFlag.Batch).length
  }
}

function read(id: number, offset: number, length = 4096, floor = 1): Buffer {
  const head = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
  encodeBlockRequestHead(head, 0, DEVICE, EPOCH, id, { op: BlockOp.In, flags: 0, length, offset, floor })
  return head
}

function write(id: number, offset: number, data: Uint8Array, flags = 0): Buffer {
  const head = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
  encodeBlockRequestHead(head, 0, DEVICE, EPOCH, id, {
    op: BlockOp.Out,
    flags,
    length: data.length,
    offset,
    floor: 1,
  })
  return Buffer.concat([head, data])
}

function batch(entries: Buffer[]): Buffer {
  const head = Buffer.alloc(32)
  encodeBlockBatchHead(
    head,
    0,
    DEVICE,
    entries.reduce((n, e) => n + e.length, 0),
  )
  return Buffer.concat([head, ...entries])
}

function header(m: Uint8Array): MessageHeader {
  const h = newMessageHeader()
  assert.equal(decodeMessageHeader(m, 0, m.length, h), undefined)
  return h
}

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await immediate()
  assert.ok(cond(), 'timed out')
}

/** A gated device over 1 MiB of pattern(7): reads hold until `open()`. */
function gatedDevice() {
  const inner = new MemoryDevice({ size: 1 << 20 })
  void inner.write(0, pattern(7, 1 << 20), false)
  const device = new InstrumentedDevice(inner)
  let open!: () => void
  const gate = new Promise<void>((resolve) => (open = resolve))
  device.gate = (op) => (op.op === 'read' ? gate : undefined)
  return { device, open: () => open() }
}

describe('the back-end gathers the answers of a batch', () => {
  it("into one batch response, in the batch's order, when all its reads run at once", async () => {
    const { device, open } = gatedDevice()
    const b = new BlockBackend(device, { handle: DEVICE })
    const s = new Captured()
    b.attach(s)
    const m = batch([read(1, 0), read(2, 8192, 512), read(3, 4096)])
    b.receive(header(m), m)
    open()
    await until(() => s.messages.length > 0)
    assert.equal(s.messages.length, 1, 'one message')
    assert.equal(s.batchResponses(), 1)
    const h = header(s.messages[0])
    assert.equal(h.deviceHigh, DEVICE.high)
    assert.equal(h.deviceLow, DEVICE.low)
    assert.equal(h.requestLow, 0)
    assert.deepEqual([...s.answers().keys()], [1, 2, 3], 'in order')
    const data = pattern(7, 1 << 20)
    for (const [id, offset, length] of [
      [1, 0, 4096],
      [2, 8192, 512],
      [3, 4096, 4096],
    ]) {
      const a = s.answers().get(id)!
      assert.equal(a.status, BlockStatus.Ok)
      assertBytes(a.data, data.subarray(offset, offset + length), `read ${id}`)
    }
  })

  it('in batch responses of at most MAX_BATCH_BYTES bytes, in order; a read too long for one alone', async () => {
    const fits = Math.floor((MAX_BATCH_BYTES - 32) / (32 + 4096))
    const b = new BlockBackend(new MemoryDevice({ size: 1 << 20 }), { handle: DEVICE })
    const s = new Captured()
    b.attach(s)
    // fits + 2 small reads, a 64 KiB one, then two small ones.
    const reads = [
      ...Array.from({ length: fits + 2 }, (_, i) => read(i + 1, i * 4096)),
      read(fits + 3, 0, 64 * 1024),
      read(fits + 4, 0),
      read(fits + 5, 4096),
    ]
    const m = batch(reads)
    b.receive(header(m), m)
    await until(() => s.answers().size === reads.length)
    const shape = s.messages.map((x) => {
      if (x.readUInt16BE(2) !== BlockMessageFlag.Batch) return `alone ${x.readUInt32BE(20)}`
      const ids: number[] = []
      const e = newMessageHeader()
      for (let at = 32; at < x.length; ) {
        const end = nextBatchedResponse(x, at, e)
        ids.push(e.requestLow)
        at = end
      }
      return ids.join(',')
    })
    const run = (from: number, to: number) =>
      Array.from({ length: to - from + 1 }, (_, i) => from + i).join(',')
    assert.deepEqual(shape, [
      run(1, fits),
      run(fits + 1, fits + 2),
      `alone ${fits + 3}`,
      run(fits + 4, fits + 5),
    ])
    assert.ok(s.messages.every((x) => x.length <= MAX_BATCH_BYTES || x.readUInt16BE(2) === 0))
  })

  it('writes among the reads: written as if they came alone, answered in the same batch response', async () => {
    const device = new MemoryDevice({ size: 1 << 20 })
    await device.write(0, pattern(7, 1 << 20), false)
    const b = new BlockBackend(device, { handle: DEVICE })
    const s = new Captured()
    b.attach(s)
    const data = pattern(9, 4096)
    const m = batch([read(1, 0), write(2, 8192, data), read(3, 8192)])
    b.receive(header(m), m)
    await until(() => s.answers().size === 3)
    assert.equal(s.messages.length, 1)
    const a = s.answers()
    assert.equal(a.get(2)!.status, BlockStatus.Ok)
    assert.equal(a.get(2)!.data.length, 0)
    assertBytes(await device.read(8192, 4096), data, 'written')
    assertBytes(a.get(1)!.data, pattern(7, 1 << 20).subarray(0, 4096))
    assert.equal(a.get(3)!.data.length, 4096, 'a read after the write in the batch')
  })

  it('a read that has to wait answers on its own, and an error is an answer like any other', async () => {
    const { device, open } = gatedDevice()
    const b = new BlockBackend(device, { handle: DEVICE, depth: 2 })
    const s = new Captured()
    b.attach(s)
    const m = batch([read(1, 0), read(2, 4096), read(3, 8192), read(4, (1 << 20) - 100)])
    b.receive(header(m), m)
    open()
    await until(() => s.answers().size === 4)
    const a = s.answers()
    assert.equal(a.get(1)!.batched, true)
    assert.equal(a.get(2)!.batched, true)
    assert.equal(a.get(4)!.batched, true, 'its error went into the batch response at once')
    assert.equal(a.get(4)!.status, BlockStatus.OutOfRange)
    assert.equal(a.get(3)!.batched, false, 'the read that waited for a slot')
    assert.equal(a.get(3)!.status, BlockStatus.Ok)
  })

  it('a duplicate of a read still running is left out (the running one answers); the budget comes back', async () => {
    const { device, open } = gatedDevice()
    const budget = new ReplyBudget()
    const b = new BlockBackend(device, { handle: DEVICE, replyBudget: budget })
    const s = new Captured()
    b.attach(s)
    const first = read(1, 0)
    b.receive(header(first), first)
    const m = batch([read(1, 0), read(2, 4096)])
    b.receive(header(m), m)
    open()
    await until(() => s.messages.length === 2)
    assert.equal(b.stats.duplicatesRunning, 1)
    const batched = s.messages.find((x) => x.readUInt16BE(2) === BlockMessageFlag.Batch)!
    const e = newMessageHeader()
    assert.ok(nextBatchedResponse(batched, 32, e) > 0)
    assert.equal(e.requestLow, 2, 'only the read that was not running already')
    assert.equal(nextBatchedResponse(batched, 32 + 32 + 4096, e), -1, 'and nothing else')
    await until(() => budget.held === 0)
  })

  it('a session lost while a batch response gathers: nothing is sent, the budget comes back', async () => {
    const { device, open } = gatedDevice()
    const budget = new ReplyBudget()
    const b = new BlockBackend(device, { handle: DEVICE, replyBudget: budget })
    const s = new Captured()
    b.attach(s)
    const m = batch([read(1, 0), read(2, 4096)])
    b.receive(header(m), m)
    assert.ok(budget.held > 0, 'the reads took their reply bytes')
    b.detach()
    open()
    await until(() => device.active === 0)
    await immediate()
    assert.equal(s.messages.length, 0)
    assert.equal(budget.held, 0)
    assert.ok(b.stats.repliesDropped >= 2)
  })
})

describe('the front-end takes a batch response apart', () => {
  const info = {
    size: 1 << 20,
    blockSize: 4096 as const,
    readOnly: false,
    canFlush: true,
    canFua: true,
    canTrim: false,
    canWriteZeroes: false,
  }

  /** Reads made in one tick on a front-end that batches them: their ids, and the calls. */
  async function reads(n: number) {
    const f = new RemoteBlockDevice({ info, handle: DEVICE, sweepInterval: 0 })
    const s = new Captured()
    f.attach(s)
    f.useBatch(64)
    const calls = Array.from({ length: n }, (_, i) => f.read(i * 4096, 4096))
    await immediate()
    assert.equal(s.messages.length, 1, 'one batch')
    const m = s.messages[0]
    const ids: number[] = []
    for (let at = 32; at < m.length; at += BLOCK_REQUEST_HEAD_LENGTH) ids.push(m.readUInt32BE(at + 20))
    return { f, calls, ids, epoch: m.readUInt32BE(32 + 16) }
  }

  function response(epoch: number, id: number, status: number, data?: Uint8Array): Buffer {
    const head = Buffer.alloc(32)
    encodeBlockResponseHead(head, 0, DEVICE, epoch, id, status, data?.length ?? 0)
    return Buffer.concat(data ? [head, data] : [head])
  }

  function batchResponse(entries: Buffer[], device = DEVICE): Buffer {
    const body = entries.reduce((n, e) => n + e.length, 0)
    const head = Buffer.alloc(32)
    encodeBlockBatchResponseHead(head, 0, device, body)
    return Buffer.concat([head, ...entries])
  }

  it('a read too long to share a batch response leaves alone', async () => {
    const f = new RemoteBlockDevice({ info, handle: DEVICE, sweepInterval: 0 })
    const s = new Captured()
    f.attach(s)
    f.useBatch(64)
    const long = MAX_BATCH_BYTES - 63
    const calls = [f.read(0, long), f.read(long, long), f.read(0, 4096), f.read(4096, 4096)]
    for (const c of calls) c.catch(() => {}) // failed by close() below
    await immediate()
    assert.deepEqual(
      s.messages.map((m) => [m.readUInt16BE(2), m.length]),
      [
        [0, BLOCK_REQUEST_HEAD_LENGTH],
        [0, BLOCK_REQUEST_HEAD_LENGTH],
        [BlockMessageFlag.Batch, 32 + 2 * BLOCK_REQUEST_HEAD_LENGTH],
      ],
    )
    f.close()
  })

  it('small writes without FUA join the batch with their data; a FUA write or a long one leaves alone', async () => {
    const f = new RemoteBlockDevice({ info, handle: DEVICE, sweepInterval: 0 })
    const s = new Captured()
    f.attach(s)
    f.useBatch(64)
    const calls = [
      f.write(0, pattern(1, 4096), false),
      f.read(0, 4096),
      f.write(4096, pattern(2, 100), false),
      f.write(8192, pattern(3, 512), true),
      f.write(0, pattern(4, MAX_BATCH_BYTES), false),
    ]
    for (const c of calls) c.catch(() => {}) // failed by close() below
    await immediate()
    assert.deepEqual(
      s.messages.map((m) => [m.readUInt16BE(2), m.length]),
      [
        [BlockMessageFlag.Batch, 32 + 56 + 4096 + 56 + 56 + 100],
        [0, BLOCK_REQUEST_HEAD_LENGTH + 512],
        [0, BLOCK_REQUEST_HEAD_LENGTH + MAX_BATCH_BYTES],
      ],
    )
    const m = s.messages[0]
    assertBytes(m.subarray(32 + 56, 32 + 56 + 4096), pattern(1, 4096), "the first write's data, in place")
    f.close()
  })

  it('each response as if it had come alone', async () => {
    const { f, calls, ids, epoch } = await reads(3)
    const m = batchResponse([
      response(epoch, ids[0], 0, pattern(1, 4096)),
      response(epoch, ids[1], BlockStatus.IoError),
      response(epoch, ids[2], 0, pattern(3, 4096)),
    ])
    f.receive(header(m), m)
    assertBytes(await calls[0], pattern(1, 4096))
    await assert.rejects(calls[1], /io/)
    assertBytes(await calls[2], pattern(3, 4096))
    assert.equal(f.stats.batchResponses, 1)
    assert.equal(f.stats.responses, 3)
  })

  it('one for another device is ignored; a malformed one stops at the first response that is not whole', async () => {
    const { f, calls, ids, epoch } = await reads(2)
    const other = batchResponse([response(epoch, ids[0], 0, pattern(1, 4096))], { high: 5, low: 0x78 })
    f.receive(header(other), other)
    assert.equal(f.stats.unexpectedResponses, 1)
    assert.equal(f.stats.responses, 0)
    const cut = batchResponse([response(epoch, ids[0], 0, pattern(1, 4096)), response(epoch, ids[1], 0)])
    cut.writeUInt32BE(4096, 32 + 32 + 4096 + 4) // the second claims data it does not have
    f.receive(header(cut), cut)
    assertBytes(await calls[0], pattern(1, 4096))
    assert.equal(f.stats.badResponses, 1)
    assert.equal(f.outstanding, 1, 'the second read still waits for its answer')
    f.close()
    await assert.rejects(calls[1])
  })
})
