/**
 * Hostile MESSAGES (not frames) fed into both daemons' message layers: the IOhyp's block back-end
 * over a MemoryDevice, the guest's block front-end, a NetPort, and the authenticated session's
 * control path (Rpc). Valid headers with hostile fields, truncated bodies, wrong lengths, unknown
 * types, flags and handles, huge replyLength and read lengths, random bytes. Checked: nothing
 * throws, no promise rejection goes unhandled, the memory held stays within its bounds, and a
 * well-formed request after the garbage still works. fast-check, seeded.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { BlockBackend, ReplyBudget } from '../../src/devices/blk/backend.ts'
import { RemoteBlockDevice } from '../../src/devices/blk/frontend.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import { BLOCK_REQUEST_HEAD_LENGTH, BlockOp, encodeBlockRequestHead } from '../../src/devices/blk/protocol.ts'
import { NetPort } from '../../src/devices/net/port.ts'
import { VrioError } from '../../src/errors.ts'
import type { FrameChannel } from '../../src/io/frame-channel.ts'
import { VIRTIO_NET_HDR_LEN } from '../../src/wire/virtio-net-hdr.ts'
import { Rpc } from '../../src/session/rpc.ts'
import { MAX_CONTROL_JSON, Session } from '../../src/session/session.ts'
import { Delivery } from '../../src/transport/config.ts'
import { messageBuffers } from '../../src/transport/message-buffers.ts'
import {
  decodeMessageHeader,
  encodeMessageHeader,
  MESSAGE_HEADER_LENGTH,
  type MessageHeader,
  MessageType,
  newMessageHeader,
} from '../../src/wire/message-header.ts'
import { Simulation } from '../support/simulation.ts'

const SEED = Number(process.env.VRIO_FC_SEED ?? 20261202)
const RUNS = Number(process.env.VRIO_FC_RUNS ?? 40)
const HANDLE = { high: 0x0bad_cafe, low: 3 }
const MAX_MESSAGE = 256 * 1024
const REPLY_LIMIT = 512 * 1024
const immediate = () => new Promise<void>((r) => setImmediate(r))

/** Rejections nobody handled while a property ran: a peer's message must never cause one. */
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown) => unhandled.push(reason)
before(() => process.on('unhandledRejection', onUnhandled))
after(() => process.off('unhandledRejection', onUnhandled))

// ------------------------------------------------------------------------------------ messages

const u32 = fc.oneof(
  fc.constantFrom(0, 1, 0xffff_ffff, 0x8000_0000, HANDLE.high, HANDLE.low, MAX_MESSAGE, MAX_MESSAGE - 32),
  fc.nat({ max: 0xffff_ffff }),
)
const opArb = fc.oneof(fc.constantFrom(0, 1, 4, 11, 13), fc.nat({ max: 255 }))

/** A block request head with hostile fields, and a body that may disagree with it. */
const requestArb = fc
  .record({
    op: opArb,
    flags: fc.oneof(fc.constant(0), fc.nat({ max: 255 })),
    length: fc.oneof(u32, fc.nat({ max: 70_000 })),
    offsetHigh: fc.oneof(fc.constantFrom(0, 0x1f_ffff, 0x20_0000, 0xffff_ffff), fc.nat({ max: 0xffff_ffff })),
    offsetLow: u32,
    floor: fc.oneof(fc.constantFrom(0, 1), u32),
    id: fc.oneof(fc.integer({ min: 1, max: 100 }), u32),
    epoch: fc.oneof(fc.constant(7), u32),
    device: fc.oneof(fc.constant(HANDLE), fc.record({ high: u32, low: u32 })),
    headerFlags: fc.oneof(fc.constant(0), fc.nat({ max: 0xffff })),
    replyLength: fc.oneof(fc.constant(-1), u32),
    status: fc.oneof(fc.constant(0), fc.nat({ max: 0xffff })),
    data: fc.nat({ max: 600 }),
    bodyLength: fc.oneof(fc.constant(-1), u32),
    type: fc.oneof(fc.constant(MessageType.BlockRequest), fc.nat({ max: 255 })),
  })
  .map((r) => {
    const m = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH + r.data, 0x5c)
    encodeBlockRequestHead(m, 0, r.device, r.epoch, r.id, {
      op: r.op,
      flags: r.flags,
      length: r.length,
      offset: 0,
      floor: r.floor,
    })
    m.writeUInt32BE(r.offsetHigh, MESSAGE_HEADER_LENGTH + 8)
    m.writeUInt32BE(r.offsetLow, MESSAGE_HEADER_LENGTH + 12)
    m[1] = r.type
    m.writeUInt16BE(r.headerFlags, 2)
    m.writeUInt32BE(r.bodyLength < 0 ? m.length - MESSAGE_HEADER_LENGTH : r.bodyLength, 4)
    if (r.replyLength >= 0) m.writeUInt32BE(r.replyLength, 24)
    m.writeUInt16BE(r.status, 28)
    return m
  })

/** A request that is well-formed but for one or two fields: lengths at and past every limit. */
const plausibleRequestArb = fc
  .record({
    op: fc.constantFrom(BlockOp.In, BlockOp.Out, BlockOp.Flush, BlockOp.Discard, BlockOp.WriteZeroes),
    length: fc.oneof(
      fc.constantFrom(0, 512, MAX_MESSAGE - 32, MAX_MESSAGE - 31, MAX_MESSAGE, 1024 * 1024, 4 * 1024 * 1024),
      fc.nat({ max: 8192 }),
    ),
    offset: fc.oneof(
      fc.nat({ max: 8192 }).map((n) => n * 512),
      fc.constantFrom(4 * 1024 * 1024 - 512, 2 ** 53 - 1),
    ),
    id: fc.integer({ min: 1, max: 60 }),
  })
  .map((r) => {
    const data = r.op === BlockOp.Out ? Math.min(r.length, 4096) : 0
    const m = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH + data, 0x3c)
    encodeBlockRequestHead(m, 0, HANDLE, 7, r.id, {
      op: r.op,
      flags: 0,
      length: r.op === BlockOp.Flush ? 0 : r.op === BlockOp.Out ? data : r.length,
      offset: r.op === BlockOp.Flush ? 0 : r.offset,
      floor: 1,
    })
    return m
  })

/** A response or NetFrame-shaped message with hostile fields. */
const headedArb = fc
  .record({
    type: fc.oneof(
      fc.constantFrom(MessageType.BlockResponse, MessageType.NetFrame, MessageType.Control),
      fc.nat({ max: 255 }),
    ),
    flags: fc.oneof(fc.constant(0), fc.nat({ max: 0xffff })),
    device: fc.oneof(fc.constant(HANDLE), fc.record({ high: u32, low: u32 })),
    requestHigh: fc.oneof(fc.constant(0), u32),
    requestLow: fc.oneof(fc.integer({ min: 0, max: 20 }), u32),
    replyLength: fc.oneof(fc.constant(0), u32),
    status: fc.oneof(fc.constant(0), fc.nat({ max: 0xffff })),
    body: fc.uint8Array({ maxLength: 1600 }),
  })
  .map((r) => {
    const h = newMessageHeader()
    Object.assign(h, {
      type: r.type,
      flags: r.flags,
      bodyLength: r.body.length,
      deviceHigh: r.device.high >>> 0,
      deviceLow: r.device.low >>> 0,
      requestHigh: r.requestHigh >>> 0,
      requestLow: r.requestLow >>> 0,
      replyLength: r.replyLength >>> 0,
      status: r.status,
    })
    const m = Buffer.alloc(MESSAGE_HEADER_LENGTH + r.body.length)
    encodeMessageHeader(m, 0, h)
    m.set(r.body, MESSAGE_HEADER_LENGTH)
    return m
  })

/** A message cut short, grown, or with bytes flipped. */
const mutate = (base: fc.Arbitrary<Buffer>) =>
  fc
    .tuple(
      base,
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 6 }),
      fc.oneof(fc.constant(-1), fc.nat()),
    )
    .map(([m, flips, cut]) => {
      const out = Buffer.from(m)
      for (const [at, v] of flips) if (out.length > 0) out[at % out.length] = v
      return cut < 0 ? out : out.subarray(0, cut % (out.length + 1))
    })

const messageArb = fc.oneof(
  plausibleRequestArb,
  requestArb,
  headedArb,
  mutate(requestArb),
  mutate(headedArb),
  fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
)

/** As the session does: only a message whose header decodes reaches a data handler. */
function header(m: Uint8Array): MessageHeader | undefined {
  const h = newMessageHeader()
  return decodeMessageHeader(m, 0, m.length, h) ? undefined : h
}

// ------------------------------------------------------------------------------------ block

/** A session to `deliver`, refusing what the transport would refuse (it throws). */
function loopback(deliver: (h: MessageHeader, m: Uint8Array) => void) {
  return {
    sendData(parts: Uint8Array | readonly Uint8Array[], _delivery: Delivery): boolean {
      const list = parts instanceof Uint8Array ? [parts] : parts
      const m = Buffer.concat(list.map((p) => Buffer.from(p)))
      if (m.length === 0 || m.length > MAX_MESSAGE)
        throw new VrioError('message-size', `message of ${m.length} bytes is outside 1..${MAX_MESSAGE}`)
      // Delivered later, as a transport would.
      setImmediate(() => {
        const h = header(m)
        assert.ok(h, 'a daemon sent a message whose header does not decode')
        deliver(h, m)
      })
      return true
    },
  }
}

describe('message layers under hostile messages', () => {
  it('block back-end (IOhyp) and front-end (guest): no throw, bounded, still serving', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(messageArb, { minLength: 1, maxLength: 40 }),
        fc.boolean(),
        async (garbage, owned) => {
          unhandled.length = 0
          const device = new MemoryDevice({ size: 4 * 1024 * 1024 })
          const budget = new ReplyBudget(REPLY_LIMIT)
          const backend = new BlockBackend(device, {
            handle: HANDLE,
            maxMessageSize: MAX_MESSAGE,
            replyBudget: budget,
            maxQueued: 64,
          })
          const info = {
            size: device.size,
            blockSize: 512,
            readOnly: false,
            canFlush: true,
            canFua: true,
            canTrim: true,
            canWriteZeroes: true,
          }
          const front = new RemoteBlockDevice({
            info,
            handle: HANDLE,
            sweepInterval: 0,
            maxTransfer: 64 * 1024,
          })
          backend.attach(loopback((h, m) => front.receive(h, m)))
          front.attach(loopback((h, m) => backend.receive(h, m)))
          // Calls in flight while the garbage arrives: forged answers may fail them, never more.
          const early = front.read(0, 4096).catch((e) => e)
          for (const m of garbage) {
            const h = header(m)
            if (!h) continue
            assert.doesNotThrow(() => backend.receive(h, m, owned ? messageBuffers : undefined))
            assert.doesNotThrow(() => front.receive(h, m))
          }
          for (let i = 0; i < 10; i++) await immediate()
          assert.ok(budget.held <= REPLY_LIMIT + MAX_MESSAGE, `reply bytes held ${budget.held}`)
          assert.ok(backend.queued <= 64)
          assert.ok(messageBuffers.pooledBytes <= 32 * 1024 * 1024)
          await early
          // A well-formed write and read after the garbage.
          const data = Buffer.alloc(100_000, 0xa7)
          await front.write(8192, data, false)
          const back = await front.read(8192, data.length)
          assert.ok(data.equals(Buffer.from(back)))
          front.close()
          await backend.close()
          assert.equal(budget.held, 0)
          assert.deepEqual(unhandled, [])
        },
      ),
      { seed: SEED, numRuns: RUNS },
    )
  })

  it('a read longer than the largest message, through the front-end and back-end, is an error, not a crash', async () => {
    unhandled.length = 0
    const device = new MemoryDevice({ size: 4 * 1024 * 1024 })
    const backend = new BlockBackend(device, { handle: HANDLE, maxMessageSize: MAX_MESSAGE })
    const sent: Buffer[] = []
    backend.attach(loopback((_h, m) => sent.push(Buffer.from(m))))
    const m = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
    encodeBlockRequestHead(m, 0, HANDLE, 1, 1, {
      op: BlockOp.In,
      flags: 0,
      length: MAX_MESSAGE,
      offset: 0,
      floor: 1,
    })
    backend.receive(header(m)!, m)
    for (let i = 0; i < 5; i++) await immediate()
    assert.equal(sent.length, 1)
    assert.notEqual(header(sent[0])!.status, 0)
    assert.deepEqual(unhandled, [])
  })

  it('NetPort: hostile NetFrames are dropped and counted; a good frame still reaches the kernel', () => {
    fc.assert(
      fc.property(fc.array(messageArb, { maxLength: 40 }), fc.boolean(), (garbage, owned) => {
        const written: Uint8Array[] = []
        const channel = {
          onBatch() {
            return channel
          },
          onError() {
            return channel
          },
          send(frames: readonly Uint8Array[]) {
            for (const f of frames) written.push(Buffer.from(f))
            return frames.length
          },
          close() {},
          closed: false,
        }
        const port = new NetPort({
          channel: channel as unknown as FrameChannel,
          handle: HANDLE,
          mtu: 1500,
          side: 'guest',
        })
        for (const m of garbage) {
          const h = header(m)
          if (h) assert.doesNotThrow(() => port.receive(h, m, owned ? messageBuffers : undefined))
        }
        const before = written.length
        const good = Buffer.alloc(MESSAGE_HEADER_LENGTH + VIRTIO_NET_HDR_LEN + 60)
        const h = newMessageHeader()
        Object.assign(h, {
          type: MessageType.NetFrame,
          bodyLength: good.length - MESSAGE_HEADER_LENGTH,
          deviceHigh: HANDLE.high,
          deviceLow: HANDLE.low,
        })
        encodeMessageHeader(good, 0, h)
        port.receive(header(good)!, good)
        assert.equal(written.length, before + 1)
        port.close()
      }),
      { seed: SEED, numRuns: RUNS * 5 },
    )
  })

  it('session control path: random control values, huge method names, raw garbage: no throw, calls still work', async () => {
    const key = Buffer.alloc(32, 9)
    const controlArb = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }),
      fc.record({
        id: fc.oneof(fc.integer(), fc.double()),
        method: fc.string(),
        params: fc.jsonValue({ maxDepth: 2 }),
      }),
      fc.record({ id: fc.integer({ min: 1, max: 5 }), result: fc.jsonValue({ maxDepth: 2 }) }),
      fc.record({ id: fc.integer({ min: 1, max: 5 }), error: fc.jsonValue({ maxDepth: 2 }) }),
      // A request whose error answer, repeating its method, would not fit in a control message.
      fc.constant({ id: 99, method: 'x'.repeat(MAX_CONTROL_JSON - 40), params: null }),
      fc.constant({ id: 98, method: 'echo-name', params: { name: 'y'.repeat(MAX_CONTROL_JSON - 60) } }),
    )
    await fc.assert(
      fc.asyncProperty(
        fc.array(controlArb, { maxLength: 12 }),
        fc.array(messageArb, { maxLength: 6 }),
        async (controls, raw) => {
          unhandled.length = 0
          const sim = new Simulation(SEED, {
            loss: 0,
            duplicate: 0,
            reorder: 0,
            reorderDelay: 1,
            corrupt: 0,
            delay: 0.1,
            jitter: 0,
            gro: 0,
            mtu: 65_535,
          })
          const rpcs = { opener: new Rpc({ timeoutMs: 2000 }), listener: new Rpc({ timeoutMs: 2000 }) }
          rpcs.listener.handle('echo', (p) => p)
          rpcs.listener.handle('echo-name', (p) => {
            throw new VrioError('not-found', `no disk named ${String((p as { name?: unknown })?.name)}`)
          })
          let listener: Session | undefined
          sim.acceptHandlers = (_remote, c) => {
            listener = new Session(c, 'listener', key, {
              authenticated: () => rpcs.listener.attach(listener),
              control: (m) => rpcs.listener.onControl(m),
            })
            return listener.connectionHandlers
          }
          const c = sim.connect({ message() {} })
          const opener: Session = new Session(c, 'opener', key, {
            authenticated: () => rpcs.opener.attach(opener),
            control: (m) => rpcs.opener.onControl(m),
          })
          const settle = async (done: () => boolean) => {
            for (let i = 0; i < 200 && !done(); i++) {
              sim.run(done, 50)
              await immediate()
            }
          }
          await settle(() => opener.authenticated && listener?.authenticated === true)
          assert.ok(opener.authenticated)
          for (const v of controls) assert.doesNotThrow(() => opener.sendControl(v))
          await settle(() => false)
          // Data messages of unknown types are dropped and counted; the session stays up.
          for (const m of raw) {
            const h = header(m)
            if (!h || h.type <= MessageType.Control) continue
            assert.doesNotThrow(() => listener!.connectionHandlers.message(m, Delivery.Reliable, false))
          }
          assert.ok(listener!.authenticated, `session failed: ${listener!.failure}`)
          let answer: unknown
          rpcs.opener.call('echo', { n: 1 }).then((r) => (answer = r))
          await settle(() => answer !== undefined)
          assert.deepEqual(answer, { n: 1 })
          assert.deepEqual(unhandled, [])
          opener.close()
        },
      ),
      { seed: SEED, numRuns: Math.max(5, RUNS / 4) },
    )
  })
})
