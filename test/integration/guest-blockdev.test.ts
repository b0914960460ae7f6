/**
 * The guest's block device (the agent's own FUSE file under a loop device with direct I/O) over
 * a real IOhyp and veth: a filesystem on it, fstrim reaching the IOhyp's backing file, fio with
 * verify at queue depth 32, and a killed agent's device taken over. Three times: served over FUSE's
 * io_uring queues (VRIO_FUSE_URING=1: the agent turns fuse's enable_uring on), on /dev/fuse with
 * read/writev on the agent's event loop (the default), and on /dev/fuse from a reader thread
 * (VRIO_FUSE_READER=thread).
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { GuestDiskInfo } from '../../src/control/api.ts'
import { sparseFile, started } from '../support/block-io.ts'
import { killDaemons, vrioAsync } from '../support/daemons.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink } from '../support/topology.ts'
import { VrioPair } from '../support/vrio-pair.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const MiB = 1024 * 1024
const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex')

/** The kernel log's last lines of FUSE and loop devices (what a failure message shows). */
function kernelLines(): string {
  try {
    const lines = execFileSync('dmesg', { encoding: 'utf8' }).split('\n')
    return lines
      .filter((l) => /fuse|loop\d|I\/O error/i.test(l) && !/commit_id \d+ not found/.test(l))
      .slice(-20)
      .join('\n')
  } catch (error) {
    return `(dmesg: ${(error as Error).message})`
  }
}

for (const mode of ['io_uring', 'read/writev', 'reader thread'] as const)
  describe(`the guest's block device (FUSE + loop, ${mode}) over a veth`, () => {
    let pair: VrioPair
    let backing: string
    let device: string
    let mnt: string

    before(async () => {
      requireRoot()
      // The guest agents started from here inherit it (a restarted one too).
      if (mode === 'io_uring') process.env.VRIO_FUSE_URING = '1'
      else delete process.env.VRIO_FUSE_URING
      if (mode === 'reader thread') process.env.VRIO_FUSE_READER = 'thread'
      else delete process.env.VRIO_FUSE_READER
      const t = directLink()
      pair = new VrioPair(t.a, t.b)
      await pair.start()
      backing = join(pair.dir, 'bd.img')
      sparseFile(backing, 512 * MiB)
      await pair.createDisk(backing, 'bd')
      const deadline = Date.now() + 15_000
      for (;;) {
        const r = await pair.list<{ disks: GuestDiskInfo[] }>('blk', 'guest').catch(() => ({ disks: [] }))
        const d = r.disks.find((x) => x.name === 'bd')
        if (d?.device) {
          device = d.device
          break
        }
        if (Date.now() > deadline) throw new Error('the guest did not list the disk with a device')
        await sleep(100)
      }
      mnt = join(pair.dir, 'mnt')
      mkdirSync(mnt)
    })
    after(async () => {
      await pair?.stop()
      delete process.env.VRIO_FUSE_URING
    })

    /**
     * Runs a bash script in a mount namespace of its own: what it mounts is invisible to everyone
     * else and goes when it exits (also on failure). A mount in the test's own namespace would be
     * copied into every `ip netns exec` process started meanwhile (a restarted daemon, another test)
     * and stay mounted there, writing to the device behind the test's back.
     */
    const privately = (script: string) =>
      started('unshare', ['--mount', '--propagation', 'private', 'bash', '-euo', 'pipefail', '-c', script])

    async function privatelyOk(script: string): Promise<string> {
      const r = await privately(script).result
      assert.equal(r.code, 0, `script failed: ${r.stderr}`)
      return r.stdout
    }

    /** What `vrio status` says of the disk's block device. */
    async function statusLine(): Promise<string> {
      const r = await vrioAsync(['status', '--control', pair.sock('guest')])
      assert.equal(r.status, 0, r.stderr)
      return r.stdout.split('\n').find((l) => /^disk bd\b/.test(l)) ?? ''
    }

    it(`serves it over ${mode === 'io_uring' ? 'FUSE’s io_uring queues' : `/dev/fuse read/writev${mode === 'reader thread' ? ' from a reader thread' : ''}`}, as vrio status and the log say`, async () => {
      const line = await statusLine()
      assert.ok(line.includes(device), line)
      if (mode === 'io_uring') assert.match(line, /FUSE over io_uring, \d+ queues?/)
      else {
        const where = mode === 'reader thread' ? 'on a reader thread' : 'on the event loop'
        assert.ok(
          line.includes(
            `FUSE read/writev on /dev/fuse ${where} (the default; VRIO_FUSE_URING=1 for io_uring)`,
          ),
          line,
        )
      }
      const attached = pair.guest.logs.find((l) => l.includes('"msg":"disk attached"')) ?? ''
      assert.ok(attached.includes(mode === 'io_uring' ? 'FUSE over io_uring' : 'FUSE read/writev'), attached)
    })

    it('is a loop device with direct I/O on the agent’s FUSE file', () => {
      assert.match(device, /^\/dev\/loop\d+$/)
      const info = JSON.parse(execFileSync('losetup', ['--json', '--list', device], { encoding: 'utf8' }))
      assert.equal(info.loopdevices[0].dio, true, 'direct I/O is on')
      assert.match(info.loopdevices[0]['back-file'], /\/disks\/bd\/disk$/)
      assert.equal(Number(execFileSync('blockdev', ['--getsize64', device], { encoding: 'utf8' })), 512 * MiB)
    })

    it('mkfs.ext4, mount, write and verify files (after a remount), e2fsck -fn clean', async () => {
      const src = join(pair.dir, 'files')
      mkdirSync(src)
      const want = new Map<string, string>()
      for (let i = 0; i < 24; i++) {
        const data = randomBytes((i % 6) * MiB + 4096 * (i + 1) + 123)
        writeFileSync(join(src, `f${i}`), data)
        want.set(`f${i}`, sha256(data))
      }
      // A fresh mount reads everything back through the device (nothing from the page cache).
      const out = await privatelyOk(`
      mkfs.ext4 -q -F ${device}
      mount ${device} ${mnt}
      cp ${src}/* ${mnt}/
      umount ${mnt}
      mount ${device} ${mnt}
      cd ${mnt} && sha256sum f*
      cd / && umount ${mnt}`)
      const got = new Map(
        out
          .trim()
          .split('\n')
          .map((l) => l.split(/\s+/).reverse() as [string, string]),
      )
      assert.deepEqual(got, want)
      execFileSync('e2fsck', ['-fn', device], { stdio: 'ignore' }) // throws unless clean
    })

    it('fstrim frees space in the IOhyp’s backing file', async () => {
      const out = await privatelyOk(`
      mkfs.ext4 -q -F -E nodiscard ${device}
      mount ${device} ${mnt}
      head -c ${96 * MiB} /dev/urandom > ${mnt}/big
      sync -f ${mnt}/big
      echo full $(stat -c %b ${backing})
      rm ${mnt}/big
      sync -f ${mnt}
      fstrim ${mnt}
      echo trimmed $(stat -c %b ${backing})
      umount ${mnt}`)
      const blocks = (what: string) => Number(new RegExp(`${what} (\\d+)`).exec(out)?.[1]) * 512
      const [full, trimmed] = [blocks('full'), blocks('trimmed')]
      assert.ok(full >= 96 * MiB, `the backing file holds the data (${full} bytes allocated)`)
      assert.ok(
        full - trimmed >= 64 * MiB,
        `fstrim freed ${(full - trimmed) / MiB} MiB of the backing file (${full} -> ${trimmed} bytes allocated)`,
      )
      execFileSync('e2fsck', ['-fn', device], { stdio: 'ignore' })
    })

    // The default path for 30 s; the opt-in ring and the reader thread for 10 s (CI time).
    const seconds = mode === 'read/writev' ? 30 : 10
    it(`fio libaio direct randrw with crc32c verify, QD32, ${seconds} s: zero errors`, async () => {
      const job = started('fio', [
        '--name=verify',
        `--filename=${device}`,
        '--ioengine=libaio',
        '--direct=1',
        '--rw=randrw',
        '--bsrange=4k-256k',
        '--iodepth=32',
        '--size=256m',
        '--time_based',
        `--runtime=${seconds}`,
        '--verify=crc32c',
        '--verify_backlog=512',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--output-format=json',
      ])
      const r = await job.result
      assert.equal(r.code, 0, `fio failed: ${r.stderr}`)
      const report = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')))
      const j = report.jobs[0]
      assert.equal(j.error, 0)
      assert.ok(j.write.io_bytes > 0 && j.read.io_bytes > 0, 'both reads and writes ran')
    })

    // Over io_uring (opt-in) the kernel fails (ECANCELED) a request it hands to the killed agent's
    // ring before that ring is torn down, now and then under load (docs/operations.md): the test
    // runs and reports as a todo there; on /dev/fuse (the default) it must pass.
    const takeoverTodo =
      mode === 'io_uring'
        ? 'over io_uring the kernel fails a request it hands to the dead agent’s ring (under load)'
        : false
    it('a killed agent: the next one takes the same block device over, and a mounted filesystem being written carries on', {
      todo: takeoverTodo,
    }, async () => {
      const src = join(pair.dir, 'src.bin')
      const data = randomBytes(48 * MiB)
      writeFileSync(src, data)
      const mark = join(pair.dir, 'dd-started')
      // Direct I/O, so the writes are on their way to the device when the agent dies, not in the page cache.
      const job = privately(`
      mkfs.ext4 -q -F ${device}
      mount ${device} ${mnt}
      touch ${mark}
      dd if=${src} of=${mnt}/copy bs=256k oflag=direct conv=fsync status=none
      umount ${mnt}
      mount ${device} ${mnt}
      sha256sum ${mnt}/copy
      umount ${mnt}`)
      const deadline = Date.now() + 15_000
      while (!existsSync(mark) && Date.now() < deadline) await sleep(20)
      await sleep(300)
      const killed = pair.guest.logs
      await pair.guest.stop('SIGKILL')
      pair.startGuest()
      await pair.guest.waitForLog('guest started')
      await pair.waitConnected(15_000)
      // A request the killed agent had taken and the next one never answers would hang it for good.
      // (The timer is cancelled once the user is done: left running, it kept the file's process alive.)
      const waiting = new AbortController()
      const hung = sleep(90_000, undefined, { signal: waiting.signal }).then(() => {
        job.kill('SIGKILL')
        throw new Error(`the filesystem's user hangs; the agent's log:\n${pair.guest.logs.join('\n')}`)
      })
      hung.catch(() => {})
      const r = await Promise.race([job.result, hung]).finally(() => waiting.abort())
      assert.equal(
        r.code,
        0,
        `the filesystem's user failed: ${r.stderr}\nthe killed agent's warnings:\n${killed.filter((l) => /"level":"(warn|error)"/.test(l)).join('\n')}\nthe next agent's log:\n${pair.guest.logs.join('\n')}\nthe kernel's last FUSE and loop lines:\n${kernelLines()}`,
      )
      assert.equal(r.stdout.split(' ')[0], sha256(data))
      await pair.guest.waitForLog('took over the block device a previous agent left')
      const d = (await pair.list<{ disks: GuestDiskInfo[] }>('blk', 'guest')).disks.find(
        (x) => x.name === 'bd',
      )
      assert.equal(d?.device, device, 'the same block device')
      // Over io_uring the new agent maps the ring memory where the killed one had it (the holder
      // kept it) and serves what the killed one had taken.
      const line = await statusLine()
      if (mode === 'io_uring') assert.match(line, /FUSE over io_uring, \d+ queues? \(taken over, \d+ request/)
      else assert.match(line, /FUSE read\/writev/)
      execFileSync('e2fsck', ['-fn', device], { stdio: 'ignore' })
    })
  })
