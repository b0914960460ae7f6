/** An IOhyp and a guest, as daemon processes in two namespaces, with the guest enrolled: the base of device tests. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { DiskInfo, ListGuestsResponse, NicInfo, StatusInfo } from '../../src/control/api.ts'
import { formatIPv4 } from '../../src/wire/address.ts'
import { DaemonProcess, vrioAsync, vrioJsonAsync } from './daemons.ts'
import type { VethEnd } from './harness.ts'
import { type ImpairedLink, type Impairment, impairedLink } from './impair.ts'
import { ip, linkMac, type Netns } from './netns.ts'
import { directLink, type World, worldOnBridge } from './topology.ts'

/** How a VrioPair's daemons run. */
export interface PairOptions {
  /** Both daemons with --insecure-plaintext (protocol version 1), e.g. for sealed-vs-plaintext benches. */
  plaintext?: boolean
  /** Extra `vrio iohyp` / `vrio guest` options (e.g. --metrics). */
  iohypOptions?: readonly string[]
  guestOptions?: readonly string[]
}

/** A further guest on the same IOhyp (see VrioPair.addGuest). */
export interface ExtraGuest {
  end: VethEnd
  mac: string
  daemon: DaemonProcess
  /** Its control socket. */
  sock: string
}

/** A NIC back-end: TAP `tap` on the IOhyp's bridge `brw` (see topology.ts worldOnBridge). */
export function onBridge(tap: string): string[] {
  return ['--tap', tap, '--bridge', 'brw']
}

/**
 * VRIO_TEST_IOCORES=N: every IOhyp the tests start runs N iocores (unless the test sets its own),
 * so the integration suites can run over the threaded IOhyp too.
 */
const IOCORES = process.env.VRIO_TEST_IOCORES ? ['--iocores', process.env.VRIO_TEST_IOCORES] : []
/**
 * VRIO_TEST_POLL=1: every IOhyp and guest agent the tests start polls after every frame (`--poll`;
 * with `--poll-idle-us VRIO_TEST_POLL_IDLE_US` if set), and start() checks that both counted poll
 * rounds; VRIO_TEST_POLL=iohyp or =guest: that side only. VRIO_TEST_POLL=off: the guest agents
 * never poll (`--no-poll`; by default they poll while disk requests are outstanding).
 */
export const poll = (side: 'iohyp' | 'guest'): string[] => {
  const v = process.env.VRIO_TEST_POLL
  if (v === 'off') return side === 'guest' ? ['--no-poll'] : []
  return v === '1' || v === side
    ? [
        '--poll',
        ...(process.env.VRIO_TEST_POLL_IDLE_US ? ['--poll-idle-us', process.env.VRIO_TEST_POLL_IDLE_US] : []),
      ]
    : []
}

export class VrioPair {
  readonly dir: string
  readonly iohypEnd: VethEnd
  readonly guestEnd: VethEnd
  iohyp!: DaemonProcess
  guest!: DaemonProcess
  guestMac = ''

  /** Options both daemons get: `--insecure-plaintext` for a pair on the unsealed channel. */
  readonly channelOptions: readonly string[]

  constructor(iohypEnd: VethEnd, guestEnd: VethEnd, options: PairOptions = {}) {
    this.iohypEnd = iohypEnd
    this.guestEnd = guestEnd
    this.channelOptions = options.plaintext ? ['--insecure-plaintext'] : []
    this.iohypOptions = [...(options.iohypOptions ?? [])]
    this.guestOptions = [...(options.guestOptions ?? [])]
    this.dir = mkdtempSync(join(tmpdir(), 'vrio-pair-'))
  }

  sock(name: 'iohyp' | 'guest'): string {
    return join(this.dir, `${name}.sock`)
  }

  get runDir(): string {
    return join(this.dir, 'run')
  }

  /** Configures addresses, starts both daemons (the guest with --attach), enrols the guest, waits until connected. */
  async start(): Promise<void> {
    for (const end of [this.iohypEnd, this.guestEnd])
      ip(end.ns, ['addr', 'add', `${formatIPv4(end.ip)}/24`, 'dev', end.ifname])
    this.guestMac = linkMac(this.guestEnd.ns, this.guestEnd.ifname)
    const key = join(this.dir, 'guest.key')
    if ((await vrioAsync(['keygen', '--out', key])).status !== 0) throw new Error('keygen failed')
    this.startIohyp()
    this.startGuest()
    await Promise.all([this.iohyp.waitForLog('iohyp started'), this.guest.waitForLog('guest started')])
    await this.enrol(this.guestMac, this.guestEnd.ip, key)
    await this.waitConnected()
    for (const side of ['iohyp', 'guest'] as const) {
      if (poll(side)[0] === '--poll') {
        const s = await vrioJsonAsync<StatusInfo>(['status', '--json', '--control', this.sock(side)])
        if (!((s.socket?.polls ?? 0) > 0))
          throw new Error(`VRIO_TEST_POLL: the ${side} counted no poll rounds`)
      }
    }
  }

  /** Enrols a guest with the IOhyp (`vrio guests add`). */
  async enrol(mac: string, address: number, key: string): Promise<void> {
    const r = await vrioAsync([
      'guests',
      'add',
      '--mac',
      mac,
      '--address',
      formatIPv4(address),
      '--key-file',
      key,
      '--control',
      this.sock('iohyp'),
    ])
    if (r.status !== 0) throw new Error(`guests add failed: ${r.stderr}`)
  }

  readonly extraGuests: ExtraGuest[] = []

  /** Starts another guest agent on `end` (an interface on the IOhyp's LAN), enrols it and waits until every guest is connected. */
  async addGuest(end: VethEnd): Promise<ExtraGuest> {
    const n = this.extraGuests.length + 2
    ip(end.ns, ['addr', 'add', `${formatIPv4(end.ip)}/24`, 'dev', end.ifname])
    const mac = linkMac(end.ns, end.ifname)
    const key = join(this.dir, `guest${n}.key`)
    if ((await vrioAsync(['keygen', '--out', key])).status !== 0) throw new Error('keygen failed')
    const sock = join(this.dir, `guest${n}.sock`)
    const daemon = guestDaemon(`guest${n}`, end, key, sock, join(this.dir, `run${n}`), this.channelOptions)
    const g = { end, mac, daemon, sock }
    this.extraGuests.push(g)
    await daemon.waitForLog('guest started')
    await this.enrol(mac, end.ip, key)
    await this.waitConnected()
    return g
  }

  startIohyp(): void {
    this.iohyp = new DaemonProcess('iohyp', this.iohypEnd.ns, [
      'iohyp',
      '--interface',
      this.iohypEnd.ifname,
      '--state-dir',
      join(this.dir, 'state'),
      '--control',
      this.sock('iohyp'),
      ...IOCORES,
      ...poll('iohyp'),
      ...this.iohypOptions,
      ...this.channelOptions,
    ])
  }

  /** Extra `vrio iohyp` options (e.g. --metrics). */
  iohypOptions: string[] = []

  /** Extra `vrio guest` options (e.g. --io-timeout). */
  guestOptions: string[] = []

  startGuest(): void {
    this.guest = guestDaemon(
      'guest',
      this.guestEnd,
      join(this.dir, 'guest.key'),
      this.sock('guest'),
      this.runDir,
      ['--attach', ...this.guestOptions, ...this.channelOptions],
    )
  }

  /** Waits until every enrolled guest is connected. */
  async waitConnected(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    // Both sides: after a guest agent restarts, the IOhyp may still list the old (sealed, so not
    // resettable by the new agent) connection as connected until its keepalive gives up on it;
    // the restarted agent reports connected only once its own session is up.
    const agents = [
      ...(this.guest?.alive ? [this.sock('guest')] : []),
      ...this.extraGuests.filter((g) => g.daemon.alive).map((g) => g.sock),
    ]
    const agentConnected = async (sock: string) => {
      const r = await vrioAsync(['status', '--json', '--control', sock])
      return r.status === 0 && (JSON.parse(r.stdout) as StatusInfo).iohyp?.state === 'connected'
    }
    for (;;) {
      const r = await vrioAsync(['guests', 'list', '--json', '--control', this.sock('iohyp')])
      const guests = r.status === 0 ? (JSON.parse(r.stdout) as ListGuestsResponse).guests : []
      if (
        guests.length > 0 &&
        guests.every((g) => g.state === 'connected') &&
        (await Promise.all(agents.map(agentConnected))).every(Boolean)
      )
        return
      if (Date.now() > deadline) throw new Error(`the guest did not connect within ${timeoutMs} ms`)
      await sleep(50)
    }
  }

  /** Creates a disk for the guest (without blocking the event loop); `extra`: more `blk create` options. */
  createDisk(backing: string, name: string, extra: readonly string[] = []): Promise<DiskInfo> {
    return vrioJsonAsync<DiskInfo>([
      'blk',
      'create',
      '--guest',
      this.guestMac,
      '--backing',
      backing,
      '--name',
      name,
      '--control',
      this.sock('iohyp'),
      ...extra,
    ])
  }

  /**
   * Creates a NIC named `name` (also the guest's interface) with MAC `mac` for a guest (default:
   * the first), its IOhyp end `backend`: e.g. `onBridge('vt1')` or `['--macvtap', uplink]`.
   */
  createNic(
    name: string,
    mac: string,
    backend: readonly string[],
    o: { guest?: string; extra?: readonly string[] } = {},
  ): Promise<NicInfo> {
    return vrioJsonAsync<NicInfo>([
      'nic',
      'create',
      '--guest',
      o.guest ?? this.guestMac,
      '--mac',
      mac,
      ...backend,
      '--name',
      name,
      ...(o.extra ?? []),
      '--json',
      '--control',
      this.sock('iohyp'),
    ])
  }

  /** `vrio nic services NAME ARGS... --json` on the IOhyp (show, or replace with --firewall/--dpi). */
  nicServices(name: string, args: readonly string[] = []) {
    return vrioAsync(['nic', 'services', name, ...args, '--json', '--control', this.sock('iohyp')])
  }

  /** `vrio KIND list --json` on one side's control socket. */
  list<T>(kind: 'nic' | 'blk' | 'guests', side: 'iohyp' | 'guest' = 'iohyp'): Promise<T> {
    return vrioJsonAsync<T>([kind, 'list', '--json', '--control', this.sock(side)])
  }

  async removeDisk(name: string): Promise<void> {
    const r = await vrioAsync(['blk', 'remove', name, '--control', this.sock('iohyp')])
    if (r.status !== 0) throw new Error(`blk remove ${name} failed: ${r.stderr}`)
  }

  async stop(): Promise<void> {
    for (const g of this.extraGuests) await g.daemon.stop('SIGTERM')
    await this.guest?.stop('SIGTERM')
    await this.iohyp?.stop('SIGTERM')
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** A `vrio guest` daemon on `end`. */
function guestDaemon(
  name: string,
  end: VethEnd,
  key: string,
  sock: string,
  runDir: string,
  extra: readonly string[] = [],
): DaemonProcess {
  return new DaemonProcess(name, end.ns, [
    'guest',
    '--interface',
    end.ifname,
    '--key-file',
    key,
    '--control',
    sock,
    '--run-dir',
    runDir,
    ...poll('guest'),
    ...extra,
  ])
}

/**
 * An IOhyp and an enrolled, connected guest over a direct veth, and a "world" namespace with
 * `worldAddresses` on the IOhyp's bridge `brw`: the set-up of the remote-NIC tests and benches.
 */
export async function pairWithWorld(
  worldAddresses: readonly string[],
  options: PairOptions = {},
): Promise<{ pair: VrioPair; iohyp: Netns; guest: Netns; world: World }> {
  const link = directLink()
  const pair = new VrioPair(link.a, link.b, options)
  try {
    await pair.start()
    return { pair, iohyp: link.a.ns, guest: link.b.ns, world: worldOnBridge(link.a.ns, worldAddresses) }
  } catch (error) {
    await pair.stop()
    throw error
  }
}

/** The lossy link of the must-holds: 5 % loss, 2 % duplication, reordering. */
export const LOSSY_LINK = {
  loss: 0.05,
  duplicate: 0.02,
  reorder: 0.1,
  reorderDelayMs: 2,
  delayMs: 0,
  seed: 4,
} as const

/**
 * An IOhyp and an enrolled guest over an impairedLink with `faults`, forwarding with virtio-net
 * headers as the daemons send them (a lost GSO super-frame loses all its segments).
 */
export async function pairOverImpairedLink(
  faults: Omit<Impairment, 'vnetHdr'>,
): Promise<{ pair: VrioPair; link: ImpairedLink }> {
  const link = impairedLink({ ...faults, vnetHdr: true })
  const pair = new VrioPair(link.a, link.b)
  try {
    await pair.start()
  } catch (error) {
    await pair.stop()
    link.stop()
    throw error
  }
  return { pair, link }
}
