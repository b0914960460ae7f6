import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { GuestInfo, ListGuestsResponse, StatusInfo } from '../../src/control/api.ts'
import { LinkDriver } from '../../src/io/link-driver.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { formatIPv4, parseMac } from '../../src/wire/address.ts'
import { decodeTcpFrame, encodeTcpFrame, newTcpFrame, tcpFrameHeaderLength } from '../../src/wire/frame.ts'
import { clearTcpOptions, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN } from '../../src/wire/tcp.ts'
import { DaemonProcess, killDaemons, vrio, vrioJson } from '../support/daemons.ts'
import { cleanupNetns, exec, ip, linkMac, requireRoot } from '../support/netns.ts'
import { firewallCounters, firewalledLan, type Lan } from '../support/topology.ts'
import { waitUntil } from '../support/wait.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

/** The daemons for real: separate processes in namespaces, talking through a strict conntrack firewall. */
describe('vrio iohyp and vrio guest daemons', () => {
  let lan: Lan
  let dir: string
  const sock = (name: string) => join(dir, `${name}.sock`)
  const iohypArgs = () => [
    'iohyp',
    '--interface',
    lan.ends[0].ifname,
    '--state-dir',
    join(dir, 'state'),
    '--control',
    sock('iohyp'),
  ]
  const guestArgs = (i: number, key: string) => [
    'guest',
    '--interface',
    lan.ends[i].ifname,
    '--key-file',
    join(dir, key),
    '--control',
    sock(`guest${i}`),
    '--run-dir',
    join(dir, `run${i}`),
  ]
  const macOf = (i: number) => linkMac(lan.ends[i].ns, lan.ends[i].ifname)
  const guests = () => vrioJson<ListGuestsResponse>(['guests', 'list', '--control', sock('iohyp')]).guests
  const guest = (i: number) => guests().find((g) => g.mac === macOf(i)) as GuestInfo
  let iohyp: DaemonProcess
  let good: DaemonProcess
  let bad: DaemonProcess

  before(() => {
    requireRoot()
    lan = firewalledLan(3)
    dir = mkdtempSync(join(tmpdir(), 'vrio-daemons-'))
    // Addresses configured on the interfaces: the daemons' kernel guards must keep the kernels quiet.
    for (const end of lan.ends) ip(end.ns, ['addr', 'add', `${formatIPv4(end.ip)}/24`, 'dev', end.ifname])
    for (const k of ['good.key', 'enrolled-for-bad.key', 'wrong.key']) {
      assert.equal(vrio(['keygen', '--out', join(dir, k)]).status, 0)
    }
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('an enrolled guest connects once both are up; a guest with the wrong key is refused and counted', async (t) => {
    iohyp = new DaemonProcess('iohyp', lan.ends[0].ns, iohypArgs())
    good = new DaemonProcess('good guest', lan.ends[1].ns, guestArgs(1, 'good.key'))
    bad = new DaemonProcess('bad guest', lan.ends[2].ns, guestArgs(2, 'wrong.key'))
    await Promise.all([
      iohyp.waitForLog('iohyp started'),
      good.waitForLog('guest started'),
      bad.waitForLog('guest started'),
    ])
    const add = (i: number, key: string) =>
      vrio([
        'guests',
        'add',
        '--mac',
        macOf(i),
        '--address',
        formatIPv4(lan.ends[i].ip),
        '--key-file',
        join(dir, key),
        '--control',
        sock('iohyp'),
      ])
    assert.equal(add(2, 'enrolled-for-bad.key').status, 0)
    const t0 = Date.now()
    const r = add(1, 'good.key')
    assert.equal(r.status, 0, r.stderr)
    // How fast is a benchmark's business (a loaded machine must not fail this test): the deadline
    // is generous, the time is reported.
    await waitUntil(() => guest(1).state === 'connected', 'the good guest to connect', 20_000)
    t.diagnostic(`connected ${Date.now() - t0} ms after guests add`)
    const status = vrioJson<StatusInfo>(['status', '--control', sock('guest1')])
    assert.equal(status.iohyp?.state, 'connected')
    assert.equal(status.channel, 'sealed')
    assert.match(status.iohyp?.channel ?? '', /^sealed \((aes-256-gcm|chacha20-poly1305)\)$/)
    assert.match(vrioJson<StatusInfo>(['status', '--control', sock('iohyp')]).channel ?? '', /^sealed \(/)
    assert.match(guest(1).channel ?? '', /^sealed \(/)
    // Sealed, the bad guest cannot verify the IOhyp's SYNs (another key): it drops them, creating
    // nothing and answering nothing, and counts them.
    await waitUntil(
      () => (vrioJson<StatusInfo>(['status', '--control', sock('guest2')]).drops?.['auth-failed'] ?? 0) >= 2,
      'the bad guest to refuse two SYNs',
      5000,
    )
    assert.notEqual(guest(2).state, 'connected')
    assert.equal(guest(1).state, 'connected')
  })

  it("the host's own TCP traffic on the same addresses keeps working while the daemons run", () => {
    // A kernel TCP server on the IOhyp's address, a kernel TCP client on the guest: vrio must neither
    // answer nor swallow their segments.
    const server = `import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('${formatIPv4(lan.ends[0].ip)}', 10809)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()`
    const child = spawn('ip', ['netns', 'exec', lan.ends[0].ns.name, 'python3', '-c', server], {
      stdio: 'ignore',
    })
    try {
      const client = `import socket, time
for i in range(50):
    try:
        s = socket.create_connection(('${formatIPv4(lan.ends[0].ip)}', 10809), timeout=5); break
    except ConnectionRefusedError:
        time.sleep(0.1)
s.sendall(b'hello vrio'); print(s.recv(100).decode())`
      assert.equal(exec(lan.ends[1].ns, 'python3', ['-c', client]).trim(), 'HELLO VRIO')
    } finally {
      child.kill()
    }
  })

  it('the firewall in between marked nothing invalid and saw established traffic', () => {
    const counts = firewallCounters(lan.firewall.ns)
    assert.equal(counts.invalid, 0)
    assert.ok(counts.established > 10, JSON.stringify(counts))
  })

  it('forged and replayed frames are dropped and counted; the good guest stays connected', async () => {
    // Watch the iohyp's own link from its namespace, keep what the good guest sends it, replay it.
    const tap = PacketSocket.open({ ifname: lan.ends[0].ifname, netns: lan.ends[0].ns.path })
    const fromGuest: Buffer[] = []
    const f = newTcpFrame()
    tap.onBatch((b) => {
      for (let i = 0; i < b.count; i++) {
        const frame = b.frame(i)
        if (decodeTcpFrame(frame, f, false) === undefined && f.ip.source === lan.ends[1].ip)
          fromGuest.push(Buffer.from(frame))
      }
    })
    await waitUntil(() => fromGuest.length >= 3, 'keepalive traffic from the good guest', 10_000)
    tap.close()
    const before = guest(1)
    const replayedBefore = before.drops.replayed ?? 0
    const rejectedBefore = sealDrops(before.drops)
    // The attacker sits on the good guest's segment: it sends from the guest's side of the bridge.
    const attacker = PacketSocket.open({ ifname: lan.ends[1].ifname, netns: lan.ends[1].ns.path })
    // 1. Replays: frames the IOhyp has verified once already, dropped as replayed.
    for (let round = 0; round < 5; round++) attacker.send(fromGuest)
    // 2. Forgeries: the guest's addresses and ports, random sequence numbers, RST and data.
    const forged: Buffer[] = []
    for (let i = 0; i < 200; i++) {
      const t = newTcpFrame()
      decodeTcpFrame(fromGuest[0], t, false)
      t.tcp.seq = (Math.random() * 2 ** 32) >>> 0
      t.tcp.flags = i % 2 ? TCP_RST : TCP_ACK | TCP_PSH
      const payload = i % 2 ? 0 : 100
      const buf = Buffer.alloc(t.payloadOffset + payload, 0x41)
      fromGuest[0].copy(buf, 0, 0, t.payloadOffset)
      encodeTcpFrame(buf, t, payload)
      forged.push(buf)
    }
    attacker.send(forged)
    attacker.close()
    await sleep(500)
    const after = guest(1)
    assert.equal(after.state, 'connected', 'the good guest is still connected')
    assert.ok(
      (after.drops.replayed ?? 0) >= replayedBefore + 5 * fromGuest.length,
      `replays counted: ${JSON.stringify(after.drops)}`,
    )
    // Those forgeries the firewall let through (see below) never pass verification either.
    assert.ok(sealDrops(after.drops) >= rejectedBefore + 5 * fromGuest.length)
    assert.ok(iohyp.alive && good.alive)
    // The forgeries crossed the firewall, which is a real judge of TCP: it caught them.
    assert.ok(firewallCounters(lan.firewall.ns).invalid > 0, 'the firewall marked the forgeries invalid')
  })

  it('the guest learned its IOhyp: SYNs from elsewhere are dropped, a flood spoofing the IOhyp creates and displaces nothing', async () => {
    const status = () => vrioJson<StatusInfo>(['status', '--control', sock('guest1')])
    const before = status()
    assert.equal(before.preAuth?.iohypAddress, formatIPv4(lan.ends[0].ip))
    assert.equal(before.preAuth?.iohypAddressSource, 'learned')
    assert.equal(readFileSync(join(dir, 'run1', 'iohyp-address'), 'utf8').trim(), formatIPv4(lan.ends[0].ip))
    // A third host on the segment (the bad guest's namespace): SYNs from its own address, then a
    // blind flood from its own MAC spoofing the IOhyp's address over the ephemeral ports.
    const attacker = PacketSocket.open({
      ifname: lan.ends[2].ifname,
      netns: lan.ends[2].ns.path,
      protocol: 0,
    })
    const attackerMac = parseMac(attacker.mac)!
    const syn = (source: number, port: number): Buffer => {
      const t = newTcpFrame()
      t.ethernet.source = attackerMac
      t.ethernet.destination = parseMac(macOf(1))!
      t.ip.source = source
      t.ip.destination = lan.ends[1].ip
      t.ip.ttl = 64
      t.tcp.sourcePort = port
      t.tcp.destinationPort = 7860
      t.tcp.seq = (Math.random() * 2 ** 32) >>> 0
      t.tcp.flags = TCP_SYN
      t.tcp.window = 65_535
      clearTcpOptions(t.tcp.options)
      t.tcp.options.mss = 1460
      // A sealed SYN as the real IOhyp sends them, but its tag was not made with the guest's key.
      t.tcp.options.vrioVersion = 2
      t.tcp.options.vrioCipher = 1
      t.tcp.options.seal.present = true
      const buf = Buffer.alloc(tcpFrameHeaderLength(t.tcp.options))
      encodeTcpFrame(buf, t, 0)
      return buf
    }
    const foreign = Array.from({ length: 20 }, (_, i) => syn(lan.ends[2].ip, 50_000 + i))
    attacker.send(foreign)
    // 1024 of them, spread over the whole range (the kernel's path through the firewall is slow).
    for (let port = 49_152; port < 65_536; port += 16 * 64) {
      attacker.send(Array.from({ length: 64 }, (_, i) => syn(lan.ends[0].ip, port + 16 * i)))
      await sleep(1)
    }
    attacker.close()
    await waitUntil(
      () => (status().preAuth?.foreignAddress ?? 0) >= before.preAuth!.foreignAddress + 20,
      'the SYNs from a foreign address to be counted',
      5000,
    )
    // Sealed, the flood is refused before any state exists: every SYN fails verification (counted),
    // no half-open connection is made, so none is evicted and the real channel is untouched.
    await waitUntil(
      () => sealDrops(status().drops) >= sealDrops(before.drops) + 1000,
      'the spoofed SYNs to be refused (auth-failed)',
      10_000,
    )
    const after = status()
    assert.equal(
      after.preAuth!.evictedHalfOpen,
      before.preAuth!.evictedHalfOpen,
      JSON.stringify(after.preAuth),
    )
    assert.equal(after.preAuth!.halfOpen, 0)
    assert.equal(after.iohyp?.state, 'connected', 'the real IOhyp is still connected')
    assert.equal(guest(1).state, 'connected')
  })

  it('peers with the wrong key that spoof the IOhyp: refused before any state, the guest stays small; the IOhyp stays', async () => {
    const status = () => vrioJson<StatusInfo>(['status', '--control', sock('guest1')])
    const rss = () => {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${good.child.pid}/status`, 'utf8'))
      return Number(m?.[1] ?? 0) * 1024
    }
    const before = status()
    const rssBefore = rss()
    // Attackers that see the guest's answers (sent to their MACs) and speak sealed vrio, but hold
    // another key: one endpoint (own MAC, the IOhyp's address) per connection. (Without sealing,
    // such peers complete handshakes; the caps that bound them are tested in
    // test/transport/endpoint-preauth.test.ts.)
    const attackers = Array.from({ length: 8 }, (_, i) => {
      const socket = PacketSocket.open({
        ifname: lan.ends[2].ifname,
        netns: lan.ends[2].ns.path,
        vnetHdr: true,
      })
      const driver = new LinkDriver({
        channel: socket,
        vnetHdr: true,
        mac: 0x02_66_00_00_00_01 + i,
        ip: lan.ends[0].ip,
        peerPort: 7860,
        key: randomBytes(32),
      })
      return { socket, driver }
    })
    try {
      const connections = attackers.map(({ driver }) =>
        driver.connect({ mac: parseMac(macOf(1))!, ip: lan.ends[1].ip, port: 7860 }, { message() {} }),
      )
      await waitUntil(
        () => sealDrops(status().drops) >= sealDrops(before.drops) + 8,
        'the guest to refuse every attacker SYN',
        10_000,
      )
      await sleep(1000)
      assert.deepEqual(
        connections.filter((c) => c.state === 'established').length,
        0,
        'no attacker got past the handshake',
      )
      const during = status().preAuth!
      assert.equal(during.halfOpen, 0, JSON.stringify(during))
      assert.equal(during.unauthenticated, 0, JSON.stringify(during))
      const grew = rss() - rssBefore
      assert.ok(grew < 24 * 1024 * 1024, `the guest grew by ${grew} bytes`)
      assert.equal(status().iohyp?.state, 'connected', 'the real IOhyp stayed connected')
      assert.equal(guest(1).state, 'connected')
    } finally {
      for (const { driver, socket } of attackers) {
        driver.stop({ silent: true })
        socket.close()
      }
    }
  })

  it('reconnect by themselves after either daemon is killed with SIGKILL and restarted', async () => {
    await good.stop('SIGKILL')
    await waitUntil(() => guest(1).state !== 'connected', 'the IOhyp to notice the guest is gone', 10_000)
    good = new DaemonProcess('good guest', lan.ends[1].ns, guestArgs(1, 'good.key'))
    await waitUntil(() => guest(1).state === 'connected', 'the restarted guest to reconnect', 10_000)
    await good.waitForLog('iohyp address remembered')

    await iohyp.stop('SIGKILL')
    iohyp = new DaemonProcess('iohyp', lan.ends[0].ns, iohypArgs())
    await iohyp.waitForLog('iohyp started')
    // The enrolment survived in the state directory; nobody adds the guest again.
    await waitUntil(
      () => guest(1).state === 'connected',
      'the guest to reconnect to the restarted IOhyp',
      10_000,
    )
    await waitUntil(
      () => vrioJson<StatusInfo>(['status', '--control', sock('guest1')]).iohyp?.state === 'connected',
      'the guest to see the new IOhyp',
      10_000,
    )
  })

  it('SIGTERM stops both cleanly: exit 0, kernel guard and control socket gone', async () => {
    for (const d of [iohyp, good, bad]) await d.stop('SIGTERM')
    for (const d of [iohyp, good, bad])
      assert.equal(d.exitCode, 0, `${d.name}: ${d.logs.slice(-3).join('\n')}`)
    for (const end of lan.ends) assert.doesNotMatch(exec(end.ns, 'nft', ['list', 'tables']), /vrio_/)
    assert.notEqual(vrio(['status', '--control', sock('iohyp')]).status, 0)
  })
})

describe('daemon command-line errors', () => {
  it('an unknown interface, a missing key file, a bad address: one clear line, non-zero exit, no stack trace', () => {
    requireRoot()
    const dir = mkdtempSync(join(tmpdir(), 'vrio-cli-'))
    try {
      const cases: [string[], RegExp][] = [
        [
          ['iohyp', '--interface', 'nosuchif0', '--state-dir', dir, '--control', join(dir, 'i.sock')],
          /no network interface named 'nosuchif0'/,
        ],
        [
          [
            'guest',
            '--interface',
            'lo',
            '--key-file',
            join(dir, 'missing.key'),
            '--control',
            join(dir, 'g.sock'),
          ],
          /missing\.key/,
        ],
        [
          [
            'iohyp',
            '--interface',
            'lo',
            '--address',
            '10.0.0.300',
            '--state-dir',
            dir,
            '--control',
            join(dir, 'i.sock'),
          ],
          /not an IPv4 address/,
        ],
        [['iohyp'], /--interface/],
      ]
      for (const [args, message] of cases) {
        const r = vrio(args)
        assert.notEqual(r.status, 0, args.join(' '))
        assert.match(r.stderr, message)
        assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`)
        assert.doesNotMatch(r.stderr, /\n\s+at /)
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

/** Frames a sealed channel refused, from a drops record. */
function sealDrops(drops: Record<string, number> = {}): number {
  return (
    (drops['auth-failed'] ?? 0) + (drops.replayed ?? 0) + (drops.unsealed ?? 0) + (drops['bad-epoch'] ?? 0)
  )
}
