import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { formatIPv4, formatMac, isGroupMac, parseIPv4, parseIPv6, parseMac } from '../../src/wire/address.ts'
import { finishChecksum, sumWords } from '../../src/wire/checksum.ts'
import { decodeEthernet, newEthernetHeader } from '../../src/wire/ethernet.ts'
import { decodeTcpFrame, encodeTcpFrame, newTcpFrame, tcpFrameHeaderLength } from '../../src/wire/frame.ts'
import { decodeIPv4, encodeIPv4, newIPv4Header } from '../../src/wire/ipv4.ts'
import {
  decodeMessageHeader,
  encodeMessageHeader,
  joinHandle,
  MESSAGE_HEADER_LENGTH,
  newMessageHeader,
  splitHandle,
} from '../../src/wire/message-header.ts'
import {
  decodeTcpOptions,
  encodeTcpOptions,
  TCP_ACK,
  TCP_PSH,
  TCP_SYN,
  tcpOptionsLength,
} from '../../src/wire/tcp.ts'
import { formatIPv6 } from '../../src/wire/packet.ts'

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')

describe('checksum', () => {
  it('matches the RFC 1071 example', () => {
    const data = hex('0001 f203 f4f5 f6f7')
    assert.equal(finishChecksum(sumWords(data, 0, data.length)), 0x220d)
  })
  it('pads an odd tail byte with zero', () => {
    assert.equal(finishChecksum(sumWords(hex('ab'), 0, 1)), ~0xab00 & 0xffff)
    const long = Buffer.alloc(1001, 0xff)
    // 500 words of 0xffff add nothing in ones' complement; the padded tail 0xff00 complements to 0x00ff.
    assert.equal(finishChecksum(sumWords(long, 0, long.length)), 0x00ff)
  })
})

describe('addresses', () => {
  it('parses and formats MACs and IPv4 addresses, refusing malformed ones', () => {
    assert.equal(parseMac('02:00:00:00:00:0b'), 0x02_00_00_00_00_0b)
    assert.equal(parseMac('FF-FF-FF-FF-FF-FF'), 0xff_ff_ff_ff_ff_ff)
    assert.equal(formatMac(0x02_00_00_00_00_0b), '02:00:00:00:00:0b')
    for (const bad of ['', '02:00:00:00:00', '02:00:00:00:00:0g', '002:00:00:00:00:0b']) {
      assert.equal(parseMac(bad), undefined, bad)
    }
    assert.ok(isGroupMac(0xff_ff_ff_ff_ff_ff))
    assert.ok(!isGroupMac(0x02_00_00_00_00_0b))
    assert.equal(parseIPv4('10.0.0.1'), 0x0a_00_00_01)
    assert.equal(formatIPv4(0xc0_a8_00_c7), '192.168.0.199')
    for (const bad of ['10.0.0', '256.0.0.1', '1.2.3.4.5', 'a.b.c.d'])
      assert.equal(parseIPv4(bad), undefined, bad)
  })
})

describe('IPv6 addresses', () => {
  const hexOf = (text: string) => Buffer.from(parseIPv6(text) ?? []).toString('hex')
  it('parses the RFC 4291 text forms', () => {
    assert.equal(hexOf('2001:db8::1'), '20010db8000000000000000000000001')
    assert.equal(hexOf('::'), '00000000000000000000000000000000')
    assert.equal(hexOf('::1'), '00000000000000000000000000000001')
    assert.equal(hexOf('fe80::'), 'fe800000000000000000000000000000')
    assert.equal(hexOf('2001:DB8:0:0:8:800:200C:417A'), '20010db80000000000080800200c417a')
    assert.equal(hexOf('::ffff:192.0.2.1'), '00000000000000000000ffffc0000201')
    assert.equal(hexOf('1:2:3:4:5:6:7::'), '00010002000300040005000600070000')
  })
  it('refuses malformed text', () => {
    for (const bad of [
      '',
      ':',
      '1::2::3',
      '12345::',
      '1:2:3:4:5:6:7:8:9',
      '1:2:3:4:5:6:7',
      'g::',
      '::1.2.3',
      '1.2.3.4::',
      '1:2:3:4:5:6:7:8::',
      'fe80::1%eth0',
    ])
      assert.equal(parseIPv6(bad), undefined, bad)
  })
  it('agrees with formatIPv6 on random addresses (round trip through RFC 5952 text)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
        assert.deepEqual(parseIPv6(formatIPv6(bytes)), bytes)
      }),
    )
  })
})

describe('ethernet and IPv4', () => {
  it('decodes an Ethernet header and refuses a short one', () => {
    const h = newEthernetHeader()
    assert.equal(decodeEthernet(hex('02000000000b 02000000000a 0800'), 0, 14, h), undefined)
    assert.deepEqual(h, { destination: 0x02_00_00_00_00_0b, source: 0x02_00_00_00_00_0a, etherType: 0x0800 })
    assert.equal(decodeEthernet(hex('02000000000b'), 0, 6, h), 'truncated-ethernet')
  })

  it('encodes the classic IPv4 header vector byte for byte (checksum b861)', () => {
    const expected = hex('4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7')
    const h = { ...newIPv4Header(), totalLength: 0x73, identification: 0, protocol: 17 }
    h.source = 0xc0a8_0001
    h.destination = 0xc0a8_00c7
    const buf = Buffer.alloc(20)
    encodeIPv4(buf, 0, h)
    assert.deepEqual(buf, expected)
    const packet = Buffer.concat([expected, Buffer.alloc(0x73 - 20)])
    const out = newIPv4Header()
    assert.equal(decodeIPv4(packet, 0, packet.length, out, true), undefined)
    assert.equal(out.checksum, 0xb861)
    packet[8] ^= 1
    assert.equal(decodeIPv4(packet, 0, packet.length, out, true), 'bad-ipv4-checksum')
  })

  it('refuses fragments, bad versions and lengths', () => {
    const base = hex('4500 0014 0000 4000 4006 0000 0a000001 0a000002')
    const out = newIPv4Header()
    const variant = (i: number, v: number) => {
      const b = Buffer.from(base)
      b[i] = v
      return decodeIPv4(b, 0, b.length, out, false)
    }
    assert.equal(variant(0, 0x65), 'bad-ipv4-version')
    assert.equal(variant(0, 0x44), 'bad-ipv4-header-length')
    assert.equal(variant(3, 0x15), 'bad-ipv4-total-length')
    assert.equal(variant(6, 0x20), 'ipv4-fragment')
    assert.equal(decodeIPv4(base, 0, 10, out, false), 'truncated-ipv4')
  })
})

describe('TCP frames', () => {
  // A SYN captured from Linux 6.x (checksum offload off): MSS 1460, SACK-permitted, timestamps, window scale 10.
  const linuxSyn = hex(
    '020000000002 020000000001 0800 4500003c5ac540004006cbe20a0900010a090002' +
      '9c401eb4b68e377700000000a002faf09b3b0000 020405b4 0402 080a4629ae9800000000 0103030a',
  )

  it('decodes a SYN sent by the Linux TCP stack, checksums included', () => {
    const f = newTcpFrame()
    assert.equal(decodeTcpFrame(linuxSyn, f, true), undefined)
    assert.equal(f.ip.source, 0x0a09_0001)
    assert.equal(f.tcp.sourcePort, 40_000)
    assert.equal(f.tcp.destinationPort, 7860)
    assert.equal(f.tcp.seq, 0xb68e_3777)
    assert.equal(f.tcp.flags, TCP_SYN)
    assert.equal(f.tcp.window, 64_240)
    assert.equal(f.tcp.options.mss, 1460)
    assert.equal(f.tcp.options.sackPermitted, true)
    assert.equal(f.tcp.options.hasTimestamp, true)
    assert.equal(f.tcp.options.tsValue, 0x4629_ae98)
    assert.equal(f.tcp.options.windowScale, 10)
    assert.equal(f.tcp.options.vrioVersion, -1)
    assert.equal(f.payloadLength, 0)
  })

  it('re-encodes that SYN to the same bytes, in the same option order Linux uses', () => {
    const f = newTcpFrame()
    decodeTcpFrame(linuxSyn, f, true)
    const buf = Buffer.alloc(linuxSyn.length)
    assert.equal(encodeTcpFrame(buf, f, 0), linuxSyn.length)
    assert.deepEqual(buf, linuxSyn)
  })

  // Expected bytes computed independently (Python struct and its own checksum routine).
  const vrioSegment = hex(
    '02000000000b02000000000a0800 4500004a12344000400614780a0000010a000002' +
      'c34f1eb4010203040a0b0c0db01810008115 0000 fe0e76720201010203000000000a 080a000003e8000007d0' +
      '68656c6c6f776f726c64',
  )

  it('encodes a vrio data segment byte for byte: segment option, timestamps, checksums', () => {
    const f = newTcpFrame()
    f.ethernet.destination = 0x02_00_00_00_00_0b
    f.ethernet.source = 0x02_00_00_00_00_0a
    f.ip.identification = 0x1234
    f.ip.source = 0x0a00_0001
    f.ip.destination = 0x0a00_0002
    Object.assign(f.tcp, { sourcePort: 49_999, destinationPort: 7860, seq: 0x0102_0304, ack: 0x0a0b_0c0d })
    f.tcp.flags = TCP_ACK | TCP_PSH
    f.tcp.window = 0x1000
    const o = f.tcp.options
    Object.assign(o.vrio, { present: true, flags: 1, messageStart: 0x0102_0300, messageLength: 10 })
    Object.assign(o, { hasTimestamp: true, tsValue: 1000, tsEcho: 2000 })
    const headerLength = tcpFrameHeaderLength(o)
    const buf = Buffer.alloc(headerLength + 10)
    buf.write('helloworld', headerLength)
    encodeTcpFrame(buf, f, 10)
    assert.deepEqual(buf, vrioSegment)

    const d = newTcpFrame()
    assert.equal(decodeTcpFrame(vrioSegment, d, true), undefined)
    assert.deepEqual(d.tcp.options.vrio, {
      present: true,
      flags: 1,
      messageStart: 0x0102_0300,
      messageLength: 10,
    })
    assert.equal(Buffer.from(vrioSegment.subarray(d.payloadOffset)).toString(), 'helloworld')
  })

  it('detects a flipped byte anywhere in the TCP segment', () => {
    const f = newTcpFrame()
    for (let i = 34; i < vrioSegment.length; i++) {
      const b = Buffer.from(vrioSegment)
      b[i] ^= 0x5a
      const reason = decodeTcpFrame(b, f, true)
      assert.ok(reason !== undefined, `flip at ${i} not detected`)
    }
  })

  it('ignores Ethernet padding after the IP packet', () => {
    const padded = Buffer.concat([linuxSyn, Buffer.alloc(6)])
    const f = newTcpFrame()
    assert.equal(decodeTcpFrame(padded, f, true), undefined)
    assert.equal(f.payloadLength, 0)
  })

  it('refuses malformed options', () => {
    const f = newTcpFrame()
    const bad = Buffer.from(linuxSyn)
    bad[54 + 1] = 40 // MSS option claiming to run past the header
    assert.equal(decodeTcpFrame(bad, f, false), 'bad-tcp-option')
    const badVrio = Buffer.from(vrioSegment)
    badVrio[54 + 4] = 9 // unknown vrio subtype
    assert.equal(decodeTcpFrame(badVrio, f, false), 'bad-vrio-option')
  })
})

describe('vrio message header', () => {
  const vector = hex('0120000300000005deadbeef00000001123456789abcdef000001000000000006162636465')

  it('encodes and decodes byte for byte', () => {
    const h = newMessageHeader()
    Object.assign(h, { type: 0x20, flags: 3, bodyLength: 5, deviceHigh: 0xdeadbeef, deviceLow: 1 })
    Object.assign(h, { requestHigh: 0x1234_5678, requestLow: 0x9abc_def0, replyLength: 4096 })
    const buf = Buffer.alloc(MESSAGE_HEADER_LENGTH + 5)
    encodeMessageHeader(buf, 0, h)
    buf.write('abcde', MESSAGE_HEADER_LENGTH)
    assert.deepEqual(buf, vector)
    const d = newMessageHeader()
    assert.equal(decodeMessageHeader(vector, 0, vector.length, d), undefined)
    assert.deepEqual(d, h)
    assert.equal(joinHandle(d.deviceHigh, d.deviceLow), 0xdeadbeef_00000001n)
    assert.deepEqual(splitHandle(0xdeadbeef_00000001n), [0xdeadbeef, 1])
  })

  it('refuses wrong versions and lengths that disagree with the message', () => {
    const d = newMessageHeader()
    assert.equal(decodeMessageHeader(vector, 0, vector.length - 1, d), 'bad-message-length')
    assert.equal(decodeMessageHeader(vector, 0, 10, d), 'truncated-message-header')
    const v2 = Buffer.from(vector)
    v2[0] = 2
    assert.equal(decodeMessageHeader(v2, 0, v2.length, d), 'bad-message-version')
  })
})

describe('vrio protocol version 2 options (sealed)', () => {
  const options = () => newTcpFrame().tcp.options
  const encode = (o: ReturnType<typeof options>) => {
    const buf = Buffer.alloc(40, 0xee)
    const end = encodeTcpOptions(buf, 0, o)
    assert.equal(end, tcpOptionsLength(o))
    return buf.subarray(0, end)
  }

  it('a sealed data segment: SEGMENT then SEAL, 36 bytes, tag zeroed for sealing', () => {
    const o = options()
    Object.assign(o.vrio, { present: true, flags: 1, messageStart: 0x0102_0300, messageLength: 10 })
    Object.assign(o.seal, { present: true, epoch: 0x101, counter: 99 })
    const bytes = encode(o)
    assert.deepEqual(
      bytes,
      hex('fe0e 7672 02 01 01020300 0000000a' + 'fe16 7672 03 01 00000063 000000000000000000000000'),
    )
    assert.equal(o.seal.offset, 14)
    const d = options()
    assert.equal(decodeTcpOptions(bytes, 0, bytes.length, d), undefined)
    assert.deepEqual(d.seal, { present: true, epoch: 1, counter: 99, offset: 14 })
  })

  it('a sealed SYN: MSS, SACK-permitted, window scale, HELLO v2 with the cipher, SEAL, one NOP: 40 bytes', () => {
    const o = options()
    Object.assign(o, { mss: 1460, sackPermitted: true, windowScale: 7, vrioVersion: 2, vrioCipher: 2 })
    Object.assign(o.seal, { present: true, epoch: 0, counter: 0 })
    const bytes = encode(o)
    assert.deepEqual(
      bytes,
      hex(
        '020405b4 0402 01030307 fe07 7672 01 02 02' + 'fe16 7672 03 00 00000000 000000000000000000000000 01',
      ),
    )
    const d = options()
    assert.equal(decodeTcpOptions(bytes, 0, bytes.length, d), undefined)
    assert.equal(d.vrioVersion, 2)
    assert.equal(d.vrioCipher, 2)
    assert.equal(d.seal.present, true)
  })

  it('a sealed pure ACK: SEAL and two SACK blocks fill exactly 40 bytes (no aligning NOPs)', () => {
    const o = options()
    Object.assign(o.seal, { present: true, epoch: 5, counter: 7 })
    o.sackCount = 2
    o.sackBlocks.splice(0, 4, 1, 2, 3, 4)
    const bytes = encode(o)
    assert.equal(bytes.length, 40)
    assert.deepEqual(
      bytes,
      hex('fe16 7672 03 05 00000007 000000000000000000000000' + '0512 00000001 00000002 00000003 00000004'),
    )
    const d = options()
    assert.equal(decodeTcpOptions(bytes, 0, bytes.length, d), undefined)
    assert.equal(d.sackCount, 2)
    assert.deepEqual(d.sackBlocks.slice(0, 4), [1, 2, 3, 4])
  })

  it('the version-1 HELLO is unchanged (6 bytes, no cipher)', () => {
    const o = options()
    o.vrioVersion = 1
    assert.deepEqual(encode(o), hex('fe06 7672 01 01 0101'))
    const d = options()
    assert.equal(decodeTcpOptions(hex('fe06767201010101'), 0, 8, d), undefined)
    assert.equal(d.vrioVersion, 1)
    assert.equal(d.vrioCipher, -1)
  })

  it('refuses a SEAL or HELLO of the wrong length, and a second SEAL', () => {
    const d = options()
    const seal = 'fe16 7672 03 00 00000000 000000000000000000000000'
    assert.equal(
      decodeTcpOptions(hex('fe15 7672 03 00 00000000 0000000000000000000000 00'), 0, 22, d),
      'bad-vrio-option',
    )
    assert.equal(decodeTcpOptions(hex('fe08 7672 01 02 01 00'), 0, 8, d), 'bad-vrio-option')
    assert.equal(decodeTcpOptions(hex(seal + seal), 0, 44, d), 'bad-vrio-option')
  })
})
