/**
 * The NBD server against real clients nobody here wrote: nbdinfo, qemu-img, qemu-io, nbdcopy,
 * fio's nbd engine and nbdsh (libnbd's Python shell, with its client-side checks switched off so
 * the server's own answers are what is seen). scripts/setup.sh installs them; a missing tool fails
 * the test rather than skipping it.
 *
 * The server runs in this process, so every tool runs asynchronously (a synchronous spawn would
 * block the event loop the server answers on).
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, openSync, readFileSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import type { BlockDevice } from '../../src/devices/blk/device.ts'
import { FileDevice } from '../../src/devices/blk/file-device.ts'
import { MemoryDevice } from '../../src/devices/blk/memory-device.ts'
import { NbdServer } from '../../src/devices/blk/nbd-server.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

const MiB = 1024 * 1024

interface ToolResult {
  status: number | null
  stdout: string
  stderr: string
}

/** Runs a tool asynchronously; fails the test (not skips it) when the tool is not installed. */
function tool(
  command: string,
  args: readonly string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? 60_000,
      env: options.env ?? process.env,
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s
    })
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr += s
    })
    child.on('error', (error: NodeJS.ErrnoException) =>
      reject(
        error.code === 'ENOENT'
          ? new Error(
              `${command} is not installed: run scripts/setup.sh as root (it installs the test tools)`,
            )
          : error,
      ),
    )
    child.on('close', (status) => resolve({ status, stdout, stderr }))
  })
}

async function ok(command: string, args: readonly string[], timeoutMs?: number): Promise<string> {
  const r = await tool(command, args, { timeoutMs })
  assert.equal(r.status, 0, `${command} ${args.join(' ')} failed (${r.status}):\n${r.stderr}${r.stdout}`)
  return r.stdout
}

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex')

/** Debian's python must come first for nbdsh (another python3 may shadow it in PATH). */
const nbdshEnv = { ...process.env, PATH: `/usr/bin:/bin:${process.env.PATH ?? ''}` }

describe('NBD server with real clients', () => {
  let tmp: TempDir
  let server: NbdServer
  let socket: string
  const devices = new Map<string, MemoryDevice>()
  const uri = (name: string) => `nbd+unix:///${name}?socket=${socket}`

  before(async () => {
    tmp = tempDir('vrio-nbd-io-')
    socket = tmp.path('nbd.sock')
    devices.set('convert', new MemoryDevice({ size: 64 * MiB }))
    devices.set('copy', new MemoryDevice({ size: 64 * MiB }))
    devices.set('io', new MemoryDevice({ size: 16 * MiB }))
    devices.set('fio', new MemoryDevice({ size: 64 * MiB }))
    devices.set('ro', new MemoryDevice({ size: 4 * MiB, readOnly: true }))
    devices.set('big', new MemoryDevice({ size: 2 ** 40, blockSize: 4096 }))
    server = new NbdServer({
      path: socket,
      lookup: (name): BlockDevice | undefined => devices.get(name),
      list: () => devices.keys(),
    })
    await server.listen()
  })

  after(async () => {
    await server.close()
    tmp.remove()
  })

  it('nbdinfo --json reports the size, block sizes and flags advertised', async () => {
    const info = JSON.parse(await ok('nbdinfo', ['--json', uri('big')]))
    assert.equal(info.protocol, 'newstyle-fixed')
    assert.equal(info.structured, true)
    const e = info.exports[0]
    assert.equal(e['export-name'], 'big')
    assert.equal(e['export-size'], 2 ** 40)
    assert.deepEqual(
      [e.block_size_minimum, e.block_size_preferred, e.block_size_maximum],
      [4096, 4096, 32 * MiB],
    )
    assert.deepEqual(
      {
        ro: e.is_read_only,
        flush: e.can_flush,
        fua: e.can_fua,
        trim: e.can_trim,
        zero: e.can_zero,
        df: e.can_df,
        multi: e.can_multi_conn,
        cache: e.can_cache,
        fastZero: e.can_fast_zero,
      },
      {
        ro: false,
        flush: true,
        fua: true,
        trim: true,
        zero: true,
        df: true,
        multi: true,
        cache: true,
        fastZero: false,
      },
    )
    assert.deepEqual(e.contexts, ['base:allocation'])

    const ro = JSON.parse(await ok('nbdinfo', ['--json', uri('ro')])).exports[0]
    assert.deepEqual([ro.is_read_only, ro.can_trim, ro.can_zero, ro.can_fua], [true, false, false, false])
  })

  it('nbdinfo --list lists every export', async () => {
    const list = JSON.parse(await ok('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${socket}`]))
    const names = list.exports.map((e: { 'export-name': string }) => e['export-name']).sort()
    assert.deepEqual(names, [...devices.keys()].sort())
  })

  it('refuses an unknown export name', async () => {
    const r = await tool('nbdinfo', [uri('nope')])
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, /No such file or directory|unknown/i)
    const q = await tool('qemu-img', ['info', uri('nope')])
    assert.notEqual(q.status, 0)
  })

  it('qemu-img convert: a 64 MiB random image goes in and comes back out identical', async () => {
    const image = randomBytes(64 * MiB)
    const input = tmp.path('in.raw')
    const output = tmp.path('out.raw')
    writeFileSync(input, image)
    await ok('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', input, uri('convert')], 120_000)
    assert.equal(
      sha256(await devices.get('convert')!.read(0, 64 * MiB)),
      sha256(image),
      'device holds the image',
    )
    await ok('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('convert'), output], 120_000)
    assert.equal(sha256(readFileSync(output)), sha256(image))
  })

  it('nbdcopy both ways', async () => {
    const image = randomBytes(64 * MiB)
    const input = tmp.path('copy-in.raw')
    const output = tmp.path('copy-out.raw')
    writeFileSync(input, image)
    await ok('nbdcopy', [input, uri('copy')], 120_000)
    assert.equal(sha256(await devices.get('copy')!.read(0, 64 * MiB)), sha256(image))
    await ok('nbdcopy', [uri('copy'), output], 120_000)
    assert.equal(sha256(readFileSync(output)), sha256(image))
  })

  it('qemu-io: pattern writes and verified reads, discard, write-zeroes', async () => {
    const before = server.stats().exports.io ?? { requests: { trim: 0, writeZeroes: 0 } }
    const out = await ok('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0xab 0 1M',
      '-c',
      'read -P 0xab 0 1M',
      '-c',
      'write -P 0xcd 1M 3M',
      '-c',
      'read -P 0xcd 1M 3M',
      '-c',
      'discard 0 64k',
      '-c',
      'write -z 1M 1M',
      '-c',
      'read -P 0 1M 1M',
      '-c',
      'write -z -u 2M 512k',
      '-c',
      'read -P 0 2M 512k',
      '-c',
      'read -P 0xcd 3M 1M',
      '-c',
      'flush',
      uri('io'),
    ])
    assert.doesNotMatch(out, /fail|error|mismatch/i, out)
    const io = server.stats().exports.io
    assert.ok(io.requests.trim > before.requests.trim, 'discard reached the server as TRIM')
    assert.ok(
      io.requests.writeZeroes >= before.requests.writeZeroes + 2,
      'write -z reached it as WRITE_ZEROES',
    )
    const d = devices.get('io')!
    assert.deepEqual(await d.read(1 * MiB, MiB), Buffer.alloc(MiB))
    assert.deepEqual(await d.read(3 * MiB, 4096), Buffer.alloc(4096, 0xcd))
  })

  it('fio (nbd engine): random 4k writes at queue depth 32 with crc32c verification, no errors', async () => {
    const json = tmp.path('fio.json')
    await ok(
      'fio',
      [
        '--name=verify',
        '--ioengine=nbd',
        `--uri=${uri('fio')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=32',
        '--size=64M',
        '--time_based',
        '--runtime=3',
        '--verify=crc32c',
        '--verify_backlog=4096',
        '--verify_fatal=1',
        // fio would otherwise leave a verify state file in the working directory.
        '--verify_state_save=0',
        '--output-format=json',
        `--output=${json}`,
      ],
      60_000,
    )
    const job = JSON.parse(readFileSync(json, 'utf8')).jobs[0]
    assert.equal(job.error, 0)
    assert.ok(job.write.io_bytes > 16 * MiB, `wrote only ${job.write.io_bytes} bytes`)
    assert.ok(job.read.io_bytes > 16 * MiB, `verified only ${job.read.io_bytes} bytes`)
    const stats = server.stats().exports.fio
    assert.equal(Object.keys(stats.errors).length, 0, JSON.stringify(stats.errors))
    assert.ok(stats.inflightHighWater > 1, 'requests were pipelined')
  })

  it('read-only export: qemu refuses to open it for writing; the server answers writes with EPERM', async () => {
    const q = await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 4k', uri('ro')])
    assert.match(q.stdout + q.stderr, /Permission denied|read-only/i)
    const r = await tool(
      'nbdsh',
      [
        '-u',
        uri('ro'),
        '-c',
        `
h.set_strict_mode(0)
def errnum(f):
    try:
        f()
        return 0
    except nbd.Error as e:
        return e.errnum
print(errnum(lambda: h.pwrite(b"x" * 4096, 0)))
print(errnum(lambda: h.trim(4096, 0)))
print(errnum(lambda: h.zero(4096, 0)))
print(errnum(lambda: h.pread(4096, 4 * 1024 * 1024)))
print(errnum(lambda: h.pread(4096, 0)))
`,
      ],
      { env: nbdshEnv },
    )
    assert.equal(r.status, 0, r.stderr)
    // EPERM, EPERM, EPERM, then EINVAL for a read past the end, and a good read.
    assert.deepEqual(r.stdout.trim().split('\n'), ['1', '1', '1', '22', '0'])
  })
})

/** Runs `command` (a shell line using $uri / $nbd) against nbdkit's file plugin serving `path`. */
function viaNbdkit(path: string, command: string, timeoutMs = 120_000): Promise<string> {
  return ok('nbdkit', ['-U', '-', '--exit-with-parent', 'file', path, '--run', command], timeoutMs)
}

describe('NBD server over real files, next to nbdkit on the same files', () => {
  let tmp: TempDir
  let server: NbdServer
  let socket: string
  const files = new Map<string, FileDevice>()
  const uri = (name: string) => `nbd+unix:///${name}?socket=${socket}`
  const KiB = 1024

  before(async () => {
    tmp = tempDir('vrio-nbd-files-')
    socket = tmp.path('nbd.sock')
    // Sparse: data here and there (one run not a multiple of 64 KiB), holes elsewhere.
    const sparse = tmp.path('sparse.img')
    const fd = openSync(sparse, 'w')
    for (const [at, n] of [
      [MiB, 64 * KiB],
      [5 * MiB + 4096, 12 * KiB],
      [40 * MiB, 3 * MiB],
    ])
      writeSync(fd, randomBytes(n), 0, n, at)
    closeSync(fd)
    truncateSync(sparse, 64 * MiB)
    files.set('sparse', await FileDevice.open(sparse))
    // Odd-sized: not a multiple of 512.
    writeFileSync(tmp.path('odd.img'), randomBytes(3 * MiB + 1000))
    files.set('odd', await FileDevice.open(tmp.path('odd.img')))
    server = new NbdServer({ path: socket, lookup: (name) => files.get(name) })
    await server.listen()
  })

  after(async () => {
    await server.close()
    for (const f of files.values()) await f.close()
    tmp.remove()
  })

  it('nbdinfo --map and qemu-img map list the holes of a sparse file as with nbdkit', async () => {
    const path = tmp.path('sparse.img')
    const ours = JSON.parse(await ok('nbdinfo', ['--map', '--json', uri('sparse')]))
    const theirs = JSON.parse(await viaNbdkit(path, 'nbdinfo --map --json "$uri"'))
    assert.deepEqual(ours, theirs)
    assert.ok(ours.length >= 7, `holes and data: ${JSON.stringify(ours)}`)
    assert.ok(
      ours.some((e: { type: number }) => e.type === 3),
      'holes are reported as hole,zero',
    )
    const qOurs = JSON.parse(await ok('qemu-img', ['map', '--output=json', '-f', 'raw', uri('sparse')]))
    const qTheirs = JSON.parse(await viaNbdkit(path, 'qemu-img map --output=json -f raw "$nbd"'))
    assert.deepEqual(
      qOurs.map((e: Record<string, unknown>) => [e.start, e.length, e.zero, e.data]),
      qTheirs.map((e: Record<string, unknown>) => [e.start, e.length, e.zero, e.data]),
    )
  })

  it('an odd-sized file: nbdcopy copies it exactly, qemu-img convert as it does from nbdkit', async () => {
    const original = readFileSync(tmp.path('odd.img'))
    const info = JSON.parse(await ok('nbdinfo', ['--json', uri('odd')])).exports[0]
    assert.equal(info['export-size'], original.length)
    assert.equal(info.block_size_minimum, 1)
    await ok('nbdcopy', [uri('odd'), tmp.path('odd-nbdcopy.img')])
    assert.ok(readFileSync(tmp.path('odd-nbdcopy.img')).equals(original), 'nbdcopy: identical')
    await ok('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('odd'), tmp.path('odd-qemu.img')])
    await viaNbdkit(
      tmp.path('odd.img'),
      `qemu-img convert -f raw -O raw "$nbd" ${tmp.path('odd-qemu-nbdkit.img')}`,
    )
    const q = readFileSync(tmp.path('odd-qemu.img'))
    // qemu's block layer counts whole 512-byte sectors: it pads the copy with zeros, from any server.
    assert.ok(q.equals(readFileSync(tmp.path('odd-qemu-nbdkit.img'))), 'qemu-img: as from nbdkit')
    assert.ok(q.subarray(0, original.length).equals(original), 'qemu-img: the whole file, tail included')
    assert.ok(q.subarray(original.length).equals(Buffer.alloc(q.length - original.length)))
    // And back in: an odd tail written through the export lands in the file.
    const tail = randomBytes(1000)
    writeFileSync(tmp.path('tail.img'), Buffer.concat([original.subarray(0, 3 * MiB), tail]))
    await ok('nbdcopy', [tmp.path('tail.img'), uri('odd')])
    assert.ok(
      readFileSync(tmp.path('odd.img'))
        .subarray(3 * MiB)
        .equals(tail),
    )
  })

  it('nbdcopy skips the holes: it reads only the data of a sparse file', async () => {
    const before = files.get('sparse')!.stats.reads
    const beforeBytes = server.stats().exports.sparse?.bytesRead ?? 0
    await ok('nbdcopy', [uri('sparse'), tmp.path('sparse-copy.img')])
    assert.ok(readFileSync(tmp.path('sparse-copy.img')).equals(readFileSync(tmp.path('sparse.img'))))
    const read = server.stats().exports.sparse.bytesRead - beforeBytes
    assert.ok(read <= 4 * MiB + 256 * KiB, `nbdcopy read ${read} bytes of a file with ~3.1 MiB of data`)
    assert.ok(files.get('sparse')!.stats.reads > before)
  })
})
