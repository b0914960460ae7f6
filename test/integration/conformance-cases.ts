/** The transport conformance cases: each runs against any LinkHarness (see test/support/harness.ts). */
import assert from 'node:assert/strict'
import { Delivery } from '../../src/transport/config.ts'
import type { CloseReason, Connection } from '../../src/transport/connection.ts'
import type { HarnessFactory, LinkHarness } from '../support/harness.ts'
import { messageId, patternMessage } from '../support/random.ts'

export interface ConformanceCase {
  name: string
  /**
   * Wireshark warnings the case provokes on purpose with legitimate TCP (a zero window, an RST from
   * a restarted peer). A capture of the case may show these and no others.
   */
  expectedWarnings?: string[]
  run(factory: HarnessFactory): Promise<void>
}

function intact(m: Uint8Array): boolean {
  return m.length >= 4 && Buffer.from(m).equals(patternMessage(messageId(m), m.length))
}

/** Accepts connections on `h` and records each intact message by id; `check` asserts exactly once, nothing corrupt. */
function receiver(h: LinkHarness) {
  const seen = new Map<number, number>()
  let corrupt = 0
  h.setAccept(() => ({
    message: (m) => {
      if (!intact(m)) corrupt++
      else seen.set(messageId(m), (seen.get(messageId(m)) ?? 0) + 1)
    },
  }))
  return {
    seen,
    check() {
      assert.equal(corrupt, 0, 'corrupt messages delivered')
      for (const [id, n] of seen) assert.equal(n, 1, `message ${id} delivered ${n} times`)
    },
  }
}

async function connected(h: LinkHarness): Promise<Connection> {
  let up = false
  const a = h.connect({ message() {}, established: () => (up = true) })
  await h.until(() => up, 'established')
  return a
}

export const conformanceCases: ConformanceCase[] = [
  {
    name: 'handshake, ordered messages both ways, clean close on both ends',
    async run(factory) {
      const h = await factory({})
      try {
        const closed: CloseReason[] = []
        const atB: number[] = []
        const atA: number[] = []
        h.setAccept((_r, c) => ({
          message: (m) => {
            atB.push(messageId(m))
            c.send(patternMessage(messageId(m) + 1000, m.length), Delivery.Ordered)
          },
          peerClosed: () => c.close(),
          closed: (r) => closed.push(r),
        }))
        let up = false
        const a = h.connect({
          message: (m) => atA.push(messageId(m)),
          established: () => (up = true),
          closed: (r) => closed.push(r),
        })
        await h.until(() => up, 'established')
        for (let i = 0; i < 40; i++) assert.ok(a.send(patternMessage(i, 100 + i * 997), Delivery.Ordered))
        await h.until(() => atA.length === 40, 'echoes')
        assert.deepEqual(
          atB,
          Array.from({ length: 40 }, (_, i) => i),
        )
        assert.deepEqual(
          atA,
          Array.from({ length: 40 }, (_, i) => i + 1000),
        )
        a.close()
        await h.until(() => closed.length === 2, 'both ends closed')
        assert.deepEqual(closed, ['normal', 'normal'])
      } finally {
        await h.close()
      }
    },
  },
  {
    name: 'reliable messages of mixed sizes up to 1 MiB arrive exactly once and intact',
    async run(factory) {
      const h = await factory({})
      try {
        const received = receiver(h)
        const a = await connected(h)
        const sizes = Array.from(
          { length: 60 },
          (_, i) => [17, 1436, 1437, 9000, 65_536, 200_000, 1 << 20][i % 7],
        )
        let next = 0
        const pump = () => {
          while (next < sizes.length && a.send(patternMessage(next, sizes[next]), Delivery.Reliable)) next++
        }
        pump()
        await h.until(
          () => {
            pump()
            return received.seen.size === sizes.length
          },
          'all messages',
          60_000,
        )
        received.check()
        await h.until(() => a.unacknowledged === 0, 'everything acknowledged')
      } finally {
        await h.close()
      }
    },
  },
  {
    name: 'best-effort messages arrive whole and intact, or not at all',
    async run(factory) {
      const h = await factory({})
      try {
        const received = receiver(h)
        const a = await connected(h)
        for (let i = 0; i < 300; i++)
          a.send(patternMessage(i, [60, 1400, 9000, 64_000][i % 4]), Delivery.BestEffort)
        await h.until(() => a.unacknowledged === 0, 'everything acknowledged or skipped')
        received.check()
        assert.ok(received.seen.size > 0)
      } finally {
        await h.close()
      }
    },
  },
  {
    name: 'a receiver that does not consume holds the sender to its window',
    expectedWarnings: [
      'TCP window specified by the receiver is now completely full',
      'TCP Zero Window segment',
    ],
    async run(factory) {
      const receiveBuffer = 512 * 1024
      const h = await factory({ receiveBuffer, maxMessageSize: 64 * 1024, manualRelease: true })
      try {
        let server: Connection | undefined
        let held = 0
        let consuming = false
        const got = new Set<number>()
        h.setAccept((_r, c) => {
          server = c
          return {
            message: (m) => {
              got.add(messageId(m))
              if (consuming) c.release(m.length)
              else held += m.length
            },
          }
        })
        let up = false
        const a = h.connect({ message() {}, established: () => (up = true) })
        await h.until(() => up, 'established')
        for (let i = 0; i < 64; i++) assert.ok(a.send(patternMessage(i, 32 * 1024), Delivery.Reliable))
        await h.until(() => held >= receiveBuffer - 32 * 1024, 'a window of data')
        // Give the sender time to (wrongly) overrun: it must not.
        const t = Date.now()
        await h.until(() => Date.now() - t > 300 || held > receiveBuffer, 'a pause', 2000).catch(() => {})
        assert.ok(held <= receiveBuffer, `receiver holds ${held} > window ${receiveBuffer}`)
        consuming = true
        server!.release(held)
        await h.until(() => got.size === 64, 'the rest after release', 30_000)
      } finally {
        await h.close()
      }
    },
  },
  {
    name: 'a peer that restarts is detected (plaintext: its RST; sealed: keepalives) and a new connection succeeds',
    expectedWarnings: ['Connection reset (RST)'],
    async run(factory) {
      const h = await factory({})
      try {
        let accepted = 0
        h.setAccept(() => {
          accepted++
          return { message() {} }
        })
        let up = 0
        let reason: CloseReason | undefined
        const handlers = { message() {}, established: () => up++, closed: (r: CloseReason) => (reason = r) }
        const a = h.connect(handlers)
        await h.until(() => up === 1, 'first connection')
        h.restartB()
        a.send(patternMessage(1, 100), Delivery.Reliable)
        await h.until(() => reason !== undefined, 'the old connection to end', 10_000)
        // Sealed, the restarted peer cannot seal an RST and sends none; an unsealed one would be dropped.
        assert.equal(reason, h.sealed ? 'dead-peer' : 'reset')
        h.connect(handlers)
        await h.until(() => up === 2, 'second connection', 10_000)
        assert.equal(accepted, 2)
      } finally {
        await h.close()
      }
    },
  },
]
