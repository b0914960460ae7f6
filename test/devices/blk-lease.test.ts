/**
 * Lent messages on the block path: a message handed over with a lender is kept without a copy and
 * goes back to that lender (and only to it) once nothing refers to it; a message handed over
 * without one is only read during the call, and nothing of it is ever given back.
 */
import assert from 'node:assert/strict'
import { setImmediate as immediate } from 'node:timers/promises'
import { afterEach, describe, it } from 'node:test'
import { BlockBackend, ReplyBudget } from '../../src/devices/blk/backend.ts'
import { type BlockDevice, blockDeviceInfo } from '../../src/devices/blk/device.ts'
import { RemoteBlockDevice } from '../../src/devices/blk/frontend.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import type { Delivery } from '../../src/transport/config.ts'
import type { Lender } from '../../src/transport/message-buffers.ts'
import { decodeMessageHeader, type MessageHeader, newMessageHeader } from '../../src/wire/message-header.ts'

const HANDLE = { high: 0x1ea5e, low: 7 }
const SIZE = 4 * 1024 * 1024

/** Records what is given back to it. */
class SpyLender implements Lender {
  readonly given: Uint8Array[] = []
  giveBack(buffer: Uint8Array): void {
    this.given.push(buffer)
  }
}

/** A session that delivers each message (a fresh buffer) later, lent by `lender` when there is one. */
function loopback(deliver: (h: MessageHeader, m: Uint8Array, lender?: Lender) => void, lender?: Lender) {
  return {
    sendData(parts: Uint8Array | readonly Uint8Array[], _delivery: Delivery): boolean {
      const list = parts instanceof Uint8Array ? [parts] : parts
      const m = Buffer.concat(list.map((p) => Buffer.from(p)))
      setImmediate(() => {
        const h = newMessageHeader()
        assert.equal(decodeMessageHeader(m, 0, m.length, h), undefined)
        deliver(h, m, lender)
      })
      return true
    },
  }
}

const open: { backend: BlockBackend; front: RemoteBlockDevice }[] = []

/** A MemoryDevice whose writes wait for `finish` (the test says when the device is done). */
class HeldWrites extends MemoryDevice {
  finish: (() => void) | undefined
  override async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    await new Promise<void>((resolve) => (this.finish = resolve))
    return super.write(offset, data, fua)
  }
}

/** A front-end and a back-end over `device`, each receiving what the other sends. */
function pair(device: BlockDevice, toFront?: Lender, toBack?: Lender) {
  const backend = new BlockBackend(device, {
    handle: HANDLE,
    maxMessageSize: 1024 * 1024,
    replyBudget: new ReplyBudget(8 * 1024 * 1024),
  })
  const front = new RemoteBlockDevice({
    info: blockDeviceInfo(device),
    handle: HANDLE,
    sweepInterval: 0,
    maxTransfer: 256 * 1024,
  })
  backend.attach(loopback((h, m, l) => front.receive(h, m, l), toFront))
  front.attach(loopback((h, m, l) => backend.receive(h, m, l), toBack))
  open.push({ backend, front })
  return { backend, front }
}

describe('lent block messages', () => {
  afterEach(async () => {
    for (const { backend, front } of open.splice(0)) {
      front.close()
      await backend.close()
    }
  })

  it('front-end: a read answered in one lent message goes back to its lender on release', async () => {
    const device = new MemoryDevice({ size: SIZE })
    await device.write(4096, Buffer.alloc(8192, 0x5a), false)
    const lender = new SpyLender()
    const { front } = pair(device, lender)
    const data = await front.read(4096, 8192)
    assert.deepEqual(Buffer.from(data), Buffer.alloc(8192, 0x5a))
    assert.equal(lender.given.length, 0, 'nothing is given back before the caller releases it')
    front.release(data)
    assert.equal(lender.given.length, 1)
    assert.equal(lender.given[0].buffer, data.buffer, 'the very message the data is a view of')
  })

  it('front-end: a read answered without a lender is a copy; releasing it gives nothing back', async () => {
    const device = new MemoryDevice({ size: SIZE })
    const lender = new SpyLender()
    // Lent messages toward the back-end only: the front-end never holds a lent one.
    const { front } = pair(device, undefined, lender)
    const data = await front.read(0, 8192)
    front.release(data)
    assert.equal(lender.given.length, 0)
    // A read split into several responses is assembled in the front-end's own buffer.
    const split = new SpyLender()
    const { front: front2 } = pair(device, split)
    const big = await front2.read(0, 512 * 1024)
    assert.equal(big.length, 512 * 1024)
    front2.release(big)
    assert.ok(
      split.given.every((g) => g.buffer !== big.buffer),
      'an array the front-end assembled itself was given to the lender as if it were a message',
    )
  })

  it("front-end: a copy released goes back to the front-end's own pool; one kept is never reused", async () => {
    const device = new MemoryDevice({ size: SIZE })
    await device.write(0, Buffer.alloc(4096, 0x11), false)
    await device.write(4096, Buffer.alloc(4096, 0x22), false)
    const { front } = pair(device) // no lender: every read is a copy
    const first = await front.read(0, 4096)
    const kept = await front.read(4096, 4096)
    assert.notEqual(kept.buffer, first.buffer, 'two reads out at once share memory')
    front.release(first)
    const again = await front.read(4096, 4096)
    assert.equal(again.buffer, first.buffer, 'the released copy was not reused')
    assert.deepEqual(Buffer.from(again), Buffer.alloc(4096, 0x22))
    assert.deepEqual(Buffer.from(kept), Buffer.alloc(4096, 0x22), 'a copy not released was overwritten')
    // Released twice (a caller's bug): handed out once only.
    front.release(again)
    front.release(again)
    const x = await front.read(0, 4096)
    const y = await front.read(0, 4096)
    assert.notEqual(x.buffer, y.buffer, 'a buffer released twice was handed to two reads')
    assert.deepEqual(Buffer.from(y), Buffer.alloc(4096, 0x11))
  })

  it('back-end: lent write data goes back to its lender once, after the device wrote it', async () => {
    const device = new HeldWrites({ size: SIZE })
    const lender = new SpyLender()
    const { front } = pair(device, undefined, lender)
    const written = front.write(0, Buffer.alloc(4096, 0x33), false)
    while (!device.finish) await immediate()
    assert.equal(lender.given.length, 0, 'given back while the device still had the data')
    device.finish()
    await written
    assert.equal(lender.given.length, 1)
    assert.deepEqual(Buffer.from(await device.read(0, 4096)), Buffer.alloc(4096, 0x33))
  })

  it('back-end: write data that was not lent is copied and never given back', async () => {
    const device = new MemoryDevice({ size: SIZE })
    const lender = new SpyLender()
    const { front } = pair(device, lender) // lent toward the front-end only
    await front.write(0, Buffer.alloc(4096, 0x44), false)
    await front.read(0, 4096)
    assert.ok(lender.given.length === 0)
  })
})
