import assert from 'node:assert/strict'
import { it } from 'node:test'
import { Endpoint } from '../../src/transport/endpoint.ts'
import { ipv4, mac, tcpFrame } from '../support/packets.ts'

// Regression: the endpoint's own RSTs came without the headroom the link writes its virtio_net_hdr
// into, so the link wrote 10 bytes in front of a pooled Buffer, over whatever lived there (once, a
// guest's channel key).
it('hands RSTs to the sink with the configured headroom in front, owned by the frame', () => {
  const headroom = 10
  const frames: Uint8Array[] = []
  const endpoint = new Endpoint({
    mac: 0x02_00_00_00_00_02,
    ip: 0x0a00_0002,
    sink: (frame) => frames.push(frame),
    listenPort: 7860,
    // Stateless RSTs exist only in plaintext mode (a sealed endpoint answers no stray segment).
    options: { headroom, checksumOffload: true, insecurePlaintext: true },
  })
  const canaries: Buffer[] = []
  for (let i = 0; i < 50; i++) {
    const segment = tcpFrame({
      dstMac: mac('02:00:00:00:00:02'),
      srcMac: mac('02:00:00:00:00:01'),
      srcIp: ipv4('10.0.0.1'),
      dstIp: ipv4('10.0.0.2'),
      srcPort: 40_000 + i,
      dstPort: 7860,
      seq: 1000,
      ack: 5000,
      flags: 0x10, // a bare ACK for no connection: answered with an RST
      payload: new Uint8Array(0),
    })
    // Small: from the shared pool, like a key read from a file, just before the RST is allocated.
    canaries.push(Buffer.from('ab'.repeat(32), 'hex'))
    endpoint.receive(segment)
    const rst = frames.at(-1)!
    assert.ok(rst.byteOffset >= headroom, 'there is room in front of the frame')
    // What a vnet link does with the headroom (LinkDriver's withVnetHdr).
    new Uint8Array(rst.buffer, rst.byteOffset - headroom, headroom).fill(0xee)
  }
  assert.equal(frames.length, 50)
  for (const c of canaries)
    assert.equal(c.toString('hex'), 'ab'.repeat(32), 'memory in front of the RSTs is untouched')
})
