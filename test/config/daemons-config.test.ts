import assert from 'node:assert/strict'
import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import YAML from 'yaml'
import { readKeyFile } from '../../src/auth/key-file.ts'
import type { GuestInfo, ListDisksResponse, ListGuestsResponse, StatusInfo } from '../../src/control/api.ts'
import { formatIPv4 } from '../../src/wire/address.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'
import { DaemonProcess, killDaemons, vrio, vrioJson } from '../support/daemons.ts'
import { cleanupNetns, exec, linkMac, requireRoot } from '../support/netns.ts'
import { directLink, type Topology } from '../support/topology.ts'
import { waitUntil } from '../support/wait.ts'
import { ERROR_CATALOGUE, EXIT } from '../../src/errors.ts'
import { parseStateFile } from '../../src/iohyp/state-file.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

/** The daemons started from config files, in namespaces (needs root). */
describe('vrio iohyp --config and vrio guest --config', () => {
  let link: Topology
  let tmp: TempDir
  const sock = (name: string) => tmp.path(`${name}.sock`)
  let guestMac: string
  const iohypConfig = (guestAddress = formatIPv4(link.b.ip)) => ({
    interface: link.a.ifname,
    address: formatIPv4(link.a.ip),
    stateDir: 'state',
    // The command line's --control overrides this.
    control: 'not-this.sock',
    budgets: { pendingReplyBytes: 32 * 1024 * 1024 },
    guests: [
      {
        mac: guestMac,
        address: guestAddress,
        keyFile: 'g.key',
        name: 'web',
        budgets: { reassemblyBytes: 8 * 1024 * 1024 },
      },
      { mac: '52:54:00:00:00:42', address: '10.99.0.42', keyFile: 'other.key' },
    ],
    disks: [{ name: 'root', guest: 'web', backing: 'root.img' }],
  })
  const writeYaml = (name: string, doc: unknown) => {
    writeFileSync(tmp.path(name), YAML.stringify(doc))
    return tmp.path(name)
  }
  const guests = () => vrioJson<ListGuestsResponse>(['guests', 'list', '--control', sock('iohyp')]).guests
  const byMac = (list: GuestInfo[]) => Object.fromEntries(list.map((g) => [g.mac, g.address]))

  before(() => {
    requireRoot()
    link = directLink()
    tmp = tempDir('vrio-config-daemons-')
    for (const k of ['g.key', 'other.key', 'late.key'])
      assert.equal(vrio(['keygen', '--out', tmp.path(k)]).status, 0)
    writeFileSync(tmp.path('root.img'), Buffer.alloc(1024 * 1024))
    guestMac = linkMac(link.b.ns, link.b.ifname)
  })
  after(() => tmp.remove())

  it('a bad config: one line naming the field, non-zero exit, nothing started or left behind', () => {
    const bad = iohypConfig()
    bad.guests[1].mac = 'zz'
    const badIohyp = writeYaml('bad-iohyp.yaml', bad)
    const badGuest = writeYaml('bad-guest.yaml', { interface: link.b.ifname, keyFile: 'g.key', ioTimeot: 5 })
    const runs: [string[], RegExp][] = [
      [
        ['iohyp', '--config', badIohyp, '--control', sock('iohyp')],
        /guests\[1\]\.mac: 'zz' is not a MAC address/,
      ],
      [['guest', '--config', badGuest, '--control', sock('guest')], /ioTimeot: unknown key/],
    ]
    for (const [args, expected] of runs) {
      const ns = args[0] === 'iohyp' ? link.a.ns : link.b.ns
      const r = vrio(args, ns)
      assert.equal(r.status, EXIT.usage, r.stderr)
      assert.match(r.stderr, /^vrio: config .*bad-\w+\.yaml: /)
      assert.match(r.stderr, expected)
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
      assert.doesNotMatch(exec(ns, 'nft', ['list', 'tables']), /vrio_/)
    }
    assert.ok(!existsSync(sock('iohyp')) && !existsSync(sock('guest')), 'no control socket left behind')
    assert.ok(!existsSync(tmp.path('state')), 'no state directory made')
  })

  it('a good config enrols its guests and disks; the guest, from its own config, connects', async () => {
    const iohyp = new DaemonProcess('iohyp', link.a.ns, [
      'iohyp',
      '--config',
      writeYaml('iohyp.yaml', iohypConfig()),
      '--control',
      sock('iohyp'),
    ])
    await iohyp.waitForLog('iohyp started')
    assert.ok(!existsSync(tmp.path('not-this.sock')), "the command line's --control wins")
    assert.deepEqual(byMac(guests()), {
      [guestMac]: formatIPv4(link.b.ip),
      '52:54:00:00:00:42': '10.99.0.42',
    })
    const disks = vrioJson<ListDisksResponse>(['blk', 'list', '--control', sock('iohyp')]).disks
    assert.deepEqual(
      disks.map((d) => [d.name, d.guest, d.backing]),
      [['root', guestMac, tmp.path('root.img')]],
    )

    const guest = new DaemonProcess('guest', link.b.ns, [
      'guest',
      '--config',
      writeYaml('guest.yaml', {
        interface: link.b.ifname,
        address: formatIPv4(link.b.ip),
        keyFile: 'g.key',
        runDir: 'run',
        control: 'guest.sock',
        ioTimeout: 5,
      }),
    ])
    await guest.waitForLog('guest started')
    await waitUntil(
      () => guests().find((g) => g.mac === guestMac)?.state === 'connected',
      'the configured guest to connect',
      15_000,
    )
    // Budgets: the guest's own over the file's defaults over the built-in ones; nothing held at rest.
    const budgetsOf = (mac: string) => {
      const g = guests().find((x) => x.mac === mac)!
      return { budgets: g.budgets, held: g.held }
    }
    assert.deepEqual(budgetsOf(guestMac), {
      budgets: { pendingReplyBytes: 32 * 1024 * 1024, reassemblyBytes: 8 * 1024 * 1024 },
      held: { pendingReplyBytes: 0, reassemblyBytes: 0 },
    })
    assert.deepEqual(budgetsOf('52:54:00:00:00:42').budgets, {
      pendingReplyBytes: 32 * 1024 * 1024,
      reassemblyBytes: 12 * 1024 * 1024,
    })
    const status = vrioJson<StatusInfo>(['status', '--control', sock('guest')])
    assert.equal(status.iohyp?.state, 'connected')
    await waitUntil(
      () => vrioJson<ListDisksResponse>(['blk', 'list', '--control', sock('guest')]).disks.length === 1,
      'the guest to get the configured disk',
      15_000,
    )

    // A live change, persisted in the state directory.
    const late = vrio([
      'guests',
      'add',
      '--mac',
      '52:54:00:00:00:77',
      '--address',
      '10.99.0.77',
      '--key-file',
      tmp.path('late.key'),
      '--pending-reply-bytes',
      '1048576',
      '--control',
      sock('iohyp'),
    ])
    assert.equal(late.status, 0, late.stderr)
    assert.equal(guests().find((g) => g.mac === '52:54:00:00:00:77')?.budgets.pendingReplyBytes, 1048576)

    // Export while running: a config with key files, valid as it is.
    const exported = vrioJson<{ config: string; keyFiles: string[] }>([
      'config',
      'export',
      '--control',
      sock('iohyp'),
      '--key-dir',
      tmp.path('exported/keys'),
      '--out',
      tmp.path('exported/iohyp.yaml'),
    ])
    assert.equal(exported.keyFiles.length, 3)
    assert.deepEqual(
      readKeyFile(tmp.path('exported/keys/guest-52-54-00-00-00-77.key')),
      readKeyFile(tmp.path('late.key')),
    )
    const check = vrio(['config', 'check', exported.config, '--daemon', 'iohyp'])
    assert.equal(check.status, 0, check.stderr)
    assert.match(check.stdout, /is valid for vrio iohyp: interface \S+, 3 guests, 1 disk, 0 NICs/)

    await iohyp.stop()
    await guest.stop()
    assert.equal(iohyp.exitCode, 0)
    // The state file, and the last good copy it rotated at its saves.
    assert.deepEqual(readdirSync(tmp.path('state')).sort(), [
      'iohyp-state.json',
      'iohyp-state.json.last-good',
    ])
  })

  it('on restart the state file is restored, then the config applied over it (config wins)', async () => {
    writeFileSync(tmp.path('root2.img'), Buffer.alloc(1024 * 1024))
    const config = iohypConfig('10.99.0.200')
    config.disks[0].backing = 'root2.img'
    const iohyp = new DaemonProcess('iohyp', link.a.ns, [
      'iohyp',
      '--config',
      writeYaml('iohyp2.yaml', config),
      '--control',
      sock('iohyp'),
    ])
    await iohyp.waitForLog('iohyp started')
    assert.deepEqual(byMac(guests()), {
      [guestMac]: '10.99.0.200',
      '52:54:00:00:00:42': '10.99.0.42',
      '52:54:00:00:00:77': '10.99.0.77',
    })
    const disks = vrioJson<ListDisksResponse>(['blk', 'list', '--control', sock('iohyp')]).disks
    assert.deepEqual(
      disks.map((d) => [d.name, d.backing]),
      [['root', tmp.path('root2.img')]],
    )
    await iohyp.stop()

    // A config guest on the address of another guest of the state file: refused, not guessed.
    const clash = iohypConfig()
    clash.guests[1].address = '10.99.0.77'
    const r = vrio(
      ['iohyp', '--config', writeYaml('clash.yaml', clash), '--control', sock('iohyp')],
      link.a.ns,
    )
    assert.equal(r.status, EXIT.conflict, r.stderr)
    assert.match(
      r.stderr,
      /^vrio: config guest 52:54:00:00:00:42: address 10\.99\.0\.77 is used by enrolled guest 52:54:00:00:00:77/,
    )
    assert.ok(!existsSync(sock('iohyp')))

    // A hand-edited state file: the start is refused naming the field; the file is left as it
    // is, and the last good copy, named in the error, is a state the daemon can start from.
    const statePath = tmp.path('state/iohyp-state.json')
    const edited = JSON.parse(readFileSync(statePath, 'utf8'))
    edited.guests[0].mac = 'zz'
    edited.disks[0].handle.low = -1
    const editedText = JSON.stringify(edited)
    writeFileSync(statePath, editedText)
    const bad = vrio(
      ['iohyp', '--config', writeYaml('iohyp3.yaml', config), '--control', sock('iohyp')],
      link.a.ns,
    )
    assert.equal(bad.status, ERROR_CATALOGUE['invalid-state'].exit, bad.stderr)
    assert.match(
      bad.stderr,
      /^vrio: state file \S+iohyp-state\.json: guests\[0\]\.mac: 'zz' is not a MAC address/,
    )
    assert.match(bad.stderr, /disks\[0\]\.handle\.low: must be at least 0/)
    assert.match(bad.stderr, /last good copy is \S+iohyp-state\.json\.last-good/)
    assert.equal(readFileSync(statePath, 'utf8'), editedText, 'the bad file is left as it is')
    assert.ok(!existsSync(sock('iohyp')))
    const lastGood = parseStateFile(readFileSync(`${statePath}.last-good`, 'utf8'), 'last-good')
    assert.ok(lastGood.guests.length >= 2)
    renameSync(`${statePath}.last-good`, statePath)
    const again = new DaemonProcess('iohyp', link.a.ns, [
      'iohyp',
      '--config',
      writeYaml('iohyp4.yaml', config),
      '--control',
      sock('iohyp'),
    ])
    await again.waitForLog('iohyp started')
    assert.equal(guests().length, 3)
    await again.stop()
  })

  it('vrio config check: a summary, or every problem with a non-zero exit', () => {
    const good = vrio(['config', 'check', tmp.path('iohyp.yaml'), '--daemon', 'iohyp', '--json'])
    assert.equal(good.status, 0, good.stderr)
    const summary = JSON.parse(good.stdout)
    assert.equal(summary.valid, true)
    assert.equal(summary.config.guests.length, 2)
    assert.ok(!good.stdout.includes(readKeyFile(tmp.path('g.key')).toString('hex')), 'no key in the output')
    const bad = vrio(['config', 'check', tmp.path('bad-iohyp.yaml'), '--daemon', 'iohyp', '--json'])
    assert.equal(bad.status, EXIT.usage)
    const error = JSON.parse(bad.stdout).error
    assert.equal(error.code, 'invalid-config')
    assert.deepEqual(
      error.errors.map((e: { path: string }) => e.path),
      ['guests[1].mac'],
    )
    const guest = vrio(['config', 'check', tmp.path('guest.yaml'), '--daemon', 'guest'])
    assert.equal(guest.status, 0, guest.stderr)
  })
})
