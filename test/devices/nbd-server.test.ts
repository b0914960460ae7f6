/**
 * The NBD server against a raw socket client: exact protocol behaviour, errors, pipelining,
 * back-pressure, hostile input and shutdown. (Real tools are in nbd-interop.test.ts.)
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdirSync, statSync, writeFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, afterEach, before, beforeEach, describe, it } from 'node:test'
import type { BlockDevice } from '../../src/devices/blk/device.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import {
  ClientFlag,
  Command,
  CommandFlag,
  InfoType,
  NbdErrno,
  Option,
  OptionReply,
  ReplyFlag,
  ReplyType,
  readU64,
  TransmissionFlag,
} from '../../src/devices/blk/nbd-protocol.ts'
import {
  NBD_MAX_PAYLOAD,
  NbdServer,
  type NbdServerOptions,
  nbdErrnoForError,
} from '../../src/devices/blk/nbd-server.ts'
import { isVrioError, VrioError } from '../../src/errors.ts'
import { makeStaleSocket, type TempDir, tempDir } from '../control/fixtures.ts'
import { waitUntil } from '../support/wait.ts'
import { RawClient } from './nbd-raw-client.ts'

const MiB = 1024 * 1024

/** NBD_OPT_{LIST,SET}_META_CONTEXT data: export name, then the queries. */
function metaQuery(name: string, queries: string[]): Buffer {
  const parts = [u32(name.length), Buffer.from(name), u32(queries.length)]
  for (const q of queries) parts.push(u32(q.length), Buffer.from(q))
  return Buffer.concat(parts)
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n)
  return b
}

type Op = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes'

/** A MemoryDevice with a hook before every operation (to hold, fail or count them). */
class HookedDevice implements BlockDevice {
  readonly inner: MemoryDevice
  size: number
  blockSize: number
  readOnly: boolean
  canFlush: boolean
  canFua: boolean
  canTrim: boolean
  canWriteZeroes: boolean
  hook: ((op: Op, offset: number, length: number) => Promise<void> | void) | undefined
  active = 0
  maxActive = 0
  calls: string[] = []

  constructor(inner: MemoryDevice) {
    this.inner = inner
    this.size = inner.size
    this.blockSize = inner.blockSize
    this.readOnly = inner.readOnly
    this.canFlush = inner.canFlush
    this.canFua = inner.canFua
    this.canTrim = inner.canTrim
    this.canWriteZeroes = inner.canWriteZeroes
  }

  private async around<T>(op: Op, offset: number, length: number, fn: () => Promise<T>): Promise<T> {
    this.calls.push(`${op}:${offset}:${length}`)
    this.active++
    this.maxActive = Math.max(this.maxActive, this.active)
    try {
      await this.hook?.(op, offset, length)
      return await fn()
    } finally {
      this.active--
    }
  }

  read(offset: number, length: number) {
    return this.around('read', offset, length, () => this.inner.read(offset, length))
  }
  write(offset: number, data: Uint8Array, fua: boolean) {
    return this.around('write', offset, data.length, () => this.inner.write(offset, data, fua))
  }
  flush() {
    return this.around('flush', 0, 0, () => this.inner.flush())
  }
  trim(offset: number, length: number) {
    return this.around('trim', offset, length, () => this.inner.trim(offset, length))
  }
  writeZeroes(offset: number, length: number, mayTrim: boolean, fua: boolean) {
    return this.around('writeZeroes', offset, length, () =>
      this.inner.writeZeroes(offset, length, mayTrim, fua),
    )
  }
  extents(offset: number, length: number, maxExtents?: number) {
    this.calls.push(`extents:${offset}:${length}:${maxExtents}`)
    return this.inner.extents(offset, length, maxExtents)
  }
}

describe('NBD server (raw protocol)', () => {
  let tmp: TempDir
  let server: NbdServer
  let path: string
  let disk: HookedDevice
  let ro: MemoryDevice
  const clients: RawClient[] = []

  const open = async () => {
    const c = await RawClient.connect(path)
    clients.push(c)
    return c
  }

  const start = async (options: Partial<NbdServerOptions> = {}) => {
    disk = new HookedDevice(new MemoryDevice({ size: 16 * MiB }))
    ro = new MemoryDevice({ size: MiB, readOnly: true })
    const exports = new Map<string, BlockDevice>([
      ['disk', disk],
      ['ro', ro],
    ])
    server = new NbdServer({
      path,
      lookup: (name) => exports.get(name),
      list: () => exports.keys(),
      ...options,
    })
    await server.listen()
  }

  before(() => {
    tmp = tempDir('vrio-nbd-')
  })
  after(() => tmp.remove())
  beforeEach(async () => {
    path = tmp.path(`run/${randomBytes(4).toString('hex')}.sock`)
    await start()
  })
  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy()
    await server.close()
  })

  describe('socket', () => {
    it('creates its directory and a 0600 socket, removed by close()', async () => {
      assert.equal(statSync(path).mode & 0o777, 0o600)
      assert.equal(statSync(tmp.path('run')).isDirectory(), true)
      await server.close()
      assert.throws(() => statSync(path), { code: 'ENOENT' })
    })

    it('replaces a stale socket, refuses a live one and a non-socket file', async () => {
      const stale = tmp.path('stale.sock')
      await makeStaleSocket(stale)
      const s2 = new NbdServer({ path: stale, lookup: () => undefined })
      await s2.listen()
      await s2.close()

      const s3 = new NbdServer({ path, lookup: () => undefined })
      await assert.rejects(s3.listen(), (e: unknown) => isVrioError(e, 'nbd-socket-in-use'))

      const file = tmp.path('plain')
      mkdirSync(tmp.dir, { recursive: true })
      writeFileSync(file, 'x')
      const s4 = new NbdServer({ path: file, lookup: () => undefined })
      await assert.rejects(s4.listen(), (e: unknown) => isVrioError(e, 'nbd-socket-path-invalid'))
    })
  })

  describe('handshake', () => {
    it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE | NO_ZEROES', async () => {
      const c = await open()
      const greeting = await c.greet()
      assert.equal(greeting.toString('hex'), '4e42444d41474943' + '49484156454f5054' + '0003')
    })

    it('NBD_OPT_EXPORT_NAME: size, flags, and the 124 zeroes only without NO_ZEROES', async () => {
      for (const noZeroes of [true, false]) {
        const c = await open()
        await c.greet(ClientFlag.FixedNewstyle | (noZeroes ? ClientFlag.NoZeroes : 0))
        c.sendOption(Option.ExportName, Buffer.from('disk'))
        const reply = await c.read(noZeroes ? 10 : 134)
        assert.equal(readU64(reply, 0), 16 * MiB)
        const flags = reply.readUInt16BE(8)
        assert.ok(flags & TransmissionFlag.HasFlags)
        assert.equal(flags & TransmissionFlag.SendDf, 0, 'no DF without structured replies')
        // The connection is now in transmission: a read works.
        c.request({ type: Command.Read, cookieLow: 1, offset: 0, length: 512 })
        const r = await c.reply(new Map([[1, 512]]))
        assert.equal(r.error, 0)
        assert.deepEqual(r.data, Buffer.alloc(512))
      }
    })

    it('NBD_OPT_EXPORT_NAME with an unknown export closes the connection', async () => {
      const c = await open()
      await c.greet()
      c.sendOption(Option.ExportName, Buffer.from('nope'))
      await c.expectClose()
    })

    it('NBD_OPT_LIST lists the exports; refuses data; ERR_POLICY without a list function', async () => {
      const c = await open()
      await c.greet()
      c.sendOption(Option.List)
      const replies = await c.optionReplies()
      assert.deepEqual(
        replies.map((r) => r.type),
        [OptionReply.Server, OptionReply.Server, OptionReply.Ack],
      )
      const names = replies.slice(0, 2).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString())
      assert.deepEqual(names, ['disk', 'ro'])
      c.sendOption(Option.List, Buffer.from('x'))
      assert.equal((await c.optionReply()).type, OptionReply.ErrInvalid)

      await server.close()
      await start({ list: undefined })
      const d = await open()
      await d.greet()
      d.sendOption(Option.List)
      assert.equal((await d.optionReply()).type, OptionReply.ErrPolicy)
    })

    it('NBD_OPT_INFO: export info, block sizes, name on request; unknown and malformed refused', async () => {
      const c = await open()
      await c.greet()
      c.sendOption(Option.Info, RawClient.infoData('disk', [InfoType.BlockSize, InfoType.Name]))
      const replies = await c.optionReplies()
      assert.equal(replies.at(-1)!.type, OptionReply.Ack)
      const infos = new Map(replies.slice(0, -1).map((r) => [r.data.readUInt16BE(0), r.data]))
      const exp = infos.get(InfoType.Export)!
      assert.equal(exp.length, 12)
      assert.equal(readU64(exp, 2), 16 * MiB)
      const flags = exp.readUInt16BE(10)
      const want =
        TransmissionFlag.HasFlags |
        TransmissionFlag.SendFlush |
        TransmissionFlag.SendFua |
        TransmissionFlag.SendTrim |
        TransmissionFlag.SendWriteZeroes |
        TransmissionFlag.CanMultiConn |
        TransmissionFlag.SendCache
      assert.equal(flags, want)
      const bs = infos.get(InfoType.BlockSize)!
      assert.deepEqual(
        [bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)],
        [512, 4096, NBD_MAX_PAYLOAD],
      )
      assert.equal(infos.get(InfoType.Name)!.subarray(2).toString(), 'disk')

      c.sendOption(Option.Info, RawClient.infoData('nope'))
      const unknown = await c.optionReply()
      assert.equal(unknown.type, OptionReply.ErrUnknown)
      assert.match(unknown.data.toString(), /nope/)
      c.sendOption(Option.Info, Buffer.from('00000009', 'hex'))
      assert.equal((await c.optionReply()).type, OptionReply.ErrInvalid)

      // Read-only exports: READ_ONLY, and none of the write-side flags.
      c.sendOption(Option.Info, RawClient.infoData('ro'))
      const roFlags = (await c.optionReplies())[0].data.readUInt16BE(10)
      assert.equal(
        roFlags,
        TransmissionFlag.HasFlags |
          TransmissionFlag.ReadOnly |
          TransmissionFlag.SendFlush |
          TransmissionFlag.CanMultiConn |
          TransmissionFlag.SendCache,
      )
    })

    it('structured replies add SEND_DF; meta contexts need them; only base:allocation exists', async () => {
      const c = await open()
      await c.greet()
      const query = metaQuery('disk', ['base:allocation'])
      c.sendOption(Option.SetMetaContext, query)
      assert.equal((await c.optionReply()).type, OptionReply.ErrInvalid)
      c.sendOption(Option.StructuredReply, Buffer.from('x'))
      assert.equal((await c.optionReply()).type, OptionReply.ErrInvalid)
      c.sendOption(Option.StructuredReply)
      assert.equal((await c.optionReply()).type, OptionReply.Ack)
      // LIST: by full name, by namespace, or everything; other namespaces match nothing.
      for (const queries of [
        ['base:allocation'],
        ['base:'],
        [],
        ['qemu:dirty-bitmap:x', 'base:allocation'],
      ]) {
        c.sendOption(Option.ListMetaContext, metaQuery('disk', queries))
        const replies = await c.optionReplies()
        assert.deepEqual(
          replies.map((r) => [r.type, r.data.toString('hex')]),
          [
            [OptionReply.MetaContext, `00000000${Buffer.from('base:allocation').toString('hex')}`],
            [OptionReply.Ack, ''],
          ],
          `LIST ${JSON.stringify(queries)}`,
        )
      }
      c.sendOption(Option.ListMetaContext, metaQuery('disk', ['qemu:x']))
      assert.deepEqual(
        (await c.optionReplies()).map((r) => r.type),
        [OptionReply.Ack],
      )
      c.sendOption(Option.SetMetaContext, metaQuery('nope', ['base:allocation']))
      assert.equal((await c.optionReply()).type, OptionReply.ErrUnknown)
      // SET selects it by full name (id 1), and a later SET without it selects nothing.
      c.sendOption(Option.SetMetaContext, query)
      const set = await c.optionReplies()
      assert.deepEqual(
        set.map((r) => [r.type, r.data.toString('hex')]),
        [
          [OptionReply.MetaContext, `00000001${Buffer.from('base:allocation').toString('hex')}`],
          [OptionReply.Ack, ''],
        ],
      )
      c.sendOption(Option.SetMetaContext, metaQuery('disk', ['base:']))
      assert.deepEqual(
        (await c.optionReplies()).map((r) => r.type),
        [OptionReply.Ack],
      )
      c.sendOption(Option.Go, RawClient.infoData('disk'))
      const flags = (await c.optionReplies())[0].data.readUInt16BE(10)
      assert.ok(flags & TransmissionFlag.SendDf)
      // BLOCK_STATUS without a selected context: EINVAL.
      c.request({ type: Command.BlockStatus, cookieLow: 5, length: 4096 })
      const r = await c.reply()
      assert.equal(r.kind, 'structured')
      assert.equal(r.type, ReplyType.Error)
      assert.equal(r.error, NbdErrno.EINVAL)
    })

    it('a context selected for one export is not active on another', async () => {
      const c = await open()
      await c.greet()
      c.sendOption(Option.StructuredReply)
      await c.optionReply()
      c.sendOption(Option.SetMetaContext, metaQuery('ro', ['base:allocation']))
      assert.equal((await c.optionReplies()).length, 2)
      c.sendOption(Option.Go, RawClient.infoData('disk'))
      await c.optionReplies()
      c.request({ type: Command.BlockStatus, cookieLow: 5, length: 4096 })
      assert.equal((await c.reply()).error, NbdErrno.EINVAL)
    })

    it('unknown options and STARTTLS get ERR_UNSUP, and the session goes on; ABORT is acknowledged', async () => {
      const c = await open()
      await c.greet()
      c.sendOption(4242, Buffer.alloc(100))
      assert.equal((await c.optionReply()).type, OptionReply.ErrUnsup)
      c.sendOption(Option.StartTls)
      assert.equal((await c.optionReply()).type, OptionReply.ErrUnsup)
      c.sendOption(Option.ExtendedHeaders)
      assert.equal((await c.optionReply()).type, OptionReply.ErrUnsup)
      c.sendOption(Option.Abort)
      const ack = await c.optionReply()
      assert.deepEqual([ack.option, ack.type], [Option.Abort, OptionReply.Ack])
      await c.expectClose()
    })

    it('a client without fixed newstyle may only send EXPORT_NAME', async () => {
      const c = await open()
      await c.greet(0)
      c.sendOption(Option.List)
      await c.expectClose()
      const d = await open()
      await d.greet(0)
      d.sendOption(Option.ExportName, Buffer.from('disk'))
      assert.equal(readU64(await d.read(134), 0), 16 * MiB)
    })

    it('closes connections that do not finish the handshake in time', async () => {
      await server.close()
      await start({ handshakeTimeoutMs: 100 })
      const c = await open()
      await c.greet()
      await c.expectClose(2000)
      await waitUntil(() => server.stats().endedBeforeTransmission === 1, 'the server to count it')
    })
  })

  describe('transmission', () => {
    it('BLOCK_STATUS answers base:allocation from the device; REQ_ONE gives one extent', async () => {
      const c = await open()
      await c.attach('disk', { allocation: true })
      c.request({ type: Command.Write, cookieLow: 1, offset: MiB }, randomBytes(64 * 1024))
      assert.equal((await c.reply()).error, 0)
      const status = async (r: Parameters<RawClient['request']>[0]) => {
        c.request(r)
        const m = await c.reply()
        if (m.error) return m.error
        assert.deepEqual([m.kind, m.type, m.flags], ['structured', ReplyType.BlockStatus, ReplyFlag.Done])
        assert.equal(m.payload.readUInt32BE(0), 1, 'the id SET_META_CONTEXT gave base:allocation')
        const out: [number, number][] = []
        for (let at = 4; at < m.payload.length; at += 8)
          out.push([m.payload.readUInt32BE(at), m.payload.readUInt32BE(at + 4)])
        return out
      }
      const HZ = 3 // NBD_STATE_HOLE | NBD_STATE_ZERO
      assert.deepEqual(await status({ type: Command.BlockStatus, cookieLow: 2, length: 4 * MiB }), [
        [MiB, HZ],
        [64 * 1024, 0],
        [3 * MiB - 64 * 1024, HZ],
      ])
      assert.deepEqual(
        await status({ type: Command.BlockStatus, flags: CommandFlag.ReqOne, cookieLow: 3, length: 4 * MiB }),
        [[MiB, HZ]],
      )
      assert.deepEqual(
        await status({ type: Command.BlockStatus, cookieLow: 4, offset: MiB + 4096, length: 8192 }),
        [[8192, 0]],
      )
      assert.equal(await status({ type: Command.BlockStatus, cookieLow: 5, length: 0 }), NbdErrno.EINVAL)
      assert.equal(
        await status({ type: Command.BlockStatus, cookieLow: 6, offset: 16 * MiB - 512, length: 1024 }),
        NbdErrno.EINVAL,
      )
      assert.equal(
        await status({ type: Command.BlockStatus, flags: CommandFlag.Fua, cookieLow: 7, length: 512 }),
        NbdErrno.EINVAL,
      )
      assert.ok(disk.calls.includes(`extents:0:${4 * MiB}:1`), 'REQ_ONE asks the device for one extent')
      assert.equal(server.stats().exports.disk.requests.blockStatus, 6)
    })

    it('CACHE is advertised and answered; past the end it is EINVAL', async () => {
      let warmed: [number, number] | undefined
      const prefetching = Object.assign(new MemoryDevice({ size: 4 * MiB }), {
        prefetch: async (offset: number, length: number) => {
          warmed = [offset, length]
        },
      })
      const p2 = tmp.path(`run/${randomBytes(4).toString('hex')}.sock`)
      const s2 = new NbdServer({ path: p2, lookup: (n) => (n === 'p' ? prefetching : undefined) })
      await s2.listen()
      try {
        const c = await RawClient.connect(p2)
        clients.push(c)
        const { flags } = await c.attach('p')
        assert.ok(flags & TransmissionFlag.SendCache)
        c.request({ type: Command.Cache, cookieLow: 1, offset: MiB, length: 2 * MiB })
        assert.equal((await c.reply()).error, 0)
        assert.deepEqual(warmed, [MiB, 2 * MiB])
        c.request({ type: Command.Cache, cookieLow: 2, offset: 4 * MiB - 512, length: 1024 })
        assert.equal((await c.reply()).error, NbdErrno.EINVAL)
        c.request({ type: Command.Cache, flags: CommandFlag.Fua, cookieLow: 3, length: 512 })
        assert.equal((await c.reply()).error, NbdErrno.EINVAL)
        assert.equal(s2.stats().exports.p.requests.cache, 3)
      } finally {
        await s2.close()
      }
    })

    it('an odd-sized device is served with a minimum block size of 1, tail included', async () => {
      const size = MiB + 1000
      const odd = new MemoryDevice({ size })
      const p2 = tmp.path(`run/${randomBytes(4).toString('hex')}.sock`)
      const s2 = new NbdServer({ path: p2, lookup: (n) => (n === 'odd' ? odd : undefined) })
      await s2.listen()
      try {
        const c = await RawClient.connect(p2)
        clients.push(c)
        await c.greet()
        c.sendOption(Option.Go, RawClient.infoData('odd', [InfoType.BlockSize]))
        const replies = await c.optionReplies()
        const infos = new Map(replies.slice(0, -1).map((r) => [r.data.readUInt16BE(0), r.data]))
        assert.equal(readU64(infos.get(InfoType.Export)!, 2), size)
        const bs = infos.get(InfoType.BlockSize)!
        assert.deepEqual(
          [bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)],
          [1, 4096, NBD_MAX_PAYLOAD],
        )
        const tail = randomBytes(1003)
        c.request({ type: Command.Write, cookieLow: 1, offset: MiB - 3 }, tail)
        assert.equal((await c.reply()).error, 0)
        c.request({ type: Command.Read, cookieLow: 2, offset: MiB - 3, length: 1003 })
        assert.deepEqual((await c.reply(new Map([[2, 1003]]))).data, tail)
        c.request({ type: Command.Read, cookieLow: 3, offset: size - 1, length: 2 })
        assert.equal((await c.reply()).error, NbdErrno.EINVAL, 'still nothing past the end')
      } finally {
        await s2.close()
      }
    })

    it('writes and reads back with simple replies, echoing 64-bit cookies', async () => {
      const c = await open()
      const { size } = await c.attach('disk')
      assert.equal(size, 16 * MiB)
      const data = randomBytes(8192)
      c.request({ type: Command.Write, cookieHigh: 0xfeedface, cookieLow: 1, offset: 4096 }, data)
      const w = await c.reply()
      assert.deepEqual([w.kind, w.error, w.cookie], ['simple', 0, 0xfeedface00000001n])
      c.request({ type: Command.Read, cookieLow: 2, offset: 4096, length: 8192 })
      const r = await c.reply(new Map([[2, 8192]]))
      assert.deepEqual(r.data, data)
      c.request({ type: Command.Flush, cookieLow: 3 })
      assert.equal((await c.reply()).error, 0)
      c.request({ type: Command.Write, flags: CommandFlag.Fua, cookieLow: 4, offset: 0 }, data)
      assert.equal((await c.reply()).error, 0)
    })

    it('structured reads: one OFFSET_DATA chunk with DONE; NONE for an empty read; errors as ERROR chunks', async () => {
      const c = await open()
      await c.attach('disk', { structured: true })
      const data = randomBytes(4096)
      c.request({ type: Command.Write, cookieLow: 1, offset: 8192 }, data)
      assert.equal((await c.reply()).error, 0)
      c.request({ type: Command.Read, flags: CommandFlag.Df, cookieLow: 2, offset: 8192, length: 4096 })
      const r = await c.reply()
      assert.deepEqual(
        [r.kind, r.type, r.flags, r.offset],
        ['structured', ReplyType.OffsetData, ReplyFlag.Done, 8192],
      )
      assert.deepEqual(r.data, data)
      c.request({ type: Command.Read, cookieLow: 3, offset: 0, length: 0 })
      const none = await c.reply()
      assert.deepEqual([none.type, none.flags, none.payload.length], [ReplyType.None, ReplyFlag.Done, 0])
      c.request({ type: Command.Read, cookieLow: 4, offset: 16 * MiB, length: 512 })
      const err = await c.reply()
      assert.deepEqual([err.type, err.flags, err.error], [ReplyType.Error, ReplyFlag.Done, NbdErrno.EINVAL])
      assert.match(err.message!, /past the end/)
    })

    it('answers bad requests with the NBD errors the spec asks for, and stays in sync', async () => {
      const c = await open()
      await c.attach('disk')
      const cases: [string, Parameters<RawClient['request']>[0], Buffer | undefined, number][] = [
        [
          'read past the end',
          { type: Command.Read, offset: 16 * MiB - 512, length: 1024 },
          undefined,
          NbdErrno.EINVAL,
        ],
        ['read at 2^63', { type: Command.Read, offset: 2 ** 63, length: 512 }, undefined, NbdErrno.EINVAL],
        ['unaligned read', { type: Command.Read, offset: 100, length: 512 }, undefined, NbdErrno.EINVAL],
        [
          'oversized read',
          { type: Command.Read, offset: 0, length: NBD_MAX_PAYLOAD + 512 },
          undefined,
          NbdErrno.EINVAL,
        ],
        ['write past the end', { type: Command.Write, offset: 16 * MiB }, Buffer.alloc(512), NbdErrno.ENOSPC],
        ['unaligned write', { type: Command.Write, offset: 0 }, Buffer.alloc(100), NbdErrno.EINVAL],
        [
          'write with NO_HOLE',
          { type: Command.Write, flags: CommandFlag.NoHole },
          Buffer.alloc(512),
          NbdErrno.EINVAL,
        ],
        [
          'read with DF, not negotiated',
          { type: Command.Read, flags: CommandFlag.Df, length: 512 },
          undefined,
          NbdErrno.EINVAL,
        ],
        ['flush with a length', { type: Command.Flush, length: 512 }, undefined, NbdErrno.EINVAL],
        [
          'zeroes past the end',
          { type: Command.WriteZeroes, offset: 16 * MiB, length: 512 },
          undefined,
          NbdErrno.ENOSPC,
        ],
        [
          'zeroes with FAST_ZERO',
          { type: Command.WriteZeroes, flags: CommandFlag.FastZero, length: 512 },
          undefined,
          NbdErrno.EINVAL,
        ],
        [
          'trim past the end',
          { type: Command.Trim, offset: 16 * MiB, length: 512 },
          undefined,
          NbdErrno.EINVAL,
        ],
        [
          'cache past the end',
          { type: Command.Cache, offset: 16 * MiB, length: 512 },
          undefined,
          NbdErrno.EINVAL,
        ],
        ['unknown command', { type: 77, length: 512 }, undefined, NbdErrno.EINVAL],
      ]
      let cookie = 100
      for (const [what, request, payload, errno] of cases) {
        const id = cookie++
        c.request({ ...request, cookieLow: id }, payload)
        const r = await c.reply()
        assert.equal(r.cookie, BigInt(id), what)
        assert.equal(r.error, errno, what)
        assert.equal(r.payload.length, 0, `${what}: no data after an error`)
      }
      // The payloads of refused writes were consumed: the stream is still in sync.
      c.request({ type: Command.Read, cookieLow: 1, offset: 0, length: 512 })
      assert.equal((await c.reply(new Map([[1, 512]]))).error, 0)
      const stats = server.stats().exports.disk
      assert.equal(stats.errors.EINVAL, 12)
      assert.equal(stats.errors.ENOSPC, 2)
      assert.equal(disk.calls.length, 1, 'no refused request reached the device')
    })

    it('read-only export: EPERM for write, trim and write-zeroes; reads work', async () => {
      const c = await open()
      const { flags } = await c.attach('ro')
      assert.ok(flags & TransmissionFlag.ReadOnly)
      c.request({ type: Command.Write, cookieLow: 1 }, Buffer.alloc(4096, 1))
      c.request({ type: Command.Trim, cookieLow: 2, length: 4096 })
      c.request({ type: Command.WriteZeroes, cookieLow: 3, length: 4096 })
      c.request({ type: Command.Write, flags: CommandFlag.Fua, cookieLow: 4 }, Buffer.alloc(512, 1))
      for (let i = 1; i <= 4; i++) assert.equal((await c.reply()).error, NbdErrno.EPERM)
      c.request({ type: Command.Read, cookieLow: 5, length: 4096 })
      const r = await c.reply(new Map([[5, 4096]]))
      assert.deepEqual(r.data, Buffer.alloc(4096))
    })

    it('trim and write-zeroes reach the device (trim rounded inwards to whole blocks)', async () => {
      const c = await open()
      await c.attach('disk')
      c.request({ type: Command.Write, cookieLow: 1, offset: 0 }, Buffer.alloc(65536, 0xee))
      await c.reply()
      c.request({ type: Command.Trim, cookieLow: 2, offset: 100, length: 2000 })
      c.request({
        type: Command.WriteZeroes,
        flags: CommandFlag.NoHole | CommandFlag.Fua,
        cookieLow: 3,
        offset: 4096,
        length: 4096,
      })
      c.request({ type: Command.Trim, flags: CommandFlag.Fua, cookieLow: 4, offset: 10, length: 20 })
      for (let i = 0; i < 3; i++) assert.equal((await c.reply()).error, 0)
      // [100, 2100) shrinks to [512, 2048); [10, 30) holds no whole block and never reaches the device.
      assert.deepEqual(disk.calls.slice(1), ['trim:512:1536', 'writeZeroes:4096:4096'])
      c.request({ type: Command.Read, cookieLow: 5, offset: 0, length: 8192 })
      const r = (await c.reply(new Map([[5, 8192]]))).data!
      assert.deepEqual(r.subarray(512, 2048), Buffer.alloc(1536))
      assert.deepEqual(r.subarray(4096), Buffer.alloc(4096))
      assert.equal(r[511], 0xee)
      assert.equal(r[2048], 0xee)
    })

    it('maps device failures to NBD errors', async () => {
      assert.equal(nbdErrnoForError(new VrioError('io-error', 'x')), NbdErrno.EIO)
      assert.equal(nbdErrnoForError(new VrioError('out-of-range', 'x')), NbdErrno.EINVAL)
      assert.equal(nbdErrnoForError(new VrioError('read-only', 'x')), NbdErrno.EPERM)
      assert.equal(nbdErrnoForError(new VrioError('unsupported', 'x')), NbdErrno.EINVAL)
      assert.equal(nbdErrnoForError(new VrioError('timeout', 'x')), NbdErrno.EIO)
      assert.equal(nbdErrnoForError(new VrioError('not-connected', 'x')), NbdErrno.ESHUTDOWN)
      assert.equal(nbdErrnoForError(new VrioError('no-space', 'x')), NbdErrno.ENOSPC)
      assert.equal(nbdErrnoForError(new TypeError('bug')), NbdErrno.EIO)

      const c = await open()
      await c.attach('disk', { structured: true })
      const failures: [unknown, number][] = [
        [new VrioError('io-error', 'disk on fire'), NbdErrno.EIO],
        [new VrioError('no-space', 'full'), NbdErrno.ENOSPC],
        [new VrioError('timeout', 'slow'), NbdErrno.EIO],
        [new VrioError('not-connected', 'gone'), NbdErrno.ESHUTDOWN],
        [new Error('plain bug'), NbdErrno.EIO],
      ]
      for (const [error, errno] of failures) {
        disk.hook = () => {
          throw error
        }
        c.request({ type: Command.Write, cookieLow: 1 }, Buffer.alloc(512))
        c.request({ type: Command.Read, cookieLow: 2, length: 512 })
        for (let i = 0; i < 2; i++) {
          const r = await c.reply()
          assert.equal(r.type, ReplyType.Error)
          assert.equal(r.error, errno, String(error))
        }
      }
      assert.equal(server.stats().exports.disk.errors.EIO, 2 * 3)
      assert.equal(server.stats().exports.disk.errors.ESHUTDOWN, 2)
      // A device that throws synchronously, and one that returns the wrong amount of data.
      disk.hook = undefined
      const syncThrow = disk.read
      disk.read = () => {
        throw new Error('sync')
      }
      c.request({ type: Command.Read, cookieLow: 3, length: 512 })
      assert.equal((await c.reply()).error, NbdErrno.EIO)
      disk.read = async () => new Uint8Array(100)
      c.request({ type: Command.Read, cookieLow: 4, length: 512 })
      assert.equal((await c.reply()).error, NbdErrno.EIO)
      disk.read = syncThrow
    })

    it('replies out of order when the device completes out of order', async () => {
      const c = await open()
      await c.attach('disk')
      let releaseFirst: () => void = () => {}
      disk.hook = (op, offset) =>
        op === 'read' && offset === 0 ? new Promise<void>((r) => (releaseFirst = r)) : undefined
      c.request({ type: Command.Read, cookieLow: 1, offset: 0, length: 512 })
      c.request({ type: Command.Read, cookieLow: 2, offset: 512, length: 512 })
      const lengths = new Map([
        [1, 512],
        [2, 512],
      ])
      assert.equal((await c.reply(lengths)).cookie, 2n)
      releaseFirst()
      assert.equal((await c.reply(lengths)).cookie, 1n)
    })

    it('keeps at most maxInflight requests in flight, stops reading, and drops nothing', async () => {
      await server.close()
      await start({ maxInflight: 4 })
      const held: (() => void)[] = []
      disk.hook = () => new Promise<void>((r) => held.push(r))
      const c = await open()
      await c.attach('disk')
      const n = 200
      const lengths = new Map<number, number>()
      for (let i = 0; i < n; i++) {
        if (i % 2) lengths.set(i, 4096)
        if (i % 2) c.request({ type: Command.Read, cookieLow: i, offset: i * 4096, length: 4096 })
        else c.request({ type: Command.Write, cookieLow: i, offset: i * 4096 }, Buffer.alloc(4096, i & 0xff))
      }
      await sleep(100)
      assert.equal(disk.active, 4)
      const seen = new Set<bigint>()
      const drain = (async () => {
        for (let i = 0; i < n; i++) seen.add((await c.reply(lengths)).cookie)
      })()
      while (seen.size < n) {
        const next = held.splice(0)
        for (const r of next) r()
        await sleep(1)
      }
      await drain
      assert.equal(disk.maxActive, 4)
      assert.equal(server.stats().exports.disk.inflightHighWater, 4)
      assert.equal(seen.size, n)
    })

    it('bounds the bytes in flight too: large writes wait for each other', async () => {
      await server.close()
      await start({ maxInflightBytes: 4 * MiB })
      const held: (() => void)[] = []
      disk.hook = () => new Promise<void>((r) => held.push(r))
      const c = await open()
      await c.attach('disk')
      for (let i = 0; i < 6; i++)
        c.request({ type: Command.Write, cookieLow: i, offset: i * MiB }, Buffer.alloc(MiB, i))
      await sleep(200)
      assert.equal(disk.active, 4)
      const replies = (async () => {
        for (let i = 0; i < 6; i++) assert.equal((await c.reply()).error, 0)
      })()
      while (held.length > 0 || disk.active > 0) {
        for (const r of held.splice(0)) r()
        await sleep(5)
      }
      await replies
      assert.equal(disk.maxActive, 4)
    })

    it('assembles a large write that arrives in small pieces', async () => {
      const c = await open()
      await c.attach('disk')
      const data = randomBytes(4 * MiB + 4096)
      const header = Buffer.alloc(28)
      header.writeUInt32BE(0x25609513, 0)
      header.writeUInt16BE(Command.Write, 6)
      header.writeUInt32BE(9, 12)
      header.writeUInt32BE(4096 * 3, 20)
      header.writeUInt32BE(data.length, 24)
      const wire = Buffer.concat([header, data])
      for (let at = 0; at < wire.length; at += 777_777) {
        c.write(wire.subarray(at, at + 777_777))
        await sleep(1)
      }
      assert.equal((await c.reply()).error, 0)
      assert.deepEqual(await disk.inner.read(4096 * 3, data.length), data)
      // Header split across two chunks, one byte at a time.
      const small = Buffer.concat([header.subarray(0, 24), Buffer.from([0, 0, 2, 0]), Buffer.alloc(512, 7)])
      small.writeUInt32BE(0, 20)
      for (const byte of small) c.write(Buffer.from([byte]))
      assert.equal((await c.reply()).error, 0)
      assert.deepEqual(await disk.inner.read(0, 512), Buffer.alloc(512, 7))
    })

    it('DISC: answers everything in flight, then closes', async () => {
      const c = await open()
      await c.attach('disk')
      let release: () => void = () => {}
      disk.hook = () => new Promise<void>((r) => (release = r))
      c.request({ type: Command.Write, cookieLow: 1 }, Buffer.alloc(512, 3))
      c.request({ type: Command.Disc })
      await sleep(50)
      release()
      assert.equal((await c.reply()).error, 0)
      await c.expectClose()
      assert.equal(server.stats().exports.disk.requests.disconnect, 1)
    })

    it('counts requests, bytes and connections per export', async () => {
      const c = await open()
      await c.attach('disk')
      c.request({ type: Command.Write, cookieLow: 1 }, Buffer.alloc(4096))
      c.request({ type: Command.Read, cookieLow: 2, length: 8192 })
      c.request({ type: Command.Flush, cookieLow: 3 })
      c.request({ type: Command.WriteZeroes, cookieLow: 4, length: 4096 })
      c.request({ type: Command.Trim, cookieLow: 5, length: 4096 })
      const lengths = new Map([[2, 8192]])
      for (let i = 0; i < 5; i++) await c.reply(lengths)
      const s = server.stats()
      assert.equal(s.connections, 1)
      const d = s.exports.disk
      assert.deepEqual(
        { ...d.requests },
        {
          read: 1,
          write: 1,
          flush: 1,
          trim: 1,
          writeZeroes: 1,
          blockStatus: 0,
          cache: 0,
          disconnect: 0,
          other: 0,
        },
      )
      assert.deepEqual([d.bytesRead, d.bytesWritten, d.bytesZeroed, d.bytesTrimmed], [8192, 4096, 4096, 4096])
      assert.deepEqual([d.connections, d.connectionsTotal], [1, 1])
      assert.ok(d.inflightHighWater >= 1)
    })
  })

  describe('hostile clients', () => {
    /** After each attack, a well-behaved client must still be served. */
    const stillServes = async () => {
      const c = await open()
      await c.attach('disk')
      c.request({ type: Command.Read, cookieLow: 1, length: 512 })
      assert.equal((await c.reply(new Map([[1, 512]]))).error, 0)
      c.request({ type: Command.Disc })
      await c.expectClose()
    }

    it('garbage instead of a handshake', async () => {
      const c = await open()
      await c.read(18)
      c.write(randomBytes(4096))
      await c.expectClose()
      await stillServes()
    })

    it('unknown client flags', async () => {
      const c = await open()
      await c.greet(0xffff_ffff)
      await c.expectClose()
      await stillServes()
    })

    it('bad option magic', async () => {
      const c = await open()
      await c.greet()
      c.write(Buffer.from('49484156454f5055' + '00000007' + '00000000', 'hex'))
      await c.expectClose()
      await stillServes()
    })

    it('an option claiming 4 GiB of data is refused before anything is allocated', async () => {
      const c = await open()
      await c.greet()
      c.write(Buffer.from('49484156454f5054' + '00000007' + 'ffffffff', 'hex'))
      await c.expectClose()
      assert.ok(server.stats().protocolErrors >= 1)
      await stillServes()
    })

    it('bad request magic in transmission', async () => {
      const c = await open()
      await c.attach('disk')
      c.write(Buffer.alloc(28, 0x41))
      await c.expectClose()
      await stillServes()
    })

    it('a write of 4 GiB is refused without waiting for (or allocating) the payload', async () => {
      const c = await open()
      await c.attach('disk')
      const header = Buffer.alloc(28)
      header.writeUInt32BE(0x25609513, 0)
      header.writeUInt16BE(Command.Write, 6)
      header.writeUInt32BE(0xffff_ffff, 24)
      c.write(header)
      await c.expectClose()
      await stillServes()
    })

    it('a flood of options is cut off', async () => {
      const c = await open()
      await c.greet()
      const one = Buffer.from('49484156454f5054' + '00000fff' + '00000000', 'hex')
      c.write(Buffer.concat(Array.from({ length: 2000 }, () => one)))
      await c.expectClose()
      await stillServes()
    })

    it('a client that vanishes mid-payload', async () => {
      const c = await open()
      await c.attach('disk')
      const header = Buffer.alloc(28)
      header.writeUInt32BE(0x25609513, 0)
      header.writeUInt16BE(Command.Write, 6)
      header.writeUInt32BE(MiB, 24)
      c.write(Buffer.concat([header, Buffer.alloc(1000)]))
      await sleep(20)
      c.socket.end()
      await c.expectClose()
      await stillServes()
    })
  })

  describe('shutdown', () => {
    it('close(): in-flight requests are answered, later ones get ESHUTDOWN, then connections close', async () => {
      const c = await open()
      await c.attach('disk', { structured: true })
      let release: () => void = () => {}
      disk.hook = () => new Promise<void>((r) => (release = r))
      c.request({ type: Command.Write, cookieLow: 1 }, Buffer.alloc(512, 1))
      await sleep(20)
      const closing = server.close()
      await sleep(20)
      c.request({ type: Command.Read, cookieLow: 2, length: 512 })
      const refused = await c.reply()
      assert.deepEqual([refused.cookie, refused.error], [2n, NbdErrno.ESHUTDOWN])
      release()
      const done = await c.reply()
      assert.deepEqual([done.cookie, done.error], [1n, 0])
      await c.expectClose()
      await closing
      assert.throws(() => statSync(path), { code: 'ENOENT' })
    })

    it('close() cuts connections whose requests never finish, after the grace period', async () => {
      await server.close()
      await start({ closeGraceMs: 100 })
      disk.hook = () => new Promise<void>(() => {})
      const c = await open()
      await c.attach('disk')
      c.request({ type: Command.Read, cookieLow: 1, length: 512 })
      await sleep(20)
      await server.close()
      await c.expectClose()
    })

    it('close() ends connections still negotiating', async () => {
      const c = await open()
      await c.greet()
      await server.close()
      await c.expectClose()
    })

    it('disconnectExport() ends that export’s connections only', async () => {
      const a = await open()
      await a.attach('disk')
      const b = await open()
      await b.attach('ro')
      await server.disconnectExport('disk')
      await a.expectClose()
      b.request({ type: Command.Read, cookieLow: 1, length: 512 })
      assert.equal((await b.reply(new Map([[1, 512]]))).error, 0)
    })
  })
})
