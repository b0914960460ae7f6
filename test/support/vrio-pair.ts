/** An IOhyp and a guest, as daemon processes in two namespaces, with the guest enrolled: the base of device tests. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { DiskInfo, ListGuestsResponse } from '../../src/control/api.ts'
import { formatIPv4 } from '../../src/wire/address.ts'
import { DaemonProcess, vrioAsync, vrioJsonAsync } from './daemons.ts'
import type { VethEnd } from './harness.ts'
import { ip } from './netns.ts'

export class VrioPair {
  readonly dir: string
  readonly iohypEnd: VethEnd
  readonly guestEnd: VethEnd
  iohyp!: DaemonProcess
  guest!: DaemonProcess
  guestMac = ''

  constructor(iohypEnd: VethEnd, guestEnd: VethEnd) {
    this.iohypEnd = iohypEnd
    this.guestEnd = guestEnd
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
    this.guestMac = JSON.parse(ip(this.guestEnd.ns, ['-j', 'link', 'show', this.guestEnd.ifname]))[0].address
    const key = join(this.dir, 'guest.key')
    if ((await vrioAsync(['keygen', '--out', key])).status !== 0) throw new Error('keygen failed')
    this.startIohyp()
    this.startGuest()
    await Promise.all([this.iohyp.waitForLog('iohyp started'), this.guest.waitForLog('guest started')])
    const r = await vrioAsync([
      'guests',
      'add',
      '--mac',
      this.guestMac,
      '--address',
      formatIPv4(this.guestEnd.ip),
      '--key-file',
      key,
      '--control',
      this.sock('iohyp'),
    ])
    if (r.status !== 0) throw new Error(`guests add failed: ${r.stderr}`)
    await this.waitConnected()
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
    ])
  }

  /** Extra `vrio guest` options (e.g. --io-timeout). */
  guestOptions: string[] = []

  startGuest(): void {
    this.guest = new DaemonProcess('guest', this.guestEnd.ns, [
      'guest',
      '--interface',
      this.guestEnd.ifname,
      '--key-file',
      join(this.dir, 'guest.key'),
      '--control',
      this.sock('guest'),
      '--run-dir',
      this.runDir,
      '--attach',
      ...this.guestOptions,
    ])
  }

  async waitConnected(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const r = await vrioAsync(['guests', 'list', '--json', '--control', this.sock('iohyp')])
      if (r.status === 0 && (JSON.parse(r.stdout) as ListGuestsResponse).guests[0]?.state === 'connected')
        return
      if (Date.now() > deadline) throw new Error(`the guest did not connect within ${timeoutMs} ms`)
      await sleep(50)
    }
  }

  /** Creates a disk for the guest (without blocking the event loop). */
  createDisk(backing: string, name: string): Promise<DiskInfo> {
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
    ])
  }

  async removeDisk(name: string): Promise<void> {
    const r = await vrioAsync(['blk', 'remove', name, '--control', this.sock('iohyp')])
    if (r.status !== 0) throw new Error(`blk remove ${name} failed: ${r.stderr}`)
  }

  async stop(): Promise<void> {
    await this.guest?.stop('SIGTERM')
    await this.iohyp?.stop('SIGTERM')
    rmSync(this.dir, { recursive: true, force: true })
  }
}
