import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { VrioError } from '../errors.ts'
import { formatIPv4 } from '../wire/address.ts'

const run = promisify(execFile)

export interface KernelGuardOptions {
  /** Interface the daemon uses. */
  ifname: string
  /** Our vrio address on it. */
  address: number
  /** TCP ports that identify our traffic: segments to `localPort` or from `remotePort`. */
  localPort?: number
  remotePort?: number
  /** Distinguishes the tables of several daemons on one host. */
  role: string
}

/**
 * Keeps the host's own TCP stack away from vrio's segments: an nftables table with a netdev
 * ingress chain on the interface drops them before the IP stack sees them, so the kernel neither
 * answers them with RSTs nor spends time on them. Packet sockets bound to ETH_P_ALL still receive
 * the frames (taps run before the ingress hook's verdict matters to them). Other traffic on the
 * interface is untouched. The table is named after role and interface, replaced on start (so a
 * daemon killed with SIGKILL leaves nothing that breaks its successor) and deleted on stop.
 */
export class KernelGuard {
  readonly table: string
  private readonly o: KernelGuardOptions
  private installed = false

  constructor(o: KernelGuardOptions) {
    this.o = o
    this.table = `vrio_${o.role}_${o.ifname.replace(/[^A-Za-z0-9_]/g, '_')}`
  }

  async install(): Promise<void> {
    const { ifname, address, localPort, remotePort } = this.o
    const ip = formatIPv4(address)
    const rules: string[] = []
    if (localPort !== undefined) rules.push(`ip daddr ${ip} tcp dport ${localPort} counter drop`)
    if (remotePort !== undefined) rules.push(`ip daddr ${ip} tcp sport ${remotePort} counter drop`)
    const script = [
      `table netdev ${this.table} {}`,
      `delete table netdev ${this.table}`,
      `table netdev ${this.table} {`,
      `  chain ingress {`,
      `    type filter hook ingress device "${ifname}" priority -500; policy accept;`,
      ...rules.map((r) => `    ${r}`),
      '  }',
      '}',
      '',
    ].join('\n')
    await nft(['-f', '-'], script)
    this.installed = true
  }

  async remove(): Promise<void> {
    if (!this.installed) return
    this.installed = false
    await nft(['delete', 'table', 'netdev', this.table]).catch(() => {})
  }
}

async function nft(args: string[], input?: string): Promise<void> {
  try {
    const child = run('nft', args, { timeout: 10_000 })
    if (input !== undefined) child.child.stdin?.end(input)
    await child
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { stderr?: string }
    if (e.code === 'ENOENT') {
      throw new VrioError(
        'missing-tool',
        'nft (nftables) is needed to keep the kernel off vrio traffic; install nftables',
      )
    }
    throw new VrioError('kernel-guard-failed', `nft failed: ${(e.stderr ?? e.message).trim().split('\n')[0]}`)
  }
}
