import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { it } from 'node:test'
import { BLOCK_REQUEST_HEAD_LENGTH, BlockOp, encodeBlockRequestHead } from '../../src/devices/blk/protocol.ts'
import { SLOT_STRIDE } from '../../src/io/fast-path.ts'
import { native } from '../../src/io/native.ts'
import { SEAL_CIPHER_AES_256_GCM } from '../../src/transport/aead.ts'
import { LEND, LEND_DISK_STRIDE } from '../../src/transport/lease.ts'

// A lend that carries a message the connection was receiving (Connection.lendingPartial): the
// addon takes it only when it would have taken its first frame — a WRITE of a lent, writable disk
// — and then writes the bytes received so far at once; anything else refuses the lend.

const MiB = 1 << 20
const DEVICE = { high: 1, low: 2 }

/** Lend parameters for one disk (`fd`, 1 MiB, writable or not), the message at partStart. */
function params(fd: number, writable: boolean, length: number, filled: number): Float64Array {
  const p = new Float64Array(LEND.disks + LEND_DISK_STRIDE)
  p[LEND.mss] = 1424
  p[LEND.maxPayload] = 1424 * 44
  p[LEND.cipher] = SEAL_CIPHER_AES_256_GCM
  p[LEND.txEpoch] = 1
  p[LEND.rxEpoch] = 1
  p[LEND.rxHighest] = 10
  p[LEND.rekeyFrames] = 1e9
  p[LEND.rekeyBytes] = 1e12
  p[LEND.sendLimit] = 8 * MiB
  p[LEND.sendBuffer] = 16 * MiB
  p[LEND.cwnd] = 64 * 1024
  p[LEND.ssthresh] = -1
  p[LEND.srtt] = -1
  p[LEND.rcvNxt] = 5000 + filled
  p[LEND.partStart] = 5000
  p[LEND.partLength] = length
  p[LEND.partFilled] = filled
  p[LEND.diskCount] = 1
  p.set([DEVICE.high, DEVICE.low, fd, MiB, MiB, writable ? 1 : 0], LEND.disks)
  return p
}

/** The first `filled` bytes of a BlockRequest of `op` at `offset` carrying `data` (for a write). */
function message(
  op: BlockOp,
  offset: number,
  data: Uint8Array,
  filled: number,
): { bytes: Uint8Array; length: number } {
  const length = BLOCK_REQUEST_HEAD_LENGTH + (op === BlockOp.Out ? data.length : 0)
  const m = new Uint8Array(length)
  encodeBlockRequestHead(m, 0, DEVICE, 3, 9, { op, flags: 0, offset, length: data.length, floor: 9 })
  if (op === BlockOp.Out) m.set(data, BLOCK_REQUEST_HEAD_LENGTH)
  return { bytes: m.subarray(0, filled), length: op === BlockOp.Out ? length : 300_000 }
}

it('a WRITE partly received goes with the lend (its bytes so far written at once); a READ, bytes that are no request, or a read-only disk refuse it', () => {
  const FastPath = native().FastPath
  assert.ok(FastPath, 'the addon has a fast path')
  const dir = mkdtempSync(join(tmpdir(), 'vrio-lend-'))
  const file = join(dir, 'disk.img')
  writeFileSync(file, new Uint8Array(MiB))
  const fd = openSync(file, 'r+')
  const shared = new Float64Array(SLOT_STRIDE)
  const fp = new FastPath(
    1,
    shared,
    new Float64Array(3 * 16),
    new Uint32Array(32),
    new Uint8Array(8 * MiB),
    16,
    8 * MiB,
  )
  const keys = [randomBytes(32), randomBytes(32)] as const
  try {
    const data = randomBytes(256 * 1024)
    const offset = 128 * 1024
    const filled = BLOCK_REQUEST_HEAD_LENGTH + 100_000
    const refused: [string, ReturnType<typeof message>, boolean][] = [
      ['a READ', message(BlockOp.In, offset, new Uint8Array(4096), BLOCK_REQUEST_HEAD_LENGTH), true],
      ['bytes that are no request', { bytes: randomBytes(filled), length: 300_000 }, true],
      ['a write to a read-only disk', message(BlockOp.Out, offset, data, filled), false],
      ['a head not received whole', message(BlockOp.Out, offset, data, 40), true],
    ]
    for (const [what, m, writable] of refused) {
      const p = params(fd, writable, m.length, m.bytes.length)
      assert.equal(fp.lend(0, p, keys[0], keys[1], undefined, m.bytes), false, `${what}: refused`)
      assert.equal(shared[0], 0, `${what}: the slot stays free`)
    }
    assert.deepEqual(readFileSync(file), Buffer.alloc(MiB), 'nothing written by a refused lend')
    const m = message(BlockOp.Out, offset, data, filled)
    assert.equal(fp.lend(0, params(fd, true, m.length, filled), keys[0], keys[1], undefined, m.bytes), true)
    assert.equal(shared[0], 1, 'lent')
    const disk = readFileSync(file)
    const written = filled - BLOCK_REQUEST_HEAD_LENGTH
    assert.deepEqual(
      disk.subarray(offset, offset + written),
      data.subarray(0, written),
      'the bytes so far written',
    )
    assert.equal(
      disk.subarray(offset + written).some((b) => b !== 0),
      false,
      'and nothing past them',
    )
    assert.equal(
      disk.subarray(0, offset).some((b) => b !== 0),
      false,
    )
    // Handed back at once, it gives the write back as unfinished: its length and what was taken.
    fp.reclaim(0)
    assert.equal(shared[0], 2, 'handed back')
  } finally {
    closeSync(fd)
    rmSync(dir, { recursive: true, force: true })
  }
})
