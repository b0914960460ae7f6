/**
 * `--insecure-plaintext` on both daemons: the channel works unsealed, says so loudly; a daemon of
 * the other mode is refused (mode-mismatch, logged), never downgraded.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { GuestInfo, ListGuestsResponse, StatusInfo } from '../../src/control/api.ts'
import { formatIPv4 } from '../../src/wire/address.ts'
import { DaemonProcess, killDaemons, vrio, vrioJson } from '../support/daemons.ts'
import { cleanupNetns, ip, linkMac, requireRoot } from '../support/netns.ts'
import { firewallCounters, firewalledLan, type Lan } from '../support/topology.ts'
import { waitUntil } from '../support/wait.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

describe('channel modes: --insecure-plaintext on both ends, and a sealed guest refused', () => {
  let lan: Lan
  let dir: string
  const sock = (name: string) => join(dir, `${name}.sock`)
  const macOf = (i: number) => linkMac(lan.ends[i].ns, lan.ends[i].ifname)
  const guest = (i: number) =>
    vrioJson<ListGuestsResponse>(['guests', 'list', '--control', sock('iohyp')]).guests.find(
      (g) => g.mac === macOf(i),
    ) as GuestInfo
  const guestArgs = (i: number, extra: string[]) => [
    'guest',
    '--interface',
    lan.ends[i].ifname,
    '--key-file',
    join(dir, `g${i}.key`),
    '--control',
    sock(`guest${i}`),
    '--run-dir',
    join(dir, `run${i}`),
    ...extra,
  ]

  before(() => {
    requireRoot()
    lan = firewalledLan(3)
    dir = mkdtempSync(join(tmpdir(), 'vrio-modes-'))
    for (const end of lan.ends) ip(end.ns, ['addr', 'add', `${formatIPv4(end.ip)}/24`, 'dev', end.ifname])
    for (const i of [1, 2]) assert.equal(vrio(['keygen', '--out', join(dir, `g${i}.key`)]).status, 0)
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('plaintext pair connects and says so; the sealed guest drops its SYNs as mode-mismatch', async () => {
    const iohyp = new DaemonProcess('iohyp', lan.ends[0].ns, [
      'iohyp',
      '--interface',
      lan.ends[0].ifname,
      '--state-dir',
      join(dir, 'state'),
      '--control',
      sock('iohyp'),
      '--insecure-plaintext',
    ])
    const plain = new DaemonProcess('plaintext guest', lan.ends[1].ns, guestArgs(1, ['--insecure-plaintext']))
    const sealed = new DaemonProcess('sealed guest', lan.ends[2].ns, guestArgs(2, []))
    await Promise.all([
      iohyp.waitForLog('iohyp started'),
      plain.waitForLog('guest started'),
      sealed.waitForLog('guest started'),
    ])
    assert.ok(
      iohyp.logs.some((l) => l.includes('"level":"warn"') && l.includes('INSECURE')),
      'a loud warning at start',
    )
    for (const i of [1, 2]) {
      const r = vrio([
        'guests',
        'add',
        '--mac',
        macOf(i),
        '--address',
        formatIPv4(lan.ends[i].ip),
        '--key-file',
        join(dir, `g${i}.key`),
        '--control',
        sock('iohyp'),
      ])
      assert.equal(r.status, 0, r.stderr)
    }
    await waitUntil(() => guest(1).state === 'connected', 'the plaintext guest to connect', 10_000)
    assert.equal(guest(1).channel, 'plaintext (insecure)')
    assert.equal(vrioJson<StatusInfo>(['status', '--control', sock('iohyp')]).channel, 'plaintext (insecure)')
    const status = vrioJson<StatusInfo>(['status', '--control', sock('guest1')])
    assert.equal(status.channel, 'plaintext (insecure)')
    assert.equal(status.iohyp?.channel, 'plaintext (insecure)')
    assert.match(vrio(['status', '--control', sock('iohyp')]).stdout, /channel:\s+plaintext \(insecure\)/)

    await waitUntil(
      () =>
        (vrioJson<StatusInfo>(['status', '--control', sock('guest2')]).drops?.['mode-mismatch'] ?? 0) >= 2,
      'the sealed guest to drop the plaintext SYNs',
      10_000,
    )
    assert.notEqual(guest(2).state, 'connected')
    await sealed.waitForLog('peer uses the other channel mode: refused (no downgrade)')
    const mismatchLogs = sealed.logs.filter((l) => l.includes('peer uses the other channel mode'))
    assert.equal(mismatchLogs.length, 1, 'logged once per peer')
    assert.match(mismatchLogs[0], /"peerMode":"plaintext"/)
    assert.equal(firewallCounters(lan.firewall.ns).invalid, 0, 'conntrack marked nothing invalid')
    for (const d of [iohyp, plain, sealed]) await d.stop('SIGTERM')
  })
})
