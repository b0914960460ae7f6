import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import type { TapDevice as TapDeviceType } from '../../src/io/index.ts'
import {
  IoError,
  TapDevice,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_LEN,
  decodeVirtioNetHdr,
  interfaceInfo,
} from '../../src/io/index.ts'
import type { Netns } from '../support/netns.ts'
import { cleanupNetns, createNetns, ip, remainingNetns, requireRoot, run } from '../support/netns.ts'
import { arpReply, arpRequest, icmpEcho, ipv4, mac, parseArp, parseIcmp } from '../support/packets.ts'
import { waitUntil } from '../support/wait.ts'

const KERNEL_IP = ipv4('10.77.0.1')
const OUR_IP = ipv4('10.77.0.2')
const OUR_MAC = mac('02:00:00:00:77:02')

function linkExists(ns: Netns, name: string): boolean {
  try {
    ip(ns, ['link', 'show', 'dev', name])
    return true
  } catch {
    return false
  }
}

/**
 * Plays a host behind the TAP: asks the kernel for its MAC (ARP), answers the kernel's ARP
 * requests, pings it, and returns the ARP and ICMP replies it read.
 */
async function arpAndPing(tap: TapDeviceType, ns: Netns) {
  ip(ns, ['addr', 'add', '10.77.0.1/24', 'dev', tap.name])
  ip(ns, ['link', 'set', tap.name, 'up'])
  const pre = tap.vnetHdr ? Buffer.alloc(VIRTIO_NET_HDR_LEN) : Buffer.alloc(0)
  const write = (f: Buffer) => assert.equal(tap.send([Buffer.concat([pre, f])]), 1)
  const headers: ReturnType<typeof decodeVirtioNetHdr>[] = []
  let arp: ReturnType<typeof parseArp>
  let echo: ReturnType<typeof parseIcmp>
  tap.onBatch((b) => {
    for (let i = 0; i < b.count; i++) {
      let f = b.frame(i)
      if (tap.vnetHdr) {
        headers.push(decodeVirtioNetHdr(f))
        f = f.subarray(VIRTIO_NET_HDR_LEN)
      }
      const a = parseArp(f)
      if (a?.op === 2 && a.targetIp.equals(OUR_IP)) arp = parseArp(Buffer.from(f))
      if (a?.op === 1 && a.targetIp.equals(OUR_IP)) write(arpReply(OUR_MAC, OUR_IP, a.senderMac, a.senderIp))
      const e = parseIcmp(f)
      if (e?.type === 0) echo = parseIcmp(Buffer.from(f))
    }
  })
  write(arpRequest(OUR_MAC, OUR_IP, KERNEL_IP))
  await waitUntil(() => arp !== undefined, "the kernel's ARP reply")
  const data = Buffer.from('vrio tap echo test payload')
  write(icmpEcho(arp!.senderMac, OUR_MAC, OUR_IP, KERNEL_IP, 0x4242, 7, data))
  await waitUntil(() => echo !== undefined, "the kernel's echo reply")
  return { arp: arp!, echo: echo!, data, headers }
}

describe('TapDevice', () => {
  let ns: Netns

  before(() => {
    requireRoot()
    ns = createNetns()
  })

  after(() => {
    cleanupNetns()
    assert.deepEqual(remainingNetns(), [])
  })

  test('ARP and ICMP echo with the kernel through a TAP: write and read both work', async () => {
    const tap = TapDevice.open({ name: 'vrtap%d', netns: ns.path })
    try {
      assert.match(tap.name, /^vrtap\d+$/)
      assert.ok(tap.created)
      assert.equal(tap.mac, interfaceInfo(tap.name, ns.path).mac)
      const { arp, echo, data } = await arpAndPing(tap, ns)
      assert.equal(arp.senderMac.toString('hex'), mac(tap.mac).toString('hex'))
      assert.ok(arp.senderIp.equals(KERNEL_IP))
      assert.ok(arp.targetMac.equals(OUR_MAC))
      assert.equal(echo.id, 0x4242)
      assert.equal(echo.seq, 7)
      assert.ok(echo.data.equals(data))
      assert.ok(echo.checksumOk)
      assert.ok(echo.srcIp.equals(KERNEL_IP))
      const s = tap.stats()
      assert.ok(s.rxFrames >= 2 && s.txFrames >= 2)
    } finally {
      tap.close()
    }
    assert.equal(linkExists(ns, tap.name), false, 'a TAP we created vanishes on close')
  })

  test('with vnetHdr every frame read starts with a virtio_net_hdr, and writes need one', async () => {
    const tap = TapDevice.open({ name: 'vrvnt%d', netns: ns.path, vnetHdr: true, offloads: { csum: true } })
    try {
      const { arp, echo, headers } = await arpAndPing(tap, ns)
      assert.ok(arp.senderIp.equals(KERNEL_IP))
      assert.ok(echo.checksumOk)
      assert.ok(headers.length >= 2)
      for (const h of headers) assert.equal(h.gsoType, VIRTIO_NET_HDR_GSO_NONE)
    } finally {
      tap.close()
    }
  })

  test('a pre-existing persistent TAP is attached to and left in place; multi-queue opens', () => {
    const name = `vrp${process.pid.toString(36)}`
    run('ip', ['-n', ns.name, 'tuntap', 'add', 'dev', name, 'mode', 'tap', 'multi_queue'])
    const q1 = TapDevice.open({ name, netns: ns.path, multiQueue: true })
    const q2 = TapDevice.open({ name, netns: ns.path, multiQueue: true })
    assert.equal(q1.created, false)
    assert.equal(q1.ifindex, q2.ifindex)
    q1.close()
    q2.close()
    assert.ok(linkExists(ns, name), 'persistent device still there')
    ip(ns, ['link', 'del', name])
  })

  test('deleting the device under an open TAP stops the reader with a typed error', async () => {
    const tap = TapDevice.open({ name: 'vrgone%d', netns: ns.path })
    let error: unknown
    tap
      .onBatch(() => {})
      .onError((e) => {
        error = e
        tap.close()
      })
    ip(ns, ['link', 'del', tap.name])
    await waitUntil(() => error !== undefined, 'onError')
    assert.ok(error instanceof IoError)
    assert.equal(error.errnoName, 'EBADFD')
    assert.equal(error.code, 'io-error')
    assert.equal(error.syscall, 'read')
    assert.ok(tap.closed)
  })

  test('offloads without vnetHdr, or TSO without csum, are refused', () => {
    assert.throws(() => TapDevice.open({ netns: ns.path, offloads: { csum: true } }), TypeError)
    assert.throws(
      () => TapDevice.open({ netns: ns.path, vnetHdr: true, offloads: { tso4: true } }),
      TypeError,
    )
  })
})
