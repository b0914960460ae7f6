/** Load and checks on remote disks for integration tests: fio jobs, and writes whose acknowledgements are recorded. */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { closeSync, openSync, writeSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** A sparse file of `size` bytes (a fresh backing image). */
export function sparseFile(path: string, size: number): void {
  const fd = openSync(path, 'w')
  writeSync(fd, Buffer.alloc(1), 0, 1, size - 1)
  closeSync(fd)
}

/** The file a loop device is attached to, or undefined when it is not attached. */
export function loopBackFile(device: string): string | undefined {
  const { loopdevices } = JSON.parse(
    execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8' }) || '{}',
  ) as {
    loopdevices?: { name: string; 'back-file': string | null }[]
  }
  return loopdevices?.find((l) => l.name === device)?.['back-file'] ?? undefined
}

export interface Finished {
  code: number | null
  stdout: string
  stderr: string
}

/** Spawns a command and collects its output; `result` settles when it exits. */
export function started(cmd: string, args: readonly string[]): ChildProcess & { result: Promise<Finished> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }) as ChildProcess & {
    result: Promise<Finished>
  }
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d) => (stdout += d))
  child.stderr?.on('data', (d) => (stderr += d))
  child.result = new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })))
  return child
}

export interface FioResult extends Finished {
  /** fio's JSON report, when it printed one. */
  json: { jobs: { error: number; verify_errors?: number }[] } | undefined
}

/** fio with its nbd engine against `uri`; `result` has the JSON report. */
export function fio(
  uri: string,
  args: readonly string[],
): { child: ChildProcess; result: Promise<FioResult> } {
  const child = started('fio', [
    '--name=vrio',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--output-format=json',
    ...args,
  ])
  const result = child.result.then((r) => {
    let json: FioResult['json']
    try {
      json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')))
    } catch {
      json = undefined
    }
    return { ...r, json }
  })
  return { child, result }
}

/** Random writes with crc32c verify, queue depth 32: the data checks itself when the job reads it back. */
export const VERIFY_WRITES = [
  '--rw=randwrite',
  '--bs=16k',
  '--iodepth=32',
  '--verify=crc32c',
  '--do_verify=1',
  '--verify_fatal=1',
  '--verify_state_save=0',
] as const

/** Debian's python3, which has python3-libnbd. */
const PYTHON = '/usr/bin/python3'
/** The script lives beside this file's source; tests run from dist/test/support. */
const WRITER = fileURLToPath(new URL('../../../test/support/nbd-writer.py', import.meta.url))

export interface WriterOptions {
  /** First block and number of blocks of the region written (4 KiB blocks). */
  first: number
  blocks: number
  seed: number
  /** Stop after this many writes, or after this many seconds (or at the first error). */
  count?: number
  seconds?: number
  qd?: number
}

/**
 * Random self-describing 4 KiB writes to an NBD export, recording which ones were acknowledged in
 * `log` (see test/support/nbd-writer.py); `result` tells how many were sent and acknowledged, and
 * the error that stopped it, if any.
 */
export function recordedWrites(
  uri: string,
  log: string,
  o: WriterOptions,
): {
  child: ChildProcess
  result: Promise<{ sent: number; acked: number; error: string | null }>
  /** Settles when the first write is acknowledged (or the writer ends without one). */
  firstAck: Promise<boolean>
} {
  const child = started(PYTHON, [
    WRITER,
    'write',
    uri,
    log,
    '--first',
    String(o.first),
    '--blocks',
    String(o.blocks),
    '--seed',
    String(o.seed),
    '--qd',
    String(o.qd ?? 16),
    ...(o.count ? ['--count', String(o.count)] : []),
    ...(o.seconds ? ['--seconds', String(o.seconds)] : []),
  ])
  const result = child.result.then((r) => {
    if (r.code !== 0) throw new Error(`nbd-writer failed (${r.code}): ${r.stderr}`)
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '')
  })
  const firstAck = new Promise<boolean>((resolve) => {
    let seen = ''
    child.stderr?.on('data', (d) => {
      seen += d
      if (seen.includes('first-ack')) resolve(true)
    })
    child.on('close', () => resolve(false))
  })
  return { child, result, firstAck }
}

/** Reads the region back through `uri` and checks it against `log`; rejects with the bad blocks. */
export async function verifyRecordedWrites(
  uri: string,
  log: string,
): Promise<{ blocks: number; acked: number }> {
  const r = await started(PYTHON, [WRITER, 'verify', uri, log]).result
  if (r.code !== 0)
    throw new Error(`acknowledged writes do not verify through ${uri}: ${r.stdout}${r.stderr}`)
  return JSON.parse(r.stdout.trim())
}
