/** A plain Ethernet segment for integration tests: hosts in their own namespaces on one bridge. */
import type { VethEnd } from './harness.ts'
import { createNetns, createVethPair, ip } from './netns.ts'

/**
 * `count` hosts, each in its own namespace with a veth to bridge `br0` in a further namespace (no
 * firewall); vrio address of host i: 10.99.0.(i+1), not configured on the interfaces.
 */
export function bridgedLan(count: number): VethEnd[] {
  const sw = createNetns()
  ip(sw, ['link', 'add', 'br0', 'type', 'bridge'])
  const ends: VethEnd[] = []
  for (let i = 0; i < count; i++) {
    const ns = createNetns()
    const v = createVethPair(ns, sw)
    ip(sw, ['link', 'set', v.b.ifname, 'master', 'br0'])
    ends.push({ ns, ifname: v.a.ifname, ip: 0x0a63_0001 + i })
  }
  ip(sw, ['link', 'set', 'br0', 'up'])
  return ends
}
