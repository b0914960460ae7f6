/**
 * The IOhyp's device registry, without root: a recording device kind shows what the registry itself
 * owns (handles and routing, create with rollback, remove, restore, declare with diffing,
 * re-announce on a new session, counters); the disk kind runs over MemoryDevice backings and the
 * NIC kind over in-memory TAP queues and links.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { Logger } from '../../src/daemon/log.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import type {
  DeviceEntry,
  DeviceGuest,
  DeviceHandle,
  DeviceKind,
  DeviceSpec,
} from '../../src/devices/kind.ts'
import { isVrioError, VrioError } from '../../src/errors.ts'
import { MAX_BATCH } from '../../src/devices/blk/protocol.ts'
import { type BackingFile, type DiskFiles, IohypDisks } from '../../src/iohyp/disks.ts'
import { IohypNics } from '../../src/iohyp/nics.ts'
import { DeviceRegistry } from '../../src/iohyp/registry.ts'
import type { Session } from '../../src/session/session.ts'
import { formatMac } from '../../src/wire/address.ts'
import { type MessageHeader, MessageType, newMessageHeader } from '../../src/wire/message-header.ts'
import { memoryLinks } from '../support/memory-tap.ts'

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} }
const A = 0x5254_0000_0001
const B = 0x5254_0000_0002

type Spec = DeviceSpec & { size: number }
interface Dev {
  spec: Spec
  handle: DeviceHandle
  session: Session | undefined
  closed: string | undefined
  received: number
}

/** A device kind that records what the registry asks of it. */
class RecordingKind implements DeviceKind<Spec, Dev, { name: string; state: string; low: number }> {
  readonly noun = 'widget'
  readonly namePrefix = 'w'
  readonly messageType = 0x7f
  readonly attachCall = 'w.attach'
  readonly detachCall = 'w.detach'
  readonly attachTimeoutMs = 1000
  readonly opened: Dev[] = []
  readonly unknownAnswers: MessageHeader[] = []
  failOpen = false

  parse(body: unknown) {
    const b = body as { name?: string; guest?: unknown; size?: unknown }
    if (typeof b.guest !== 'string' || typeof b.size !== 'number')
      throw new VrioError('invalid-argument', 'guest and size', { field: 'size' })
    return { guest: b.guest, size: b.size, ...(b.name !== undefined && { name: b.name }) }
  }
  async open(spec: Spec, handle: DeviceHandle): Promise<Dev> {
    if (this.failOpen) throw new VrioError('not-found', 'no such backing')
    const d: Dev = { spec, handle, session: undefined, closed: undefined, received: 0 }
    this.opened.push(d)
    return d
  }
  async close(d: Dev, why: 'remove' | 'stop') {
    d.closed = why
  }
  bind(d: Dev, session: Session | undefined) {
    d.session = session
  }
  announcement(e: DeviceEntry<Spec, Dev>) {
    return { name: e.spec.name, handle: e.handle }
  }
  receive(d: Dev) {
    d.received++
  }
  unknown(_s: Session, h: MessageHeader) {
    this.unknownAnswers.push(h)
  }
  info(e: DeviceEntry<Spec, Dev>) {
    return { name: e.spec.name, state: e.announced ? 'attached' : 'waiting', low: e.handle.low }
  }
}

/** A guest whose control calls are recorded and answered by `answer`. */
function guest(mac: number, answer: (method: string, params: unknown) => unknown = () => ({})) {
  const calls: { method: string; params: unknown }[] = []
  const g: DeviceGuest & { calls: typeof calls } = {
    mac,
    session: { authenticated: true, sendData: () => true } as unknown as Session,
    calls,
    rpc: {
      call: async (method, params) => {
        calls.push({ method, params })
        return answer(method, params)
      },
    },
  }
  return g
}

function header(type: number, handle: DeviceHandle): MessageHeader {
  return { ...newMessageHeader(), type, deviceHigh: handle.high, deviceLow: handle.low }
}

/** A registry of the recording kind, and two connected guests. */
function setUp() {
  const kind = new RecordingKind()
  return { kind, r: new DeviceRegistry(kind, quiet), a: guest(A), b: guest(B) }
}

const macOf = (text: string) => [A, B].find((m) => formatMac(m) === text)
const settle = () => new Promise((r) => setImmediate(r))

describe('IOhyp device registry (any kind)', () => {
  it('create: opens, binds to the session, announces; a refused announcement undoes everything', async () => {
    const kind = new RecordingKind()
    const r = new DeviceRegistry(kind, quiet)
    const a = guest(A)
    const info = await r.create({ guest: formatMac(A), size: 1 }, a)
    assert.equal(info.name, 'w0')
    assert.equal(info.state, 'attached')
    assert.equal(a.calls[0].method, 'w.attach')
    assert.equal(kind.opened[0].session, a.session)

    const refusing = guest(A, () => {
      throw new VrioError('busy', 'no')
    })
    await assert.rejects(r.create({ guest: formatMac(A), size: 2, name: 'x' }, refusing), /no/)
    // Rolled back: the device is closed, gone from the list and from the routing table.
    assert.equal(kind.opened[1].closed, 'remove')
    assert.deepEqual(
      r.list().map((d) => d.name),
      ['w0'],
    )
    r.receive(a, header(kind.messageType, kind.opened[1].handle), new Uint8Array(0))
    assert.equal(kind.opened[1].received, 0)
    // The name is free again.
    await r.create({ guest: formatMac(A), size: 2, name: 'x' }, a)
    assert.deepEqual(
      r.list().map((d) => d.name),
      ['w0', 'x'],
    )
  })

  it('create refuses a taken name, a disconnected guest, a bad request, and a failed open leaves nothing', async () => {
    const kind = new RecordingKind()
    const r = new DeviceRegistry(kind, quiet)
    const a = guest(A)
    await r.create({ guest: formatMac(A), size: 1, name: 'x' }, a)
    await assert.rejects(r.create({ guest: formatMac(A), size: 1, name: 'x' }, a), (e) =>
      isVrioError(e, 'conflict'),
    )
    await assert.rejects(r.create({ guest: formatMac(A), size: 1 }, { ...a, session: undefined }), (e) =>
      isVrioError(e, 'not-connected'),
    )
    await assert.rejects(r.create({ guest: formatMac(A) }, a), (e) => isVrioError(e, 'invalid-argument'))
    kind.failOpen = true
    await assert.rejects(r.create({ guest: formatMac(A), size: 1, name: 'y' }, a), (e) =>
      isVrioError(e, 'not-found'),
    )
    assert.deepEqual(
      r.list().map((d) => d.name),
      ['x'],
    )
  })

  it('routes data by handle: a wrong tag, another guest’s device or an unknown slot reach nothing and are counted', async () => {
    const { kind, r, a, b } = setUp()
    await r.create({ guest: formatMac(A), size: 1, name: 'a' }, a)
    await r.create({ guest: formatMac(B), size: 1, name: 'b' }, b)
    const [da, db] = kind.opened
    const msg = new Uint8Array(0)
    r.receive(a, header(kind.messageType, da.handle), msg)
    assert.equal(da.received, 1)
    // Hostile: A names B's device (right slot and tag), a guessed tag, a slot that does not exist.
    r.receive(a, header(kind.messageType, db.handle), msg)
    r.receive(a, header(kind.messageType, { high: (da.handle.high + 1) >>> 0, low: da.handle.low }), msg)
    r.receive(a, header(kind.messageType, { high: da.handle.high, low: 0xffff_ffff }), msg)
    assert.equal(da.received, 1)
    assert.equal(db.received, 0)
    assert.equal(r.unknownDeviceDrops(A), 3)
    assert.equal(r.unknownDeviceDrops(B), 0)
    assert.equal(kind.unknownAnswers.length, 3)
    // Handles are unique slots with random tags.
    assert.notEqual(da.handle.low, db.handle.low)
  })

  it('remove: the guest is told, the device closes; unknown names are not-found', async () => {
    const kind = new RecordingKind()
    const r = new DeviceRegistry(kind, quiet)
    const a = guest(A)
    await r.create({ guest: formatMac(A), size: 1, name: 'x' }, a)
    const info = await r.remove('x', () => a)
    assert.equal(info.state, 'waiting')
    assert.deepEqual(a.calls.at(-1), { method: 'w.detach', params: { name: 'x' } })
    assert.equal(kind.opened[0].closed, 'remove')
    assert.equal(r.forGuest(A), 0)
    await assert.rejects(
      r.remove('x', () => a),
      (e) => isVrioError(e, 'not-found'),
    )
  })

  it('session loss unbinds; a new session re-announces every device of that guest only', async () => {
    const { kind, r, a, b } = setUp()
    await r.create({ guest: formatMac(A), size: 1, name: 'a1' }, a)
    await r.create({ guest: formatMac(A), size: 1, name: 'a2' }, a)
    await r.create({ guest: formatMac(B), size: 1, name: 'b1' }, b)
    r.useSession({ ...a, session: undefined })
    assert.equal(kind.opened[0].session, undefined)
    assert.deepEqual(
      r.list().map((d) => d.state),
      ['waiting', 'waiting', 'attached'],
    )
    // Data while the guest has no session goes nowhere.
    r.receive(
      { ...a, session: undefined },
      header(kind.messageType, kind.opened[0].handle),
      new Uint8Array(0),
    )
    assert.equal(kind.opened[0].received, 0)
    const again = guest(A)
    r.useSession(again)
    await settle()
    assert.deepEqual(again.calls.map((c) => (c.params as { name: string }).name).sort(), ['a1', 'a2'])
    assert.equal(kind.opened[0].session, again.session)
    assert.deepEqual(
      r.list().map((d) => d.state),
      ['attached', 'attached', 'attached'],
    )
  })

  it('restore keeps handles and allocates after them; declare keeps what did not change and replaces the rest', async () => {
    const kind = new RecordingKind()
    const r = new DeviceRegistry(kind, quiet)
    await r.restore(
      [
        { name: 'kept', guest: formatMac(A), size: 1, handle: { high: 9, low: 7 } },
        { name: 'changed', guest: formatMac(A), size: 1, handle: { high: 9, low: 8 } },
      ],
      macOf,
    )
    assert.deepEqual(
      r.state().map((s) => [s.name, s.handle.low]),
      [
        ['kept', 7],
        ['changed', 8],
      ],
    )
    await r.declare(
      [
        { name: 'kept', guest: formatMac(A), size: 1 },
        { name: 'changed', guest: formatMac(A), size: 2 },
        { name: 'new', guest: formatMac(B), size: 1 },
      ],
      macOf,
    )
    const state = Object.fromEntries(r.state().map((s) => [s.name, s]))
    assert.deepEqual(state.kept.handle, { high: 9, low: 7 })
    assert.equal(state.changed.size, 2)
    assert.ok(state.changed.handle.low > 8 && state.new.handle.low > 8)
    assert.equal(kind.opened[1].closed, 'remove')
    assert.equal(kind.opened[0].closed, undefined)
    await assert.rejects(r.declare([{ name: 'z', guest: '52:54:00:00:00:99', size: 1 }], macOf), (e) =>
      isVrioError(e, 'invalid-argument'),
    )
    await assert.rejects(
      new DeviceRegistry(kind, quiet).restore(
        [{ name: 'x', guest: '52:54:00:00:00:99', size: 1, handle: { high: 1, low: 1 } }],
        macOf,
      ),
      (e) => isVrioError(e, 'invalid-state'),
    )
  })

  it('close: every device closes for a stop, and data is no longer handled', async () => {
    const kind = new RecordingKind()
    const r = new DeviceRegistry(kind, quiet)
    const a = guest(A)
    await r.create({ guest: formatMac(A), size: 1 }, a)
    await r.close()
    assert.equal(kind.opened[0].closed, 'stop')
    assert.equal(r.list().length, 0)
  })
})

/** Backings in memory; each path is its own file. */
function memoryFiles(): DiskFiles & { open_: Set<string> } {
  const open_ = new Set<string>()
  let ino = 1n
  const inodes = new Map<string, bigint>()
  return {
    open_,
    async open(path, readOnly) {
      if (path.includes('missing')) throw new VrioError('not-found', `backing ${path} does not exist`)
      if (!inodes.has(path)) inodes.set(path, ino++)
      const device = new MemoryDevice({ size: 1 << 20, readOnly })
      open_.add(path)
      return Object.assign(device, {
        identity: { dev: 1n, ino: inodes.get(path)! },
        close: async () => {
          open_.delete(path)
        },
      }) as unknown as BackingFile
    },
  }
}

describe('IOhyp disks over memory backings', () => {
  it('create, NoDevice for a foreign handle, remove; a failed announcement closes the backing', async () => {
    const files = memoryFiles()
    const disks = new IohypDisks(quiet, undefined, files)
    const sent: unknown[] = []
    const a = guest(A, (method) =>
      method === 'blk.attach' ? { nbd: 'nbd+unix:///d0', device: '/dev/vrio0' } : null,
    )
    a.session = {
      authenticated: true,
      sendData: (parts: unknown) => sent.push(parts) > 0,
    } as unknown as Session
    const info = await disks.create({ guest: formatMac(A), backing: '/img/a' }, a)
    assert.equal(info.name, 'disk0')
    assert.equal(info.nbd, 'nbd+unix:///d0')
    assert.equal(info.size, 1 << 20)
    const attach = a.calls[0].params as { handle: DeviceHandle; info: { size: number }; maxBatch: number }
    assert.equal(attach.info.size, 1 << 20)
    assert.equal(attach.maxBatch, MAX_BATCH, 'batches announced (docs/protocol.md §8.1b)')
    // A block request naming no disk of this guest is answered NoDevice.
    disks.receive(
      a,
      header(MessageType.BlockRequest, { high: attach.handle.high ^ 1, low: attach.handle.low }),
      new Uint8Array(0),
    )
    assert.equal(sent.length, 1)
    assert.equal(disks.unknownDeviceDrops(A), 1)

    const refusing = guest(A, () => {
      throw new VrioError('timeout', 'guest did not answer')
    })
    await assert.rejects(disks.create({ guest: formatMac(A), backing: '/img/b' }, refusing), /did not answer/)
    assert.deepEqual([...files.open_], ['/img/a'])
    // The same file for a second writable disk is refused; once removed, it is free again.
    await assert.rejects(disks.create({ guest: formatMac(A), backing: '/img/a', name: 'x' }, a), (e) =>
      isVrioError(e, 'conflict'),
    )
    const removed = await disks.remove('disk0', () => a)
    assert.equal(removed.device, null)
    assert.deepEqual([...files.open_], [])
    await disks.create({ guest: formatMac(A), backing: '/img/a', name: 'x' }, a)
    assert.deepEqual(
      disks.state().map((d) => [d.name, d.backing, d.readOnly]),
      [['x', '/img/a', false]],
    )
    await disks.close()
    assert.deepEqual([...files.open_], [])
  })
})

describe('IOhyp NICs over in-memory TAPs and links', () => {
  it('tap and macvtap NICs: created, announced, removed; a failed announcement deletes the macvtap', async () => {
    const links = memoryLinks({ eth9: 'ether', br0: 'bridge' })
    const nics = new IohypNics(quiet, () => {}, links)
    const a = guest(A)
    const tap = await nics.create(
      { guest: formatMac(A), mac: '52:54:00:aa:00:01', tap: 'vt0', bridge: 'br0' },
      a,
    )
    assert.deepEqual(tap.backend, { kind: 'tap', tap: 'vt0', bridge: 'br0' })
    assert.equal(a.calls[0].method, 'net.attach')
    await assert.rejects(
      nics.create({ guest: formatMac(A), mac: '52:54:00:aa:00:01', tap: 'vt1' }, a),
      (e) => isVrioError(e, 'conflict') && e.details.field === 'mac',
    )
    const refusing = guest(A, () => {
      throw new VrioError('timeout', 'no answer')
    })
    await assert.rejects(
      nics.create({ guest: formatMac(A), mac: '52:54:00:aa:00:02', macvtap: 'eth9' }, refusing),
    )
    assert.deepEqual(links.deleted, ['vmvt2'])
    assert.equal(links.kinds.get('vmvt2'), undefined)
    assert.deepEqual(
      nics.list().map((n) => n.name),
      ['vnic0'],
    )
    await nics.remove('vnic0', () => a)
    assert.ok(links.taps.get('vt0')?.closed)
    assert.equal(nics.list().length, 0)
    await nics.close()
  })
})

describe('VRIO_BATCH', () => {
  it('sets what blk.attach announces; a bad value is refused when the disks are made, not at import', async () => {
    const before = process.env.VRIO_BATCH
    try {
      for (const bad of ['x', '65', '-1', '1.5']) {
        process.env.VRIO_BATCH = bad
        assert.throws(
          () => new IohypDisks(quiet, undefined, memoryFiles()),
          (e: unknown) => isVrioError(e, 'invalid-config'),
          bad,
        )
      }
      process.env.VRIO_BATCH = '0'
      const disks = new IohypDisks(quiet, undefined, memoryFiles())
      const a = guest(A, () => ({ nbd: 'nbd+unix:///d0', device: null }))
      a.session = { authenticated: true, sendData: () => true } as unknown as Session
      await disks.create({ guest: formatMac(A), backing: '/img/a' }, a)
      assert.equal((a.calls[0].params as { maxBatch: number }).maxBatch, 0)
      await disks.close()
    } finally {
      if (before === undefined) delete process.env.VRIO_BATCH
      else process.env.VRIO_BATCH = before
    }
  })
})
