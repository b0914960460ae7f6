import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  decodeVirtioNetHdr,
  encodeVirtioNetHdr,
  NO_OFFLOAD,
  VIRTIO_NET_HDR_LEN,
} from '../../src/wire/virtio-net-hdr.ts'

test('virtio_net_hdr codec round-trips every field, little-endian', () => {
  const h = { flags: 1, gsoType: 0x81, hdrLen: 66, gsoSize: 1448, csumStart: 34, csumOffset: 16 }
  const buf = Buffer.alloc(12)
  assert.equal(encodeVirtioNetHdr(h, buf, 2), 12)
  assert.deepEqual([...buf.subarray(2)], [1, 0x81, 66, 0, 0xa8, 0x05, 34, 0, 16, 0])
  assert.deepEqual(decodeVirtioNetHdr(buf, 2), h)
  assert.throws(() => decodeVirtioNetHdr(buf, 3), RangeError)
})

test('virtio_net_hdr: no offload is ten zero bytes; short buffers are refused', () => {
  const buf = Buffer.alloc(VIRTIO_NET_HDR_LEN, 0xff)
  encodeVirtioNetHdr(NO_OFFLOAD, buf)
  assert.deepEqual([...buf], Array(VIRTIO_NET_HDR_LEN).fill(0))
  assert.throws(() => encodeVirtioNetHdr(NO_OFFLOAD, Buffer.alloc(VIRTIO_NET_HDR_LEN - 1)), RangeError)
})
