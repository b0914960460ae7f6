/**
 * The restart matrix: the IOhyp or the guest agent, stopped with SIGKILL or SIGTERM, while idle or
 * while fio (random writes with crc32c verify) and a recording writer run against the remote disk;
 * then only the killed daemon is started again. In every case the acknowledged writes are on the
 * disk afterwards (read back through the guest's export, and the attached block device equals the
 * IOhyp's backing file), the disk takes fio writes with verify again, and the remote NIC passes
 * traffic again.
 *
 * What a client sees differs by who went away:
 * - IOhyp: the guest agent keeps its NBD connections and re-sends unanswered requests to the
 *   restarted IOhyp, so the running fio job completes and verifies;
 * - guest agent: its NBD server goes with it, so local NBD clients lose their connection (as with
 *   any NBD server's restart) and must reconnect; writes they had acknowledged are on the disk.
 *   Its block device: after SIGKILL the next agent takes it over (same /dev/loopN); after SIGTERM
 *   it was detached and the next agent attaches a new one.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { GuestDiskInfo, GuestNicInfo } from '../../src/control/api.ts'
import {
  fio,
  loopBackFile,
  recordedWrites,
  sparseFile,
  VERIFY_WRITES,
  verifyRecordedWrites,
} from '../support/block-io.ts'
import { killDaemons } from '../support/daemons.ts'
import { cleanupNetns, execAsync, ip, type Netns, requireRoot } from '../support/netns.ts'
import { directLink, worldOnBridge } from '../support/topology.ts'
import { onBridge, VrioPair } from '../support/vrio-pair.ts'
import { settlesWithin, waitUntil } from '../support/wait.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const MiB = 1024 * 1024
const DISK = 'rm'
const DISK_SIZE = 128 * MiB
/** fio's region: [0, 48 MiB); the recording writer's: 8 MiB of its own per case from 56 MiB on (4 KiB blocks). */
const FIO_REGION = ['--offset=0', '--size=48m'] as const
const WRITER_BLOCKS = (8 * MiB) / 4096
const writerRegion = (round: number) => ({
  first: ((56 + 8 * round) * MiB) / 4096,
  blocks: WRITER_BLOCKS,
  seed: round,
})
const WORLD = '192.168.78.100'

/** sha256 of `length` bytes at `offset` (both MiB multiples) of a file or, bypassing the page cache, a block device. */
function sha256Range(path: string, offset: number, length: number): string {
  const direct = path.startsWith('/dev/') ? ' iflag=direct' : ''
  const out = execFileSync('bash', [
    '-c',
    `dd if=${path} bs=1M skip=${offset / MiB} count=${length / MiB}${direct} status=none | sha256sum`,
  ])
  return out.toString().split(' ')[0]
}

describe('restart matrix: IOhyp and guest agent × SIGKILL and SIGTERM × idle and during writes', () => {
  let pair: VrioPair
  let guestNs: Netns
  let backing: string
  let uri: string
  let round = -1

  before(async () => {
    requireRoot()
    const t = directLink()
    worldOnBridge(t.a.ns, [`${WORLD}/24`])
    pair = new VrioPair(t.a, t.b)
    // Generous: a SIGKILLed daemon is restarted within a couple of seconds, never this late.
    pair.guestOptions = ['--io-timeout', '30']
    await pair.start()
    guestNs = t.b.ns
    backing = join(pair.dir, 'rm.img')
    sparseFile(backing, DISK_SIZE)
    const disk = await pair.createDisk(backing, DISK)
    uri = disk.nbd!
    await pair.createNic('vr1', '02:78:00:00:00:01', onBridge('vtr1'))
    ip(guestNs, ['addr', 'add', '192.168.78.1/24', 'dev', 'vr1'])
    await ping(5_000)
  })
  after(() => pair?.stop())

  /** The guest pings the world through its remote NIC; retried until `withinMs`. */
  async function ping(withinMs: number): Promise<void> {
    const deadline = Date.now() + withinMs
    for (;;) {
      try {
        await execAsync(guestNs, 'ping', ['-c', '1', '-W', '1', '-I', 'vr1', WORLD])
        return
      } catch (error) {
        if (Date.now() > deadline)
          throw new Error(`no traffic through the remote NIC within ${withinMs} ms: ${error}`)
      }
    }
  }

  /** The guest lists the disk with a block device again (after its agent restarted, or the IOhyp re-announced it). */
  async function diskBack(): Promise<GuestDiskInfo> {
    const deadline = Date.now() + 15_000
    for (;;) {
      const r = await pair.list<{ disks: GuestDiskInfo[] }>('blk', 'guest').catch(() => ({ disks: [] }))
      const d = r.disks.find((x) => x.name === DISK)
      if (d?.device) return d
      if (Date.now() > deadline) throw new Error(`the guest did not list disk ${DISK} with a device again`)
      await sleep(100)
    }
  }

  async function restart(daemon: 'iohyp' | 'guest'): Promise<void> {
    if (daemon === 'iohyp') {
      pair.startIohyp()
      await pair.iohyp.waitForLog('iohyp started')
    } else {
      pair.startGuest()
      await pair.guest.waitForLog('guest started')
    }
    await pair.waitConnected(15_000)
  }

  for (const daemon of ['iohyp', 'guest'] as const)
    for (const signal of ['SIGKILL', 'SIGTERM'] as const)
      for (const phase of ['idle', 'writes'] as const)
        it(`${daemon} ${signal} while ${phase === 'idle' ? 'idle' : 'fio and a recording writer run'}: acknowledged writes verify, the disk and the NIC work again`, async () => {
          round++
          const log = join(pair.dir, `writes-${round}.json`)
          const region = writerRegion(round)
          const proc = daemon === 'iohyp' ? pair.iohyp : pair.guest
          const before = (await diskBack()).device!
          const beforeFile = loopBackFile(before)
          assert.ok(beforeFile, `${before} is attached`)
          let job: ReturnType<typeof fio> | undefined
          let writer: ReturnType<typeof recordedWrites>
          if (phase === 'idle') {
            writer = recordedWrites(uri, log, { ...region, count: 3000 })
            const done = await writer.result
            assert.equal(done.error, null)
            await proc.stop(signal)
          } else {
            job = fio(uri, [...VERIFY_WRITES, ...FIO_REGION])
            writer = recordedWrites(uri, log, { ...region, seconds: 6 })
            // Stop the daemon only once writes are being acknowledged, then with more in flight.
            await settlesWithin(writer.firstAck, 'the recording writer’s first acknowledged write', 60_000)
            await sleep(300)
            await proc.stop(signal)
            await sleep(1000)
          }
          assert.ok(!proc.alive)
          await restart(daemon)

          // The IOhyp announces the disk again on the new session; only then is the export back.
          const disk = await diskBack()
          const written = await writer.result
          if (phase === 'writes') {
            const fioDone = await job!.result
            if (daemon === 'iohyp') {
              // The guest agent held the requests and re-sent them: neither client noticed.
              assert.equal(written.error, null, 'the writer saw no error')
              assert.equal(fioDone.code, 0, `fio failed: ${fioDone.stderr}`)
              assert.equal(fioDone.json?.jobs[0].error, 0)
            }
            assert.ok(written.acked > 0, 'writes were acknowledged before the stop')
          }
          const checked = await verifyRecordedWrites(uri, log)
          assert.equal(checked.acked > 0, true)

          // The agent's FUSE mounts (in its own mount namespace: `ip netns exec` gives it one).
          const mounts = readFileSync(`/proc/${pair.guest.child.pid}/mounts`, 'utf8')
            .split('\n')
            .filter((l) => l.includes(' fuse.vrio ') && l.includes(`${pair.runDir}/`))
          if (daemon === 'guest' && signal === 'SIGKILL') {
            // A killed agent's block device is taken over by the next one: the same loop device,
            // still on the FUSE connection the killed agent mounted (no new mount).
            assert.equal(disk.device, before, 'the same block device')
            assert.equal(mounts.length, 0, mounts.join('\n'))
          } else {
            // Kept by the agent (the IOhyp restarted) or attached anew after a clean stop: one
            // mount, and the old loop device detached (or reused for the new attachment).
            assert.equal(mounts.length, 1, mounts.join('\n'))
          }
          if (disk.device !== before)
            // The kernel detaches an autoclear loop device once its last user has closed it (the
            // device may then be taken anew for another file: tests run side by side).
            await waitUntil(() => loopBackFile(before) !== beforeFile, `${before} to be detached`, 30_000)
          // The attached block device is back and shows what the IOhyp's backing file holds.
          const [at, span] = [region.first * 4096, region.blocks * 4096]
          assert.equal(
            sha256Range(disk.device!, at, span),
            sha256Range(backing, at, span),
            'block device and backing file agree',
          )
          // The disk takes (and verifies) new writes, and the NIC passes traffic.
          const again = await fio(uri, [...VERIFY_WRITES, ...FIO_REGION, '--size=16m']).result
          assert.equal(again.code, 0, `fio after the restart failed: ${again.stderr}`)
          await ping(15_000)
          const nics = await pair.list<{ nics: GuestNicInfo[] }>('nic', 'guest')
          assert.deepEqual(
            nics.nics.map((n) => n.name),
            ['vr1'],
          )
          assert.ok(pair.iohyp.alive && pair.guest.alive)
        })
})
