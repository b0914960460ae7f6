/**
 * What NICs need of the kernel: TAP queues and `ip link`. Passed to the NIC kinds (src/iohyp/nics.ts,
 * src/guest/nics.ts), so a test can run them over in-memory frame channels without root.
 */
import type { FrameChannel } from './frame-channel.ts'
import { addMacvtap, deleteLink, type LinkSettings, linkKind, macvtapDevice, setLink } from './ip-link.ts'
import { TapDevice, type TapOptions } from './tap.ts'

/** A TAP (or macvtap) queue: frames in and out, its interface's name, whether this open created it. */
export type TapQueue = FrameChannel & { readonly name: string; readonly created: boolean }

export interface NetLinks {
  openTap(o: TapOptions): TapQueue
  /** The kind of the interface named `name` ('tun', 'bridge', 'macvtap', …), undefined if none. */
  linkKind(name: string): Promise<string | undefined>
  setLink(name: string, settings: LinkSettings): Promise<void>
  addMacvtap(uplink: string, name: string, mac: string, mtu: number): Promise<void>
  deleteLink(name: string): Promise<void>
  /** The character device of a macvtap. */
  macvtapDevice(name: string): Promise<string>
}

/** The kernel's: /dev/net/tun and `ip link`. */
export const KERNEL_LINKS: NetLinks = {
  openTap: (o) => TapDevice.open(o),
  linkKind,
  setLink,
  addMacvtap,
  deleteLink,
  macvtapDevice,
}
