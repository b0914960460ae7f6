import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import type { FrameBatch } from '../../src/io/index.ts'
import { ETH_P_NONE, PacketSocket } from '../../src/io/index.ts'
import type { Netns, VethPair } from '../support/netns.ts'
import { cleanupNetns, createNetns, createVethPair, remainingNetns, requireRoot } from '../support/netns.ts'
import { ETHERTYPE_TEST, ethHeader, mac } from '../support/packets.ts'
import { waitUntil } from '../support/wait.ts'

// Deterministic frame i: test EtherType, then the sequence number, then a pattern of seq.
function sizeOf(i: number): number {
  return 60 + ((i * 97) % (1514 - 60 + 1))
}

function makeFrame(dst: Uint8Array, src: Uint8Array, i: number): Buffer {
  const f = Buffer.alloc(sizeOf(i))
  f.set(ethHeader(dst, src, ETHERTYPE_TEST), 0)
  f.writeUInt32BE(i, 14)
  for (let j = 18; j < f.length; j++) f[j] = (i + j * 7) & 0xff
  return f
}

function checkFrame(f: Buffer): number {
  assert.equal(f.readUInt16BE(12), ETHERTYPE_TEST)
  const i = f.readUInt32BE(14)
  assert.equal(f.length, sizeOf(i), `length of frame ${i}`)
  for (let j = 18; j < f.length; j++) {
    if (f[j] !== ((i + j * 7) & 0xff)) assert.fail(`frame ${i}: byte ${j} corrupt`)
  }
  return i
}

/** Sends frames[from..] keeping at most `window` unreceived, retrying what the kernel pushes back. */
async function sendWindowed(
  tx: PacketSocket,
  frames: Buffer[],
  received: () => number,
  window = 256,
): Promise<void> {
  let next = 0
  while (next < frames.length) {
    const room = Math.min(window - (next - received()), frames.length - next, 64)
    if (room <= 0) {
      await waitUntil(
        () => next - received() < window,
        `receiver to catch up (sent ${next}, got ${received()})`,
      )
      continue
    }
    const n = tx.send(frames.slice(next, next + room))
    next += n
    if (n < room) await new Promise((r) => setImmediate(r))
  }
}

describe('PacketSocket over a veth pair between two namespaces', () => {
  let nsA: Netns
  let nsB: Netns
  let veth: VethPair

  before(() => {
    requireRoot()
    nsA = createNetns()
    nsB = createNetns()
    veth = createVethPair(nsA, nsB, { mtu: 1500 })
  })

  after(() => {
    cleanupNetns()
    assert.deepEqual(remainingNetns(), [])
  })

  test('10k frames of varied sizes arrive intact, in batches, and the stats agree', async () => {
    const N = 10_000
    const rx = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, rcvBuf: 8 << 20, rxBatch: 64 })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    try {
      assert.equal(rx.mtu, 1500)
      assert.match(rx.mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/)
      const seen = new Uint8Array(N)
      let got = 0
      let other = 0
      let batches = 0
      let maxBatch = 0
      rx.onBatch((b: FrameBatch) => {
        batches++
        maxBatch = Math.max(maxBatch, b.count)
        assert.ok(b.count > 0 && b.count <= 64)
        for (let k = 0; k < b.count; k++) {
          const f = b.frame(k)
          if (f.readUInt16BE(12) !== ETHERTYPE_TEST) {
            other++
            continue
          }
          const i = checkFrame(f)
          assert.equal(seen[i], 0, `frame ${i} received twice`)
          seen[i] = 1
          got++
        }
      })
      const frames = Array.from({ length: N }, (_, i) => makeFrame(mac(rx.mac), mac(tx.mac), i))
      // Mix Buffers and plain Uint8Arrays: send() takes either.
      frames[1] = new Uint8Array(frames[1]) as Buffer
      await sendWindowed(tx, frames, () => got)
      await waitUntil(() => got === N, `all ${N} frames (got ${got})`)

      assert.equal(other, 0, 'no other traffic on the link')
      assert.ok(batches < N, `frames arrived batched (${batches} batches, largest ${maxBatch})`)
      const rs = rx.stats()
      const ts = tx.stats()
      const bytes = frames.reduce((s, f) => s + f.length, 0)
      assert.equal(ts.txFrames, N)
      assert.equal(ts.txBytes, bytes)
      assert.equal(rs.rxFrames, N)
      assert.equal(rs.rxBytes, bytes)
      assert.equal(rs.rxBatches, batches)
      assert.equal(rs.kernelDrops, 0)
      assert.equal(rs.kernelPackets, N)
      assert.equal(rs.rxTruncated, 0)
    } finally {
      rx.close()
      tx.close()
    }
  })

  test("a batch's frames stay intact until the microtasks its handler queued have run", async () => {
    // NetPort watches frames in a microtask after the batch was forwarded (a DPI that only alerts):
    // the slab must not be read into again before then, even with more batches waiting.
    const N = 3000
    const rx = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, rcvBuf: 8 << 20, rxBatch: 16 })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    try {
      let got = 0
      let batches = 0
      const late: string[] = []
      rx.onBatch((b: FrameBatch) => {
        batches++
        const views: Buffer[] = []
        const seqs: number[] = []
        for (let k = 0; k < b.count; k++) {
          const f = b.frame(k)
          if (f.readUInt16BE(12) !== ETHERTYPE_TEST) continue
          views.push(f)
          seqs.push(checkFrame(f))
        }
        queueMicrotask(() => {
          views.forEach((f, k) => {
            if (f.readUInt32BE(14) !== seqs[k]) late.push(`frame ${seqs[k]} read as ${f.readUInt32BE(14)}`)
            else checkFrame(f)
          })
          got += views.length
        })
      })
      // All at once (as far as the kernel takes them): several batches wait at each wake-up.
      const frames = Array.from({ length: N }, (_, i) => makeFrame(mac(rx.mac), mac(tx.mac), i))
      await sendWindowed(tx, frames, () => got, 2048)
      await waitUntil(() => got === N, `all ${N} frames (got ${got})`)
      assert.deepEqual(late, [])
      assert.ok(batches > N / 16 / 2, `frames came in many batches (${batches})`)
    } finally {
      rx.close()
      tx.close()
    }
  })

  test('sendBatch sends frames described by (slab, offsets, lengths), e.g. a received batch', async () => {
    const rx = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, ignoreOutgoing: true })
    const fwd = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, protocol: ETH_P_NONE })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, ignoreOutgoing: true })
    try {
      // B forwards every test frame it receives straight back out of the batch it came in.
      rx.onBatch((b) => {
        assert.equal(fwd.sendBatch(b.slab, b.offsets, b.lengths, b.count), b.count)
      })
      const back: number[] = []
      tx.onBatch((b) => {
        for (let k = 0; k < b.count; k++) {
          const f = b.frame(k)
          if (f.readUInt16BE(12) === ETHERTYPE_TEST) back.push(checkFrame(f))
        }
      })
      // A slab holding three frames, described by a table.
      const parts = [
        makeFrame(mac(rx.mac), mac(tx.mac), 1),
        makeFrame(mac(rx.mac), mac(tx.mac), 2),
        makeFrame(mac(rx.mac), mac(tx.mac), 3),
      ]
      const slab = Buffer.concat([Buffer.alloc(5), ...parts])
      const offsets = new Uint32Array([5, 5 + parts[0].length, 5 + parts[0].length + parts[1].length])
      const lengths = new Uint32Array(parts.map((p) => p.length))
      assert.equal(tx.sendBatch(slab, offsets, lengths, 2, 1), 2)
      await waitUntil(() => back.length === 2, 'frames 2 and 3 to come back')
      assert.deepEqual(back.sort(), [2, 3])
      assert.throws(() => tx.sendBatch(slab, offsets, new Uint32Array([1, 1, 1 << 20])), TypeError)
    } finally {
      rx.close()
      fwd.close()
      tx.close()
    }
  })

  test('ignoreOutgoing hides frames leaving the interface; without it they are seen', async () => {
    const quiet = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, ignoreOutgoing: true })
    const all = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    const peer = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, protocol: ETH_P_NONE })
    try {
      let quietSaw = 0
      let allSaw = 0
      quiet.onBatch((b) => {
        quietSaw += b.count
      })
      all.onBatch((b) => {
        allSaw += b.count
      })
      const out = Array.from({ length: 5 }, (_, i) => makeFrame(mac('02:00:00:00:00:01'), mac(tx.mac), i))
      assert.equal(tx.send(out), 5)
      await waitUntil(() => allSaw === 5, 'the plain socket to see the 5 outgoing frames')
      // Incoming frames are still delivered to the quiet socket.
      assert.equal(peer.send([makeFrame(mac(quiet.mac), mac(peer.mac), 9)]), 1)
      await waitUntil(() => quietSaw === 1 && allSaw === 6, 'the incoming frame on both sockets')
      assert.equal(quietSaw, 1)
    } finally {
      for (const s of [quiet, all, tx, peer]) s.close()
    }
  })

  test("fanout 'lb' spreads one interface's frames over the sockets of a group", async () => {
    const opts = {
      ifname: veth.b.ifname,
      netns: nsB.path,
      fanout: { group: (process.pid & 0x7fff) + 1, mode: 'lb' as const },
    }
    const s1 = PacketSocket.open(opts)
    const s2 = PacketSocket.open(opts)
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    try {
      let c1 = 0
      let c2 = 0
      s1.onBatch((b) => {
        c1 += b.count
      })
      s2.onBatch((b) => {
        c2 += b.count
      })
      const frames = Array.from({ length: 200 }, (_, i) => makeFrame(mac(s1.mac), mac(tx.mac), i))
      await sendWindowed(tx, frames, () => c1 + c2, 64)
      await waitUntil(() => c1 + c2 === 200, `200 frames over the group (got ${c1}+${c2})`)
      assert.ok(c1 > 0 && c2 > 0, `both members got frames (${c1}, ${c2})`)
    } finally {
      s1.close()
      s2.close()
      tx.close()
    }
  })

  test('a slow handler makes the kernel drop (counted), never the reader queue grow', async () => {
    const rx = PacketSocket.open({
      ifname: veth.b.ifname,
      netns: nsB.path,
      rxBatch: 8,
      rcvBuf: 64 << 10,
    })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    try {
      let got = 0
      rx.onBatch((b) => {
        got += b.count
        const until = Date.now() + 20
        while (Date.now() < until) {
          // A handler that cannot keep up.
        }
      })
      const frames = Array.from({ length: 2000 }, (_, i) =>
        makeFrame(mac(rx.mac), mac(tx.mac), (i % 500) + 1000),
      )
      let sent = 0
      while (sent < frames.length) sent += tx.send(frames.slice(sent, sent + 64)) || 0
      await waitUntil(
        () => {
          const s = rx.stats()
          return s.kernelPackets === frames.length && got === s.kernelPackets - s.kernelDrops
        },
        'the socket to account for every frame',
        10_000,
      )
      const s = rx.stats()
      assert.ok(s.kernelDrops > 0, 'the kernel dropped some')
      assert.equal(s.rxFrames + s.kernelDrops, frames.length)
    } finally {
      rx.close()
      tx.close()
    }
  })
  test('polling (setPoll): frames that arrive while the thread would sleep are taken in its poll rounds, counted; timers still fire; off again stops it', async () => {
    const N = 2000
    const rx = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, rcvBuf: 4 << 20 })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    try {
      const src = mac(tx.mac)
      const dst = mac(rx.mac)
      const seen = new Uint8Array(N)
      let got = 0
      // Ping-pong within one thread: each frame received sends the next, so every frame after the
      // first arrives after its sender's handler returned, while the loop would go to sleep.
      rx.onBatch((b: FrameBatch) => {
        for (let k = 0; k < b.count; k++) {
          const f = b.frame(k)
          if (f.readUInt16BE(12) !== ETHERTYPE_TEST) continue
          const i = checkFrame(f)
          assert.equal(seen[i], 0, `frame ${i} received twice`)
          seen[i] = 1
          got++
          if (i + 1 < N) assert.equal(tx.send([makeFrame(dst, src, i + 1)]), 1)
        }
      })
      assert.equal(rx.setPoll(500), true)
      let timerFired = false
      const timer = setTimeout(() => {
        timerFired = true
      }, 20)
      assert.equal(tx.send([makeFrame(dst, src, 0)]), 1)
      await waitUntil(() => got === N, `all ${N} frames (got ${got})`)
      await waitUntil(() => timerFired, 'a timer set while polling to fire')
      clearTimeout(timer)
      const s = rx.stats()
      assert.ok((s.pollHits ?? 0) > 0, `frames taken while polling: ${JSON.stringify(s)}`)
      assert.ok((s.polls ?? 0) >= (s.pollHits ?? 0))
      assert.ok((s.pollUs ?? 0) > 0)
      // Off: no more poll rounds, frames still arrive by the readable event.
      assert.equal(rx.setPoll(0), true)
      const before = rx.stats().polls
      await new Promise((r) => setTimeout(r, 50))
      assert.equal(rx.stats().polls, before)
      assert.throws(() => rx.setPoll(-1), /idleUs/)
    } finally {
      rx.close()
      tx.close()
    }
  })
  test('gated polling (setPoll with a gate): no poll rounds while the gate is 0, poll rounds while it is above 0', async () => {
    const rx = PacketSocket.open({ ifname: veth.b.ifname, netns: nsB.path, rcvBuf: 4 << 20 })
    const tx = PacketSocket.open({ ifname: veth.a.ifname, netns: nsA.path, protocol: ETH_P_NONE })
    try {
      const src = mac(tx.mac)
      const dst = mac(rx.mac)
      let got = 0
      let last = 0
      // Ping-pong within one thread, as above: each frame after the first arrives while the loop would sleep.
      rx.onBatch((b: FrameBatch) => {
        for (let k = 0; k < b.count; k++) {
          const f = b.frame(k)
          if (f.readUInt16BE(12) !== ETHERTYPE_TEST) continue
          const i = checkFrame(f)
          got++
          if (i < last) assert.equal(tx.send([makeFrame(dst, src, i + 1)]), 1)
        }
      })
      const pingPong = async (from: number, n: number) => {
        const want = got + n
        last = from + n - 1
        assert.equal(tx.send([makeFrame(dst, src, from)]), 1)
        await waitUntil(() => got === want, `${n} frames (got ${got - (want - n)})`)
      }
      const gate = new Int32Array(new ArrayBuffer(4))
      assert.equal(rx.setPoll(500, gate), true)
      // Nothing awaited, and never was: the thread sleeps between frames as without polling.
      await pingPong(0, 500)
      assert.equal(rx.stats().polls ?? 0, 0, 'no poll round with the gate at 0')
      // Something awaited: the frames are taken in poll rounds.
      gate[0] = 1
      await pingPong(500, 500)
      const s = rx.stats()
      assert.ok((s.pollHits ?? 0) > 0, `frames taken while polling: ${JSON.stringify(s)}`)
      // Down to 0 again: once the idle time has passed, no more rounds.
      gate[0] = 0
      await new Promise((r) => setTimeout(r, 20))
      const before = rx.stats().polls
      await new Promise((r) => setTimeout(r, 50))
      assert.equal(rx.stats().polls, before, 'no poll rounds once nothing is awaited')
      assert.throws(() => rx.setPoll(500, new Uint32Array(1) as unknown as Int32Array), /gate/)
      assert.throws(() => rx.setPoll(500, new Int32Array(0)), /gate/)
    } finally {
      rx.close()
      tx.close()
    }
  })
})
