import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { VrioError } from '../../src/errors.ts'
import { Rpc } from '../../src/session/rpc.ts'
import { Session, type SessionFailure } from '../../src/session/session.ts'
import { Delivery } from '../../src/transport/config.ts'
import type { CloseReason } from '../../src/transport/connection.ts'
import {
  encodeMessageHeader,
  MESSAGE_HEADER_LENGTH,
  MessageType,
  newMessageHeader,
} from '../../src/wire/message-header.ts'
import { CHANNEL_MODES } from '../support/harness.ts'
import { Simulation } from '../support/simulation.ts'

interface End {
  session?: Session
  authenticated: boolean
  control: unknown[]
  closed?: CloseReason
  failure?: SessionFailure
}

function pair(openerKey: Buffer, listenerKey: Buffer, seed = 1, insecurePlaintext = false) {
  const sim = new Simulation(
    seed,
    {
      loss: 0.05,
      duplicate: 0.02,
      reorder: 0.1,
      reorderDelay: 1,
      corrupt: 0.01,
      delay: 0.1,
      jitter: 0.1,
      gro: 0,
      mtu: 65_535,
    },
    { insecurePlaintext },
  )
  const opener: End = { authenticated: false, control: [] }
  const listener: End = { authenticated: false, control: [] }
  const handlers = (end: End) => ({
    authenticated: () => (end.authenticated = true),
    control: (m: unknown) => end.control.push(m),
    closed: (r: CloseReason, f?: SessionFailure) => {
      end.closed = r
      end.failure = f
    },
  })
  sim.acceptHandlers = (_remote, c) => {
    listener.session = new Session(c, 'listener', listenerKey, handlers(listener))
    return listener.session.connectionHandlers
  }
  const c = sim.connect({ message() {} })
  opener.session = new Session(c, 'opener', openerKey, handlers(opener))
  return { sim, opener, listener }
}

function rawControl(sequence: number, json: string): Buffer {
  const body = Buffer.concat([Buffer.from(json), Buffer.alloc(16)])
  const h = newMessageHeader()
  h.type = MessageType.Control
  h.bodyLength = body.length
  h.requestLow = sequence
  const head = Buffer.alloc(MESSAGE_HEADER_LENGTH)
  encodeMessageHeader(head, 0, h)
  return Buffer.concat([head, body])
}

for (const { name: mode, insecurePlaintext } of CHANNEL_MODES)
  describe(`authenticated session (${mode})`, () => {
    it('both sides authenticate with the same key and exchange control messages in order, over a lossy link', () => {
      const key = randomBytes(32)
      const { sim, opener, listener } = pair(key, key, 1, insecurePlaintext)
      assert.ok(sim.run(() => opener.authenticated && listener.authenticated))
      for (let i = 0; i < 50; i++) {
        assert.ok(opener.session!.sendControl({ op: 'ping', i }))
        assert.ok(listener.session!.sendControl({ op: 'pong', i }))
      }
      assert.ok(sim.run(() => opener.control.length === 50 && listener.control.length === 50))
      assert.deepEqual(
        listener.control,
        Array.from({ length: 50 }, (_, i) => ({ op: 'ping', i })),
      )
      assert.deepEqual(
        opener.control,
        Array.from({ length: 50 }, (_, i) => ({ op: 'pong', i })),
      )
    })

    it('a guest with a wrong key is refused, and neither side authenticates', () => {
      const { sim, opener, listener } = pair(randomBytes(32), randomBytes(32), 1, insecurePlaintext)
      assert.ok(sim.run(() => opener.closed !== undefined && listener.closed !== undefined))
      assert.equal(opener.authenticated, false)
      assert.equal(listener.authenticated, false)
      assert.equal(opener.failure, 'auth-failed')
      assert.equal(listener.closed, 'reset')
    })

    it('a forged control message (bad tag) ends the session instead of being obeyed', () => {
      const key = randomBytes(32)
      const { sim, opener, listener } = pair(key, key, 2, insecurePlaintext)
      assert.ok(sim.run(() => opener.authenticated && listener.authenticated))
      // Straight onto the connection, bypassing the session: what an attacker who hijacked the TCP
      // stream could inject.
      opener.session!.connection.send(rawControl(1, '{"op":"remove-all"}'), Delivery.Ordered)
      assert.ok(sim.run(() => listener.closed !== undefined))
      assert.equal(listener.failure, 'bad-control-tag')
      assert.deepEqual(listener.control, [])
    })

    it('a replayed control message (valid tag, old sequence number) is refused', () => {
      const key = randomBytes(32)
      const { sim, opener, listener } = pair(key, key, 3, insecurePlaintext)
      assert.ok(sim.run(() => opener.authenticated && listener.authenticated))
      const sent: Uint8Array[] = []
      const connection = opener.session!.connection
      const send = connection.send.bind(connection)
      connection.send = (data, delivery) => {
        sent.push(Buffer.concat(data instanceof Uint8Array ? [data] : [...data]))
        return send(data, delivery)
      }
      opener.session!.sendControl({ op: 'create', name: 'disk0' })
      assert.ok(sim.run(() => listener.control.length === 1))
      send(sent[0], Delivery.Ordered) // the same bytes again
      assert.ok(sim.run(() => listener.closed !== undefined))
      assert.equal(listener.failure, 'bad-control-sequence')
      assert.equal(listener.control.length, 1)
    })

    it('a listener that receives anything but Hello first drops the connection', () => {
      const key = randomBytes(32)
      const sim = new Simulation(4, undefined, { insecurePlaintext })
      let failure: SessionFailure | undefined
      sim.acceptHandlers = (_r, c) => {
        return new Session(c, 'listener', key, { control() {}, closed: (_r2, f) => (failure = f) })
          .connectionHandlers
      }
      let up = false
      const c = sim.connect({ message() {}, established: () => (up = true) })
      assert.ok(sim.run(() => up))
      c.send(rawControl(1, '{}'), Delivery.Ordered)
      assert.ok(sim.run(() => failure !== undefined))
      assert.equal(failure, 'unexpected-message')
    })
  })

for (const { name: mode, insecurePlaintext } of CHANNEL_MODES)
  describe(`control RPC over a session (${mode})`, () => {
    it('calls return results and errors from the peer; calls fail cleanly when the channel goes', async () => {
      const key = randomBytes(32)
      const { sim, opener, listener } = pair(key, key, 9, insecurePlaintext)
      const client = new Rpc()
      const server = new Rpc()
        .handle('add', (p) => {
          const { a, b } = p as { a: number; b: number }
          return a + b
        })
        .handle('fail', () => {
          throw new VrioError('conflict', 'name taken', { name: 'disk0' })
        })
      assert.ok(sim.run(() => opener.authenticated && listener.authenticated))
      client.attach(opener.session)
      server.attach(listener.session)
      // Route control messages of the simulated sessions into the RPC objects.
      const drain = () => {
        for (const m of listener.control.splice(0)) server.onControl(m)
        for (const m of opener.control.splice(0)) client.onControl(m)
      }
      const settle = async <T>(p: Promise<T>) => {
        let done = false
        p.then(
          () => (done = true),
          () => (done = true),
        )
        for (let i = 0; i < 100 && !done; i++) {
          sim.run(() => opener.control.length + listener.control.length > 0, sim.clock.now + 1000)
          drain()
          await new Promise((r) => setImmediate(r))
        }
        return p
      }
      assert.equal(await settle(client.call('add', { a: 2, b: 3 })), 5)
      await assert.rejects(
        settle(client.call('fail', {})),
        (e: VrioError) => e.code === 'conflict' && e.details.name === 'disk0',
      )
      await assert.rejects(settle(client.call('nope', {})), (e: VrioError) => e.code === 'unknown-method')
      const pending = client.call('add', { a: 1, b: 1 })
      client.attach(undefined)
      await assert.rejects(pending, (e: VrioError) => e.code === 'not-connected')
      await assert.rejects(client.call('add', {}), (e: VrioError) => e.code === 'not-connected')
    })
  })
