/**
 * How the IOhyp's side of a NIC reaches the world: a TAP (on a bridge, if one is named) or a
 * macvtap on an uplink, opened with virtio-net headers and offloads, through the NetLinks passed in.
 */
import type { NicRequest } from '../devices/net/spec.ts'
import { VrioError } from '../errors.ts'
import type { NetLinks, TapQueue } from '../io/net-links.ts'

export type NicBackend =
  | { kind: 'tap'; tap: string; bridge: string | null }
  | { kind: 'macvtap'; uplink: string; device: string }

/** TAP offloads: the kernels on both sides hand over 64 KiB super-frames with partial checksums. */
const NIC_OFFLOADS = { csum: true, tso4: true, tso6: true, ecn: true }

type BackendSpec = Pick<NicRequest, 'tap' | 'bridge' | 'macvtap' | 'mac'> & { mtu: number }

/** Opens the NIC's queue; `slot` names its macvtap (`vmvt<slot>`). Undoes its part when it fails. */
export async function openNicBackend(
  s: BackendSpec,
  slot: number,
  links: NetLinks,
): Promise<{ backend: NicBackend; tap: TapQueue }> {
  if (s.macvtap !== undefined) {
    const device = `vmvt${slot}`
    if ((await links.linkKind(s.macvtap)) === undefined)
      throw new VrioError('not-found', `uplink ${s.macvtap} does not exist`, { field: 'macvtap' })
    // A macvtap outlives a killed daemon; its successor replaces it.
    if ((await links.linkKind(device)) === 'macvtap') await links.deleteLink(device)
    await links.addMacvtap(s.macvtap, device, s.mac, s.mtu)
    try {
      const path = await links.macvtapDevice(device)
      const tap = links.openTap({ name: device, path, vnetHdr: true, offloads: NIC_OFFLOADS })
      return { backend: { kind: 'macvtap', uplink: s.macvtap, device }, tap }
    } catch (error) {
      await links.deleteLink(device).catch(() => {})
      throw error
    }
  }
  const tapName = s.tap as string
  if (s.bridge !== undefined && (await links.linkKind(s.bridge)) !== 'bridge')
    throw new VrioError('not-found', `bridge ${s.bridge} does not exist`, { field: 'bridge' })
  const kind = await links.linkKind(tapName)
  if (kind !== undefined && kind !== 'tun')
    throw new VrioError('conflict', `${tapName} exists and is not a TAP device`, { field: 'tap' })
  const tap = links.openTap({ name: tapName, vnetHdr: true, offloads: NIC_OFFLOADS })
  try {
    await links.setLink(tap.name, { mtu: s.mtu, master: s.bridge, up: true })
  } catch (error) {
    tap.close()
    throw error
  }
  return { backend: { kind: 'tap', tap: tap.name, bridge: s.bridge ?? null }, tap }
}
