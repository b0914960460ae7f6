/**
 * NIC source enforcement end to end (issue 12, item 6): a guest sends frames with a forged
 * Ethernet source (and, on a NIC created with --ip, forged IPv4 and ARP senders) through its
 * remote NIC; a capture on the IOhyp's bridge shows none of them, the NIC's counters count them,
 * normal traffic still passes, and on a NIC created with --allow-spoofing they do pass.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ListNicsResponse, NicInfo } from '../../src/control/api.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { killDaemons } from '../support/daemons.ts'
import {
  cleanupNetns,
  createNetns,
  createVethPair,
  exec,
  ip,
  type Netns,
  requireRoot,
} from '../support/netns.ts'
import { arpRequest, ETHERTYPE_TEST, ethHeader, icmpEcho, ipv4, mac } from '../support/packets.ts'
import { onBridge, pairWithWorld, type VrioPair } from '../support/vrio-pair.ts'
import { waitUntil } from '../support/wait.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const BCAST = mac('ff:ff:ff:ff:ff:ff')
const FORGED_MAC = '02:78:00:00:00:99'
/** A destination nobody has: nothing answers the test frames. */
const NOBODY = (net: number) => `192.168.${net}.250`

/** The three NICs: MAC enforced (default), MAC and IP enforced (--ip), not enforced (--allow-spoofing). */
const NICS = [
  { name: 'vsm', mac: '02:78:00:00:00:01', net: 78, extra: [] as string[] },
  { name: 'vsi', mac: '02:78:00:00:00:02', net: 79, extra: ['--ip', '192.168.79.2'] },
  { name: 'vsa', mac: '02:78:00:00:00:03', net: 80, extra: ['--allow-spoofing'] },
]
const own = (n: (typeof NICS)[number]) =>
  `192.168.${n.net}.${n.mac.endsWith('1') ? 1 : n.mac.endsWith('2') ? 2 : 3}`

describe('remote NIC: source enforcement on the IOhyp', () => {
  let pair: VrioPair
  let iohyp: Netns
  let guest: Netns
  let world: Netns

  before(async () => {
    requireRoot()
    const p = await pairWithWorld(NICS.map((n) => `192.168.${n.net}.100/24`))
    pair = p.pair
    iohyp = p.iohyp
    guest = p.guest
    world = p.world.ns
    for (const [i, n] of NICS.entries()) {
      await pair.createNic(n.name, n.mac, onBridge(`vts${i}`), { extra: n.extra })
      ip(guest, ['addr', 'add', `${own(n)}/24`, 'dev', n.name])
      ip(guest, ['link', 'set', n.name, 'up'])
    }
  })
  after(async () => {
    await pair?.stop()
  })

  const nics = async (): Promise<Map<string, NicInfo>> =>
    new Map((await pair.list<ListNicsResponse>('nic')).nics.map((n) => [n.name, n as NicInfo]))

  it('lists each NIC with its source policy', async () => {
    const listed = await nics()
    assert.deepEqual(
      NICS.map((n) => [listed.get(n.name)?.ip, listed.get(n.name)?.allowSpoofing]),
      [
        [null, false],
        ['192.168.79.2', false],
        [null, true],
      ],
    )
  })

  it('forged sources never reach the bridge and are counted; genuine frames pass; --allow-spoofing lets them through', async () => {
    // What crosses the IOhyp's bridge: broadcast frames reach its own port, where we listen.
    const seen: Buffer[] = []
    const capture = PacketSocket.open({ ifname: 'brw', netns: iohyp.path })
    capture.onBatch((b) => {
      for (let i = 0; i < b.count; i++) seen.push(Buffer.from(b.frame(i)))
    })
    const marker = (tag: string, i: number) => Buffer.from(`vrio-spoof-test ${tag} ${i} `.padEnd(48, '.'))
    const before = await nics()
    for (const n of NICS) {
      const tx = PacketSocket.open({ ifname: n.name, netns: guest.path, protocol: 0 })
      const frames: Buffer[] = []
      for (let i = 0; i < 20; i++) {
        // A forged Ethernet source (another NIC's MAC would do the same), and a genuine one.
        frames.push(
          Buffer.concat([ethHeader(BCAST, mac(FORGED_MAC), ETHERTYPE_TEST), marker(`${n.name}-mac`, i)]),
        )
        frames.push(
          Buffer.concat([ethHeader(BCAST, mac(n.mac), ETHERTYPE_TEST), marker(`${n.name}-good`, i)]),
        )
        // The NIC's MAC with a forged IPv4 source and a forged ARP sender, and genuine ones.
        const forgedIp = `192.168.${n.net}.66`
        const target = ipv4(NOBODY(n.net))
        frames.push(icmpEcho(BCAST, mac(n.mac), ipv4(forgedIp), target, 7, i, marker(`${n.name}-ip`, i)))
        frames.push(icmpEcho(BCAST, mac(n.mac), ipv4(own(n)), target, 7, i, marker(`${n.name}-ipgood`, i)))
        frames.push(arpRequest(mac(n.mac), ipv4(forgedIp), target))
      }
      for (const f of frames) {
        tx.send([f])
        await sleep(1)
      }
      tx.close()
    }
    await sleep(500)
    capture.close()
    const count = (needle: string) => seen.filter((f) => f.includes(needle)).length
    const arpFrom = (senderIp: string) =>
      seen.filter((f) => f.readUInt16BE(12) === 0x0806 && f.subarray(28, 32).equals(ipv4(senderIp))).length

    // MAC enforced (default): no forged Ethernet source on the bridge; everything else passes.
    assert.equal(count('vsm-mac'), 0, 'forged MAC frames of vsm on the bridge')
    assert.ok(count('vsm-good') >= 18, `genuine frames of vsm pass (${count('vsm-good')})`)
    assert.ok(count('vsm-ip ') >= 18, 'without --ip, IPv4 sources are not checked')
    // --ip: forged MAC, IPv4 source and ARP sender all stopped; genuine ones pass.
    assert.equal(count('vsi-mac'), 0, 'forged MAC frames of vsi on the bridge')
    assert.equal(count('vsi-ip '), 0, 'forged IPv4 sources of vsi on the bridge')
    assert.equal(arpFrom('192.168.79.66'), 0, 'forged ARP senders of vsi on the bridge')
    assert.ok(count('vsi-good') >= 18 && count('vsi-ipgood') >= 18, 'genuine frames of vsi pass')
    // --allow-spoofing: the forged frames cross.
    assert.ok(count('vsa-mac') >= 18, `forged MAC frames of vsa pass (${count('vsa-mac')})`)
    assert.ok(arpFrom('192.168.80.66') >= 18, 'forged ARP senders of vsa pass')

    const after = await nics()
    const drops = (name: string, reason: string) =>
      (after.get(name)?.drops[reason] ?? 0) - (before.get(name)?.drops[reason] ?? 0)
    assert.equal(drops('vsm', 'spoofed-mac'), 20)
    assert.equal(drops('vsm', 'spoofed-ip'), 0)
    assert.equal(drops('vsi', 'spoofed-mac'), 20)
    assert.equal(drops('vsi', 'spoofed-ip'), 40)
    assert.equal(drops('vsa', 'spoofed-mac') + drops('vsa', 'spoofed-ip'), 0)
  })

  it('a macvtap back-end gets the same check: forged MACs never leave the uplink', async () => {
    const uplinkWorld = createNetns()
    const uplink = createVethPair(iohyp, uplinkWorld)
    const nic = await pair.createNic('vsv', '02:78:00:00:00:04', ['--macvtap', uplink.a.ifname])
    assert.equal(nic.backend.kind, 'macvtap')
    ip(guest, ['link', 'set', 'vsv', 'up'])
    const seen: Buffer[] = []
    const capture = PacketSocket.open({ ifname: uplink.b.ifname, netns: uplinkWorld.path })
    capture.onBatch((b) => {
      for (let i = 0; i < b.count; i++) seen.push(Buffer.from(b.frame(i)))
    })
    const tx = PacketSocket.open({ ifname: 'vsv', netns: guest.path, protocol: 0 })
    const marker = (tag: string, i: number) => Buffer.from(`vrio-spoof-test ${tag} ${i} `.padEnd(48, '.'))
    for (let i = 0; i < 20; i++) {
      tx.send([Buffer.concat([ethHeader(BCAST, mac(FORGED_MAC), ETHERTYPE_TEST), marker('vsv-mac', i)])])
      tx.send([Buffer.concat([ethHeader(BCAST, mac(nic.mac), ETHERTYPE_TEST), marker('vsv-good', i)])])
      await sleep(1)
    }
    tx.close()
    await sleep(500)
    capture.close()
    const count = (needle: string) => seen.filter((f) => f.includes(needle)).length
    assert.equal(count('vsv-mac'), 0, 'forged MAC frames left the uplink')
    assert.ok(count('vsv-good') >= 18, `genuine frames pass (${count('vsv-good')})`)
    assert.equal((await nics()).get('vsv')?.drops['spoofed-mac'], 20)
  })

  it('normal traffic still passes on every NIC (ping the world)', async () => {
    for (const n of NICS) {
      await waitUntil(
        () => {
          try {
            exec(guest, 'ping', ['-c', '1', '-W', '1', '-I', n.name, `192.168.${n.net}.100`])
            return true
          } catch {
            return false
          }
        },
        `ping over ${n.name}`,
        10_000,
      )
    }
    assert.ok(world)
  })
})
