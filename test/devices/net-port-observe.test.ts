import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { NetPort, type NetFilter } from '../../src/devices/net/port.ts'
import { NetFrameEncoder } from '../../src/devices/net/protocol.ts'
import { FrameBatch, type FrameChannel } from '../../src/io/frame-channel.ts'
import type { Session } from '../../src/session/session.ts'
import { VIRTIO_NET_HDR_LEN } from '../../src/wire/virtio-net-hdr.ts'
import { decodeMessageHeader, newMessageHeader } from '../../src/wire/message-header.ts'

const HANDLE = { high: 1, low: 2 }
/** Byte of a test frame (after the virtio_net_hdr) that numbers it. */
const SEQ = 20

/** A NetPort on the IOhyp side over a fake channel and session that log what happens, in order. */
function world(filter: NetFilter) {
  const log: string[] = []
  let deliver: ((b: FrameBatch) => void) | undefined
  const channel = {
    onBatch(h: (b: FrameBatch) => void) {
      deliver = h
      return channel
    },
    onError() {
      return channel
    },
    send(frames: readonly Uint8Array[]) {
      for (const f of frames) log.push(`kernel:${f[VIRTIO_NET_HDR_LEN + SEQ]}`)
      return frames.length
    },
    close() {},
    closed: false,
  }
  // As the transport: sendData queues the frame, a microtask sends what is queued (LinkDriver.flush).
  let flushQueued = false
  const session = {
    authenticated: true,
    sendData(parts: readonly Uint8Array[]) {
      log.push(`queued:${parts[1][VIRTIO_NET_HDR_LEN + SEQ]}`)
      if (!flushQueued) {
        flushQueued = true
        queueMicrotask(() => {
          flushQueued = false
          log.push('flush')
        })
      }
      return true
    },
  }
  const port = new NetPort({
    channel: channel as unknown as FrameChannel,
    handle: HANDLE,
    mtu: 1500,
    side: 'iohyp',
    filter,
  })
  port.attach(session as unknown as Session)
  return { log, port, deliver: (b: FrameBatch) => (deliver as (b: FrameBatch) => void)(b) }
}

/** A batch of `n` frames (virtio_net_hdr + 60 bytes) numbered 0..n-1, as a channel hands them over. */
function batchOf(n: number): FrameBatch {
  const size = VIRTIO_NET_HDR_LEN + 60
  const slab = Buffer.alloc(n * size)
  const offsets = new Uint32Array(n)
  const lengths = new Uint32Array(n)
  for (let i = 0; i < n; i++) {
    offsets[i] = i * size
    lengths[i] = size
    slab[i * size + VIRTIO_NET_HDR_LEN + SEQ] = i
  }
  const b = new FrameBatch(slab, offsets, lengths)
  b.setCount(n)
  return b
}

/** A filter that logs, drops frame `dropped`, and watches after forwarding when `observing`. */
function loggingFilter(log: () => string[], observing: boolean, dropped = -1): NetFilter {
  return {
    observing,
    inspect(frame) {
      log().push(`inspect:${frame[SEQ]}`)
      return frame[SEQ] !== dropped
    },
    observe(frame) {
      log().push(`observe:${frame[SEQ]}`)
    },
  }
}

const tick = () => new Promise((r) => setImmediate(r))

describe('NetPort: the watching part of a filter runs after the frame is forwarded', () => {
  it('from the kernel: each frame is checked, queued to the peer, and watched after the batch was sent', async () => {
    let log: string[] = []
    const w = world(loggingFilter(() => log, true, 2))
    log = w.log
    w.deliver(batchOf(4))
    await tick()
    assert.deepEqual(w.log, [
      'inspect:0',
      'queued:0',
      'inspect:1',
      'queued:1',
      'inspect:2',
      'inspect:3',
      'queued:3',
      'flush',
      'observe:0',
      'observe:1',
      'observe:3',
    ])
  })

  it('from the kernel, with nothing watching: nothing runs after', async () => {
    let log: string[] = []
    const w = world(loggingFilter(() => log, false))
    log = w.log
    w.deliver(batchOf(2))
    await tick()
    assert.deepEqual(w.log, ['inspect:0', 'queued:0', 'inspect:1', 'queued:1', 'flush'])
  })

  it('from the peer: checked, written to the kernel, then watched', () => {
    let log: string[] = []
    const w = world(loggingFilter(() => log, true, 9))
    log = w.log
    // NetFrames as the peer's port sends them.
    const encoder = new NetFrameEncoder(HANDLE)
    for (const seq of [7, 9]) {
      const body = Buffer.alloc(VIRTIO_NET_HDR_LEN + 60)
      body[VIRTIO_NET_HDR_LEN + SEQ] = seq
      const message = Buffer.concat([encoder.headerFor(body.length), body])
      const h = newMessageHeader()
      assert.equal(decodeMessageHeader(message, 0, message.length, h), undefined)
      w.port.receive(h, message)
    }
    assert.deepEqual(w.log, ['inspect:7', 'kernel:7', 'observe:7', 'inspect:9'])
  })
})
