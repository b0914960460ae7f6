import assert from 'node:assert/strict'
import { constants as os } from 'node:os'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { VrioError } from '../../src/errors.ts'
import {
  decodeFuseRequest,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FuseOp,
  fuseErrno,
  IN_HEADER_LENGTH,
  RING_OP_IN,
  RING_PAYLOAD,
  RING_PAYLOAD_SIZE_AT,
  RW_IN_LENGTH,
  WRITE_DATA_OFFSET,
} from '../../src/guest/fuse-protocol.ts'

/** Encodes a data request the way the kernel would (what the tests feed the decoder). */
function encodeFuseRequest(
  buf: Uint8Array,
  r: { opcode: number; unique?: number; nodeid: number; offset?: number; size?: number; mode?: number },
  data?: Uint8Array,
): number {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  let len = IN_HEADER_LENGTH
  const a = IN_HEADER_LENGTH
  const put64 = (at: number, x: number) => {
    v.setUint32(at, x % 0x1_0000_0000, true)
    v.setUint32(at + 4, Math.floor(x / 0x1_0000_0000), true)
  }
  buf.fill(0, 0, IN_HEADER_LENGTH + RW_IN_LENGTH)
  v.setUint32(4, r.opcode, true)
  put64(8, r.unique ?? 1)
  put64(16, r.nodeid)
  if (r.opcode === FuseOp.Read || r.opcode === FuseOp.Write) {
    put64(a + 8, r.offset ?? 0)
    v.setUint32(a + 16, r.size ?? data?.length ?? 0, true)
    len += RW_IN_LENGTH
    if (r.opcode === FuseOp.Write && data) {
      buf.set(data, len)
      len += data.length
    }
  } else if (r.opcode === FuseOp.Fallocate) {
    put64(a + 8, r.offset ?? 0)
    put64(a + 16, r.size ?? 0)
    v.setUint32(a + 24, r.mode ?? 0, true)
    len += 32
  } else if (r.opcode === FuseOp.Fsync) {
    v.setUint32(a + 8, r.mode ?? 0, true)
    len += 16
  } else if (r.opcode === FuseOp.Flush) {
    len += 24
  }
  v.setUint32(0, len, true)
  return len
}

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength)

describe('FUSE data request codec', () => {
  it('decodes what the kernel sends (bytes laid out as in <linux/fuse.h>)', () => {
    // A READ of 4096 bytes at 2^40 + 512 on node 2, written out field by field.
    const b = new Uint8Array(256)
    const v = view(b)
    v.setUint32(0, 80, true) // len
    v.setUint32(4, 15, true) // FUSE_READ
    v.setBigUint64(8, 7n, true) // unique
    v.setBigUint64(16, 2n, true) // nodeid
    v.setBigUint64(IN_HEADER_LENGTH + 8, 2n ** 40n + 512n, true) // offset
    v.setUint32(IN_HEADER_LENGTH + 16, 4096, true) // size
    assert.deepEqual(decodeFuseRequest(v), {
      opcode: FuseOp.Read,
      length: 80,
      nodeid: 2,
      offset: 2 ** 40 + 512,
      size: 4096,
      mode: 0,
      dataOffset: 0,
    })
  })

  it('round-trips every data request; a WRITE carries its data after the two headers', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(FuseOp.Read, FuseOp.Write, FuseOp.Fsync, FuseOp.Flush, FuseOp.Fallocate),
        fc.integer({ min: 0, max: 2 ** 50 }),
        fc.integer({ min: 0, max: 4096 }),
        fc.integer({ min: 0, max: 0xff }),
        (opcode, offset, size, mode) => {
          const b = new Uint8Array(8192)
          const data = new Uint8Array(size).map((_, i) => i * 7)
          encodeFuseRequest(
            b,
            { opcode, nodeid: 2, offset, size, mode },
            opcode === FuseOp.Write ? data : undefined,
          )
          const r = decodeFuseRequest(view(b))!
          assert.equal(r.opcode, opcode)
          assert.equal(r.nodeid, 2)
          if (opcode === FuseOp.Read || opcode === FuseOp.Write || opcode === FuseOp.Fallocate) {
            assert.equal(r.offset, offset)
            assert.equal(r.size, size)
          }
          if (opcode === FuseOp.Fallocate || opcode === FuseOp.Fsync) assert.equal(r.mode, mode)
          if (opcode === FuseOp.Write) {
            assert.equal(r.dataOffset, WRITE_DATA_OFFSET)
            assert.deepEqual(b.subarray(r.dataOffset, r.dataOffset + r.size), data)
          }
        },
      ),
    )
  })

  it('refuses truncated requests, a WRITE shorter than its data, unsafe offsets and other opcodes', () => {
    const b = new Uint8Array(8192)
    const len = encodeFuseRequest(b, { opcode: FuseOp.Write, nodeid: 2, offset: 0 }, new Uint8Array(100))
    view(b).setUint32(0, len - 1, true)
    assert.equal(decodeFuseRequest(view(b)), undefined, 'data cut short')
    view(b).setUint32(0, len, true)
    assert.ok(decodeFuseRequest(view(b)))
    assert.equal(decodeFuseRequest(view(b.subarray(0, len - 1))), undefined, 'longer than the buffer')
    assert.equal(decodeFuseRequest(view(b.subarray(0, 20))), undefined, 'no header')
    encodeFuseRequest(b, { opcode: FuseOp.Read, nodeid: 2, offset: 2 ** 60, size: 1 })
    assert.equal(decodeFuseRequest(view(b)), undefined, 'offset beyond 2^53')
    encodeFuseRequest(b, { opcode: FuseOp.Fallocate, nodeid: 2, offset: 0, size: 4096 })
    view(b).setUint32(0, IN_HEADER_LENGTH + 8, true)
    assert.equal(decodeFuseRequest(view(b)), undefined, 'fallocate_in cut short')
    encodeFuseRequest(b, { opcode: 1 /* LOOKUP */, nodeid: 1 })
    assert.equal(decodeFuseRequest(view(b)), undefined)
  })

  it('decodes a ring entry (struct fuse_uring_req_header, then the payload) as the kernel fills it', () => {
    // A WRITE of 8 bytes at 1 MiB: fuse_in_header at 0, fuse_write_in at 128, payload_sz in
    // fuse_uring_ent_in_out at 256 + 16, the data at the payload.
    const b = new Uint8Array(RING_PAYLOAD + 4096)
    const v = view(b)
    v.setUint32(0, IN_HEADER_LENGTH + 40 + 8, true) // len
    v.setUint32(4, 16, true) // FUSE_WRITE
    v.setBigUint64(8, 42n, true) // unique
    v.setBigUint64(16, 2n, true) // nodeid
    v.setBigUint64(RING_OP_IN + 8, 1n << 20n, true) // offset
    v.setUint32(RING_OP_IN + 16, 8, true) // size
    v.setUint32(RING_PAYLOAD_SIZE_AT, 8, true)
    b.set([1, 2, 3, 4, 5, 6, 7, 8], RING_PAYLOAD)
    const r = decodeFuseRequest(v, true)!
    assert.deepEqual(
      { ...r, length: 0 },
      {
        opcode: FuseOp.Write,
        length: 0,
        nodeid: 2,
        offset: 1 << 20,
        size: 8,
        mode: 0,
        dataOffset: RING_PAYLOAD,
      },
    )
    assert.deepEqual([...b.subarray(r.dataOffset, r.dataOffset + r.size)], [1, 2, 3, 4, 5, 6, 7, 8])
    // The same bytes read as a /dev/fuse request: the op's header is not at 40.
    assert.notEqual(decodeFuseRequest(v)?.offset, 1 << 20)
    v.setUint32(RING_PAYLOAD_SIZE_AT, 7, true)
    assert.equal(decodeFuseRequest(v, true), undefined, 'less payload than the WRITE says')
    v.setUint32(4, 15, true) // a READ: no payload needed
    v.setUint32(RING_PAYLOAD_SIZE_AT, 0, true)
    assert.equal(decodeFuseRequest(v, true)?.size, 8)
    assert.equal(decodeFuseRequest(view(b.subarray(0, 300)), true), undefined, 'no room for a payload')
  })

  it('fallocate modes as the loop device sends them', () => {
    const b = new Uint8Array(256)
    encodeFuseRequest(b, {
      opcode: FuseOp.Fallocate,
      nodeid: 2,
      offset: 1 << 20,
      size: 1 << 30,
      mode: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    })
    const r = decodeFuseRequest(view(b))!
    assert.equal(r.mode, 3)
    assert.equal(r.size, 1 << 30)
  })

  it('maps block device errors to errnos', () => {
    assert.equal(fuseErrno(new VrioError('no-space', 'x')), os.errno.ENOSPC)
    assert.equal(fuseErrno(new VrioError('read-only', 'x')), os.errno.EROFS)
    assert.equal(fuseErrno(new VrioError('unsupported', 'x')), os.errno.EOPNOTSUPP)
    assert.equal(fuseErrno(new VrioError('io-error', 'x')), os.errno.EIO)
    assert.equal(fuseErrno(new Error('bug')), os.errno.EIO)
  })
})
