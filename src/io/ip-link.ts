/**
 * The few interface changes the daemons make, through iproute2's `ip` (the tool operators use to
 * inspect and undo them): MTU, MAC, up/down, bridge membership, macvtap devices.
 */
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { VrioError } from '../errors.ts'

const run = promisify(execFile)

async function ip(args: string[]): Promise<string> {
  try {
    return (await run('ip', args)).stdout
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { stderr?: string }
    if (e.code === 'ENOENT') throw new VrioError('io-error', "the 'ip' command (iproute2) is not installed")
    const why = (e.stderr ?? e.message).trim().split('\n')[0]
    throw new VrioError('io-error', `ip ${args.join(' ')}: ${why}`, { command: `ip ${args.join(' ')}` })
  }
}

export interface LinkSettings {
  mtu?: number
  /** MAC as 'aa:bb:cc:dd:ee:ff'. */
  address?: string
  up?: boolean
  /** A bridge to join, or null to leave the current one. */
  master?: string | null
  /** Largest GSO super-frame the kernel builds for this device (`ip link set ... gso_max_size`). */
  gsoMaxSize?: number
}

/** Applies `settings` to interface `name` in one `ip link set`. */
export async function setLink(name: string, settings: LinkSettings): Promise<void> {
  const args = ['link', 'set', 'dev', name]
  if (settings.address !== undefined) args.push('address', settings.address)
  if (settings.mtu !== undefined) args.push('mtu', String(settings.mtu))
  if (settings.gsoMaxSize !== undefined) args.push('gso_max_size', String(settings.gsoMaxSize))
  if (settings.master === null) args.push('nomaster')
  else if (settings.master !== undefined) args.push('master', settings.master)
  if (settings.up !== undefined) args.push(settings.up ? 'up' : 'down')
  await ip(args)
}

/** The kind of an interface ('bridge', 'veth', 'tun', 'macvtap', ...; '' for plain devices), or undefined if none has that name. */
export async function linkKind(name: string): Promise<string | undefined> {
  let out: string
  try {
    out = await ip(['-d', '-j', 'link', 'show', 'dev', name])
  } catch {
    return undefined
  }
  const info = (JSON.parse(out) as { linkinfo?: { info_kind?: string } }[])[0]
  return info?.linkinfo?.info_kind ?? ''
}

/** Creates a macvtap in bridge mode on `uplink`, with the guest NIC's MAC (it receives frames for that MAC). */
export async function addMacvtap(uplink: string, name: string, mac: string, mtu: number): Promise<void> {
  await ip([
    'link',
    'add',
    'link',
    uplink,
    'name',
    name,
    'address',
    mac,
    'mtu',
    String(mtu),
    'type',
    'macvtap',
    'mode',
    'bridge',
  ])
  await ip(['link', 'set', 'dev', name, 'up'])
}

export async function deleteLink(name: string): Promise<void> {
  await ip(['link', 'del', 'dev', name])
}

/**
 * The character device of macvtap `name` (/dev/tapN, N its ifindex). udev normally creates it;
 * where nothing does (containers, namespaces), it is created here from the numbers in /sys.
 */
export async function macvtapDevice(name: string): Promise<string> {
  const ifindex = readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim()
  const path = `/dev/tap${ifindex}`
  if (existsSync(path)) return path
  const [major, minor] = readFileSync(`/sys/class/net/${name}/macvtap/tap${ifindex}/dev`, 'utf8')
    .trim()
    .split(':')
  try {
    await run('mknod', ['-m', '600', path, 'c', major, minor])
  } catch (error) {
    if (!existsSync(path))
      throw new VrioError('io-error', `cannot create ${path}: ${(error as Error).message}`)
  }
  return path
}
