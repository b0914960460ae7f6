import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  Command,
  CommandFlag,
  commandName,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  decodeString,
  encodeBlockStatusReply,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOffsetDataHeader,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
  encodeStructuredError,
  encodeStructuredNone,
  HandshakeFlag,
  InfoType,
  NbdErrno,
  nbdErrnoName,
  newRequest,
  Option,
  OptionReply,
  readU64,
  TransmissionFlag,
  truncateUtf8,
  writeU64,
} from '../../src/devices/blk/nbd-protocol.ts'
import { encodeRequest } from './nbd-raw-client.ts'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const bytes = (h: string) => Buffer.from(h.replace(/\s+/g, ''), 'hex')

describe('NBD codec: handshake', () => {
  it('greeting: NBDMAGIC, IHAVEOPT, handshake flags', () => {
    assert.equal(
      hex(encodeGreeting(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes)),
      '4e42444d41474943' + '49484156454f5054' + '0003',
    )
    assert.equal(bytes('4e42444d41474943').toString('latin1'), 'NBDMAGIC')
  })

  it('option header: magic, option, length; wrong magic is refused', () => {
    const h = bytes('49484156454f5054 00000007 0000000a')
    assert.deepEqual(decodeOptionHeader(h), { option: Option.Go, length: 10 })
    assert.equal(decodeOptionHeader(bytes('49484156454f5055 00000007 0000000a')), undefined)
  })

  it('option reply: reply magic, option, type, length, data', () => {
    assert.equal(
      hex(encodeOptionReply(Option.List, OptionReply.Ack)),
      '0003e889045565a9' + '00000003' + '00000001' + '00000000',
    )
    assert.equal(
      hex(encodeOptionReply(Option.Go, OptionReply.ErrUnknown, 'no')),
      '0003e889045565a9' + '00000007' + '80000006' + '00000002' + '6e6f',
    )
    assert.equal(OptionReply.ErrUnsup, 0x80000001)
    assert.equal(OptionReply.ErrTooBig, 0x80000009)
  })

  it('NBD_REP_SERVER entry: name length, name, description', () => {
    assert.equal(hex(encodeServerEntry('ab')), '00000002' + '6162')
    assert.equal(hex(encodeServerEntry('ab', 'c')), '00000002' + '6162' + '63')
  })

  it('NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME payloads', () => {
    const flags = TransmissionFlag.HasFlags | TransmissionFlag.SendFlush | TransmissionFlag.CanMultiConn
    assert.equal(flags, 0x0105)
    assert.equal(hex(encodeInfoExport(0x1_0000_0200, flags)), '0000' + '0000000100000200' + '0105')
    assert.equal(
      hex(encodeInfoBlockSize(512, 4096, 32 * 1024 * 1024)),
      '0003' + '00000200' + '00001000' + '02000000',
    )
    assert.equal(hex(encodeInfoString(InfoType.Name, 'x')), '0001' + '78')
  })

  it('NBD_OPT_EXPORT_NAME reply: size, flags, then 124 zeroes unless NO_ZEROES', () => {
    assert.equal(hex(encodeExportNameReply(1 << 20, 0x0003, true)), '0000000000100000' + '0003')
    const padded = encodeExportNameReply(1 << 20, 0x0003, false)
    assert.equal(padded.length, 134)
    assert.ok(padded.subarray(10).every((b) => b === 0))
  })

  it('NBD_OPT_INFO / NBD_OPT_GO data: name and information requests', () => {
    assert.deepEqual(decodeInfoRequest(bytes('00000004 6469736b 0002 0003 0001')), {
      ok: true,
      name: 'disk',
      requests: [InfoType.BlockSize, InfoType.Name],
    })
    assert.deepEqual(decodeInfoRequest(bytes('00000000 0000')), { ok: true, name: '', requests: [] })
    // Too short, name longer than the option, count not matching the length, invalid UTF-8, NUL.
    for (const bad of [
      '0000000000',
      '00000009 6469736b 0000',
      '00000004 6469736b 0002 0003',
      '00000004 6469736b 0000 00',
      '00000002 c328 0000',
      '00000002 6100 0000',
    ]) {
      const r = decodeInfoRequest(bytes(bad))
      assert.equal(r.ok, false, bad)
    }
  })

  it('meta context requests: export name and queries, bounds-checked', () => {
    const good = bytes('00000001 61 00000002 00000002 6f3a 00000000')
    assert.deepEqual(decodeMetaContextRequest(good), { ok: true, name: 'a', queries: ['o:', ''] })
    for (const bad of [
      '',
      '00000001 61',
      '00000001 61 00000001',
      '00000001 61 ffffffff 00000000',
      '00000001 61 00000001 00000005 6f3a',
      '00000001 61 00000000 00',
    ]) {
      const r = decodeMetaContextRequest(bytes(bad))
      assert.equal(r.ok, false, bad)
    }
  })

  it('strings: UTF-8, no NUL, at most 4096 bytes', () => {
    assert.equal(decodeString(Buffer.from('dïsk')), 'dïsk')
    assert.equal(decodeString(bytes('ff')), undefined)
    assert.equal(decodeString(bytes('6100')), undefined)
    assert.equal(decodeString(Buffer.alloc(4097, 0x61)), undefined)
    assert.equal(decodeString(Buffer.alloc(4096, 0x61))?.length, 4096)
    // Cut on a character boundary, never inside one.
    assert.equal(hex(truncateUtf8('aé', 2)), '61')
    assert.equal(hex(truncateUtf8('aé', 3)), '61c3a9')
  })
})

describe('NBD codec: transmission', () => {
  it('request: magic, flags, type, cookie, offset, length', () => {
    const wire = bytes('25609513 0001 0001 0102030405060708 0000000100000000 00001000')
    const r = newRequest()
    assert.equal(decodeRequest(wire, 0, r), true)
    assert.deepEqual(r, {
      flags: CommandFlag.Fua,
      type: Command.Write,
      cookieHigh: 0x01020304,
      cookieLow: 0x05060708,
      offset: 2 ** 32,
      length: 4096,
    })
    assert.equal(hex(encodeRequest(r)), hex(wire))
    // At an offset inside a larger buffer, and with the magic wrong.
    assert.equal(decodeRequest(Buffer.concat([bytes('ff'), wire]), 1, newRequest()), true)
    const other = newRequest()
    assert.equal(
      decodeRequest(bytes('25609514 0000 0000 0000000000000000 0000000000000000 00000000'), 0, other),
      false,
    )
    assert.deepEqual(other, newRequest())
  })

  it('offsets beyond 2^53 still compare as larger than any export', () => {
    const wire = bytes('25609513 0000 0000 0000000000000000 ffffffffffffffff 00000200')
    const r = newRequest()
    decodeRequest(wire, 0, r)
    assert.ok(r.offset + r.length > Number.MAX_SAFE_INTEGER)
  })

  it('simple reply: magic, error, cookie', () => {
    assert.equal(
      hex(encodeSimpleReply(0xdeadbeef, 0x00000001, NbdErrno.EINVAL)),
      '67446698' + '00000016' + 'deadbeef00000001',
    )
  })

  it('structured OFFSET_DATA header: DONE flag, type 1, length 8 + data, offset', () => {
    assert.equal(
      hex(encodeOffsetDataHeader(0, 7, 0x200, 0x1000, true)),
      '668e33ef' + '0001' + '0001' + '0000000000000007' + '00001008' + '0000000000000200',
    )
    assert.equal(hex(encodeOffsetDataHeader(0, 7, 0, 1, false)).slice(8, 12), '0000')
  })

  it('structured NONE and ERROR chunks', () => {
    assert.equal(
      hex(encodeStructuredNone(1, 2)),
      '668e33ef' + '0001' + '0000' + '0000000100000002' + '00000000',
    )
    assert.equal(
      hex(encodeStructuredError(0, 9, NbdErrno.EIO, 'bad')),
      '668e33ef' + '0001' + '8001' + '0000000000000009' + '00000009' + '00000005' + '0003' + '626164',
    )
    const long = encodeStructuredError(0, 1, NbdErrno.EIO, 'x'.repeat(10_000))
    assert.equal(long.readUInt16BE(24), 4096)
    assert.equal(long.length, 20 + 6 + 4096)
  })

  it('NBD_REP_META_CONTEXT data and the BLOCK_STATUS chunk', () => {
    assert.equal(
      hex(encodeMetaContext(1, 'base:allocation')),
      `00000001${hex(Buffer.from('base:allocation'))}`,
    )
    const chunk = encodeBlockStatusReply(0x01020304, 0x05060708, 1, [
      { length: 0x100000, flags: 3 },
      { length: 0x10000, flags: 0 },
    ])
    assert.equal(
      hex(chunk),
      // magic, flags DONE, type 5, cookie, length 4 + 2 * 8 | context id | descriptors
      '668e33ef 0001 0005 0102030405060708 00000014 00000001 00100000 00000003 00010000 00000000'.replace(
        / /g,
        '',
      ),
    )
  })

  it('u64 helpers', () => {
    const b = new Uint8Array(8)
    writeU64(b, 0, 2 ** 40 + 5)
    assert.equal(hex(b), '0000010000000005')
    assert.equal(readU64(b, 0), 2 ** 40 + 5)
  })

  it('names for errnos and commands', () => {
    assert.equal(nbdErrnoName(NbdErrno.ESHUTDOWN), 'ESHUTDOWN')
    assert.equal(nbdErrnoName(NbdErrno.ENOTSUP), 'ENOTSUP')
    assert.equal(nbdErrnoName(99), 'E99')
    assert.equal(commandName(Command.WriteZeroes), 'writeZeroes')
    assert.equal(commandName(42), 'other')
  })
})
