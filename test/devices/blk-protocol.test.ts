import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockFlag,
  BlockOp,
  BlockStatus,
  blockResponseData,
  blockStatusCode,
  blockStatusError,
  blockStatusOf,
  decodeBlockRequest,
  batchAnswerLength,
  batchCount,
  encodeBlockBatchHead,
  encodeBlockRequestHead,
  encodeBlockResponseHead,
  HeadArena,
  MAX_BATCH,
  newBlockRequest,
} from '../../src/devices/blk/protocol.ts'
import { VrioError } from '../../src/errors.ts'
import { decodeMessageHeader, MessageType, newMessageHeader } from '../../src/wire/message-header.ts'
import { seededRandom } from '../support/random.ts'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const DEVICE = { high: 0x0102_0304, low: 0xa1b2_c3d4 }

function decode(message: Uint8Array) {
  const h = newMessageHeader()
  assert.equal(decodeMessageHeader(message, 0, message.length, h), undefined)
  const r = newBlockRequest()
  return { h, r, status: decodeBlockRequest(h, message, r) }
}

function request(
  op: number,
  flags: number,
  length: number,
  offset: number,
  data?: Uint8Array,
  floor = 1,
  id = 1,
): Buffer {
  const head = new Uint8Array(BLOCK_REQUEST_HEAD_LENGTH)
  encodeBlockRequestHead(head, 0, DEVICE, 0xdead_beef, id, { op, flags, length, offset, floor })
  return Buffer.concat(data ? [head, data] : [head])
}

describe('blk protocol codec', () => {
  it('encodes a FUA write head byte for byte', () => {
    const head = new Uint8Array(BLOCK_REQUEST_HEAD_LENGTH)
    const end = encodeBlockRequestHead(head, 0, DEVICE, 0xdead_beef, 7, {
      op: BlockOp.Out,
      flags: BlockFlag.Fua,
      length: 4096,
      offset: 0x1_0000_0200,
      floor: 5,
    })
    assert.equal(end, 56)
    assert.equal(
      hex(head),
      // version type flags bodyLength | device | request | replyLength status reserved
      '01' +
        '20' +
        '0000' +
        '00001018' +
        '01020304a1b2c3d4' +
        'deadbeef00000007' +
        '00000000' +
        '0000' +
        '0000' +
        // op flags reserved length | offset (u64) | floor | reserved
        '01' +
        '01' +
        '0000' +
        '00001000' +
        '0000000100000200' +
        '00000005' +
        '00000000',
    )
    const { h, r, status } = decode(Buffer.concat([head, Buffer.alloc(4096, 7)]))
    assert.equal(status, BlockStatus.Ok)
    assert.equal(h.type, MessageType.BlockRequest)
    assert.deepEqual(r, {
      op: BlockOp.Out,
      flags: BlockFlag.Fua,
      length: 4096,
      offset: 0x1_0000_0200,
      floor: 5,
      dataOffset: 56,
    })
  })

  it('encodes a read head: replyLength carries the length, no data follows', () => {
    const m = request(BlockOp.In, 0, 512, 1024, undefined, 9, 9)
    assert.equal(
      hex(m),
      '01200000' +
        '00000018' +
        '01020304a1b2c3d4' +
        'deadbeef00000009' +
        '00000200' +
        '00000000' +
        '00' +
        '00' +
        '0000' +
        '00000200' +
        '0000000000000400' +
        '00000009' +
        '00000000',
    )
    const { h, r, status } = decode(m)
    assert.equal(status, BlockStatus.Ok)
    assert.equal(h.replyLength, 512)
    assert.equal(r.length, 512)
    assert.equal(r.offset, 1024)
  })

  it('encodes responses and checks their data length', () => {
    const head = new Uint8Array(32)
    encodeBlockResponseHead(head, 0, DEVICE, 0xdead_beef, 7, BlockStatus.ReadOnly, 0)
    assert.equal(
      hex(head),
      '01210000' + '00000000' + '01020304a1b2c3d4' + 'deadbeef00000007' + '00000000' + '0011' + '0000',
    )
    const h = newMessageHeader()
    assert.equal(decodeMessageHeader(head, 0, 32, h), undefined)
    assert.deepEqual(blockResponseData(h, head, 0), new Uint8Array(0))
    assert.deepEqual(blockResponseData(h, head, 4096), new Uint8Array(0), 'an error carries no data')

    const read = Buffer.concat([new Uint8Array(32), Buffer.from('abcd')])
    encodeBlockResponseHead(read, 0, DEVICE, 1, 2, BlockStatus.Ok, 4)
    assert.equal(decodeMessageHeader(read, 0, read.length, h), undefined)
    assert.equal(Buffer.from(blockResponseData(h, read, 4)!).toString(), 'abcd')
    assert.equal(blockResponseData(h, read, 8), undefined, 'short read data is malformed')
    assert.equal(blockResponseData(h, read, 0), undefined, 'data where none is due is malformed')
    assert.equal(blockResponseData({ ...h, flags: 1 }, read, 4), undefined, 'unknown flags are malformed')
    assert.equal(blockResponseData({ ...h, replyLength: 4 }, read, 4), undefined, 'so is a replyLength')
  })

  it('refuses a request whose header flags or status are not zero', () => {
    const { h, r, status } = decode(request(BlockOp.In, 0, 4096, 0))
    assert.equal(status, BlockStatus.Ok)
    const m = request(BlockOp.In, 0, 4096, 0)
    assert.equal(decodeBlockRequest({ ...h, flags: 0x8000 }, m, r), BlockStatus.BadRequest)
    assert.equal(decodeBlockRequest({ ...h, status: 1 }, m, r), BlockStatus.BadRequest)
  })

  it('accepts flush, discard and write-zeroes with unmap; refuses malformed requests', () => {
    assert.equal(decode(request(BlockOp.Flush, 0, 0, 0)).status, BlockStatus.Ok)
    assert.equal(decode(request(BlockOp.Discard, 0, 1 << 30, 4096)).status, BlockStatus.Ok)
    assert.equal(
      decode(request(BlockOp.WriteZeroes, BlockFlag.Unmap | BlockFlag.Fua, 8192, 0)).status,
      BlockStatus.Ok,
    )
    const bad = (m: Uint8Array, why: string, expected: number = BlockStatus.BadRequest) =>
      assert.equal(decode(m).status, expected, why)
    bad(request(BlockOp.Flush, 0, 512, 0), 'flush with a length')
    bad(request(BlockOp.Flush, BlockFlag.Fua, 0, 0), 'flush with flags')
    bad(request(BlockOp.In, BlockFlag.Fua, 512, 0), 'read with FUA')
    bad(request(BlockOp.Out, BlockFlag.Unmap, 4, 0, Buffer.alloc(4)), 'write with unmap')
    const shortWrite = request(BlockOp.Out, 0, 8, 0, Buffer.alloc(4))
    shortWrite.writeUInt32BE(shortWrite.length - 32, 4) // a consistent header around a short body
    bad(shortWrite, 'write shorter than its length')
    bad(request(BlockOp.Discard, 0x80, 512, 0), 'unknown flag')
    bad(request(99, 0, 0, 0), 'unknown op', BlockStatus.Unsupported)
    const reserved = request(BlockOp.In, 0, 512, 0)
    reserved[34] = 1
    bad(reserved, 'reserved bits')
    const tail = request(BlockOp.In, 0, 512, 0)
    tail[55] = 1
    bad(tail, 'trailing reserved bits')
    const huge = request(BlockOp.In, 0, 512, 0)
    huge[40] = 0x00
    huge[41] = 0x20 // offset high = 0x00200000 -> offset >= 2^53
    bad(huge, 'offset beyond 2^53')
    // A read whose replyLength disagrees with its length.
    const m = request(BlockOp.In, 0, 512, 0)
    m[27] = 0x01
    bad(m, 'replyLength mismatch')
    // Too short to hold a descriptor (header alone, consistent body length).
    const short = request(BlockOp.In, 0, 512, 0).subarray(0, 40)
    short[7] = 8
    short[27] = 0
    short[26] = 0
    bad(short, 'truncated descriptor')
  })

  it('a batch of reads and writes: its header byte for byte, where its requests start, and what batchCount refuses', () => {
    const reads = (n: number) =>
      Array.from({ length: n }, (_, i) => request(BlockOp.In, 0, 4096, i * 4096, undefined, 1, i + 1))
    const write = (length: number, flags = 0) =>
      request(BlockOp.Out, flags, length, 0, Buffer.alloc(length, 7), 1, 99)
    const batch = (entries: Buffer[]) => {
      const body = entries.reduce((n, e) => n + e.length, 0)
      const head = new Uint8Array(32)
      assert.equal(encodeBlockBatchHead(head, 0, DEVICE, body), 32)
      return Buffer.concat([head, ...entries])
    }
    const three = batch(reads(3))
    assert.equal(
      hex(three.subarray(0, 32)),
      // version 1, BlockRequest, flags BATCH, body 3 × 56, the device, request 0, replyLength 0, status 0
      `01200001${(3 * 56).toString(16).padStart(8, '0')}01020304a1b2c3d4${'0'.repeat(32)}`,
    )
    const starts: number[] = []
    const count = (m: Buffer) => {
      const h = newMessageHeader()
      if (decodeMessageHeader(m, 0, m.length, h) !== undefined) return 0
      return batchCount(h, m, starts)
    }
    assert.equal(count(three), 3)
    assert.deepEqual(starts.slice(0, 3), [32, 88, 144])
    assert.equal(count(batch(reads(MAX_BATCH))), MAX_BATCH)
    // Writes among the reads, with their data: each starts after the one before.
    assert.equal(count(batch([...reads(1), write(100), ...reads(1), write(4096)])), 4)
    assert.deepEqual(starts.slice(0, 4), [32, 88, 88 + 156, 88 + 156 + 56])
    assert.equal(
      batchAnswerLength(batch([...reads(1), write(100)]), 32),
      32 + 4096,
      "a read's answer: its data",
    )
    assert.equal(batchAnswerLength(batch([...reads(1), write(100)]), 88), 32, "a write's: its header")
    const refused: [string, Buffer][] = [
      ['one read', batch(reads(1))],
      ['too many reads', batch(reads(MAX_BATCH + 1))],
      ['a flush among the reads', batch([...reads(2), request(BlockOp.Flush, 0, 0, 0)])],
      ['a trim among the reads', batch([...reads(2), request(BlockOp.Discard, 0, 4096, 0)])],
      ['a trailing partial request', Buffer.concat([batch(reads(2)), Buffer.alloc(8)])],
      ['a write whose data runs past the batch', batch([...reads(1), write(100)]).subarray(0, 32 + 56 + 100)],
    ]
    const mutate = (name: string, f: (m: Buffer) => void) => {
      const m = Buffer.from(three)
      f(m)
      refused.push([name, m])
    }
    mutate('a request handle', (m) => m.writeUInt32BE(5, 20))
    mutate('a replyLength', (m) => m.writeUInt32BE(4096, 24))
    mutate('a status', (m) => m.writeUInt16BE(1, 28))
    mutate('another flag', (m) => m.writeUInt16BE(3, 2))
    mutate('a read of another device', (m) => m.writeUInt32BE(0xa1b2_c3d5, 32 + 56 + 12))
    mutate('a read with header flags', (m) => m.writeUInt16BE(1, 32 + 2))
    mutate('a read of another type', (m) => {
      m[32 + 56 + 1] = MessageType.BlockResponse
    })
    mutate('a read whose body is not its descriptor', (m) => m.writeUInt32BE(25, 32 + 4))
    for (const [name, m] of refused) {
      m.writeUInt32BE(m.length - 32, 4)
      assert.equal(count(m), 0, name)
    }
    // A single request is no batch.
    assert.equal(count(reads(1)[0]), 0)
    // A FUA write is a write like any other to a batch (the IOhyp takes it as if it came alone).
    assert.equal(count(batch([...reads(1), write(8, BlockFlag.Fua)])), 2)
  })

  it('maps statuses to the BlockDevice error codes and back', () => {
    assert.equal(blockStatusCode(BlockStatus.IoError), 'io-error')
    assert.equal(blockStatusCode(BlockStatus.Unsupported), 'unsupported')
    assert.equal(blockStatusCode(BlockStatus.OutOfRange), 'out-of-range')
    assert.equal(blockStatusCode(BlockStatus.ReadOnly), 'read-only')
    assert.equal(blockStatusCode(BlockStatus.NoSpace), 'no-space')
    assert.equal(blockStatusCode(BlockStatus.NoDevice), 'not-connected')
    assert.equal(blockStatusCode(BlockStatus.BadRequest), 'io-error')
    assert.equal(blockStatusCode(0x7777), 'io-error')
    for (const code of ['out-of-range', 'read-only', 'no-space', 'unsupported', 'io-error'] as const)
      assert.equal(blockStatusCode(blockStatusOf(new VrioError(code, 'x'))), code)
    assert.equal(blockStatusOf(new Error('boom')), BlockStatus.IoError)
    const e = blockStatusError(BlockStatus.OutOfRange, { offset: 1 })
    assert.equal(e.code, 'out-of-range')
    assert.equal(e.details.status, BlockStatus.OutOfRange)
  })

  it('HeadArena never hands out the same bytes twice', () => {
    const arena = new HeadArena(100)
    const a = arena.take(32)
    const b = arena.take(32)
    const c = arena.take(32)
    const d = arena.take(32) // a new slab
    a.fill(1)
    b.fill(2)
    c.fill(3)
    d.fill(4)
    assert.deepEqual([a[0], b[0], c[0], d[0], a[31], b[31], c[31]], [1, 2, 3, 4, 1, 2, 3])
  })

  it('decoding random and mutated messages never throws', () => {
    const random = seededRandom(0xb10c)
    const h = newMessageHeader()
    const r = newBlockRequest()
    const seeds = [
      request(BlockOp.Out, BlockFlag.Fua, 16, 4096, Buffer.alloc(16, 1)),
      request(BlockOp.In, 0, 4096, 0),
      request(BlockOp.WriteZeroes, BlockFlag.Unmap, 4096, 0),
    ]
    let decoded = 0
    for (let i = 0; i < 20_000; i++) {
      let m: Uint8Array
      if (i % 3 === 0) {
        m = new Uint8Array(Math.floor(random() * 120))
        for (let j = 0; j < m.length; j++) m[j] = random() * 256
        if (m.length > 1) m[0] = 1
      } else {
        const s = seeds[i % seeds.length]
        m = Uint8Array.from(
          s.subarray(0, Math.max(0, s.length - (random() < 0.2 ? Math.floor(random() * 8) : 0))),
        )
        const flips = 1 + Math.floor(random() * 4)
        for (let k = 0; k < flips && m.length > 0; k++)
          m[Math.floor(random() * m.length)] ^= 1 << Math.floor(random() * 8)
      }
      if (decodeMessageHeader(m, 0, m.length, h) === undefined) {
        decoded++
        const status = decodeBlockRequest(h, m, r)
        assert.ok(Object.values(BlockStatus).includes(status as never))
        blockResponseData(h, m, Math.floor(random() * 64))
      }
    }
    assert.ok(decoded > 1000)
  })
})
