/**
 * I/O services on a remote NIC with real traffic: the firewall (ping and HTTP allowed, other ports
 * not, replies flowing back, rules replaced at runtime without breaking an established download)
 * and DPI (alerts with the right sid for a signature split across two TCP segments and for a
 * case-insensitive match, a drop rule that stops its flow, none for clean traffic).
 */
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ListNicsResponse } from '../../src/control/api.ts'
import { killDaemons, vrioJsonAsync } from '../support/daemons.ts'
import { cleanupNetns, exec, execAsync, ip, type Netns, requireRoot } from '../support/netns.ts'
import { onBridge, pairWithWorld, type VrioPair } from '../support/vrio-pair.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const MiB = 1024 * 1024
const WORLD = '192.168.77.100'
const CURL = ['-sSf', '--retry', '10', '--retry-connrefused', '--retry-delay', '1']
const children = new Set<ChildProcess>()
after(() => {
  for (const c of children) c.kill('SIGKILL')
})

function server(ns: Netns, cmd: string, args: string[]): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns.name, cmd, ...args], { stdio: 'ignore' })
  children.add(child)
  child.on('exit', () => children.delete(child))
  return child
}

/** Sends an HTTP request in pieces, pausing between them so each leaves as its own TCP segment. */
const SPLIT_CLIENT = `
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=float(sys.argv[2]))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for part in sys.argv[3:]:
    s.sendall(part.encode().decode('unicode_escape').encode('latin1')); time.sleep(0.3)
data = b''
try:
    while True:
        d = s.recv(65536)
        if not d: break
        data += d
except socket.timeout:
    print('timeout'); sys.exit(3)
print(data.split(b'\\r\\n')[0].decode())
`

describe('NIC services with real traffic', () => {
  let pair: VrioPair
  let world: Netns
  let guest: Netns
  let rules: string
  const nicList = async () => (await pair.list<ListNicsResponse>('nic')).nics[0]
  const alerts = async () =>
    (
      await vrioJsonAsync<{ alerts: { alert: { signature_id: number; action: string } }[] }>([
        'nic',
        'alerts',
        'vn1',
        '--json',
        '--control',
        pair.sock('iohyp'),
      ])
    ).alerts
  const services = (args: string[]) => pair.nicServices('vn1', args)

  before(async () => {
    requireRoot()
    const set = await pairWithWorld([`${WORLD}/24`])
    pair = set.pair
    guest = set.guest
    world = set.world.ns
    rules = join(pair.dir, 'rules')
    exec(world, 'mkdir', ['-p', rules, join(pair.dir, 'www')])
    writeFileSync(join(pair.dir, 'www', 'index.html'), 'hello from the world\n')
    writeFileSync(join(pair.dir, 'www', 'big'), randomBytes(24 * MiB))
    server(world, 'python3', [
      '-m',
      'http.server',
      '80',
      '--bind',
      WORLD,
      '--directory',
      join(pair.dir, 'www'),
    ])
    server(world, 'iperf3', ['-s', '-B', WORLD, '-p', '5201'])
    writeFileSync(
      join(rules, 'web.fw'),
      [
        'policy from-guest drop',
        'policy to-guest drop',
        'from-guest ether type arp accept',
        'to-guest ether type arp accept',
        'from-guest ip protocol icmp accept',
        'from-guest tcp dport 80 accept',
        'to-guest ct state established,related accept',
        '',
      ].join('\n'),
    )
    const nic = await pair.createNic('vn1', '02:77:00:00:00:01', onBridge('vt1'), {
      extra: ['--firewall', join(rules, 'web.fw')],
    })
    assert.equal(nic.services.services.firewall?.file, join(rules, 'web.fw'))
    ip(guest, ['addr', 'add', '192.168.77.1/24', 'dev', 'vn1'])
  })
  after(async () => {
    await pair?.stop()
  })

  it('firewall: ping and HTTP pass with their replies, iperf3 to another port does not; counters match', async () => {
    await execAsync(guest, 'ping', ['-c', '5', '-i', '0.2', '-W', '3', WORLD])
    const page = await execAsync(guest, 'curl', [...CURL, `http://${WORLD}/index.html`])
    assert.equal(page, 'hello from the world\n')
    await assert.rejects(
      execAsync(guest, 'iperf3', ['-c', WORLD, '-p', '5201', '-t', '1', '--connect-timeout', '2000']),
      /iperf3/,
    )
    const fw = (await nicList()).services.services.firewall!.counters as {
      rules: { line: number; packets: number }[]
      'from-guest': { policyDropped: number }
    }
    const hits = (line: number) => fw.rules.find((r) => r.line === line)?.packets
    assert.equal(hits(5), 5, 'the ICMP rule saw exactly the 5 echo requests')
    assert.ok((hits(6) ?? 0) >= 3, 'the HTTP rule saw the connection')
    assert.ok((hits(7) ?? 0) >= 5 + 2, 'replies came back as established')
    assert.ok(fw['from-guest'].policyDropped >= 1, 'the iperf3 SYNs fell to the policy')
  })

  it('firewall: rules replaced at runtime take effect, and an established download survives', async () => {
    const out = join(pair.dir, 'big.out')
    const download = execAsync(
      guest,
      'curl',
      [...CURL, '--limit-rate', '8M', '-o', out, `http://${WORLD}/big`],
      60_000,
    )
    await sleep(1000)
    // New rules: HTTP no longer allowed for new connections, iperf3 is; established flows still pass.
    writeFileSync(
      join(rules, 'iperf.fw'),
      [
        'policy from-guest drop',
        'policy to-guest drop',
        'from-guest ether type arp accept',
        'to-guest ether type arp accept',
        'from-guest ct state established accept',
        'from-guest tcp dport 5201 accept',
        'to-guest ct state established,related accept',
        '',
      ].join('\n'),
    )
    const r = await services(['--firewall', join(rules, 'iperf.fw')])
    assert.equal(r.status, 0, r.stderr)
    await download
    assert.equal(
      createHash('sha256').update(readFileSync(out)).digest('hex'),
      createHash('sha256')
        .update(readFileSync(join(pair.dir, 'www', 'big')))
        .digest('hex'),
    )
    await execAsync(guest, 'iperf3', ['-c', WORLD, '-p', '5201', '-t', '1', '--connect-timeout', '3000'])
    await assert.rejects(execAsync(guest, 'curl', ['-sSf', '--max-time', '3', `http://${WORLD}/index.html`]))
  })

  it('refuses a bad rules file with its line number and keeps the rules in force', async () => {
    writeFileSync(join(rules, 'bad.fw'), 'policy from-guest accept\nfrom-guest tcp dprot 80 accept\n')
    const r = await services(['--firewall', join(rules, 'bad.fw')])
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, /bad\.fw:2/)
    writeFileSync(
      join(rules, 'bad.rules'),
      'alert tcp any any -> any any (msg:"x"; sid:1; asn1:oversize_length 10;)\n',
    )
    const d = await services(['--dpi', join(rules, 'bad.rules')])
    assert.notEqual(d.status, 0)
    assert.match(d.stderr, /bad\.rules:1.*asn1/)
    const nic = await nicList()
    assert.equal(nic.services.services.firewall?.file, join(rules, 'iperf.fw'))
    assert.equal(nic.services.services.dpi, undefined)
  })

  it('DPI: alerts with the right sid for a split signature and a case-insensitive match; a drop rule stops its flow; clean traffic raises none', async () => {
    writeFileSync(
      join(rules, 'test.rules'),
      [
        'alert http any any -> any any (msg:"vrio test: split signature"; flow:established,to_server; content:"VRIO-SIGNATURE-SPLIT"; sid:1000001; rev:1; classtype:misc-activity;)',
        'alert http any any -> any any (msg:"vrio test: evil agent"; content:"evil-agent"; nocase; sid:1000002; rev:1;)',
        'drop tcp any any -> any 80 (msg:"vrio test: drop me"; content:"DROP-ME-NOW"; sid:1000003; rev:1;)',
        '',
      ].join('\n'),
    )
    const fw = join(rules, 'open.fw')
    writeFileSync(fw, 'policy from-guest accept\npolicy to-guest accept\n')
    const r = await services(['--firewall', fw, '--dpi', join(rules, 'test.rules')])
    assert.equal(r.status, 0, r.stderr)

    // Clean traffic first: no alerts.
    await execAsync(guest, 'curl', [...CURL, `http://${WORLD}/index.html`])
    assert.deepEqual(await alerts(), [])

    const split = await execAsync(guest, 'python3', [
      '-c',
      SPLIT_CLIENT,
      WORLD,
      '10',
      'GET /index.html HTTP/1.0\\r\\nX-Test: VRIO-SIGNA',
      'TURE-SPLIT\\r\\n\\r\\n',
    ])
    assert.match(split, /200/)
    await execAsync(guest, 'curl', [...CURL, '-A', 'EVIL-AGENT/1.0', `http://${WORLD}/index.html`])
    const blocked = await execAsync(guest, 'python3', [
      '-c',
      SPLIT_CLIENT,
      WORLD,
      '3',
      'GET /index.html HTTP/1.0\\r\\nX-Test: DROP-ME-NOW\\r\\n',
      '\\r\\n',
    ]).catch((e: Error) => e.message)
    assert.match(blocked, /timeout|reset|failed/, 'the dropped flow gets no answer')

    const got = await alerts()
    assert.deepEqual(
      got.map((a) => [a.alert.signature_id, a.alert.action]),
      [
        [1000001, 'allowed'],
        [1000002, 'allowed'],
        [1000003, 'blocked'],
      ],
    )
    const eve = readFileSync(join(pair.dir, 'state', 'eve.json'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    assert.deepEqual(
      eve.map((e) => [e.event_type, e.alert.signature_id]),
      [
        ['alert', 1000001],
        ['alert', 1000002],
        ['alert', 1000003],
      ],
    )
    // Clean traffic after all that: still fine, no new alert.
    await execAsync(guest, 'curl', [...CURL, `http://${WORLD}/index.html`])
    assert.equal((await alerts()).length, 3)
  })
})
