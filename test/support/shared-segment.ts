/**
 * A shared L2 segment as a multi-tenant IOhyp facility has one: hosts in namespaces on one Linux
 * bridge that floods every frame to every port (`ageing_time 0`: it learns no address), so any host
 * sniffs everyone's traffic; bridged IPv4 passes strict conntrack (br_netfilter,
 * nf_conntrack_tcp_loose=0) whose `ct state invalid` rule counts but does not drop, so injected
 * frames reach their targets and the count of invalid packets is an observation, not a filter.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import type { DaemonProcess } from './daemons.ts'
import type { VethEnd } from './harness.ts'
import { createNetns, createVethPair, exec, ip, type Netns } from './netns.ts'
import { FIREWALL_TABLE } from './topology.ts'
import { type PairOptions, VrioPair } from './vrio-pair.ts'
import { waitUntil } from './wait.ts'

export interface SharedSegment {
  /** One namespace per host, each with a veth to the bridge; vrio address 10.99.0.(i+1). */
  ends: VethEnd[]
  /** The bridge's namespace (also where conntrack runs and captures are taken). */
  ns: Netns
  bridge: string
}

/**
 * `count` hosts on a flooding bridge. Transmit checksumming (and with it TSO) is off on every host's
 * veth: the kernel then completes checksums and cuts super-frames before the wire, as a NIC would,
 * so captures on the bridge show finished frames (docs: measured-here.md, the checksum trap).
 */
export function sharedSegment(count: number): SharedSegment {
  const ns = createNetns()
  const bridge = 'br0'
  ip(ns, ['link', 'add', bridge, 'type', 'bridge', 'ageing_time', '0'])
  const ends: VethEnd[] = []
  for (let i = 0; i < count; i++) {
    const host = createNetns()
    const v = createVethPair(host, ns)
    ip(ns, ['link', 'set', v.b.ifname, 'master', bridge])
    exec(host, 'ethtool', ['-K', v.a.ifname, 'tx', 'off'])
    exec(ns, 'ethtool', ['-K', v.b.ifname, 'tx', 'off'])
    ends.push({ ns: host, ifname: v.a.ifname, ip: 0x0a63_0001 + i })
  }
  ip(ns, ['link', 'set', bridge, 'up'])
  exec(ns, 'sysctl', ['-qw', 'net.bridge.bridge-nf-call-iptables=1'])
  const ruleset = [
    `table ip ${FIREWALL_TABLE} {`,
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
    '    ct state invalid counter',
    '    ct state established counter',
    '    ct state new counter',
    '  }',
    '}',
  ].join('\n')
  exec(ns, 'sh', ['-c', `nft -f - <<'EOF'\n${ruleset}\nEOF`])
  exec(ns, 'sysctl', ['-qw', 'net.netfilter.nf_conntrack_tcp_loose=0'])
  return { ends, ns, bridge }
}

/** A VrioPair on the shared segment that counts the channels its daemons opened and closed. */
export class SegmentPair extends VrioPair {
  constructor(iohypEnd: VethEnd, guestEnd: VethEnd, options: PairOptions = {}) {
    super(iohypEnd, guestEnd, options)
  }

  /** Channels opened and closed so far, as the IOhyp and the guest logged them: a reconnect shows here. */
  channelEvents(): { opened: number; closed: number } {
    const count = (d: DaemonProcess, msg: string) => d.logs.filter((l) => l.includes(`"msg":"${msg}"`)).length
    return {
      opened: count(this.iohyp, 'guest connected') + count(this.guest, 'iohyp connected'),
      closed: count(this.iohyp, 'guest channel closed') + count(this.guest, 'iohyp channel closed'),
    }
  }
}

/**
 * A capture (dumpcap, one process: stopping it by its pid stops the capture) of every frame
 * crossing the bridge, into a pcapng file.
 */
export class BridgeCapture {
  readonly file: string
  private readonly child: ChildProcess
  private err = ''

  private constructor(segment: SharedSegment, file: string) {
    this.file = file
    this.child = spawn(
      'ip',
      ['netns', 'exec', segment.ns.name, 'dumpcap', '-q', '-B', '64', '-i', segment.bridge, '-w', file],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )
    this.child.stderr?.on('data', (d) => (this.err += d))
  }

  /** Starts capturing; resolves once frames reach the file. */
  static async start(segment: SharedSegment, file: string): Promise<BridgeCapture> {
    const c = new BridgeCapture(segment, file)
    await waitUntil(
      () => c.err.includes('Capturing on') || c.child.exitCode !== null,
      'dumpcap to start capturing',
      15_000,
    )
    if (!c.err.includes('Capturing on')) throw new Error(`dumpcap did not start: ${c.err}`)
    // dumpcap says so a moment before frames really reach the file.
    await sleep(1000)
    return c
  }

  get log(): string {
    return this.err
  }

  /** Frames the capture itself lost (from dumpcap's summary; after stop). */
  get dropped(): number {
    const m = /received\/dropped on interface [^:]*: \d+\/(\d+)/.exec(this.err)
    return m ? Number(m[1]) : 0
  }

  /** Stops (SIGINT: dumpcap writes what it holds) and resolves once the file is complete. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    const exited = new Promise((r) => this.child.once('exit', r))
    await sleep(500) // frames still on their way to the socket
    this.child.kill('SIGINT')
    await Promise.race([exited, sleep(5000)])
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
  }
}

/**
 * Where any 64-byte window of `pattern` (a 64-byte period, repeated) occurs in `data`: the first
 * offset, or -1. Each of the 64 rotations is one 64-byte needle.
 */
export function findPatternRun(data: Buffer, pattern: Buffer): number {
  if (pattern.length !== 64) throw new RangeError('the pattern period must be 64 bytes')
  const doubled = Buffer.concat([pattern, pattern])
  let first = -1
  for (let phase = 0; phase < 64; phase++) {
    const at = data.indexOf(doubled.subarray(phase, phase + 64))
    if (at >= 0 && (first < 0 || at < first)) first = at
  }
  return first
}
