import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { SLOT_STRIDE } from '../../src/io/fast-path.ts'
import { native } from '../../src/io/native.ts'
import {
  NodeFrameAead,
  SEAL_CIPHER_AES_256_GCM,
  SEAL_CIPHER_CHACHA20_POLY1305,
} from '../../src/transport/aead.ts'
import { Delivery } from '../../src/transport/config.ts'
import { LEND } from '../../src/transport/lease.ts'
import {
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockOp,
  BlockStatus,
  encodeBlockRequestHead,
  encodeBlockResponseHead,
} from '../../src/devices/blk/protocol.ts'
import { SEAL_TAG_OFFSET, TCP_ACK, TCP_PSH } from '../../src/wire/tcp.ts'
import {
  encodeTcpFrameHeaders,
  finishTcpFrameChecksum,
  IP_OFFSET,
  newTcpFrame,
  TCP_OFFSET,
  tcpFrameHeaderLength,
} from '../../src/wire/frame.ts'
import { VIRTIO_NET_HDR_LEN } from '../../src/wire/virtio-net-hdr.ts'

// The native fast path's reply frame (native/fastpath.cc BuildData) against the frame the
// TypeScript transport builds for the same message and state (Connection.sendData/emitPrepared,
// LinkDriver's virtio_net_hdr), byte for byte: the wire must not tell the two paths apart.

const u32 = () => randomBytes(4).readUInt32BE()

/**
 * The frames Connection.pump sends for `message` with the window open: pieces of maxPayload bytes
 * (the whole message when it is 0), each a sealed data segment naming the whole message.
 */
function tsFrames(p: Float64Array, key: Uint8Array, message: Uint8Array, vnet: boolean): Uint8Array[] {
  const limit = p[LEND.maxPayload] > 0 ? p[LEND.maxPayload] : Math.max(message.length, 1)
  const frames: Uint8Array[] = []
  let off = 0
  do {
    const piece = message.subarray(off, off + limit)
    frames.push(tsFrame(p, key, vnet, { piece, off, total: message.length, index: frames.length }))
    off += piece.length
  } while (off < message.length)
  return frames
}

/**
 * A sealed frame as the transport sends it on a lent connection's state `p`: the `index`th data
 * segment of a message of `total` bytes (`piece` at offset `off` of it), or with no piece a pure
 * ACK (Connection.sendControl: SEAL, no SACK blocks).
 */
function tsFrame(
  p: Float64Array,
  key: Uint8Array,
  vnet: boolean,
  data?: { piece: Uint8Array; off: number; total: number; index: number },
): Uint8Array {
  const index = data?.index ?? 0
  const piece = data?.piece ?? new Uint8Array(0)
  const f = newTcpFrame()
  f.ethernet.source = p[LEND.localMac]
  f.ethernet.destination = p[LEND.remoteMac]
  f.ip.source = p[LEND.localIp]
  f.ip.destination = p[LEND.remoteIp]
  f.ip.identification = (p[LEND.ipId] + index) & 0xffff
  const t = f.tcp
  t.sourcePort = p[LEND.localPort]
  t.destinationPort = p[LEND.remotePort]
  t.seq = (p[LEND.sndNxt] + (data?.off ?? 0)) >>> 0
  t.ack = p[LEND.rcvNxt]
  t.flags = data ? TCP_ACK | TCP_PSH : TCP_ACK
  t.window = p[LEND.windowField]
  const o = t.options
  if (data) {
    o.vrio.present = true
    o.vrio.flags = Delivery.Reliable
    o.vrio.messageStart = p[LEND.sndNxt]
    o.vrio.messageLength = data.total
  }
  o.seal.present = true
  o.seal.epoch = p[LEND.txEpoch] & 0xff
  const counter = p[LEND.txCounter] + index
  o.seal.counter = counter >>> 0
  const header = tcpFrameHeaderLength(o)
  const hdr = vnet ? VIRTIO_NET_HDR_LEN : 0
  const out = new Uint8Array(hdr + header + piece.length)
  const frame = out.subarray(hdr)
  frame.set(piece, header)
  const length = encodeTcpFrameHeaders(frame, f, piece.length)
  const aead = new NodeFrameAead(p[LEND.cipher] as 1 | 2, key)
  aead.seal(frame, IP_OFFSET, f.tcpOffset, header, length, o.seal.offset + SEAL_TAG_OFFSET, counter)
  finishTcpFrameChecksum(frame, f, length, p[LEND.checksumOffload] === 1)
  if (vnet) {
    const mss = p[LEND.mss]
    const gso = piece.length > mss ? mss : 0
    out.set([1, gso > 0 ? 1 : 0, header & 0xff, header >> 8, gso & 0xff, gso >> 8, TCP_OFFSET, 0, 16, 0], 0)
  }
  return out
}

const hex = (frames: readonly Uint8Array[]) => frames.map((f) => Buffer.from(f).toString('hex'))

describe('native fast path: reply frames', () => {
  const FastPath = native().FastPath
  /** A one-slot fast path whose frame builders the tests call (they use a scratch lease). */
  const scratch = () =>
    new FastPath!(
      1,
      new Float64Array(SLOT_STRIDE),
      new Float64Array(3 * 4),
      new Uint32Array(32),
      new Uint8Array(65536),
      4,
      65536,
    )
  it('the addon has the fast path (rebuild it otherwise)', () => {
    assert.equal(typeof FastPath, 'function')
  })
  it('equal the TypeScript transport frames byte for byte, over random states, messages, both ciphers, with and without offload', () => {
    assert.ok(FastPath)
    const fp = scratch()
    for (let i = 0; i < 200; i++) {
      const p = randomParams(i)
      const key = randomBytes(32)
      const sizes = [32, 32 + 512, 32 + 4096, 1424, 1425, 32 + 60 * 1024]
      const message = randomBytes(sizes[i % sizes.length])
      const vnet = i % 5 !== 0
      const got = fp.buildReply(p, key, message, vnet)
      assert.equal(got.length, 1)
      assert.deepEqual(hex(got), hex(tsFrames(p, key, message, vnet)), `case ${i}`)
    }
  })

  it('answers to READ and WRITE requests (the response head the addon writes, then the data): equal to protocol.ts and the transport frame', () => {
    assert.ok(FastPath)
    const fp = scratch()
    for (let i = 0; i < 200; i++) {
      const p = randomParams(i)
      const key = randomBytes(32)
      const write = i % 2 === 1
      const length = [512, 4096, 16384, 1, 65536 - 4096][i % 5]
      const device = { high: u32(), low: u32() }
      const epoch = u32()
      const id = u32()
      const request = new Uint8Array(BLOCK_REQUEST_HEAD_LENGTH)
      encodeBlockRequestHead(request, 0, device, epoch, id, {
        op: write ? BlockOp.Out : BlockOp.In,
        flags: 0,
        offset: u32() * 512,
        length,
        floor: id,
      })
      // Success (reads carry their data), an I/O error, no space (writes): none carries data.
      const status = [BlockStatus.Ok, BlockStatus.Ok, BlockStatus.IoError, BlockStatus.NoSpace][i % 4]
      const data = !write && status === BlockStatus.Ok ? randomBytes(length) : new Uint8Array(0)
      const vnet = i % 5 !== 0
      const message = new Uint8Array(32 + data.length)
      encodeBlockResponseHead(message, 0, device, epoch, id, status, data.length)
      message.set(data, 32)
      const got = fp.buildReply(p, key, data, vnet, request, status)
      assert.deepEqual(hex(got), hex(tsFrames(p, key, message, vnet)), `case ${i}`)
    }
  })

  it('a reply over one frame leaves as the transport sends it: pieces of maxPayload bytes (GSO super-frames), counters and IPv4 ids in sequence, each naming the whole message', () => {
    assert.ok(FastPath)
    const fp = scratch()
    for (let i = 0; i < 60; i++) {
      const p = randomParams(i)
      // As Connection.lendTo: the GSO limit rounded down to whole segments.
      p[LEND.maxPayload] = 62_000 - (62_000 % p[LEND.mss])
      // Near the wrap of sequence numbers, IPv4 ids and 32-bit counters too.
      if (i % 6 === 1) p[LEND.sndNxt] = 0xffff_ffff - 70_000
      if (i % 6 === 2) p[LEND.ipId] = 0xfffe
      if (i % 6 === 3) p[LEND.txCounter] = 0x1_0000_0000 - 3
      const key = randomBytes(32)
      const length = [1024 * 1024, 128 * 1024, 61_000, 200_000 + 17][i % 4]
      const device = { high: u32(), low: u32() }
      const id = u32()
      const request = new Uint8Array(BLOCK_REQUEST_HEAD_LENGTH)
      encodeBlockRequestHead(request, 0, device, 7, id, {
        op: BlockOp.In,
        flags: 0,
        offset: 0,
        length,
        floor: id,
      })
      const data = randomBytes(length)
      const message = new Uint8Array(32 + length)
      encodeBlockResponseHead(message, 0, device, 7, id, BlockStatus.Ok, length)
      message.set(data, 32)
      const vnet = i % 5 !== 0
      const got = fp.buildReply(p, key, data, vnet, request, BlockStatus.Ok)
      assert.equal(got.length, Math.ceil(message.length / p[LEND.maxPayload]), `case ${i}`)
      assert.deepEqual(hex(got), hex(tsFrames(p, key, message, vnet)), `case ${i}`)
    }
  })

  it("its pure ACKs (of the pieces of a WRITE over several frames) equal the transport's byte for byte", () => {
    assert.ok(FastPath)
    const fp = scratch()
    for (let i = 0; i < 100; i++) {
      const p = randomParams(i)
      const key = randomBytes(32)
      const vnet = i % 5 !== 0
      const got = fp.buildAck(p, key, vnet)
      assert.equal(
        Buffer.from(got).toString('hex'),
        Buffer.from(tsFrame(p, key, vnet)).toString('hex'),
        `case ${i}`,
      )
    }
  })
})

function randomParams(i: number): Float64Array {
  const p = new Float64Array(LEND.disks)
  p[LEND.localMac] = randomBytes(6).readUIntBE(0, 6)
  p[LEND.remoteMac] = randomBytes(6).readUIntBE(0, 6)
  p[LEND.localIp] = u32()
  p[LEND.remoteIp] = u32()
  p[LEND.localPort] = u32() & 0xffff
  p[LEND.remotePort] = u32() & 0xffff
  p[LEND.rcvNxt] = u32()
  p[LEND.sndNxt] = u32()
  p[LEND.ipId] = u32() & 0xffff
  p[LEND.windowField] = u32() & 0xffff
  p[LEND.mss] = 1424
  p[LEND.cipher] = i % 2 === 0 ? SEAL_CIPHER_AES_256_GCM : SEAL_CIPHER_CHACHA20_POLY1305
  p[LEND.txEpoch] = 1 + (u32() % 300)
  // Counters above 2^32 too: the SEAL option carries the low 32 bits, the nonce all 64.
  p[LEND.txCounter] = i % 3 === 0 ? u32() * 0x100 + u32() : u32() % 1_000_000
  p[LEND.checksumOffload] = i % 4 < 2 ? 1 : 0
  return p
}
