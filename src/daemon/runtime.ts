import { mkdir, open, rename } from 'node:fs/promises'
import { networkInterfaces } from 'node:os'
import { dirname } from 'node:path'
import { isVrioError, VrioError } from '../errors.ts'
import { isIoError } from '../io/errors.ts'
import { PacketSocket } from '../io/packet-socket.ts'
import { parseIPv4, parseMac } from '../wire/address.ts'
import type { Logger } from './log.ts'

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
}

/**
 * Opens the daemon's packet socket on `ifname` and settles its vrio address: `address` if given,
 * else the interface's first IPv4 address. An interface with no address works when one is given.
 */
export function openLink(ifname: string, address: string | undefined): LinkSetup {
  let ip: number | undefined
  if (address !== undefined) {
    ip = parseIPv4(address)
    if (ip === undefined)
      throw new VrioError('invalid-argument', `--address '${address}' is not an IPv4 address`)
  }
  let socket: PacketSocket
  try {
    socket = PacketSocket.open({
      ifname,
      // virtio-net headers: 64 KB super-frames with kernel GSO and checksum offload (see LinkDriver).
      vnetHdr: true,
      ignoreOutgoing: true,
      rcvBuf: PACKET_SOCKET_BUFFER,
      sndBuf: PACKET_SOCKET_BUFFER,
    })
  } catch (error) {
    if (isIoError(error) && error.code === 'ENODEV') {
      throw new VrioError('unknown-interface', `no network interface named '${ifname}'`, {
        interface: ifname,
      })
    }
    throw error
  }
  if (ip === undefined) {
    const v4 = networkInterfaces()[ifname]?.find((a) => a.family === 'IPv4')
    if (!v4) {
      socket.close()
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
  return { socket, mac: parseMac(socket.mac)!, ip }
}

/** Writes `data` to `path` so that a crash at any point leaves either the old or the new file. */
export async function writeFileAtomic(path: string, data: string, mode = 0o600): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  const tmp = `${path}.tmp-${process.pid}`
  const fh = await open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
  const dir = await open(dirname(path), 'r')
  try {
    await dir.sync()
  } finally {
    await dir.close()
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

/** A one-line reason for errors at start-up. */
export function describeStartError(error: unknown): string {
  if (isVrioError(error) || isIoError(error)) return (error as Error).message
  return error instanceof Error ? error.message : String(error)
}
