import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import {
  ETH_P_NONE,
  NO_OFFLOAD,
  PacketSocket,
  TapDevice,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_LEN,
  decodeVirtioNetHdr,
  encodeVirtioNetHdr,
} from '../../src/io/index.ts'
import type { Netns, VethPair } from '../support/netns.ts'
import {
  cleanupNetns,
  createNetns,
  createVethPair,
  ip,
  remainingNetns,
  requireRoot,
} from '../support/netns.ts'
import { finishChecksum, ipv4, mac, parseTcpFrame, tcpFrame } from '../support/packets.ts'
import { waitUntil } from '../support/wait.ts'

const PAYLOAD = 60_000
const MSS = 1448
const ETH_IP_TCP = 14 + 20 + 20

function payloadBytes(): Buffer {
  const p = Buffer.alloc(PAYLOAD)
  for (let i = 0; i < p.length; i++) p[i] = (i * 31 + (i >> 8)) & 0xff
  return p
}

/** virtio_net_hdr + one TCP/IPv4 super-frame that the kernel is asked to cut into MSS segments. */
function superFrame(dstMac: Uint8Array, srcMac: Uint8Array, payload: Buffer, seq: number): Buffer {
  const frame = tcpFrame({
    dstMac,
    srcMac,
    srcIp: ipv4('10.99.0.1'),
    dstIp: ipv4('10.99.0.2'),
    srcPort: 40000,
    dstPort: 5001,
    seq,
    payload,
    partialChecksum: true,
  })
  const hdr = Buffer.alloc(VIRTIO_NET_HDR_LEN)
  encodeVirtioNetHdr(
    {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      hdrLen: ETH_IP_TCP,
      gsoSize: MSS,
      csumStart: 14 + 20,
      csumOffset: 16,
    },
    hdr,
  )
  return Buffer.concat([hdr, frame])
}

describe('virtio-net headers (PACKET_VNET_HDR, IFF_VNET_HDR)', () => {
  let nsA: Netns
  let nsB: Netns
  let veth: VethPair

  before(() => {
    requireRoot()
    nsA = createNetns()
    nsB = createNetns()
    veth = createVethPair(nsA, nsB)
  })

  after(() => {
    cleanupNetns()
    assert.deepEqual(remainingNetns(), [])
  })

  test('a 60 KB TCPV4 GSO frame sent on a veth reaches the peer with its payload and GSO info', async () => {
    const rx = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, vnetHdr: true, rcvBuf: 4 << 20 })
    const tx = PacketSocket.open({
      ifname: veth.a.ifname,
      netns: nsA.path,
      vnetHdr: true,
      protocol: ETH_P_NONE,
    })
    try {
      const payload = payloadBytes()
      const frames: Buffer[] = []
      rx.onBatch((b) => {
        for (let i = 0; i < b.count; i++) frames.push(Buffer.from(b.frame(i)))
      })
      assert.equal(tx.send([superFrame(mac(rx.mac), mac(tx.mac), payload, 1000)]), 1)
      let bytes = 0
      await waitUntil(() => {
        bytes = frames.reduce((s, f) => s + f.length - VIRTIO_NET_HDR_LEN - ETH_IP_TCP, 0)
        return bytes >= PAYLOAD
      }, 'the payload to arrive')
      assert.equal(bytes, PAYLOAD)
      // veth passes GSO frames through whole; whatever the shape, the payload must be intact,
      // and every frame either has a valid checksum or says it still needs one.
      const got: Buffer[] = []
      for (const f of frames) {
        const h = decodeVirtioNetHdr(f)
        const eth = f.subarray(VIRTIO_NET_HDR_LEN)
        if (h.gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
          assert.equal(h.gsoType & 0x7f, VIRTIO_NET_HDR_GSO_TCPV4)
          assert.equal(h.gsoSize, MSS)
        }
        if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) finishChecksum(eth, h.csumStart, h.csumOffset)
        const t = parseTcpFrame(eth)
        assert.ok(t.ipChecksumOk, 'IPv4 header checksum')
        assert.ok(t.tcpChecksumOk, 'TCP checksum')
        got.push(t.payload)
      }
      assert.ok(Buffer.concat(got).equals(payload))
      assert.equal(rx.stats().rxTruncated, 0)
    } finally {
      rx.close()
      tx.close()
    }
  })

  test('the kernel segments a GSO frame for a device without TSO: valid MSS segments come out', async () => {
    // A TAP without offloads has neither TSO nor checksum offload, so the kernel must cut the
    // super-frame into MSS-sized segments and finish each checksum before handing them to us.
    const tap = TapDevice.open({ name: 'vrseg%d', netns: nsA.path })
    ip(nsA, ['link', 'set', tap.name, 'up'])
    const tx = PacketSocket.open({ ifname: tap.name, netns: nsA.path, vnetHdr: true, protocol: ETH_P_NONE })
    try {
      const payload = payloadBytes()
      const segs: Buffer[] = []
      tap.onBatch((b) => {
        for (let i = 0; i < b.count; i++) segs.push(Buffer.from(b.frame(i)))
      })
      assert.equal(tx.send([superFrame(mac('02:00:00:00:00:02'), mac(tap.mac), payload, 5000)]), 1)
      const want = Math.ceil(PAYLOAD / MSS)
      await waitUntil(() => segs.length >= want, `${want} segments (got ${segs.length})`)
      let seq = 5000
      const parts: Buffer[] = []
      for (const s of segs) {
        assert.ok(s.length <= 1514)
        const t = parseTcpFrame(s)
        assert.ok(t.ipChecksumOk, 'IPv4 header checksum of a segment')
        assert.ok(t.tcpChecksumOk, 'TCP checksum of a segment')
        assert.equal(t.seq, seq)
        assert.ok(t.payload.length <= MSS)
        seq += t.payload.length
        parts.push(t.payload)
      }
      assert.equal(segs.length, want)
      assert.ok(Buffer.concat(parts).equals(payload))
    } finally {
      tx.close()
      tap.close()
    }
  })

  test('a TAP with IFF_VNET_HDR and TSO offload receives the GSO frame whole, header first', async () => {
    const tap = TapDevice.open({
      name: 'vrtso%d',
      netns: nsA.path,
      vnetHdr: true,
      offloads: { csum: true, tso4: true, tso6: true, ecn: true },
    })
    ip(nsA, ['link', 'set', tap.name, 'up'])
    const tx = PacketSocket.open({ ifname: tap.name, netns: nsA.path, vnetHdr: true, protocol: ETH_P_NONE })
    try {
      assert.equal(tap.offloads, 0x0f)
      assert.ok(tap.rx.frameSize >= VIRTIO_NET_HDR_LEN + 14 + 65535)
      const payload = payloadBytes()
      const frames: Buffer[] = []
      tap.onBatch((b) => {
        for (let i = 0; i < b.count; i++) frames.push(Buffer.from(b.frame(i)))
      })
      const sent = superFrame(mac('02:00:00:00:00:02'), mac(tap.mac), payload, 7000)
      assert.equal(tx.send([sent]), 1)
      await waitUntil(() => frames.length >= 1, 'the frame')
      assert.equal(frames.length, 1)
      const h = decodeVirtioNetHdr(frames[0])
      assert.equal(h.gsoType, VIRTIO_NET_HDR_GSO_TCPV4)
      assert.equal(h.gsoSize, MSS)
      assert.equal(h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_NEEDS_CSUM)
      assert.equal(h.csumStart, 34)
      assert.equal(h.csumOffset, 16)
      assert.ok(frames[0].subarray(VIRTIO_NET_HDR_LEN).equals(sent.subarray(VIRTIO_NET_HDR_LEN)))

      // And the other way: a frame written to the TAP with a zero header enters the kernel; a
      // vnet packet socket on the same device sees it with its own header in front.
      const sniff = PacketSocket.open({
        ifname: tap.name,
        netns: nsA.path,
        vnetHdr: true,
        ignoreOutgoing: true,
      })
      try {
        const seen: Buffer[] = []
        sniff.onBatch((b) => {
          for (let i = 0; i < b.count; i++) seen.push(Buffer.from(b.frame(i)))
        })
        const small = tcpFrame({
          dstMac: mac(tap.mac),
          srcMac: mac('02:00:00:00:00:02'),
          srcIp: ipv4('10.99.0.2'),
          dstIp: ipv4('10.99.0.1'),
          srcPort: 5001,
          dstPort: 40000,
          seq: 1,
          payload: Buffer.from('hello'),
        })
        const hdr = Buffer.alloc(VIRTIO_NET_HDR_LEN)
        encodeVirtioNetHdr(NO_OFFLOAD, hdr)
        assert.equal(tap.send([Buffer.concat([hdr, small])]), 1)
        await waitUntil(() => seen.length >= 1, 'the written frame on the sniffer')
        assert.ok(seen[0].subarray(VIRTIO_NET_HDR_LEN).equals(small))
        assert.equal(decodeVirtioNetHdr(seen[0]).gsoType, VIRTIO_NET_HDR_GSO_NONE)
      } finally {
        sniff.close()
      }
    } finally {
      tx.close()
      tap.close()
    }
  })
})
