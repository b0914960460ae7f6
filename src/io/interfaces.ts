import { fromNative } from './errors.ts'
import { native } from './native.ts'

export interface InterfaceInfo {
  name: string
  ifindex: number
  /** 'aa:bb:cc:dd:ee:ff' */
  mac: string
  mtu: number
}

/**
 * Index, MAC and MTU of an interface, optionally in another network namespace (a path such as
 * /run/netns/NAME). Asks the kernel directly (SIOCGIF* ioctls) rather than reading /sys, which
 * only shows the namespace /sys was mounted from. Throws IoError ENODEV for an unknown name.
 */
export function interfaceInfo(name: string, netns?: string): InterfaceInfo {
  try {
    const info = native().interfaceInfo(name, netns)
    return { name, ifindex: info.ifindex, mac: info.mac, mtu: info.mtu }
  } catch (e) {
    throw fromNative(e, { ifname: name, netns })
  }
}
