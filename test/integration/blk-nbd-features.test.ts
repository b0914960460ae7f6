/**
 * What the guest's NBD export offers beyond reads and writes, end to end through the two daemons
 * and the channel (issue 17): base:allocation (holes mapped on the IOhyp's backing file, carried
 * by the Extents op), so nbdinfo --map and nbdcopy see them as nbdkit's file plugin does on the
 * same file; and backings whose size is not a multiple of 512.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { ListGuestsResponse } from '../../src/control/api.ts'
import { sparseFile } from '../support/block-io.ts'
import { killDaemons } from '../support/daemons.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink, type Topology } from '../support/topology.ts'
import { VrioPair } from '../support/vrio-pair.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

/** Runs a tool without blocking the event loop; its stdout, or a failed assertion with its stderr. */
function run(command: string, args: readonly string[], timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    child.on('error', reject)
    child.on('close', (status) =>
      status === 0
        ? resolve(stdout)
        : reject(new Error(`${command} ${args.join(' ')} exited ${status}:\n${stderr}${stdout}`)),
    )
  })
}

/** `command` (a shell line using $uri / $nbd) against nbdkit's file plugin serving `path`. */
function viaNbdkit(path: string, command: string): Promise<string> {
  return run('nbdkit', ['-U', '-', '--exit-with-parent', 'file', path, '--run', command])
}

/** Writes random data at each (offset, length) of an existing file. */
function scatter(path: string, runs: readonly [number, number][]): void {
  const fd = openSync(path, 'r+')
  for (const [at, n] of runs) writeSync(fd, randomBytes(n), 0, n, at)
  closeSync(fd)
}

/** Whether two files hold the same bytes, read 16 MiB at a time. */
function sameContent(a: string, b: string): boolean {
  const fa = openSync(a, 'r')
  const fb = openSync(b, 'r')
  const ba = Buffer.alloc(16 * MiB)
  const bb = Buffer.alloc(16 * MiB)
  try {
    for (let at = 0; ; at += ba.length) {
      const na = readSync(fa, ba, 0, ba.length, at)
      const nb = readSync(fb, bb, 0, bb.length, at)
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false
      if (na === 0) return true
    }
  } finally {
    closeSync(fa)
    closeSync(fb)
  }
}

describe('NBD export features through the channel', () => {
  let t: Topology
  let pair: VrioPair
  before(async () => {
    requireRoot()
    t = directLink()
    pair = new VrioPair(t.a, t.b)
    await pair.start()
  })
  after(() => pair?.stop())

  /** Bytes the IOhyp's channel to the guest has carried, both ways. */
  const channelBytes = async (): Promise<number> => {
    const g = (await pair.list<ListGuestsResponse>('guests')).guests[0]
    return g.bytesIn + g.bytesOut
  }

  it('nbdinfo --map on a sparse disk lists its holes as nbdkit (file plugin) does on the same file', async () => {
    const backing = join(pair.dir, 'map.img')
    sparseFile(backing, 256 * MiB)
    scatter(backing, [
      [0, 64 * KiB],
      [3 * MiB, 4 * KiB],
      [17 * MiB + 8 * KiB, 1 * MiB],
      [100 * MiB, 12 * KiB],
      [200 * MiB, 2 * MiB],
    ])
    const disk = await pair.createDisk(backing, 'map')
    const ours = JSON.parse(await run('nbdinfo', ['--map', '--json', disk.nbd!]))
    const theirs = JSON.parse(await viaNbdkit(backing, 'nbdinfo --map --json "$uri"'))
    assert.deepEqual(ours, theirs)
    assert.ok(
      ours.filter((e: { type: number }) => e.type === 3).length >= 5,
      `holes listed as hole,zero: ${JSON.stringify(ours)}`,
    )
    await pair.removeDisk('map')
  })

  it('nbdcopy (and qemu-img convert) of a 1 GiB sparse disk with 4 MiB of data move less than 64 MiB over the channel', async (t) => {
    const backing = join(pair.dir, 'big.img')
    const out = join(pair.dir, 'big-copy.img')
    sparseFile(backing, GiB)
    // 4 MiB of data in 16 runs of 256 KiB spread over the disk.
    scatter(
      backing,
      Array.from({ length: 16 }, (_, i) => [i * 64 * MiB + 5 * MiB, 256 * KiB] as [number, number]),
    )
    const disk = await pair.createDisk(backing, 'big')
    assert.equal(disk.size, GiB)
    const before = await channelBytes()
    await run('nbdcopy', [disk.nbd!, out])
    const moved = (await channelBytes()) - before
    t.diagnostic(`nbdcopy of 1 GiB with 4 MiB of data: ${moved} bytes over the channel`)
    assert.ok(sameContent(out, backing), 'the copy equals the backing file')
    assert.ok(moved < 64 * MiB, `the copy moved ${(moved / MiB).toFixed(1)} MiB over the channel`)
    assert.ok(moved > 4 * MiB, `the data itself crossed (${moved} bytes)`)
    // qemu-img convert skips the holes too.
    const start = await channelBytes()
    const qemuOut = join(pair.dir, 'big-qemu.img')
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', disk.nbd!, qemuOut])
    const byQemu = (await channelBytes()) - start
    t.diagnostic(`qemu-img convert of the same disk: ${byQemu} bytes over the channel`)
    assert.ok(sameContent(qemuOut, backing), 'the qemu-img copy equals the backing file')
    assert.ok(byQemu < 64 * MiB, `qemu-img convert moved ${(byQemu / MiB).toFixed(1)} MiB over the channel`)
    await pair.removeDisk('big')
  })

  it('an encrypted disk over a sparse backing: nbdinfo --map reports data everywhere, never a hole', async () => {
    const backing = join(pair.dir, 'crypt.img')
    const key = join(pair.dir, 'crypt.key')
    writeFileSync(key, randomBytes(64), { mode: 0o600 })
    sparseFile(backing, 64 * MiB)
    scatter(backing, [[MiB, 64 * KiB]])
    const disk = await pair.createDisk(backing, 'crypt', ['--encrypt', 'plain', '--key-file', key])
    assert.equal(disk.encryption?.kind, 'plain')
    // The holes of the file decrypt to noise: reporting them as zeros would lose that data.
    const map = JSON.parse(await run('nbdinfo', ['--map', '--json', disk.nbd!]))
    assert.deepEqual(map, [{ offset: 0, length: 64 * MiB, type: 0, description: 'data' }])
    await pair.removeDisk('crypt')
  })

  it('an odd-sized backing: nbdcopy copies it exactly, qemu-img convert as from nbdkit', async () => {
    const backing = join(pair.dir, 'odd.img')
    const size = 5 * MiB + 777
    writeFileSync(backing, randomBytes(size))
    const disk = await pair.createDisk(backing, 'odd')
    assert.equal(disk.size, size)
    const info = JSON.parse(await run('nbdinfo', ['--json', disk.nbd!])).exports[0]
    assert.deepEqual([info['export-size'], info.block_size_minimum], [size, 1])
    const nbdcopyOut = join(pair.dir, 'odd-nbdcopy.img')
    await run('nbdcopy', [disk.nbd!, nbdcopyOut])
    assert.ok(sameContent(nbdcopyOut, backing), 'nbdcopy: identical to the backing file')
    const qemuOut = join(pair.dir, 'odd-qemu.img')
    const qemuNbdkit = join(pair.dir, 'odd-qemu-nbdkit.img')
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', disk.nbd!, qemuOut])
    await viaNbdkit(backing, `qemu-img convert -f raw -O raw "$nbd" ${qemuNbdkit}`)
    // qemu counts whole 512-byte sectors: from any server its copy is the file plus zero padding.
    assert.ok(sameContent(qemuOut, qemuNbdkit), 'qemu-img: the same copy as from nbdkit')
    const q = readFileSync(qemuOut)
    assert.ok(q.subarray(0, size).equals(readFileSync(backing)), 'qemu-img: every byte, the tail too')
    // The tail can be written, too.
    const tail = randomBytes(777)
    const src = join(pair.dir, 'odd-src.img')
    writeFileSync(src, Buffer.concat([readFileSync(backing).subarray(0, 5 * MiB), tail]))
    await run('nbdcopy', [src, disk.nbd!])
    assert.ok(
      readFileSync(backing)
        .subarray(5 * MiB)
        .equals(tail),
      'the tail written through the export',
    )
    await pair.removeDisk('odd')
  })
})
