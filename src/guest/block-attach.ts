import { execFile, spawn } from 'node:child_process'
import { closeSync } from 'node:fs'
import { mkdir, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import type { Logger } from '../daemon/log.ts'
import type { BlockDevice } from '../devices/blk/device.ts'
import { VrioError } from '../errors.ts'
import { type FuseNativeStats, native } from '../io/native.ts'
import { FuseDiskServer, type FuseFailure } from './fuse-server.ts'

const run = promisify(execFile)

/**
 * A remote disk shown to the guest as a kernel block device. How it is done is one choice behind
 * this interface (see docs/architecture.md, "Exposing a disk as a block device"): today a FUSE
 * file served by the agent itself under a loop device with direct I/O (FuseLoopDevice); ublk or
 * the kernel NBD client over netlink would be other implementations.
 */
export interface BlockExposure {
  /** The block device, e.g. /dev/loop3. */
  readonly device: string
  /** How its requests reach the agent, for logs and `vrio status` (e.g. `FUSE over io_uring, 2 queues`). */
  io(): string
  /** Ends the exposure: the block device goes, then what serves it. Idempotent. */
  detach(): Promise<void>
}

export interface ExposeOptions {
  /** The disk (the agent's RemoteBlockDevice, the object its NBD export serves too). */
  device: BlockDevice
  /** A directory of our own for the exposure (created; removed on detach). */
  dir: string
  readOnly?: boolean
  /** Where failed block requests are told (the first few, then how many more). */
  log?: Logger
}

/** Shows `o.device` as a block device (FUSE + loop). */
export function exposeBlockDevice(o: ExposeOptions): Promise<BlockExposure> {
  return FuseLoopDevice.attach(o)
}

const URING_PARAM = '/sys/module/fuse/parameters/enable_uring'

/**
 * Whether the next FUSE mount may use io_uring: only with VRIO_FUSE_URING=1 (measured here it is
 * not faster than read/writev, and a request the kernel hands over as an agent is killed is lost
 * on the ring, where /dev/fuse resends it: docs/operations.md); then fuse's `enable_uring` module
 * parameter (Linux 6.14+), turned on when it is off and we may (root). Turning it on changes
 * nothing for other FUSE servers: each one asks for the ring at INIT.
 */
async function fuseUringChoice(): Promise<{ uring: boolean; why: string }> {
  if (process.env.VRIO_FUSE_URING !== '1')
    return { uring: false, why: 'the default; VRIO_FUSE_URING=1 for io_uring' }
  const now = (await readFile(URING_PARAM, 'utf8').catch(() => '')).trim()
  if (now === '') return { uring: false, why: 'this kernel has no FUSE over io_uring' }
  if (now === 'Y') return { uring: true, why: '' }
  try {
    await writeFile(URING_PARAM, 'Y')
    return { uring: true, why: '' }
  } catch (error) {
    return { uring: false, why: `could not turn on ${URING_PARAM}: ${(error as Error).message}` }
  }
}

/**
 * Where the agent reads /dev/fuse: on its event loop (the default: no thread hand-off per
 * request), or with VRIO_FUSE_READER=thread on a reader thread (the earlier design, kept for A/B).
 */
function fuseReader(): 'loop' | 'thread' {
  return process.env.VRIO_FUSE_READER === 'thread' ? 'thread' : 'loop'
}

/** Failed block requests logged one by one per exposure; after them, one line per 1000. */
const FAILURES_LOGGED = 8

/** Tells `log` of the block requests the device failed: the first few, then every so many. */
function failureLog(log: Logger | undefined): ((f: FuseFailure) => void) | undefined {
  if (!log) return undefined
  let failed = 0
  return (f) => {
    failed++
    if (failed > FAILURES_LOGGED && failed % 1000 !== 0) return
    log.warn('a block request failed', {
      op: f.op,
      offset: f.offset,
      length: f.length,
      errno: f.errno,
      error: (f.error as Error)?.message ?? String(f.error),
      failed,
      ...(failed === FAILURES_LOGGED && { note: 'from here on, one line every 1000 failures' }),
    })
  }
}

/** What `BlockExposure.io()` says of a FUSE server. */
function describeFuseIo(s: FuseNativeStats, why: string): string {
  if (s.transport === 'io_uring') {
    const notes = [] as string[]
    if (s.uringErrno) notes.push(`some entries failed: errno ${s.uringErrno}`)
    if (s.adopted)
      notes.push(
        s.ringRecovered
          ? `taken over, ${s.ringResumed} request(s) the previous agent left served again`
          : 'taken over without the previous ring memory: requests it had taken are lost',
      )
    return `FUSE over io_uring, ${s.queues} queue${s.queues === 1 ? '' : 's'}${notes.length ? ` (${notes.join('; ')})` : ''}`
  }
  const reason = why || (s.uringErrno ? `io_uring failed: errno ${s.uringErrno}` : '')
  const where = s.reader === 'loop' ? 'on the event loop' : 'on a reader thread'
  return `FUSE read/writev on /dev/fuse ${where}${reason ? ` (${reason})` : ''}`
}

/**
 * The agent serves the disk as the one file (`disk`) of its own FUSE mount, from its event loop
 * through the native addon (no process, socket or thread in between), and a loop device with
 * direct I/O turns that file into /dev/loopN: each block request becomes one FUSE request (up to
 * 512 KiB as the loop device sends them: 128 segments of a page), up to 64 at once, each one block
 * request to the IOhyp. Requests come over FUSE's io_uring queues where the kernel has them, else
 * read from /dev/fuse (see fuseUringChoice).
 */
export class FuseLoopDevice implements BlockExposure {
  readonly device: string
  readonly file: string
  private readonly server: FuseDiskServer
  private readonly seq: string
  private readonly dir: string
  private readonly holder: Holder | undefined
  /** Why not io_uring, when that was decided before the mount. */
  private readonly why: string
  private detached = false

  private constructor(
    device: string,
    seq: string,
    server: FuseDiskServer,
    dir: string,
    holder: Holder | undefined,
    why: string,
  ) {
    this.device = device
    this.seq = seq
    this.file = server.file
    this.server = server
    this.dir = dir
    this.holder = holder
    this.why = why
  }

  io(): string {
    return describeFuseIo(this.server.stats(), this.why)
  }

  /** The ring registers on a thread of its own once INIT is done: a moment after the first open. */
  private static async settled(server: FuseDiskServer): Promise<void> {
    for (let i = 0; i < 200 && server.stats().transport === 'starting'; i++) await sleep(5)
  }

  /**
   * Mounts, attaches the loop device, and starts the holder: a `sleep infinity` of its own
   * (not ended with the agent) that keeps a duplicate of the /dev/fuse fd, so that the FUSE
   * connection, the loop device and whatever is mounted from it outlive a killed agent; the
   * next agent takes the connection over (adopt). `keep: false`: no holder (tests).
   */
  static async attach(o: ExposeOptions & { keep?: boolean }): Promise<FuseLoopDevice> {
    await mkdir(o.dir, { recursive: true, mode: 0o700 })
    // A mount left on the dir (a killed agent's, not cleaned yet) would hide ours.
    await run('umount', ['-l', o.dir]).catch(() => {})
    const choice = await fuseUringChoice()
    let server: FuseDiskServer
    try {
      server = new FuseDiskServer({
        dir: o.dir,
        name: 'disk',
        device: o.device,
        uring: choice.uring,
        reader: fuseReader(),
        onFailure: failureLog(o.log),
      })
    } catch (error) {
      await rm(o.dir, { recursive: true, force: true }).catch(() => {})
      throw error
    }
    let holder: Holder | undefined
    try {
      const { stdout } = await run('losetup', [
        '--direct-io=on',
        ...(o.readOnly || o.device.readOnly ? ['--read-only'] : []),
        '--find',
        '--show',
        server.file,
      ])
      const device = stdout.trim()
      const seq = await diskSeq(device)
      await FuseLoopDevice.settled(server)
      const ring = server.stats().transport === 'io_uring' ? server.ring : null
      if (o.keep !== false) holder = await startHolder(server.fd, ring?.fd)
      const record: StaleRecord = {
        kind: 'fuse-loop',
        device,
        seq,
        size: o.device.size,
        readOnly: o.device.readOnly,
        uring: ring !== null,
        ...(ring && { ringAddr: ring.addr }),
        ...(holder ? { holder: holder.pid, holderStart: holder.start } : {}),
      }
      await writeFile(recordPath(o.dir), JSON.stringify(record))
      return new FuseLoopDevice(device, seq, server, o.dir, holder, choice.why)
    } catch (error) {
      if (holder) process.kill(holder.pid, 'SIGKILL')
      server.close()
      await rm(o.dir, { recursive: true, force: true }).catch(() => {})
      const e = error as { stderr?: string; message: string }
      throw new VrioError('attach-failed', `losetup failed: ${(e.stderr ?? e.message).trim()}`)
    }
  }

  /**
   * Takes over the exposure a killed agent left (see reclaimStale): the same loop device, the
   * same FUSE connection (its fd duplicated from the holder), now served by this agent; the
   * kernel resends the requests the dead agent had read and not answered. Nothing above the loop
   * device notices more than a pause.
   */
  static async adopt(o: ExposeOptions & { stale: StaleAttachment }): Promise<FuseLoopDevice> {
    const r = o.stale.record
    const getfd = native().pidfdGetfd
    if (!getfd || !r.holder || !r.holderStart) throw new VrioError('attach-failed', 'nothing to adopt')
    if (r.size !== o.device.size || r.readOnly !== o.device.readOnly)
      throw new VrioError('attach-failed', 'the disk changed since its block device was attached')
    const fd = getfd(r.holder, HOLDER_FD)
    // The ring's memory as the killed agent left it: the requests it had taken are in there.
    let adoptRing: { fd: number; addr: number } | undefined
    if (r.uring && r.ringAddr) {
      try {
        adoptRing = { fd: getfd(r.holder, HOLDER_RING_FD), addr: r.ringAddr }
      } catch {}
    }
    let server: FuseDiskServer
    try {
      // Served over io_uring before: nothing but forgets and resent requests come over /dev/fuse
      // any more, so the ring is registered again whatever VRIO_FUSE_URING says now.
      server = new FuseDiskServer({
        dir: o.stale.dir,
        name: 'disk',
        device: o.device,
        adoptFd: fd,
        uring: r.uring === true,
        reader: fuseReader(),
        onFailure: failureLog(o.log),
        ...(adoptRing && { adoptRing }),
      })
    } catch (error) {
      closeSync(fd)
      if (adoptRing) closeSync(adoptRing.fd)
      throw error
    }
    await FuseLoopDevice.settled(server)
    const holder = { pid: r.holder, start: r.holderStart }
    return new FuseLoopDevice(
      r.device,
      r.seq,
      server,
      o.stale.dir,
      holder,
      r.uring ? '' : 'as its first agent chose',
    )
  }

  /** FUSE requests served so far (native counters). */
  stats() {
    return this.server.stats()
  }

  /**
   * Detaches the loop device (deferred by the kernel while something holds it, a mounted
   * filesystem for instance: that one gets I/O errors from now on), then unmounts and ends the
   * holder. Idempotent.
   */
  async detach(): Promise<void> {
    if (this.detached) return
    this.detached = true
    await detachLoop(this.device, this.seq)
    this.server.close()
    await removeDir(this.dir, this.holder)
  }
}

/** What an attachment leaves beside its dir for the next agent (RECORD). */
export interface StaleRecord {
  kind?: 'fuse-loop'
  device: string
  seq: string
  size?: number
  readOnly?: boolean
  /** The connection is served over FUSE's io_uring queues (the next agent must register them again). */
  uring?: boolean
  /** Where the ring entries' memory was mapped (the holder keeps the file as its fd 4). */
  ringAddr?: number
  /** The holder's pid and start time (/proc/PID/stat field 22), which identify it. */
  holder?: number
  holderStart?: string
}

/** A killed agent's exposure whose FUSE connection and loop device are still there. */
export interface StaleAttachment {
  name: string
  dir: string
  record: StaleRecord
}

interface Holder {
  pid: number
  start: string
}

/** The holder's copy of the /dev/fuse fd: its fd 3; of the ring entries' memory: its fd 4. */
const HOLDER_FD = 3
const HOLDER_RING_FD = 4

async function startHolder(fuseFd: number, ringFd: number | undefined): Promise<Holder> {
  const child = spawn('sleep', ['infinity'], {
    stdio: ['ignore', 'ignore', 'ignore', fuseFd, ...(ringFd === undefined ? [] : [ringFd])],
    detached: true,
  })
  child.unref()
  const pid = child.pid
  if (!pid) throw new VrioError('attach-failed', 'could not start the FUSE fd holder')
  const start = await procStart(pid)
  if (!start) throw new VrioError('attach-failed', 'the FUSE fd holder exited')
  return { pid, start }
}

async function procStart(pid: number): Promise<string> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? ''
}

/** The same process (pid and start time), still holding a /dev/fuse fd. */
async function holderAlive(pid: number, start: string): Promise<boolean> {
  if ((await procStart(pid)) !== start) return false
  return (await readlink(`/proc/${pid}/fd/${HOLDER_FD}`).catch(() => '')) === '/dev/fuse'
}

/**
 * What a killed agent left in `disksDir`: exposures the next agent can take over (a live holder
 * and the same loop device: returned, untouched) and the rest, undone (undoStale). Run at
 * start, before any attach.
 */
export async function reclaimStale(
  disksDir: string,
): Promise<{ adoptable: StaleAttachment[]; detached: string[] }> {
  const adoptable: StaleAttachment[] = []
  const names = await readdir(disksDir).catch(() => [] as string[])
  for (const name of names.filter((n) => n.endsWith(RECORD))) {
    const dir = join(disksDir, name.slice(0, -RECORD.length))
    const r = JSON.parse(await readFile(join(disksDir, name), 'utf8').catch(() => '{}')) as StaleRecord
    if (
      r.kind === 'fuse-loop' &&
      r.holder &&
      r.holderStart &&
      (await holderAlive(r.holder, r.holderStart)) &&
      typeof r.device === 'string' &&
      r.seq &&
      (await diskSeq(r.device)) === r.seq
    )
      adoptable.push({ name: name.slice(0, -RECORD.length), dir, record: r })
  }
  const skip = new Set(adoptable.map((a) => `${a.name}${RECORD}`))
  const detached = await undoStale(disksDir, skip)
  return { adoptable, detached }
}

/** Undoes a stale exposure nobody took over: its loop device detached, its holder ended (the connection aborts). */
export async function dropStale(s: StaleAttachment): Promise<void> {
  if (s.record.seq) await detachLoop(s.record.device, s.record.seq)
  await removeDir(s.dir, recordHolder(s.record))
}

/**
 * Undoes what a killed agent left in `disksDir` (the `dir`s of its attachments), but the records
 * in `skip`: each loop device it recorded is detached (deferred by the kernel while something still
 * holds it open, a mounted filesystem for instance), its holder ended and its mount point removed.
 * Returns the loop devices detached.
 */
async function undoStale(disksDir: string, skip: ReadonlySet<string>): Promise<string[]> {
  const names = await readdir(disksDir).catch(() => [] as string[])
  const detached: string[] = []
  for (const name of names.filter((n) => n.endsWith(RECORD) && !skip.has(n))) {
    const record = join(disksDir, name)
    const r = JSON.parse(await readFile(record, 'utf8').catch(() => '{}')) as Partial<StaleRecord>
    // Only the loop device not set up again since (same disk sequence number).
    if (typeof r.device === 'string' && r.seq && (await detachLoop(r.device, r.seq))) detached.push(r.device)
    await removeDir(record.slice(0, -RECORD.length), recordHolder(r))
  }
  return detached
}

/** Beside each attachment's dir: its loop device and holder, for the next agent if this one is killed. */
const RECORD = '.attached.json'
const recordPath = (dir: string) => `${dir}${RECORD}`

/** Detaches `device` if it is still the attachment `seq` names (not set up again by someone else since). */
async function detachLoop(device: string, seq: string): Promise<boolean> {
  if ((await diskSeq(device)) !== seq) return false
  await run('losetup', ['-d', device]).catch(() => {})
  return true
}

/** Ends the holder if it still runs, unmounts `dir` (lazily), then removes it and its record. */
async function removeDir(dir: string, holder: Holder | undefined): Promise<void> {
  if (holder && (await holderAlive(holder.pid, holder.start))) process.kill(holder.pid, 'SIGKILL')
  await run('umount', ['-l', dir]).catch(() => {})
  await rm(dir, { recursive: true, force: true }).catch(() => {})
  await rm(recordPath(dir), { force: true })
}

const recordHolder = (r: Partial<StaleRecord>): Holder | undefined =>
  r.holder && r.holderStart ? { pid: r.holder, start: r.holderStart } : undefined

/**
 * What identifies this attachment of a loop device: its disk sequence number, which the kernel
 * raises each time a loop device is set up ('' when it is no loop device or has none).
 */
async function diskSeq(device: string): Promise<string> {
  const loop = /^\/dev\/(loop\d+)$/.exec(device)?.[1]
  return loop ? (await readFile(`/sys/block/${loop}/diskseq`, 'utf8').catch(() => '')).trim() : ''
}
