/**
 * Remote NICs end to end: guest agents and the IOhyp as daemon processes in namespaces; each
 * guest's interface is a TAP in its namespace, the IOhyp's side a TAP on a bridge that a "world"
 * namespace also sits on. Real tools (ping, iperf3, curl, python's http.server) drive the traffic.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { GuestNicInfo, ListGuestsResponse, ListNicsResponse } from '../../src/control/api.ts'
import { killDaemons, vrioAsync } from '../support/daemons.ts'
import type { ImpairedLink } from '../support/impair.ts'
import {
  cleanupNetns,
  createNetns,
  createVethPair,
  exec,
  execAsync,
  ip,
  linkMac,
  type Netns,
  requireRoot,
} from '../support/netns.ts'
import { worldOnBridge as bridgeWorld, directLink, firewalledLan } from '../support/topology.ts'
import { type ExtraGuest, onBridge, pairOverImpairedLink, VrioPair } from '../support/vrio-pair.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const MiB = 1024 * 1024
const WORLD_V4 = '192.168.77.100'
const WORLD_V6 = 'fd77::100'
const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex')
const servers = new Set<ChildProcess>()
/** Servers start at their own pace: connection refused is retried. */
const CURL = ['-sSf', '--retry', '10', '--retry-connrefused', '--retry-delay', '1']
after(() => {
  for (const s of servers) s.kill('SIGKILL')
})

/** A bridge `brw` in the IOhyp's namespace with a "world" namespace on it (IPv4 and IPv6). */
function worldOnBridge(iohyp: Netns): Netns {
  return bridgeWorld(iohyp, [`${WORLD_V4}/24`, `${WORLD_V6}/64`], { ipv6: true }).ns
}

function enableIPv6(ns: Netns): void {
  exec(ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=0', 'net.ipv6.conf.default.disable_ipv6=0'])
}

/** Gives the guest's new interface its addresses (the guest's business, as with any NIC). */
function address(ns: Netns, ifname: string, v4: string, v6: string): void {
  exec(ns, 'sysctl', ['-qw', `net.ipv6.conf.${ifname}.disable_ipv6=0`])
  ip(ns, ['addr', 'add', `${v4}/24`, 'dev', ifname])
  ip(ns, ['-6', 'addr', 'add', `${v6}/64`, 'dev', ifname, 'nodad'])
}

/** Starts a long-running server in a namespace; resolves once `ready` shows on its output (or after a pause). */
async function server(ns: Netns, cmd: string, args: string[]): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', ns.name, cmd, ...args], { stdio: 'ignore' })
  servers.add(child)
  child.on('exit', () => servers.delete(child))
  await sleep(300)
  return child
}

function stopServer(child: ChildProcess): void {
  child.kill('SIGKILL')
}

describe('remote NIC: two guests, an IOhyp bridge and a world namespace', () => {
  let pair: VrioPair
  let g2: ExtraGuest
  let world: Netns
  let g1ns: Netns
  const blobDir = () => join(pair.dir, 'www')

  before(async () => {
    requireRoot()
    const lan = firewalledLan(3)
    pair = new VrioPair(lan.ends[0], lan.ends[1])
    await pair.start()
    g2 = await pair.addGuest(lan.ends[2])
    world = worldOnBridge(lan.ends[0].ns)
    g1ns = lan.ends[1].ns
    enableIPv6(g1ns)
    enableIPv6(g2.end.ns)
    await pair.createNic('vn1', '02:77:00:00:00:01', onBridge('vt1'))
    await pair.createNic('vn2', '02:77:00:00:00:02', onBridge('vt2'), { guest: g2.mac })
    address(g1ns, 'vn1', '192.168.77.1', 'fd77::1')
    address(g2.end.ns, 'vn2', '192.168.77.2', 'fd77::2')
  })
  after(async () => {
    await pair?.stop()
  })

  it('creates each guest interface with the given MAC and MTU, and lists it on both sides', async () => {
    const link = JSON.parse(ip(g1ns, ['-d', '-j', 'link', 'show', 'vn1']))[0]
    assert.equal(link.address, '02:77:00:00:00:01')
    assert.equal(link.mtu, 1500)
    // Super-frames small enough to cross the channel in one segment (NET_GSO_MAX_SIZE).
    assert.equal(link.gso_max_size, 62_000)
    const onIohyp = await pair.list<ListNicsResponse>('nic')
    assert.deepEqual(
      onIohyp.nics.map((n) => [n.name, n.mac, n.state, n.backend]),
      [
        ['vn1', '02:77:00:00:00:01', 'attached', { kind: 'tap', tap: 'vt1', bridge: 'brw' }],
        ['vn2', '02:77:00:00:00:02', 'attached', { kind: 'tap', tap: 'vt2', bridge: 'brw' }],
      ],
    )
    const onGuest = await pair.list<ListNicsResponse<GuestNicInfo>>('nic', 'guest')
    assert.deepEqual(
      onGuest.nics.map((n) => [n.name, n.mac, n.mtu]),
      [['vn1', '02:77:00:00:00:01', 1500]],
    )
  })

  it('pings the world over IPv4 and IPv6, with ARP and neighbour discovery through vrio', async () => {
    await execAsync(g1ns, 'ping', ['-c', '3', '-i', '0.2', '-W', '3', WORLD_V4])
    await execAsync(g1ns, 'ping', ['-6', '-c', '3', '-i', '0.2', '-W', '3', WORLD_V6])
    const worldMac = JSON.parse(ip(world, ['-j', 'link', 'show'])).filter(
      (l: { ifname: string }) => l.ifname !== 'lo',
    )[0].address
    const neigh = JSON.parse(ip(g1ns, ['-j', 'neigh', 'show', 'dev', 'vn1']))
    assert.ok(
      neigh.some((n: { dst: string; lladdr?: string }) => n.dst === WORLD_V4 && n.lladdr === worldMac),
      `ARP entry for the world: ${JSON.stringify(neigh)}`,
    )
    assert.ok(
      neigh.some((n: { dst: string; lladdr?: string }) => n.dst === WORLD_V6 && n.lladdr === worldMac),
      `neighbour entry for the world's IPv6 address: ${JSON.stringify(neigh)}`,
    )
    const back = JSON.parse(ip(world, ['-j', 'neigh', 'show', '192.168.77.1']))
    assert.equal(back[0]?.lladdr, '02:77:00:00:00:01')
  })

  it('carries iperf3 TCP both ways and UDP between the guest and the world', async () => {
    const srv = await server(world, 'iperf3', ['-s', '-B', WORLD_V4, '-p', '5201'])
    try {
      const up = JSON.parse(await execAsync(g1ns, 'iperf3', ['-c', WORLD_V4, '-J', '-t', '2'], 60_000)).end
      assert.ok(up.sum_received.bytes > 10 * MiB, `guest -> world moved ${up.sum_received.bytes} bytes`)
      const down = JSON.parse(
        await execAsync(g1ns, 'iperf3', ['-c', WORLD_V4, '-J', '-t', '2', '-R'], 60_000),
      ).end
      assert.ok(down.sum_received.bytes > 10 * MiB, `world -> guest moved ${down.sum_received.bytes} bytes`)
      const udp = JSON.parse(
        await execAsync(
          g1ns,
          'iperf3',
          ['-c', WORLD_V4, '-J', '-t', '2', '-u', '-b', '100M', '-l', '1400'],
          60_000,
        ),
      ).end.sum
      assert.ok(udp.packets > 1000 && udp.lost_percent < 20, `UDP: ${JSON.stringify(udp)}`)
    } finally {
      stopServer(srv)
    }
  })

  it('moves a 32 MiB file intact in both directions (HTTP, sha256)', async () => {
    const dir = blobDir()
    exec(g1ns, 'mkdir', ['-p', dir])
    const blob = randomBytes(32 * MiB)
    writeFileSync(join(dir, 'blob'), blob)
    const want = sha256(blob)
    const fromWorld = await server(world, 'python3', [
      '-m',
      'http.server',
      '8080',
      '--bind',
      WORLD_V4,
      '--directory',
      dir,
    ])
    const fromGuest = await server(g1ns, 'python3', [
      '-m',
      'http.server',
      '8081',
      '--bind',
      '192.168.77.1',
      '--directory',
      dir,
    ])
    try {
      const down = join(pair.dir, 'down')
      const up = join(pair.dir, 'up')
      await execAsync(g1ns, 'curl', [...CURL, '-o', down, `http://${WORLD_V4}:8080/blob`])
      await execAsync(world, 'curl', [...CURL, '-o', up, 'http://192.168.77.1:8081/blob'])
      assert.equal(sha256(readFileSync(down)), want, 'world -> guest')
      assert.equal(sha256(readFileSync(up)), want, 'guest -> world')
    } finally {
      stopServer(fromWorld)
      stopServer(fromGuest)
    }
  })

  it('lets the two guests reach each other and the world', async () => {
    await execAsync(g1ns, 'ping', ['-c', '2', '-i', '0.2', '-W', '3', '192.168.77.2'])
    await execAsync(g2.end.ns, 'ping', ['-c', '2', '-i', '0.2', '-W', '3', WORLD_V4])
    await execAsync(g2.end.ns, 'ping', ['-6', '-c', '2', '-i', '0.2', '-W', '3', 'fd77::1'])
  })

  it('counts the traffic on both sides', async () => {
    const [vn1] = (await pair.list<ListNicsResponse>('nic')).nics
    assert.ok(vn1.fromGuest.frames > 100 && vn1.fromGuest.bytes > 32 * MiB, JSON.stringify(vn1))
    assert.ok(vn1.toGuest.frames > 100 && vn1.toGuest.bytes > 32 * MiB, JSON.stringify(vn1))
    const [g] = (await pair.list<ListNicsResponse<GuestNicInfo>>('nic', 'guest')).nics
    assert.ok(g.fromGuest.bytes > 32 * MiB && g.toGuest.bytes > 32 * MiB, JSON.stringify(g))
  })

  it('keeps the interface and its addresses across a guest agent restart, and passes traffic again', async () => {
    await pair.guest.stop('SIGKILL')
    assert.equal(
      JSON.parse(ip(g1ns, ['-j', 'addr', 'show', 'vn1']))[0].addr_info.some(
        (a: { local: string }) => a.local === '192.168.77.1',
      ),
      true,
    )
    pair.startGuest()
    await pair.guest.waitForLog('guest started')
    await pair.waitConnected()
    await execAsync(g1ns, 'ping', ['-c', '2', '-i', '0.2', '-w', '10', WORLD_V4])
  })

  it('refuses bad requests with a clear reason', async () => {
    const sock = pair.sock('iohyp')
    const bad = async (args: string[], pattern: RegExp) => {
      const r = await vrioAsync(['nic', 'create', ...args, '--control', sock])
      assert.notEqual(r.status, 0)
      assert.match(r.stderr, pattern)
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    }
    await bad(
      ['--guest', '02:00:00:00:99:99', '--mac', '02:77:00:00:00:09', '--tap', 'vt9'],
      /no enrolled guest/,
    )
    await bad(
      ['--guest', pair.guestMac, '--mac', '02:77:00:00:00:01', '--tap', 'vt9'],
      /already used by NIC vn1/,
    )
    await bad(
      ['--guest', pair.guestMac, '--mac', '02:77:00:00:00:09', '--tap', 'vt9', '--bridge', 'nobr'],
      /bridge nobr does not exist/,
    )
    await bad(
      ['--guest', pair.guestMac, '--mac', '02:77:00:00:00:09', '--tap', 'vt9', '--name', 'vn1'],
      /vn1 exists already/,
    )
    await bad(
      ['--guest', pair.guestMac, '--mac', '02:77:00:00:00:09'],
      /--tap: exactly one of tap and macvtap/,
    )
    await bad(['--guest', pair.guestMac, '--mac', '01:00:5e:00:00:01', '--tap', 'vt9'], /not a unicast MAC/)
    await bad(
      ['--guest', pair.guestMac, '--mac', '02:77:00:00:00:09', '--tap', 'vt9', '--mtu', '9'],
      /--mtu: must be at least 68/,
    )
  })

  it('removing a NIC deletes the guest interface and the IOhyp TAP', async () => {
    const r = await vrioAsync(['nic', 'remove', 'vn2', '--control', pair.sock('iohyp')])
    assert.equal(r.status, 0, r.stderr)
    assert.throws(() => ip(g2.end.ns, ['link', 'show', 'vn2']), /does not exist/)
    assert.throws(() => ip(pair.iohypEnd.ns, ['link', 'show', 'vt2']), /does not exist/)
    const left = await pair.list<ListNicsResponse>('nic')
    assert.deepEqual(
      left.nics.map((n) => n.name),
      ['vn1'],
    )
    const guests = await pair.list<ListGuestsResponse>('guests')
    assert.ok(guests.guests.every((g) => g.state === 'connected'))
  })
})

describe('remote NIC over a link that loses 2% of frames', () => {
  let link: ImpairedLink
  let pair: VrioPair

  before(async () => {
    requireRoot()
    ;({ pair, link } = await pairOverImpairedLink({
      loss: 0.02,
      duplicate: 0,
      reorder: 0,
      reorderDelayMs: 0,
      delayMs: 0,
      seed: 5,
    }))
  })
  after(async () => {
    await pair?.stop()
    link?.stop()
  })

  it("completes TCP transfers in the guest (the guest's TCP recovers what the link lost)", async () => {
    const world = worldOnBridge(link.a.ns)
    await pair.createNic('vn1', '02:77:00:00:01:01', onBridge('vt1'))
    address(link.b.ns, 'vn1', '192.168.77.1', 'fd77::1')
    const dir = join(pair.dir, 'www')
    exec(world, 'mkdir', ['-p', dir])
    const blob = randomBytes(16 * MiB)
    writeFileSync(join(dir, 'blob'), blob)
    const srv = await server(world, 'python3', [
      '-m',
      'http.server',
      '8080',
      '--bind',
      WORLD_V4,
      '--directory',
      dir,
    ])
    try {
      const out = join(pair.dir, 'down')
      await execAsync(
        link.b.ns,
        'curl',
        [...CURL, '--max-time', '120', '-o', out, `http://${WORLD_V4}:8080/blob`],
        150_000,
      )
      assert.equal(sha256(readFileSync(out)), sha256(blob))
    } finally {
      stopServer(srv)
    }
    assert.ok(link.stats.lost > 10, `the link lost ${link.stats.lost} frames`)
  })
})

describe('remote NIC with a macvtap back-end on an uplink', () => {
  let pair: VrioPair

  before(async () => {
    requireRoot()
    const link = directLink()
    pair = new VrioPair(link.a, link.b)
    await pair.start()
  })
  after(async () => {
    await pair?.stop()
  })

  it('reaches the world through a macvtap that receives for the NIC MAC, and removes it', async () => {
    const iohyp = pair.iohypEnd.ns
    const world = createNetns({ ipv6: true })
    const uplink = createVethPair(iohyp, world)
    ip(world, ['addr', 'add', `${WORLD_V4}/24`, 'dev', uplink.b.ifname])
    const nic = await pair.createNic('vn1', '02:77:00:00:02:01', ['--macvtap', uplink.a.ifname])
    assert.equal(nic.backend.kind, 'macvtap')
    const device = (nic.backend as { device: string }).device
    assert.equal(linkMac(iohyp, device), '02:77:00:00:02:01')
    address(pair.guestEnd.ns, 'vn1', '192.168.77.1', 'fd77::1')
    await execAsync(pair.guestEnd.ns, 'ping', ['-c', '3', '-i', '0.2', '-W', '3', WORLD_V4])
    const r = await vrioAsync(['nic', 'remove', 'vn1', '--control', pair.sock('iohyp')])
    assert.equal(r.status, 0, r.stderr)
    assert.throws(() => ip(iohyp, ['link', 'show', device]), /does not exist/)
    assert.throws(() => ip(pair.guestEnd.ns, ['link', 'show', 'vn1']), /does not exist/)
  })
})
