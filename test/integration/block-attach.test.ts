import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import { VrioError } from '../../src/errors.ts'
import { FuseLoopDevice } from '../../src/guest/block-attach.ts'
import { requireRoot } from '../support/netns.ts'

/** Async: the FUSE file is served by this very process, whose event loop must keep running. */
const run = promisify(execFile)

/**
 * mount, and when it fails, the kernel's last words and the superblock's state in the error: a
 * refused mount here once meant the bytes the kernel had written did not come back.
 */
async function mount(args: string[]): Promise<void> {
  try {
    await run('mount', args)
  } catch (error) {
    const dev = args[args.length - 2] as string
    const dmesg = await run('dmesg').then((r) => r.stdout.trim().split('\n').slice(-8).join('\n'), String)
    const sb = await run('dumpe2fs', ['-h', dev]).then(
      (r) =>
        r.stdout
          .split('\n')
          .filter((l) => /state|features|Last (mount|write)/i.test(l))
          .join('\n'),
      (e) => String(e.stderr ?? e),
    )
    throw new Error(`${(error as Error).message}\n--- dmesg:\n${dmesg}\n--- dumpe2fs -h:\n${sb}`)
  }
}

describe("the agent's own exposure: a FUSE file served in-process under a loop device", () => {
  const dir = mkdtempSync(join(tmpdir(), 'vrio-fuseloop-'))
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('mkfs, mount, write, fsck clean; read-only re-attach reads the files and refuses writes; nothing left behind', async () => {
    requireRoot()
    const device = new MemoryDevice({
      size: 64 * 1024 * 1024,
      canFlush: true,
      canTrim: true,
      canWriteZeroes: true,
    })
    const mnt = join(dir, 'mnt')
    await run('mkdir', ['-p', mnt])
    let disk = await FuseLoopDevice.attach({ device, dir: join(dir, 'fuse') })
    try {
      assert.match(disk.device, /^\/dev\/loop\d+$/)
      const info = JSON.parse((await run('losetup', ['--json', '--list', disk.device])).stdout)
      assert.equal(info.loopdevices[0].dio, true, 'direct I/O is on')
      assert.equal(info.loopdevices[0]['back-file'], disk.file)
      await run('mkfs.ext4', ['-q', disk.device])
      await mount([disk.device, mnt])
      await run('bash', ['-c', `yes vrio | head -c 3000000 > ${mnt}/hello.txt`])
      await run('umount', [mnt])
      await run('e2fsck', ['-fn', disk.device]) // rejects unless clean
      const s = disk.stats()
      assert.ok(s.toJs > 0 && s.replyErrors === 0, JSON.stringify(s))
    } finally {
      await run('umount', [mnt]).catch(() => {})
      await disk.detach()
    }
    assert.equal((await run('losetup', ['-j', disk.file])).stdout.trim(), '')
    assert.doesNotMatch((await run('mount')).stdout, new RegExp(dir))
    disk = await FuseLoopDevice.attach({ device, dir: join(dir, 'fuse'), readOnly: true })
    try {
      await mount(['-o', 'ro', disk.device, mnt])
      assert.equal(
        (await run('sha256sum', [`${mnt}/hello.txt`])).stdout.split(' ')[0],
        (await run('bash', ['-c', 'yes vrio | head -c 3000000 | sha256sum'])).stdout.split(' ')[0],
      )
      await run('umount', [mnt])
      await assert.rejects(
        run('dd', ['if=/dev/zero', `of=${disk.device}`, 'bs=4k', 'count=1', 'oflag=direct']),
      )
    } finally {
      await run('umount', [mnt]).catch(() => {})
      await disk.detach()
    }
    assert.doesNotMatch((await run('mount')).stdout, new RegExp(dir))
  })
})

describe('a block request the device fails', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vrio-fusefail-'))
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('reaches the reader as EIO and is logged with its offset and the cause', async () => {
    requireRoot()
    const bad = 1024 * 1024
    class FailingDevice extends MemoryDevice {
      override read(offset: number, length: number) {
        if (offset <= bad && bad < offset + length)
          return Promise.reject(new VrioError('io-error', 'the backing said no'))
        return super.read(offset, length)
      }
    }
    const device = new FailingDevice({ size: 8 * 1024 * 1024 })
    const warnings: Record<string, unknown>[] = []
    const log = {
      debug() {},
      info() {},
      warn: (msg: string, fields?: Record<string, unknown>) => warnings.push({ msg, ...fields }),
      error() {},
    }
    const disk = await FuseLoopDevice.attach({ device, dir: join(dir, 'fuse'), log })
    try {
      // A good read first, then the failing block.
      await run('dd', [`if=${disk.device}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct'])
      assert.equal(warnings.length, 0)
      await assert.rejects(
        run('dd', [
          `if=${disk.device}`,
          'of=/dev/null',
          'bs=4k',
          'count=1',
          `skip=${bad / 4096}`,
          'iflag=direct',
        ]),
        /Input\/output error/,
      )
      const w = warnings.find((x) => x.msg === 'a block request failed')
      assert.ok(w, JSON.stringify(warnings))
      assert.equal(w.op, 'read')
      assert.equal(w.offset, bad)
      assert.equal(w.errno, 5)
      assert.match(String(w.error), /the backing said no/)
    } finally {
      await disk.detach()
    }
  })
})
