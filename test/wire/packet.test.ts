import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { dissectPacket, formatIPv6, newPacket, packetAddress } from '../../src/wire/packet.ts'
import { TCP_ACK, TCP_PSH } from '../../src/wire/tcp.ts'

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')
const ETH = (type: string) => `020000000002 020000000001 ${type}`

describe('packet dissector', () => {
  it('reads an IPv4 TCP segment with options and Ethernet padding', () => {
    // IPv4 (ihl 6: one NOP option word), TCP with 12 bytes of options, 3 bytes of payload, 2 of padding.
    const frame = hex(
      `${ETH('0800')} 4600003b 1234 4000 40 06 0000 0a000001 0a000002 01010101` +
        ' 3039 0050 00000064 000000c8 8018 ffff 0000 0000 0101080a0000000100000002 616263 0000',
    )
    const p = newPacket()
    assert.equal(dissectPacket(frame, p), undefined)
    assert.equal(p.ipVersion, 4)
    assert.equal(p.protocol, 6)
    assert.equal(packetAddress(frame, p, 'source'), '10.0.0.1')
    assert.equal(packetAddress(frame, p, 'destination'), '10.0.0.2')
    assert.equal(p.sourcePort, 12345)
    assert.equal(p.destinationPort, 80)
    assert.equal(p.tcpSeq, 100)
    assert.equal(p.tcpAck, 200)
    assert.equal(p.tcpFlags, TCP_ACK | TCP_PSH)
    assert.equal(
      Buffer.from(frame.subarray(p.payloadOffset, p.payloadOffset + p.payloadLength)).toString(),
      'abc',
    )
    assert.equal(p.end, frame.length - 2)
    assert.equal(p.fragment, false)
  })

  it('reads a VLAN-tagged IPv6 UDP datagram behind hop-by-hop and fragment headers', () => {
    const frame = hex(
      `020000000002 020000000001 8100 0064 86dd 60000000 001c 00 40` +
        ' 20010db8000000000000000000000001 20010db8000000000000000000000002' +
        ' 2c00 000000000000' + // hop-by-hop: next = fragment (44), 8 bytes
        ' 11 00 0001 00000001' + // fragment: next = UDP, offset 0, more fragments
        ' 1f90 0035 000c 0000 41424344',
    )
    const p = newPacket()
    assert.equal(dissectPacket(frame, p), undefined)
    assert.equal(p.vlan, 100)
    assert.equal(p.ipVersion, 6)
    assert.equal(p.protocol, 17)
    assert.equal(p.fragment, true)
    assert.equal(p.laterFragment, false)
    assert.equal(p.fragmentId, 1)
    assert.equal(p.error, undefined)
    assert.equal(p.sourcePort, 8080)
    assert.equal(p.destinationPort, 53)
    assert.equal(packetAddress(frame, p, 'source'), '2001:db8::1')
    assert.equal(p.payloadLength, 4)
  })

  it('reads ICMP types and leaves later fragments without a transport header', () => {
    const ping = hex(`${ETH('0800')} 4500001c 0000 0000 40 01 0000 0a000001 0a000002 0800 0000 00010001`)
    const p = newPacket()
    assert.equal(dissectPacket(ping, p), undefined)
    assert.equal(p.icmpType, 8)
    assert.equal(p.fragmentId, 0, 'not a fragment')
    const later = hex(`${ETH('0800')} 45000018 abcd 00b9 40 06 0000 0a000001 0a000002 0000000000000000`)
    assert.equal(dissectPacket(later, p), undefined)
    assert.equal(p.laterFragment, true)
    assert.equal(p.fragmentId, 0xabcd)
    assert.equal(p.l4Offset, -1)
  })

  it('names what is wrong with truncated or malformed frames', () => {
    const p = newPacket()
    assert.equal(dissectPacket(hex('0102'), p), 'truncated-ethernet')
    assert.equal(p.error, 'truncated-ethernet', 'the result is kept in the packet')
    assert.equal(dissectPacket(hex(`${ETH('0800')} 4500`), p), 'truncated-ip')
    assert.equal(
      dissectPacket(hex(`${ETH('0800')} 43000014 0000 0000 40 06 0000 0a000001 0a000002`), p),
      'bad-ip-header',
    )
    assert.equal(
      dissectPacket(hex(`${ETH('0800')} 45000064 0000 0000 40 06 0000 0a000001 0a000002`), p),
      'truncated-ip',
    )
    assert.equal(
      dissectPacket(hex(`${ETH('0800')} 45000019 0000 0000 40 06 0000 0a000001 0a000002 3039005000`), p),
      'truncated-l4',
    )
    // ARP is not IP but is fine.
    assert.equal(dissectPacket(hex(`${ETH('0806')} ${'00'.repeat(28)}`), p), undefined)
    assert.equal(p.ipVersion, 0)
    assert.equal(p.error, undefined)
  })

  it('never throws and keeps every offset inside the frame', () => {
    const p = newPacket()
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 200 }),
        fc.constantFrom('0800', '86dd', '8100', '0806'),
        (tail, type) => {
          const frame = Buffer.concat([hex(ETH(type)), tail])
          dissectPacket(frame, p)
          assert.ok(p.end <= frame.length)
          if (p.l4Offset >= 0) assert.ok(p.payloadOffset + p.payloadLength <= frame.length)
        },
      ),
      { seed: 7, numRuns: 2000 },
    )
  })

  it('formats IPv6 addresses as RFC 5952 says', () => {
    assert.equal(formatIPv6(hex('20010db8000000000000000000000001')), '2001:db8::1')
    assert.equal(formatIPv6(hex('00000000000000000000000000000000')), '::')
    assert.equal(formatIPv6(hex('20010db8000100000000000100000001')), '2001:db8:1::1:0:1')
    assert.equal(formatIPv6(hex('20010db8000000010001000100010001')), '2001:db8:0:1:1:1:1:1')
    assert.equal(formatIPv6(hex('fe800000000000000000000000000000')), 'fe80::')
  })
})
