/** Namespace topologies for integration tests: a direct veth, or a firewalling bridge between. */
import { type ChildProcess, spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { VethEnd } from './harness.ts'
import { createNetns, createVethPair, exec, ip, type Netns } from './netns.ts'

export interface Topology {
  a: VethEnd
  b: VethEnd
  /** The firewall namespace and its bridge, when there is one. */
  firewall?: { ns: Netns; bridge: string }
}

/** Two namespaces joined by one veth pair; vrio addresses a.b.c.1 and .2 (not configured on the interfaces). */
export function directLink(mtu?: number): Topology {
  const nsA = createNetns()
  const nsB = createNetns()
  const v = createVethPair(nsA, nsB, { mtu })
  return {
    a: { ns: nsA, ifname: v.a.ifname, ip: 0x0a63_0001 },
    b: { ns: nsB, ifname: v.b.ifname, ip: 0x0a63_0002 },
  }
}

export const FIREWALL_TABLE = 'vriofw'

/**
 * A and B each joined by a veth to a bridge in a third namespace that acts as a strict stateful
 * firewall (see firewalledLan).
 */
export function firewalledLink(): Topology {
  const lan = firewalledLan(2)
  return { a: lan.ends[0], b: lan.ends[1], firewall: lan.firewall }
}

export interface Lan {
  /** One namespace per host, each with a veth to the bridge; vrio address 10.99.0.(i+1). */
  ends: VethEnd[]
  firewall: { ns: Netns; bridge: string }
}

/**
 * `count` hosts, each in its own namespace, joined by veths to a bridge in a firewall namespace:
 * bridged IPv4 goes through the ip-family forward hook (br_netfilter), conntrack checks TCP windows
 * strictly (nf_conntrack_tcp_loose=0), and anything it marks invalid is counted and dropped.
 */
export function firewalledLan(count: number): Lan {
  const fw = createNetns()
  const bridge = 'br0'
  ip(fw, ['link', 'add', bridge, 'type', 'bridge'])
  const ends: VethEnd[] = []
  for (let i = 0; i < count; i++) {
    const ns = createNetns()
    const v = createVethPair(ns, fw)
    ip(fw, ['link', 'set', v.b.ifname, 'master', bridge])
    ends.push({ ns, ifname: v.a.ifname, ip: 0x0a63_0001 + i })
  }
  ip(fw, ['link', 'set', bridge, 'up'])
  exec(fw, 'sysctl', ['-qw', 'net.bridge.bridge-nf-call-iptables=1'])
  const ruleset = [
    `table ip ${FIREWALL_TABLE} {`,
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
    '    ct state invalid counter drop',
    '    ct state established counter accept',
    '    ct state new counter accept',
    '  }',
    '}',
  ].join('\n')
  execNft(fw, ruleset)
  // After the table exists, so conntrack is loaded in this namespace.
  exec(fw, 'sysctl', ['-qw', 'net.netfilter.nf_conntrack_tcp_loose=0'])
  return { ends, firewall: { ns: fw, bridge } }
}

function execNft(ns: Netns, ruleset: string): void {
  exec(ns, 'sh', ['-c', `nft -f - <<'EOF'\n${ruleset}\nEOF`])
}

/** Packet counters of the firewall's rules, by the conntrack state they match. */
export function firewallCounters(fw: Netns): { invalid: number; established: number; new: number } {
  const out = JSON.parse(exec(fw, 'nft', ['-j', 'list', 'chain', 'ip', FIREWALL_TABLE, 'forward']))
  const counts = { invalid: 0, established: 0, new: 0 }
  for (const item of out.nftables) {
    const rule = item.rule
    if (!rule) continue
    const text = JSON.stringify(rule.expr)
    const counter = rule.expr.find((e: { counter?: { packets: number } }) => e.counter)?.counter
    if (!counter) continue
    for (const state of ['invalid', 'established', 'new'] as const)
      if (text.includes(`"${state}"`)) counts[state] = counter.packets
  }
  return counts
}

/** The "world" a remote NIC reaches: a bridge `brw` in the IOhyp's namespace and a namespace on it. */
export interface World {
  ns: Netns
  /** The world's interface (on the bridge). */
  ifname: string
}

/** Creates the world: bridge `brw` in `iohyp`, a new namespace joined to it by a veth, the given addresses on it. */
export function worldOnBridge(
  iohyp: Netns,
  addresses: readonly string[] = [],
  options: { ipv6?: boolean } = {},
): World {
  ip(iohyp, ['link', 'add', 'brw', 'type', 'bridge'])
  ip(iohyp, ['link', 'set', 'brw', 'up'])
  const ns = createNetns(options)
  const v = createVethPair(ns, iohyp)
  ip(iohyp, ['link', 'set', v.b.ifname, 'master', 'brw'])
  for (const a of addresses)
    ip(ns, [
      ...(a.includes(':') ? ['-6'] : []),
      'addr',
      'add',
      a,
      'dev',
      v.a.ifname,
      ...(a.includes(':') ? ['nodad'] : []),
    ])
  return { ns, ifname: v.a.ifname }
}

/**
 * A web server in the world (python's http.server on port 80 at `address`) serving `root`, made
 * here with one page, index.html ("still here"): the traffic the NIC-services tests send through
 * their rules. The caller kills the child.
 */
export function worldWebServer(world: Netns, address: string, root: string): ChildProcess {
  exec(world, 'mkdir', ['-p', root])
  writeFileSync(join(root, 'index.html'), 'still here\n')
  return spawn(
    'ip',
    [
      'netns',
      'exec',
      world.name,
      'python3',
      '-m',
      'http.server',
      '80',
      '--bind',
      address,
      '--directory',
      root,
    ],
    { stdio: 'ignore' },
  )
}
