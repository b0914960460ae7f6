/**
 * The Extents and Prefetch block ops (docs/protocol.md §8): the extent codec byte for byte, the
 * request rules, a MemoryDevice and a real sparse file mapped through the link, an older IOhyp
 * (Unsupported) and an encrypted device (never a false hole).
 */
import assert from 'node:assert/strict'
import { mkdtempSync, openSync, closeSync, rmSync, truncateSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { BlockBackend } from '../../src/devices/blk/backend.ts'
import { deviceExtents, ExtentFlag } from '../../src/devices/blk/device.ts'
import { FileDevice } from '../../src/devices/blk/file-device.ts'
import { RemoteBlockDevice } from '../../src/devices/blk/frontend.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import {
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockOp,
  BlockStatus,
  decodeBlockRequest,
  decodeExtents,
  encodeBlockRequestHead,
  encodeBlockResponseHead,
  encodeExtents,
  MAX_REPLY_EXTENTS,
  newBlockRequest,
} from '../../src/devices/blk/protocol.ts'
import { fileExtentsAvailable } from '../../src/io/extents.ts'
import { EncryptedDevice } from '../../src/services/crypt/encrypted-device.ts'
import { createXts } from '../../src/services/crypt/xts.ts'
import { decodeMessageHeader, newMessageHeader } from '../../src/wire/message-header.ts'
import { BlkPair, pattern } from './blk-harness.ts'

const KiB = 1024
const MiB = 1024 * KiB
const HZ = ExtentFlag.Hole | ExtentFlag.Zero
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const DEVICE = { high: 0x0102_0304, low: 0xa1b2_c3d4 }

function extentsRequest(length: number, offset: number, replyLength: number, flags = 0): Buffer {
  const head = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
  encodeBlockRequestHead(head, 0, DEVICE, 0xdead_beef, 3, {
    op: BlockOp.Extents,
    flags,
    length,
    offset,
    floor: 1,
    replyLength,
  })
  return head
}

function decode(m: Uint8Array) {
  const h = newMessageHeader()
  assert.equal(decodeMessageHeader(m, 0, m.length, h), undefined)
  const r = newBlockRequest()
  return { h, r, status: decodeBlockRequest(h, m, r) }
}

describe('blk Extents and Prefetch: codec', () => {
  it('encodes an Extents request byte for byte: replyLength bounds the reply', () => {
    const m = extentsRequest(0x4000_0000, 0x2_0000_0000, 8 * 1024)
    assert.equal(
      hex(m),
      '01200000' +
        '00000018' +
        '01020304a1b2c3d4' +
        'deadbeef00000003' +
        '00002000' + // replyLength: 1024 extents
        '0000' +
        '0000' +
        '40' + // op Extents
        '00' +
        '0000' +
        '40000000' +
        '0000000200000000' +
        '00000001' +
        '00000000',
    )
    const { h, r, status } = decode(m)
    assert.equal(status, BlockStatus.Ok)
    assert.equal(h.replyLength, 8192)
    assert.equal(r.op, BlockOp.Extents)
    assert.equal(r.length, 0x4000_0000)
    assert.equal(r.offset, 0x2_0000_0000)
  })

  it('refuses malformed Extents and Prefetch requests', () => {
    assert.equal(decode(extentsRequest(4096, 0, 0)).status, BlockStatus.BadRequest, 'no room for an extent')
    assert.equal(decode(extentsRequest(4096, 0, 12)).status, BlockStatus.BadRequest, 'not whole extents')
    assert.equal(
      decode(extentsRequest(4096, 0, (MAX_REPLY_EXTENTS + 1) * 8)).status,
      BlockStatus.BadRequest,
      'more than the bound',
    )
    assert.equal(decode(extentsRequest(0, 0, 8)).status, BlockStatus.BadRequest, 'an empty range')
    assert.equal(decode(extentsRequest(4096, 0, 8, 1)).status, BlockStatus.BadRequest, 'flags')
    assert.equal(decode(extentsRequest(4096, 0, 8)).status, BlockStatus.Ok)
    const prefetch = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
    encodeBlockRequestHead(prefetch, 0, DEVICE, 1, 1, {
      op: BlockOp.Prefetch,
      flags: 0,
      length: MiB,
      offset: 0,
      floor: 1,
    })
    assert.equal(decode(prefetch).status, BlockStatus.Ok)
    assert.equal(decode(prefetch).h.replyLength, 0)
    assert.equal(
      decode(
        Buffer.concat([
          prefetch.subarray(0, 4),
          Buffer.from('0000001c', 'hex'),
          prefetch.subarray(8),
          Buffer.alloc(4),
        ]),
      ).status,
      BlockStatus.BadRequest,
      'a prefetch carrying data',
    )
  })

  it('encodes extents as (u32 length, u32 flags) and decodes only well-formed replies', () => {
    const body = encodeExtents([
      { length: 0x10000, flags: 0 },
      { length: 0x3ff0000, flags: HZ },
    ])
    assert.equal(hex(body), '00010000' + '00000000' + '03ff0000' + '00000003')
    // The response of docs/protocol.md §8.2a's example, byte for byte.
    const head = Buffer.alloc(32)
    encodeBlockResponseHead(head, 0, DEVICE, 0xdead_beef, 3, BlockStatus.Ok, body.length)
    assert.equal(
      hex(Buffer.concat([head, body])),
      '01210000' +
        '00000010' +
        '01020304a1b2c3d4' +
        'deadbeef00000003' +
        '00000000' +
        '0000' +
        '0000' +
        '00010000' +
        '00000000' +
        '03ff0000' +
        '00000003',
    )
    assert.deepEqual(decodeExtents(body, 64 * MiB, 16), [
      { length: 0x10000, flags: 0 },
      { length: 0x3ff0000, flags: 3 },
    ])
    assert.equal(decodeExtents(body, 64 * MiB, 8), undefined, 'more than replyLength')
    assert.equal(decodeExtents(body, 64 * MiB - 1, 16), undefined, 'past the range')
    assert.equal(decodeExtents(new Uint8Array(0), 10, 8), undefined, 'no extent')
    assert.equal(decodeExtents(body.subarray(0, 12), 64 * MiB, 16), undefined, 'a partial extent')
    assert.equal(decodeExtents(encodeExtents([{ length: 0, flags: 0 }]), 10, 8), undefined, 'an empty extent')
    assert.equal(decodeExtents(encodeExtents([{ length: 4, flags: 4 }]), 10, 8), undefined, 'unknown flags')
  })

  it('deviceExtents keeps a device to the contract', async () => {
    const liar = Object.assign(new MemoryDevice({ size: MiB }), {
      extents: async () => [
        { length: 100, flags: 0 },
        { length: 100, flags: 0 },
        { length: 10 * MiB, flags: HZ | 8 },
        { length: 0, flags: 0 },
        { length: 5, flags: 0 },
      ],
    })
    assert.deepEqual(await deviceExtents(liar, 0, 1000), [
      { length: 200, flags: 0 },
      { length: 800, flags: HZ },
    ])
    const silent = Object.assign(new MemoryDevice({ size: MiB }), { extents: async () => [] })
    assert.deepEqual(await deviceExtents(silent, 0, 1000), [{ length: 1000, flags: 0 }])
  })
})

describe('blk Extents and Prefetch over the simulated link', () => {
  it('maps a sparse MemoryDevice: holes read as zeros, bounded counts give a prefix', async () => {
    const mem = new MemoryDevice({ size: 16 * MiB, chunkSize: 64 * KiB })
    const h = new BlkPair(mem)
    await h.connect()
    await h.settle(h.front.write(MiB, pattern(1, 128 * KiB), false))
    await h.settle(h.front.write(8 * MiB + 4096, pattern(2, 4096), false))
    assert.deepEqual(await h.settle(h.front.extents(0, 16 * MiB)), [
      { length: MiB, flags: HZ },
      { length: 128 * KiB, flags: 0 },
      { length: 7 * MiB - 128 * KiB, flags: HZ },
      { length: 64 * KiB, flags: 0 },
      { length: 8 * MiB - 64 * KiB, flags: HZ },
    ])
    assert.deepEqual(await h.settle(h.front.extents(MiB + 4096, 8192)), [{ length: 8192, flags: 0 }])
    assert.deepEqual(await h.settle(h.front.extents(0, 16 * MiB, 2)), [
      { length: MiB, flags: HZ },
      { length: 128 * KiB, flags: 0 },
    ])
    await assert.rejects(h.settle(h.front.extents(16 * MiB - 512, 1024)), { code: 'out-of-range' })
    await h.settle(h.front.prefetch(0, 4 * MiB))
    assert.equal(h.device.prefetches, 1)
  })

  it('a duplicate Extents request runs again: its answer carries the extents, not just a status', async () => {
    const mem = new MemoryDevice({ size: 4 * MiB })
    await mem.write(MiB, new Uint8Array(64 * KiB).fill(1), false)
    const replies: Buffer[] = []
    const backend = new BlockBackend(mem, { handle: DEVICE })
    backend.attach({
      sendData(parts) {
        replies.push(Buffer.concat((parts instanceof Uint8Array ? [parts] : parts) as Uint8Array[]))
        return true
      },
    })
    const m = extentsRequest(4 * MiB, 0, 64)
    const { h } = decode(m)
    for (let i = 0; i < 2; i++) {
      backend.receive(h, m)
      await new Promise((resolve) => setImmediate(resolve))
    }
    assert.equal(replies.length, 2)
    const want =
      '01210000' +
      '00000018' +
      '01020304a1b2c3d4' +
      'deadbeef00000003' +
      '00000000' +
      '0000' +
      '0000' +
      hex(
        encodeExtents([
          { length: MiB, flags: HZ },
          { length: 64 * KiB, flags: 0 },
          { length: 3 * MiB - 64 * KiB, flags: HZ },
        ]),
      )
    assert.deepEqual(replies.map(hex), [want, want])
    assert.equal(backend.stats.replayed, 0)
  })

  it('an IOhyp that does not know Extents or Prefetch: all data, and never asked again', async () => {
    const sent: number[] = []
    const front = new RemoteBlockDevice({
      info: {
        size: 4 * MiB,
        blockSize: 512,
        readOnly: false,
        canFlush: true,
        canFua: true,
        canTrim: true,
        canWriteZeroes: true,
      },
      handle: DEVICE,
      sweepInterval: 0,
    })
    // An older back-end: decodeBlockRequest there answers Unsupported to ops it does not know.
    const old = new BlockBackend(new MemoryDevice({ size: 4 * MiB }), { handle: DEVICE })
    old.attach({
      sendData(parts) {
        const m = Buffer.concat((parts instanceof Uint8Array ? [parts] : parts) as Uint8Array[])
        const h = newMessageHeader()
        decodeMessageHeader(m, 0, m.length, h)
        queueMicrotask(() => front.receive(h, m))
        return true
      },
    })
    const session = {
      sendData(parts: Uint8Array | readonly Uint8Array[]) {
        const m = Buffer.concat((parts instanceof Uint8Array ? [parts] : parts) as Uint8Array[])
        const h = newMessageHeader()
        decodeMessageHeader(m, 0, m.length, h)
        sent.push(m[32])
        if (m[32] === BlockOp.Extents || m[32] === BlockOp.Prefetch) {
          const answer = Buffer.alloc(32)
          encodeBlockResponseHead(answer, 0, DEVICE, h.requestHigh, h.requestLow, BlockStatus.Unsupported, 0)
          const a = newMessageHeader()
          decodeMessageHeader(answer, 0, 32, a)
          queueMicrotask(() => front.receive(a, answer))
        } else queueMicrotask(() => old.receive(h, m))
        return true
      },
    }
    front.attach(session)
    assert.deepEqual(await front.extents(0, 4 * MiB), [{ length: 4 * MiB, flags: 0 }])
    assert.deepEqual(await front.extents(MiB, MiB), [{ length: MiB, flags: 0 }])
    await front.prefetch(0, MiB)
    await front.prefetch(0, MiB)
    assert.deepEqual(sent, [BlockOp.Extents, BlockOp.Prefetch], 'each asked once')
    assert.equal((await front.read(0, 4096)).length, 4096, 'the device still works')
    // A new session (the IOhyp restarted, perhaps upgraded) is asked again.
    front.attach(session)
    await front.extents(0, MiB)
    assert.deepEqual(sent, [BlockOp.Extents, BlockOp.Prefetch, BlockOp.In, BlockOp.Extents])
    front.close()
  })

  it('an encrypted device reports data everywhere, even over holes of its backing', async () => {
    const inner = new MemoryDevice({ size: 8 * MiB })
    const key = Buffer.alloc(64)
    for (let i = 0; i < 64; i++) key[i] = i + 1
    const crypt = new EncryptedDevice(inner, { cipher: createXts(key), payloadOffset: MiB })
    const h = new BlkPair(crypt)
    await h.connect()
    await h.settle(h.front.write(0, pattern(3, 4096), false))
    assert.deepEqual(await h.settle(h.front.extents(0, crypt.size)), [{ length: crypt.size, flags: 0 }])
    crypt.close()
  })

  it('maps a real sparse file from SEEK_DATA / SEEK_HOLE', async () => {
    assert.ok(fileExtentsAvailable(), 'the native addon has extents()')
    const dir = mkdtempSync(join(tmpdir(), 'vrio-blk-extents-'))
    const path = join(dir, 'disk.img')
    const size = 32 * MiB + 1000 // odd-sized on purpose: the last extent ends at the file's end
    const fd = openSync(path, 'w')
    writeSync(fd, pattern(1, 256 * KiB), 0, 256 * KiB, 4 * MiB)
    writeSync(fd, pattern(2, 4096), 0, 4096, 20 * MiB)
    closeSync(fd)
    truncateSync(path, size)
    const file = await FileDevice.open(path)
    try {
      const direct = await file.extents(0, size)
      assert.deepEqual(direct, [
        { length: 4 * MiB, flags: HZ },
        { length: 256 * KiB, flags: 0 },
        { length: 16 * MiB - 256 * KiB, flags: HZ },
        { length: 4096, flags: 0 },
        { length: size - 20 * MiB - 4096, flags: HZ },
      ])
      const h = new BlkPair(file)
      await h.connect()
      assert.deepEqual(await h.settle(h.front.extents(0, size)), direct)
      assert.deepEqual(await h.settle(h.front.extents(4 * MiB + 4096, MiB)), [
        { length: 252 * KiB, flags: 0 },
        { length: MiB - 252 * KiB, flags: HZ },
      ])
      await h.settle(h.front.prefetch(4 * MiB, MiB))
      assert.equal(file.stats.prefetches, 1)
      // Data just written (still dirty in the page cache, maybe not yet allocated) is data.
      await h.settle(h.front.write(12 * MiB, pattern(4, 8192), false))
      assert.deepEqual(await h.settle(h.front.extents(12 * MiB - 4096, MiB)), [
        { length: 4096, flags: HZ },
        { length: 8192, flags: 0 },
        { length: MiB - 12288, flags: HZ },
      ])
      // A trim through the link punches a hole, and the map shows it.
      await h.settle(h.front.trim(4 * MiB, 256 * KiB))
      assert.deepEqual(await h.settle(h.front.extents(0, 8 * MiB)), [{ length: 8 * MiB, flags: HZ }])
    } finally {
      await file.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
