/**
 * The IOhyp's block back-end against a guest that asks too much: a read larger than the largest
 * message gets an error status (the back-end keeps serving), a guest that never takes its replies
 * is held to its reply budget in bytes, and everything it held is given back when it leaves.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BlockBackend, ReplyBudget } from '../../src/devices/blk/backend.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import {
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockOp,
  BlockStatus,
  encodeBlockRequestHead,
} from '../../src/devices/blk/protocol.ts'
import { VrioError } from '../../src/errors.ts'
import type { Delivery } from '../../src/transport/config.ts'
import {
  decodeMessageHeader,
  MESSAGE_HEADER_LENGTH,
  type MessageHeader,
  newMessageHeader,
} from '../../src/wire/message-header.ts'

const HANDLE = { high: 0x1234_5678, low: 7 }
const EPOCH = 0x55

/**
 * A session as the back-end sees it: refuses a message larger than `maxMessageSize` the way the
 * transport does (it throws), and takes at most `sendBuffer` bytes before returning false (the
 * peer's window is closed and the send queue full) until `drain`.
 */
class FakeSession {
  readonly replies: { header: MessageHeader; length: number }[] = []
  queued = 0
  readonly maxMessageSize: number
  readonly sendBuffer: number
  constructor(maxMessageSize: number, sendBuffer: number) {
    this.maxMessageSize = maxMessageSize
    this.sendBuffer = sendBuffer
  }
  sendData(parts: Uint8Array | readonly Uint8Array[], _delivery: Delivery): boolean {
    const list = parts instanceof Uint8Array ? [parts] : parts
    const length = list.reduce((n, p) => n + p.length, 0)
    if (length > this.maxMessageSize)
      throw new VrioError('message-size', `message of ${length} bytes is outside 1..${this.maxMessageSize}`)
    if (this.queued + length > this.sendBuffer) return false
    this.queued += length
    const whole = Buffer.concat(list.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length)))
    const header = newMessageHeader()
    assert.equal(decodeMessageHeader(whole, 0, whole.length, header), undefined)
    this.replies.push({ header, length })
    return true
  }
  drain(): void {
    this.queued = 0
  }
}

function readRequest(id: number, offset: number, length: number, floor = 1): { h: MessageHeader; m: Buffer } {
  const m = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
  encodeBlockRequestHead(m, 0, HANDLE, EPOCH, id, { op: BlockOp.In, flags: 0, length, offset, floor })
  const h = newMessageHeader()
  assert.equal(decodeMessageHeader(m, 0, m.length, h), undefined)
  return { h, m }
}

const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r))
}

describe('block back-end budgets', () => {
  it('a read larger than the largest message gets BadRequest, and the back-end keeps serving', async () => {
    const maxMessageSize = 1024 * 1024
    const device = new MemoryDevice({ size: 64 * 1024 * 1024 })
    const backend = new BlockBackend(device, { handle: HANDLE, maxMessageSize })
    const session = new FakeSession(maxMessageSize, 1 << 30)
    backend.attach(session)
    // The reply would be the header plus the data: one byte too many; then far too many.
    for (const [id, length] of [
      [1, maxMessageSize - MESSAGE_HEADER_LENGTH + 1],
      [2, 0xffff_ffff],
    ]) {
      const { h, m } = readRequest(id, 0, length)
      backend.receive(h, m)
    }
    await settle()
    assert.deepEqual(
      session.replies.map((r) => [r.header.requestLow, r.header.status, r.length]),
      [
        [1, BlockStatus.BadRequest, MESSAGE_HEADER_LENGTH],
        [2, BlockStatus.BadRequest, MESSAGE_HEADER_LENGTH],
      ],
    )
    // The largest read that fits, then a small one: both served.
    const largest = maxMessageSize - MESSAGE_HEADER_LENGTH
    for (const [id, length] of [
      [3, largest],
      [4, 4096],
    ]) {
      const { h, m } = readRequest(id, 0, length)
      backend.receive(h, m)
    }
    await settle()
    assert.deepEqual(
      session.replies.slice(2).map((r) => [r.header.requestLow, r.header.status, r.length]),
      [
        [3, BlockStatus.Ok, maxMessageSize],
        [4, BlockStatus.Ok, MESSAGE_HEADER_LENGTH + 4096],
      ],
    )
  })

  it('a zero-window read flood stays within the reply budget, is disconnected, and leaving frees it all', async () => {
    const limit = 4 * 1024 * 1024
    const read = 256 * 1024
    const budget = new ReplyBudget(limit)
    const device = new MemoryDevice({ size: 64 * 1024 * 1024 })
    let overloads = 0
    const backend = new BlockBackend(device, {
      handle: HANDLE,
      replyBudget: budget,
      onOverload: () => overloads++,
    })
    // The peer's window: closed after 1 MiB of replies.
    const session = new FakeSession(4 * 1024 * 1024, 1024 * 1024)
    backend.attach(session)
    let maxHeld = 0
    for (let id = 1; id <= 3000; id++) {
      const { h, m } = readRequest(id, (id % 200) * read, read)
      backend.receive(h, m)
      if (id % 50 === 0) await settle()
      maxHeld = Math.max(maxHeld, budget.held, backend.pendingReplyBytes)
    }
    await settle()
    maxHeld = Math.max(maxHeld, budget.held)
    // Bytes held for this guest: its budget, plus one read (a read may always start when none is held).
    assert.ok(maxHeld <= limit + read, `held ${maxHeld}`)
    assert.ok(backend.stats.budgetWaits > 0, 'reads waited for the budget')
    assert.ok(
      backend.stats.executed * read <= limit + session.sendBuffer + read,
      `executed ${backend.stats.executed}`,
    )
    assert.ok(overloads > 0, 'a guest that keeps going is reported for disconnection')
    // The guest leaves: everything it held comes back.
    backend.detach()
    await settle()
    assert.equal(backend.pendingReplyBytes, 0)
    assert.equal(backend.pendingReplies, 0)
    assert.equal(budget.held, 0)
    // A new session with an open window: a well-formed read is served.
    const fresh = new FakeSession(4 * 1024 * 1024, 1 << 30)
    backend.attach(fresh)
    await settle()
    fresh.replies.length = 0
    const { h, m } = readRequest(5000, 0, 4096, 5000)
    backend.receive(h, m)
    await settle()
    const answer = fresh.replies.find((r) => r.header.requestLow === 5000)
    assert.equal(answer?.header.status, BlockStatus.Ok)
    await backend.close()
    assert.equal(budget.held, 0)
  })

  it('a guest cut off with reads waiting for the budget: they are not run for nobody, and run when re-sent', async () => {
    const limit = 1024 * 1024
    const read = 256 * 1024
    const budget = new ReplyBudget(limit)
    const device = new MemoryDevice({ size: 16 * 1024 * 1024 })
    let deviceReads = 0
    const plainRead = device.read.bind(device)
    device.read = (offset: number, length: number) => {
      deviceReads++
      return plainRead(offset, length)
    }
    const backend = new BlockBackend(device, { handle: HANDLE, replyBudget: budget })
    // The peer's window never opens: the first reply fills it.
    const session = new FakeSession(4 * 1024 * 1024, read)
    backend.attach(session)
    for (let id = 1; id <= 40; id++) {
      const { h, m } = readRequest(id, id * read, read)
      backend.receive(h, m)
    }
    await settle()
    const ran = deviceReads
    assert.ok(backend.queued > 0, 'reads wait for the budget')
    assert.ok(ran < 40)
    // Cut off: the replies held are dropped, which gives their budget back; the waiting reads must
    // not start then (their answers could only be dropped).
    backend.detach()
    await settle()
    assert.equal(deviceReads, ran, 'reads run after the guest was cut off')
    assert.equal(backend.queued, 0)
    assert.equal(budget.held, 0)
    // The front-end re-sends every unanswered read on its next session: each runs and is answered.
    const fresh = new FakeSession(4 * 1024 * 1024, 1 << 30)
    backend.attach(fresh)
    for (let id = 1; id <= 40; id++) {
      const { h, m } = readRequest(id, id * read, read)
      backend.receive(h, m)
    }
    for (let i = 0; i < 100 && fresh.replies.length < 40; i++) await settle()
    assert.deepEqual(
      fresh.replies.map((r) => [r.header.requestLow, r.header.status]).sort((a, b) => a[0] - b[0]),
      Array.from({ length: 40 }, (_, i) => [i + 1, BlockStatus.Ok]),
    )
    await backend.close()
    assert.equal(budget.held, 0)
  })

  it('replies drain as the window opens: reads held back by the budget then run', async () => {
    const limit = 1024 * 1024
    const read = 128 * 1024
    const budget = new ReplyBudget(limit)
    const backend = new BlockBackend(new MemoryDevice({ size: 16 * 1024 * 1024 }), {
      handle: HANDLE,
      replyBudget: budget,
    })
    const session = new FakeSession(4 * 1024 * 1024, 256 * 1024)
    backend.attach(session)
    for (let id = 1; id <= 40; id++) {
      const { h, m } = readRequest(id, id * read, read)
      backend.receive(h, m)
    }
    await settle()
    assert.ok(budget.held <= limit)
    for (let i = 0; i < 100 && session.replies.length < 40; i++) {
      session.drain()
      backend.writable()
      await settle()
    }
    assert.equal(session.replies.length, 40)
    assert.ok(session.replies.every((r) => r.header.status === BlockStatus.Ok))
    assert.equal(budget.held, 0)
  })

  it('write data held at once is bounded: beyond it writes are answered Busy, and it all comes back', async () => {
    const memory = new MemoryDevice({ size: 64 * 1024 * 1024 })
    // Writes that do not complete until released: a slow disk, or a guest outrunning it.
    const held: (() => void)[] = []
    const device = Object.create(memory) as MemoryDevice
    device.write = (offset, data, fua) =>
      new Promise<void>((resolve) => held.push(resolve)).then(() => memory.write(offset, data, fua))
    const maxWriteBytes = 8 * 1024 * 1024
    const backend = new BlockBackend(device, { handle: HANDLE, maxWriteBytes })
    const session = new FakeSession(8 * 1024 * 1024, 1 << 30)
    backend.attach(session)
    const write = 1024 * 1024
    let maxHeld = 0
    for (let id = 1; id <= 100; id++) {
      const m = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH + write, 0x42)
      encodeBlockRequestHead(m, 0, HANDLE, EPOCH, id, {
        op: BlockOp.Out,
        flags: 0,
        length: write,
        offset: 0,
        floor: 1,
      })
      const h = newMessageHeader()
      assert.equal(decodeMessageHeader(m, 0, m.length, h), undefined)
      backend.receive(h, m)
      maxHeld = Math.max(maxHeld, backend.heldWriteBytes)
    }
    await settle()
    assert.ok(maxHeld <= maxWriteBytes, `held ${maxHeld}`)
    assert.equal(backend.ops.errors[BlockStatus.Busy], 100 - maxWriteBytes / write)
    for (const release of held.splice(0)) release()
    await settle()
    assert.equal(backend.heldWriteBytes, 0)
    assert.equal(
      session.replies.filter((r) => r.header.status === BlockStatus.Ok).length,
      maxWriteBytes / write,
    )
    // Every request counts as received, only the written ones' bytes.
    assert.equal(backend.ops.requests[1], 100)
    assert.equal(backend.ops.bytes[1], maxWriteBytes)
  })
})
