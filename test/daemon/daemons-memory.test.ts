/**
 * Both daemons in one process, without root: joined by an in-memory frame channel instead of a
 * packet socket, their NICs on in-memory TAPs and links, disks on files in a temporary directory,
 * driven through their control sockets. Covers create, remove, rollback, session loss with
 * re-announce, and restore from the state file, end to end.
 */
import assert from 'node:assert/strict'
import { truncateSync, writeFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import type { DiskInfo, GuestDiskInfo, GuestInfo, GuestNicInfo, NicInfo } from '../../src/control/api.ts'
import { ControlClient } from '../../src/control/control-client.ts'
import type { Logger } from '../../src/daemon/log.ts'
import { isVrioError } from '../../src/errors.ts'
import { GuestDaemon } from '../../src/guest/daemon.ts'
import { IohypDaemon } from '../../src/iohyp/daemon.ts'
import { formatMac } from '../../src/wire/address.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'
import { MemoryChannel, memoryLinkAccess, memoryLinks } from '../support/memory-tap.ts'
import { waitUntil } from '../support/wait.ts'

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} }
const IOHYP_MAC = 0x0200_0000_0001
const GUEST_MAC = 0x0200_0000_0002
const IOHYP_IP = 0x0a00_0001
const GUEST_IP = 0x0a00_0002
const KEY = Buffer.alloc(32, 0x42)
const PORT = 17860
/** Generous: a loaded machine; the deadline turns a hang into a failure, it measures nothing. */
const LONG = 30_000

let tmp: TempDir
let iohyp: IohypDaemon | undefined
let guest: GuestDaemon | undefined
let iohypEnd: MemoryChannel
const iohypLinks = memoryLinks({ br0: 'bridge' })
const guestLinks = memoryLinks({ eth0: 'ether' })

const ctl = (name: string) => new ControlClient({ path: tmp.path(name), timeoutMs: LONG })

/** A fresh cable between the daemons (a stopped daemon closes its end). */
function cable(): { iohyp: MemoryChannel; guest: MemoryChannel } {
  const a = new MemoryChannel('vrio0')
  const b = new MemoryChannel('vrio0')
  a.peer = b
  b.peer = a
  return { iohyp: a, guest: b }
}

async function startIohyp(end: MemoryChannel): Promise<IohypDaemon> {
  iohypEnd = end
  return IohypDaemon.start(
    {
      interface: 'vrio0',
      stateDir: tmp.dir,
      control: tmp.path('iohyp.sock'),
      version: 'test',
      port: PORT,
      guests: [{ mac: formatMac(GUEST_MAC), address: '10.0.0.2', key: KEY }],
      access: { link: memoryLinkAccess(end, IOHYP_MAC, IOHYP_IP), links: iohypLinks },
    },
    quiet,
  )
}

async function startGuest(end: MemoryChannel): Promise<GuestDaemon> {
  return GuestDaemon.start(
    {
      interface: 'vrio0',
      key: KEY,
      control: tmp.path('guest.sock'),
      runDir: tmp.path('run'),
      attach: false,
      version: 'test',
      port: PORT,
      iohyp: '10.0.0.1',
      access: { link: memoryLinkAccess(end, GUEST_MAC, GUEST_IP), links: guestLinks },
    },
    quiet,
  )
}

async function connected(): Promise<void> {
  await waitUntil(
    () => iohyp?.guests().some((g: GuestInfo) => g.state === 'connected') === true,
    'the IOhyp to reach its guest',
    LONG,
  )
}

async function guestDisks(): Promise<GuestDiskInfo[]> {
  return (await ctl('guest.sock').get<{ disks: GuestDiskInfo[] }>('/v1/blk')).disks
}
async function guestNics(): Promise<GuestNicInfo[]> {
  return (await ctl('guest.sock').get<{ nics: GuestNicInfo[] }>('/v1/nic')).nics
}

async function eventually(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + LONG
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

describe('IOhyp and guest daemons over an in-memory link', () => {
  before(async () => {
    tmp = tempDir('vrio-dm-')
    writeFileSync(tmp.path('a.img'), '')
    truncateSync(tmp.path('a.img'), 1 << 20)
    const c = cable()
    guest = await startGuest(c.guest)
    iohyp = await startIohyp(c.iohyp)
    await connected()
  })
  after(async () => {
    await iohyp?.stop()
    await guest?.stop()
    tmp.remove()
  })

  it('blk create: the guest exports the disk; a bad request is refused naming the field', async () => {
    const io = ctl('iohyp.sock')
    const disk = await io.post<DiskInfo>('/v1/blk', {
      guest: '10.0.0.2',
      backing: tmp.path('a.img'),
      name: 'root',
    })
    assert.equal(disk.state, 'attached')
    assert.equal(disk.size, 1 << 20)
    assert.deepEqual(
      (await guestDisks()).map((d) => [d.name, d.size]),
      [['root', 1 << 20]],
    )
    await assert.rejects(
      io.post('/v1/blk', { guest: '10.0.0.2', backing: tmp.path('a.img'), readonly: true }),
      (e) => isVrioError(e, 'invalid-argument'),
    )
    await assert.rejects(io.post('/v1/blk', { guest: '10.0.0.9', backing: tmp.path('a.img') }), (e) =>
      isVrioError(e, 'not-found'),
    )
  })

  it('nic create: a TAP on the IOhyp, an interface in the guest; one the guest refuses is undone', async () => {
    const io = ctl('iohyp.sock')
    const nic = await io.post<NicInfo>('/v1/nic', {
      guest: formatMac(GUEST_MAC),
      name: 'lan0',
      mac: '52:54:00:aa:00:01',
      tap: 'vt-lan0',
      bridge: 'br0',
    })
    assert.equal(nic.state, 'attached')
    assert.equal(iohypLinks.kinds.get('vt-lan0'), 'tun')
    assert.deepEqual(
      (await guestNics()).map((n) => n.name),
      ['lan0'],
    )
    // The guest has an interface eth0 of its own: it refuses, and the IOhyp undoes its TAP.
    await assert.rejects(
      io.post('/v1/nic', { guest: '10.0.0.2', name: 'eth0', mac: '52:54:00:aa:00:02', tap: 'vt-eth0' }),
      (e) => isVrioError(e, 'conflict'),
    )
    assert.ok(iohypLinks.taps.get('vt-eth0')?.closed)
    assert.deepEqual(
      (await io.get<{ nics: NicInfo[] }>('/v1/nic')).nics.map((n) => n.name),
      ['lan0'],
    )
  })

  it('a restarted guest agent gets every device announced again', async () => {
    await guest?.stop()
    guest = undefined
    const c = cable()
    iohypEnd.peer = c.guest
    c.guest.peer = iohypEnd
    guest = await startGuest(c.guest)
    await eventually(
      async () => (await guestDisks()).length === 1 && (await guestNics()).length === 1,
      're-announce',
    )
    const disks = (await ctl('iohyp.sock').get<{ disks: DiskInfo[] }>('/v1/blk')).disks
    assert.deepEqual(
      disks.map((d) => [d.name, d.state]),
      [['root', 'attached']],
    )
  })

  it('a restarted IOhyp restores its devices from the state file and gives them to the guest again', async () => {
    await iohyp?.stop()
    iohyp = undefined
    const c = cable()
    // The guest keeps its end: the new IOhyp's end is joined to it.
    const guestEnd = iohypEnd.peer as MemoryChannel
    c.iohyp.peer = guestEnd
    guestEnd.peer = c.iohyp
    iohyp = await startIohyp(c.iohyp)
    await connected()
    await eventually(async () => {
      const d = (await ctl('iohyp.sock').get<{ disks: DiskInfo[] }>('/v1/blk')).disks
      return d.length === 1 && d[0].state === 'attached'
    }, 'the restored disk to be attached')
    assert.deepEqual(
      (await ctl('iohyp.sock').get<{ nics: NicInfo[] }>('/v1/nic')).nics.map((n) => n.name),
      ['lan0'],
    )
  })

  it('remove: the guest loses the devices; the guest can then be removed', async () => {
    const io = ctl('iohyp.sock')
    await assert.rejects(io.delete(`/v1/guests/${formatMac(GUEST_MAC)}`), (e) => isVrioError(e, 'conflict'))
    await io.delete('/v1/blk/root')
    await io.delete('/v1/nic/lan0')
    assert.deepEqual(await guestDisks(), [])
    assert.deepEqual(await guestNics(), [])
    assert.ok(guestLinks.deleted.includes('lan0'))
    await assert.rejects(io.delete('/v1/blk/root'), (e) => isVrioError(e, 'not-found'))
    await io.delete(`/v1/guests/${formatMac(GUEST_MAC)}`)
  })
})
