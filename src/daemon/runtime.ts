import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises'
import { networkInterfaces } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { cpuListSchema } from '../config/schema.ts'
import { VrioError } from '../errors.ts'
import { fromNative, isIoError } from '../io/errors.ts'
import { interfaceInfo } from '../io/interfaces.ts'
import { native } from '../io/native.ts'
import { vrioPacketFilter } from '../io/packet-filter.ts'
import { PacketSocket } from '../io/packet-socket.ts'
import { parseIPv4, parseMac } from '../wire/address.ts'
import type { Logger } from './log.ts'

/**
 * How the daemons set glibc's malloc (native/malloc_tune.cc): buffers below 4 MiB (64 KiB socket
 * reads, 1 MiB block payloads) come from the heap instead of a fresh mapping each, and up to 64 MiB
 * freed at the heap's top stay mapped, so that memory moving at GB/s is reused instead of being
 * unmapped and faulted in again page by page.
 */
export const MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024
export const MALLOC_TRIM_THRESHOLD = 64 * 1024 * 1024

/**
 * Applies MALLOC_MMAP_THRESHOLD and MALLOC_TRIM_THRESHOLD to this process, once at daemon start.
 * Left alone when VRIO_MALLOC_TUNE=off or when the operator tunes malloc through the environment
 * (glibc.malloc.mmap_threshold or trim_threshold in GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_ or
 * MALLOC_TRIM_THRESHOLD_). Returns what it did.
 */
export function tuneAllocator(
  env: NodeJS.ProcessEnv = process.env,
): 'tuned' | 'off' | 'operator' | 'unavailable' {
  if (env.VRIO_MALLOC_TUNE === 'off') return 'off'
  const tunables = env.GLIBC_TUNABLES ?? ''
  if (
    /glibc\.malloc\.(mmap|trim)_threshold=/.test(tunables) ||
    env.MALLOC_MMAP_THRESHOLD_ !== undefined ||
    env.MALLOC_TRIM_THRESHOLD_ !== undefined
  )
    return 'operator'
  return native().tuneMalloc?.(MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD) ? 'tuned' : 'unavailable'
}

/**
 * Runs every thread of this process on `cpus` only (`--cpus`; threads started later inherit it):
 * for an operator who gives the daemon its own cores, or keeps a chain of processes that hand
 * each request on (fio, the loop device's worker, the guest agent, the IOhyp) on one core, where
 * each wake-up costs no inter-processor interrupt. A CPU this process may not use (offline, or
 * outside its cpuset) is refused with `invalid-argument`, naming it.
 */
export async function pinToCpus(cpus: readonly number[]): Promise<void> {
  const set = native().setAffinity
  if (!set) throw new VrioError('not-implemented', '--cpus needs the native addon with setAffinity')
  const tasks = await readdir('/proc/self/task')
  for (const tid of tasks) {
    try {
      set(Number(tid), cpus)
    } catch (e) {
      const error = fromNative(e)
      // ESRCH: a thread that ended meanwhile. EINVAL: none of the CPUs can be used.
      if (isIoError(error, 'ESRCH')) continue
      if (!isIoError(error, 'EINVAL')) throw error
      throw new VrioError(
        'invalid-argument',
        `--cpus ${cpus.join(',')}: none of these CPUs is online and allowed for this process`,
        { field: 'cpus' },
        { cause: error },
      )
    }
  }
  // The kernel writes the list as taskset does: the same schema reads it.
  const allowed = (await readFile('/proc/self/status', 'utf8')).match(/^Cpus_allowed_list:\s*(\S+)/m)?.[1]
  const usable = allowed === undefined ? undefined : new Set(cpuListSchema.parse(allowed))
  const missing = usable === undefined ? [] : cpus.filter((c) => !usable.has(c))
  if (missing.length > 0)
    throw new VrioError(
      'invalid-argument',
      `--cpus: CPU ${missing.join(', ')} is offline or outside this process's cpuset (allowed: ${allowed})`,
      { field: 'cpus' },
    )
}

/** The guests' listen port: the "server port" of every vrio connection. */
export const VRIO_PORT = 7860

/**
 * Kernel buffer of the packet socket. It must absorb a whole advertised window of frames (each
 * costs its skb truesize, about twice its length) arriving while the event loop is busy elsewhere:
 * with the default 208 KiB a 1 MiB burst already loses frames on veth.
 */
export const PACKET_SOCKET_BUFFER = 32 * 1024 * 1024

export interface LinkSetup {
  socket: PacketSocket
  mac: number
  ip: number
  /** Whether the kernel filter (vrioPacketFilter) is on the socket: see packetFilterEnabled. */
  filtered: boolean
}

/** The segments a daemon takes as its own: to `localPort` (a guest) or from `remotePort` (the IOhyp). */
export interface LinkPorts {
  localPort?: number
  remotePort?: number
  /** An iocore's guests: only segments from them (see VrioFilterOptions.peers). */
  peers?: readonly number[]
}

/**
 * Whether daemons attach the kernel filter to their packet socket: on unless the environment sets
 * VRIO_PACKET_FILTER=off (for comparisons and for debugging with every frame reaching the daemon).
 */
export function packetFilterEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.VRIO_PACKET_FILTER !== 'off'
}

/**
 * Opens the daemon's packet socket on `ifname` and settles its vrio address: `address` if given,
 * else the interface's first IPv4 address. An interface with no address works when one is given.
 * The socket gets the kernel filter for that address, the interface's MAC and `ports` (unless
 * packetFilterEnabled says no), attached before it receives anything.
 */
/**
 * The daemon's vrio address on `ifname`: `address` if given, else the interface's first IPv4
 * address; and the interface's MAC.
 */
export function linkAddress(ifname: string, address: string | undefined): { mac: number; ip: number } {
  let ip: number | undefined
  if (address !== undefined) {
    ip = parseIPv4(address)
    if (ip === undefined)
      throw new VrioError('invalid-argument', `--address '${address}' is not an IPv4 address`)
  }
  let mac: number
  try {
    mac = parseMac(interfaceInfo(ifname).mac)!
  } catch (error) {
    throw unknownInterface(error, ifname)
  }
  if (ip === undefined) {
    const v4 = networkInterfaces()[ifname]?.find((a) => a.family === 'IPv4')
    if (!v4) {
      throw new VrioError(
        'no-address',
        `interface '${ifname}' has no IPv4 address; give one with --address`,
        {
          interface: ifname,
        },
      )
    }
    ip = parseIPv4(v4.address)!
  }
  return { mac, ip }
}

export function openLink(ifname: string, address: string | undefined, ports: LinkPorts = {}): LinkSetup {
  const { mac, ip } = linkAddress(ifname, address)
  const filter = packetFilterEnabled()
  let socket: PacketSocket
  try {
    socket = PacketSocket.open({
      ifname,
      // virtio-net headers: 64 KB super-frames with kernel GSO and checksum offload (see LinkDriver).
      vnetHdr: true,
      ignoreOutgoing: true,
      rcvBuf: PACKET_SOCKET_BUFFER,
      sndBuf: PACKET_SOCKET_BUFFER,
      ...(filter && { filter: vrioPacketFilter({ mac, ip, ...ports }) }),
    })
  } catch (error) {
    throw unknownInterface(error, ifname)
  }
  // An addon built before the option ignores it: the socket then says it has no filter.
  return { socket, mac, ip, filtered: socket.filtered }
}

/** ENODEV as the catalogue's unknown-interface; anything else as it is. */
function unknownInterface(error: unknown, ifname: string): unknown {
  if (!isIoError(error, 'ENODEV')) return error
  return new VrioError('unknown-interface', `no network interface named '${ifname}'`, {
    interface: ifname,
  })
}

/** The text of `path`, or undefined when there is no such file. */
export async function readFileIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw error
  }
}

/** Writes queued per path, so concurrent callers land in call order and never share a temp file. */
const writeQueues = new Map<string, Promise<void>>()
/** Paths whose leftover temp files (of processes that died mid-write) were removed by this process. */
const swept = new Set<string>()
let tempCounter = 0

/**
 * Writes `data` to `path` so that a crash at any point leaves either the old or the new file:
 * a new temp file beside it is written and fsynced, renamed over `path`, and the directory fsynced
 * (so the rename itself survives a power cut). Concurrent calls for one path are applied one after
 * the other in call order: the last caller's data wins, never a mix. The first write to a path in a
 * process removes the temp files that killed processes left beside it, so they never pile up.
 */
export function writeFileAtomic(path: string, data: string, mode = 0o600): Promise<void> {
  const key = resolve(path)
  const previous = writeQueues.get(key) ?? Promise.resolve()
  const write = previous.then(() => writeNow(key, data, mode))
  const tail = write.catch(() => {})
  writeQueues.set(key, tail)
  void tail.then(() => {
    if (writeQueues.get(key) === tail) writeQueues.delete(key)
  })
  return write
}

async function writeNow(path: string, data: string, mode: number): Promise<void> {
  const dir = dirname(path)
  const created = await mkdir(dir, { recursive: true, mode: 0o700 })
  if (created !== undefined) await syncDir(dirname(created))
  if (!swept.has(path)) {
    await removeTempFiles(path)
    swept.add(path)
  }
  const tmp = `${path}${TEMP_INFIX}${process.pid}-${++tempCounter}`
  try {
    const fh = await open(tmp, 'wx', mode)
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (error) {
    await rm(tmp, { force: true })
    throw error
  }
  await syncDir(dir)
}

const TEMP_INFIX = '.tmp-'

/** Removes `<path>.tmp-*` files: temp files of writes that never reached their rename. */
async function removeTempFiles(path: string): Promise<void> {
  const prefix = `${basename(path)}${TEMP_INFIX}`
  let names: string[]
  try {
    names = await readdir(dirname(path))
  } catch {
    return
  }
  for (const name of names) if (name.startsWith(prefix)) await rm(join(dirname(path), name), { force: true })
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** Stops the daemon on SIGINT/SIGTERM (once), then exits 0 — or 1 if stopping failed. */
export function stopOnSignals(log: Logger, stop: () => Promise<void>): void {
  let stopping = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return
    stopping = true
    log.info('stopping', { signal })
    stop().then(
      () => {
        log.info('stopped')
        process.exit(0)
      },
      (error) => {
        log.error('stop failed', { error })
        process.exit(1)
      },
    )
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
}
