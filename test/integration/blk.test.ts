import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { DiskInfo, StatusInfo } from '../../src/control/api.ts'
import { ControlClient } from '../../src/control/control-client.ts'
import { fio, loopBackFile, sparseFile, VERIFY_WRITES } from '../support/block-io.ts'
import { killDaemons, vrio, vrioJson } from '../support/daemons.ts'
import type { ImpairedLink } from '../support/impair.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink, firewallCounters, firewalledLink, type Topology } from '../support/topology.ts'
import { LOSSY_LINK, pairOverImpairedLink, VrioPair } from '../support/vrio-pair.ts'
import { EXIT } from '../../src/errors.ts'
import { settlesWithin } from '../support/wait.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const MiB = 1024 * 1024
const sha256 = (path: string, length?: number) => {
  const data = readFileSync(path)
  return createHash('sha256')
    .update(length === undefined ? data : data.subarray(0, length))
    .digest('hex')
}

function randomImage(path: string, size: number): void {
  const fd = openSync(path, 'w')
  for (let off = 0; off < size; off += 4 * MiB) writeSync(fd, randomBytes(Math.min(4 * MiB, size - off)))
  closeSync(fd)
}

/** qemu-img convert an image into the disk's NBD export and back out; both must equal the source and the backing file. */
function roundTrip(pair: VrioPair, disk: DiskInfo, backing: string, size: number): void {
  const src = join(pair.dir, 'src.img')
  const out = join(pair.dir, 'out.img')
  randomImage(src, size)
  execFileSync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, disk.nbd!])
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', disk.nbd!, out])
  const want = sha256(src)
  assert.equal(sha256(out, size), want, 'read back through vrio')
  assert.equal(sha256(backing, size), want, "the IOhyp's backing file")
}

describe('remote disk over a veth', () => {
  let t: Topology
  let pair: VrioPair
  before(async () => {
    requireRoot()
    t = directLink()
    pair = new VrioPair(t.a, t.b)
    pair.guestOptions = ['--io-timeout', '5']
    await pair.start()
  })
  after(() => pair?.stop())

  it('qemu-img round trip of a 256 MiB random image: sha256 matches, and equals the backing file', async () => {
    const backing = join(pair.dir, 'rt.img')
    sparseFile(backing, 256 * MiB)
    const disk = await pair.createDisk(backing, 'rt')
    assert.equal(disk.size, 256 * MiB)
    assert.equal(disk.state, 'attached')
    assert.match(disk.nbd ?? '', /^nbd\+unix:\/\/\/rt\?socket=/)
    roundTrip(pair, disk, backing, 256 * MiB)
    // The agent polls for its disks by default (`vrio guest` without --poll / --no-poll): it did
    // while these calls were outstanding. The IOhyp does not poll unless asked.
    const status = (side: 'guest' | 'iohyp') =>
      vrioJson<StatusInfo>(['status', '--json', '--control', pair.sock(side)]).socket
    if (process.env.VRIO_TEST_POLL === undefined) {
      const s = status('guest')
      assert.equal(s?.poll, 'disks')
      assert.ok((s?.polls ?? 0) > 0, `the agent polled for its disk calls: ${JSON.stringify(s)}`)
      assert.equal(status('iohyp')?.poll, undefined)
      // The same in its metrics; none from the IOhyp.
      const metrics = (side: 'guest' | 'iohyp') =>
        new ControlClient({ path: pair.sock(side) }).get<string>('/metrics')
      const polls = /^vrio_packet_socket_polls_total\{interface="[^"]+"\} (\d+)$/m.exec(
        await metrics('guest'),
      )
      assert.ok(polls && Number(polls[1]) >= (s?.polls ?? 0), `the metric counts them: ${polls?.[0]}`)
      assert.doesNotMatch(await metrics('iohyp'), /^vrio_packet_socket_polls_total\{/m)
    }
    const guestView = vrioJson<{
      disks: { name: string; size: number; readOnly: boolean; nbd: string; device: string | null }[]
    }>(['blk', 'list', '--guest', '--control', pair.sock('guest')])
    const g = guestView.disks.find((d) => d.name === 'rt')
    assert.ok(g)
    assert.equal(g.size, 256 * MiB)
    assert.equal(g.readOnly, false)
    assert.match(g.device ?? '', /^\/dev\/loop\d+$/)
    await pair.removeDisk('rt')
  })

  it('mkfs.ext4 on the attached block device, mount, write, fsck clean; files survive remove and re-create', async () => {
    const backing = join(pair.dir, 'fs.img')
    sparseFile(backing, 128 * MiB)
    let disk = await pair.createDisk(backing, 'fs')
    const mnt = join(pair.dir, 'mnt')
    mkdirSync(mnt, { recursive: true })
    const content = randomBytes(3 * MiB)
    // Block devices are not per network namespace (and `ip netns exec` mounts would vanish with it).
    const inGuest = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: 'pipe' })
    inGuest('mkfs.ext4', ['-q', disk.device!])
    inGuest('mount', [disk.device!, mnt])
    writeFileSync(join(mnt, 'data.bin'), content)
    inGuest('umount', [mnt])
    inGuest('e2fsck', ['-fn', disk.device!])
    await pair.removeDisk('fs')
    disk = await pair.createDisk(backing, 'fs')
    inGuest('mount', [disk.device!, mnt])
    try {
      assert.ok(readFileSync(join(mnt, 'data.bin')).equals(content), 'file identical after re-create')
    } finally {
      inGuest('umount', [mnt])
    }
    await pair.removeDisk('fs')
  })

  it('IOhyp killed (SIGKILL) during fio writes and restarted: the job resumes and verifies', async () => {
    const backing = join(pair.dir, 'kill.img')
    sparseFile(backing, 64 * MiB)
    const disk = await pair.createDisk(backing, 'kill')
    const job = fio(disk.nbd!, [...VERIFY_WRITES, '--size=48m'])
    await new Promise((r) => setTimeout(r, 700))
    await pair.iohyp.stop('SIGKILL')
    await new Promise((r) => setTimeout(r, 1000))
    pair.startIohyp()
    const { code, json, stderr } = await job.result
    assert.equal(code, 0, `fio failed: ${stderr}`)
    const jobs = (json as { jobs: { error: number; verify_errors?: number }[] }).jobs
    assert.equal(jobs[0].error, 0)
    await pair.waitConnected()
    await pair.removeDisk('kill')
  })

  it('IOhyp gone for longer than the I/O timeout: fio gets I/O errors, not a hang', async () => {
    const backing = join(pair.dir, 'gone.img')
    sparseFile(backing, 64 * MiB)
    const disk = await pair.createDisk(backing, 'gone')
    await pair.iohyp.stop('SIGKILL')
    try {
      const job = fio(disk.nbd!, ['--rw=randwrite', '--bs=4k', '--iodepth=4', '--size=8m'])
      // The guest runs with --io-timeout 5: requests fail then, fio stops at the first error.
      const { code, stderr } = await settlesWithin(job.result, 'fio on a disk whose IOhyp is gone')
      assert.notEqual(code, 0, 'fio reported the errors')
      assert.match(stderr, /error/i)
    } finally {
      pair.startIohyp()
      await pair.waitConnected()
    }
    await pair.removeDisk('gone')
  })

  it('removing a disk in use fails its in-flight I/O cleanly and detaches the block device', async () => {
    const backing = join(pair.dir, 'busy.img')
    sparseFile(backing, 64 * MiB)
    const disk = await pair.createDisk(backing, 'busy')
    assert.match(disk.device ?? '', /^\/dev\/loop\d+$/)
    const job = fio(disk.nbd!, [
      '--rw=randwrite',
      '--bs=64k',
      '--iodepth=16',
      '--size=64m',
      '--time_based',
      '--runtime=30',
    ])
    await new Promise((r) => setTimeout(r, 1000))
    const backFile = loopBackFile(disk.device!)
    assert.ok(backFile, `${disk.device} is attached`)
    await pair.removeDisk('busy')
    // fio runs time-based for 30 s; its disk going away ends it with errors, not a hang.
    const { code } = await settlesWithin(job.result, 'fio on a removed disk')
    assert.notEqual(code, 0, 'fio saw its disk go away')
    // Gone, or (tests run side by side) taken anew for another file.
    assert.notEqual(loopBackFile(disk.device!), backFile, 'the loop device is detached')
    assert.ok(pair.iohyp.alive && pair.guest.alive)
  })

  it('bad input: missing backing, unknown guest, name taken, unknown export, read past the end — clear errors, daemons stay up', async () => {
    const backing = join(pair.dir, 'bad.img')
    sparseFile(backing, 8 * MiB)
    const create = (args: string[]) => vrio(['blk', 'create', ...args, '--control', pair.sock('iohyp')])
    let r = create(['--guest', pair.guestMac, '--backing', join(pair.dir, 'nope.img')])
    assert.equal(r.status, EXIT.notFound)
    assert.match(r.stderr, /nope\.img.*(no such file|does not exist)/)
    r = create(['--guest', '02:00:00:00:00:99', '--backing', backing])
    assert.match(r.stderr, /no enrolled guest/)
    assert.equal(create(['--guest', pair.guestMac, '--backing', backing, '--name', 'bad']).status, 0)
    r = create(['--guest', pair.guestMac, '--backing', backing, '--name', 'bad'])
    assert.match(r.stderr, /exists already/)
    const sock = join(pair.runDir, 'nbd.sock')
    assert.throws(() => execFileSync('nbdinfo', [`nbd+unix:///nosuch?socket=${sock}`], { stdio: 'pipe' }))
    const past = spawnSyncText('qemu-io', [
      '-f',
      'raw',
      '-c',
      `read ${8 * MiB} 4096`,
      `nbd+unix:///bad?socket=${sock}`,
    ])
    assert.match(past, /error|Input\/output|Invalid/i)
    assert.ok(pair.iohyp.alive && pair.guest.alive)
    await pair.removeDisk('bad')
  })
})

function spawnSyncText(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: 'pipe' })
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string }
    return `${err.stdout ?? ''}${err.stderr ?? ''}`
  }
}

describe('remote disk over a link with 5% loss, 2% duplication and reordering', () => {
  let link: ImpairedLink
  let pair: VrioPair
  before(async () => {
    requireRoot()
    ;({ pair, link } = await pairOverImpairedLink(LOSSY_LINK))
  })
  after(async () => {
    await pair?.stop()
    link?.stop()
  })

  it('fio random writes with crc32c verify at queue depth 32: zero verify errors, the job finishes', async () => {
    const backing = join(pair.dir, 'lossy.img')
    sparseFile(backing, 64 * MiB)
    const disk = await pair.createDisk(backing, 'lossy')
    const { code, json, stderr } = await fio(disk.nbd!, [...VERIFY_WRITES, '--size=16m']).result
    assert.equal(code, 0, `fio failed: ${stderr}`)
    assert.equal((json as { jobs: { error: number }[] }).jobs[0].error, 0)
    assert.ok(link.stats.lost > 0 && link.stats.duplicated > 0, JSON.stringify(link.stats))
  })
})

describe('remote disk through the strict conntrack firewall', () => {
  let t: Topology
  let pair: VrioPair
  before(async () => {
    requireRoot()
    t = firewalledLink()
    pair = new VrioPair(t.a, t.b)
    await pair.start()
  })
  after(() => pair?.stop())

  it('qemu-img round trip: data intact, nothing marked invalid', async () => {
    const backing = join(pair.dir, 'fw.img')
    sparseFile(backing, 64 * MiB)
    const disk = await pair.createDisk(backing, 'fw')
    roundTrip(pair, disk, backing, 64 * MiB)
    const counts = firewallCounters(t.firewall!.ns)
    assert.equal(counts.invalid, 0)
    assert.ok(counts.established > 100, JSON.stringify(counts))
  })
})
