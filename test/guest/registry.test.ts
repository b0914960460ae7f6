/**
 * The guest's device registry, without root: a recording kind shows what the registry owns
 * (attach with rollback, re-attach with a new handle, detach, routing by handle, sessions); the NIC
 * kind runs over in-memory TAPs and links, the disk kind with its NBD server in a temporary dir.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import type { Logger } from '../../src/daemon/log.ts'
import type { DeviceHandle, GuestDeviceEntry, GuestDeviceKind } from '../../src/devices/kind.ts'
import { isVrioError, VrioError } from '../../src/errors.ts'
import { GuestDisks } from '../../src/guest/disks.ts'
import { GuestNics } from '../../src/guest/nics.ts'
import { GuestRegistry } from '../../src/guest/registry.ts'
import { NET_GSO_MAX_SIZE } from '../../src/devices/net/protocol.ts'
import type { Session } from '../../src/session/session.ts'
import { type MessageHeader, MessageType, newMessageHeader } from '../../src/wire/message-header.ts'
import { memoryLinks } from '../support/memory-tap.ts'

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} }

interface P {
  name: string
  handle: DeviceHandle
  fail?: boolean
}
interface Dev {
  name: string
  handle: DeviceHandle
  session: Session | undefined
  closed: string | undefined
  received: number
}

class RecordingKind implements GuestDeviceKind<P, Dev, { name: string; low: number }, { ok: string }> {
  readonly noun = 'widget'
  readonly messageType = 0x7e
  readonly attachCall = 'w.attach'
  readonly detachCall = 'w.detach'
  readonly opened: Dev[] = []
  parse(params: unknown): P {
    const p = params as P
    if (typeof p?.name !== 'string' || !p.handle) throw new VrioError('invalid-argument', 'name and handle')
    return p
  }
  async open(p: P, handle: DeviceHandle): Promise<Dev> {
    const d: Dev = { name: p.name, handle, session: undefined, closed: undefined, received: 0 }
    this.opened.push(d)
    return d
  }
  async ready(_d: Dev, p: P): Promise<void> {
    if (p.fail) throw new VrioError('busy', 'set-up failed')
  }
  rebind(d: Dev, session: Session | undefined, handle: DeviceHandle) {
    d.session = session
    d.handle = handle
  }
  bind(d: Dev, session: Session | undefined) {
    d.session = session
  }
  answer(e: GuestDeviceEntry<Dev>) {
    return { ok: e.name }
  }
  async close(d: Dev, why: string) {
    d.closed = why
  }
  receive(d: Dev) {
    d.received++
  }
  info(e: GuestDeviceEntry<Dev>) {
    return { name: e.name, low: e.handle.low }
  }
}

const session = {} as Session
const h = (type: number, handle: DeviceHandle): MessageHeader => ({
  ...newMessageHeader(),
  type,
  deviceHigh: handle.high,
  deviceLow: handle.low,
})

describe('guest device registry (any kind)', () => {
  it('attach opens and binds; a failed set-up is undone; a re-attach moves the device to its new handle', async () => {
    const kind = new RecordingKind()
    const r = new GuestRegistry(kind, quiet)
    r.useSession(session)
    assert.deepEqual(await r.attach({ name: 'a', handle: { high: 5, low: 1 } }), { ok: 'a' })
    assert.equal(kind.opened[0].session, session)
    await assert.rejects(r.attach({ name: 'b', handle: { high: 5, low: 2 }, fail: true }), /set-up failed/)
    assert.equal(kind.opened[1].closed, 'failed')
    assert.deepEqual(
      r.list().map((d) => d.name),
      ['a'],
    )
    r.receive(h(kind.messageType, { high: 5, low: 2 }), new Uint8Array(0))
    assert.equal(kind.opened[1].received, 0)

    // The IOhyp restarted: same name, new handle. The old handle names nothing any more.
    await r.attach({ name: 'a', handle: { high: 6, low: 9 } })
    assert.equal(kind.opened.length, 2)
    r.receive(h(kind.messageType, { high: 5, low: 1 }), new Uint8Array(0))
    assert.equal(kind.opened[0].received, 0)
    r.receive(h(kind.messageType, { high: 6, low: 9 }), new Uint8Array(0))
    assert.equal(kind.opened[0].received, 1)
    await assert.rejects(r.attach({ handle: { high: 1, low: 1 } }), (e) => isVrioError(e, 'invalid-argument'))
  })

  it('hostile handles reach nothing: a wrong tag or an unknown slot', async () => {
    const kind = new RecordingKind()
    const r = new GuestRegistry(kind, quiet)
    await r.attach({ name: 'a', handle: { high: 5, low: 1 } })
    r.receive(h(kind.messageType, { high: 4, low: 1 }), new Uint8Array(0))
    r.receive(h(kind.messageType, { high: 5, low: 2 }), new Uint8Array(0))
    assert.equal(kind.opened[0].received, 0)
    r.receive(h(kind.messageType, { high: 5, low: 1 }), new Uint8Array(0))
    assert.equal(kind.opened[0].received, 1)
  })

  it('sessions: devices follow; detach closes and forgets; close stops every device', async () => {
    const kind = new RecordingKind()
    const r = new GuestRegistry(kind, quiet)
    await r.attach({ name: 'a', handle: { high: 5, low: 1 } })
    await r.attach({ name: 'b', handle: { high: 5, low: 2 } })
    r.useSession(session)
    assert.ok(kind.opened.every((d) => d.session === session))
    r.useSession(undefined)
    assert.ok(kind.opened.every((d) => d.session === undefined))
    assert.equal(await r.detach({ name: 'a' }), null)
    assert.equal(kind.opened[0].closed, 'detach')
    await assert.rejects(r.detach({ name: 'a' }), (e) => isVrioError(e, 'not-found'))
    await r.close()
    assert.equal(kind.opened[1].closed, 'stop')
    assert.equal(r.list().length, 0)
  })
})

describe('guest NICs over in-memory TAPs', () => {
  it('net.attach opens a persistent TAP and sets it up; net.detach deletes it; a stop leaves it', async () => {
    const links = memoryLinks({ eth0: 'ether' })
    const nics = new GuestNics(quiet, links)
    const params = { name: 'lan0', mac: '52:54:00:AA:00:01', mtu: 1500, handle: { high: 3, low: 1 } }
    assert.deepEqual(await nics.attach(params), { ifname: 'lan0' })
    assert.deepEqual(links.settings.get('lan0'), {
      address: '52:54:00:aa:00:01',
      mtu: 1500,
      gsoMaxSize: NET_GSO_MAX_SIZE,
      up: true,
    })
    await assert.rejects(nics.attach({ ...params, name: 'eth0' }), (e) => isVrioError(e, 'conflict'))
    await assert.rejects(nics.attach({ ...params, name: 'x', handle: { high: -1, low: 1 } }), (e) =>
      isVrioError(e, 'invalid-argument'),
    )
    assert.deepEqual(
      nics.list().map((n) => n.mac),
      ['52:54:00:aa:00:01'],
    )
    await nics.attach({ ...params, name: 'lan1', mac: '52:54:00:aa:00:02', handle: { high: 3, low: 2 } })
    await nics.detach({ name: 'lan0' })
    assert.deepEqual(links.deleted, ['lan0'])
    await nics.close()
    assert.deepEqual(links.deleted, ['lan0'])
    assert.ok(links.taps.get('lan1')?.closed)
  })
})

describe('guest disks (NBD exports, no block devices)', () => {
  it('blk.attach exports the disk; a re-attach keeps it; blk.detach removes the export', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vrio-gdisks-'))
    const disks = new GuestDisks({ runDir: dir, attach: false, log: quiet })
    try {
      await disks.start()
      const info = {
        size: 1 << 20,
        blockSize: 512,
        readOnly: false,
        canFlush: true,
        canFua: false,
        canTrim: false,
        canWriteZeroes: false,
      }
      const answer = await disks.attach({ name: 'root', handle: { high: 1, low: 1 }, info })
      assert.deepEqual(answer, { nbd: `nbd+unix:///root?socket=${join(dir, 'nbd.sock')}`, device: null })
      await assert.rejects(
        disks.attach({ name: 'bad', handle: { high: 1, low: 2 }, info: { ...info, blockSize: 100 } }),
        (e) => isVrioError(e, 'invalid-argument'),
      )
      await disks.attach({ name: 'root', handle: { high: 2, low: 7 }, info })
      assert.deepEqual(
        disks.list().map((d) => [d.name, d.size]),
        [['root', 1 << 20]],
      )
      // A response for the old handle is dropped (nothing outstanding to match anyway).
      disks.receive(h(MessageType.BlockResponse, { high: 1, low: 1 }), new Uint8Array(0))
      await disks.detach({ name: 'root' })
      assert.equal(disks.list().length, 0)
    } finally {
      await disks.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
