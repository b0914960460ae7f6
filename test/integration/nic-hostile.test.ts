/**
 * Hostile input to a remote NIC: a rogue guest (this test, holding the guest's key, so its frames
 * arrive inside an authenticated channel) sends NetFrames for devices it does not have, with bodies
 * too short, too long and with impossible virtio_net_hdr requests; garbage lands on the link too.
 * The IOhyp must count and drop each kind, pass the good frames on, and stay up.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ListGuestsResponse, ListNicsResponse, StatusInfo } from '../../src/control/api.ts'
import { readKeyFile } from '../../src/auth/key-file.ts'
import { PACKET_SOCKET_BUFFER, VRIO_PORT } from '../../src/daemon/runtime.ts'
import type { AttachNicParams } from '../../src/guest/nics.ts'
import { LinkDriver } from '../../src/io/link-driver.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { Rpc } from '../../src/session/rpc.ts'
import { Session } from '../../src/session/session.ts'
import { Delivery } from '../../src/transport/config.ts'
import { formatIPv4, parseMac } from '../../src/wire/address.ts'
import { encodeMessageHeader, MessageType, newMessageHeader } from '../../src/wire/message-header.ts'
import { killDaemons, vrioAsync, vrioJsonAsync } from '../support/daemons.ts'
import { cleanupNetns, ip, linkMac, requireRoot } from '../support/netns.ts'
import { directLink, worldOnBridge } from '../support/topology.ts'
import { waitUntil } from '../support/wait.ts'
import { onBridge, VrioPair } from '../support/vrio-pair.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const NIC_MAC = '02:77:00:00:00:01'

/** A NetFrame message: header + virtio_net_hdr + frame. */
function netFrame(handle: { high: number; low: number }, vnetHdr: Uint8Array, frame: Uint8Array): Buffer {
  const h = newMessageHeader()
  h.type = MessageType.NetFrame
  h.deviceHigh = handle.high
  h.deviceLow = handle.low
  h.bodyLength = vnetHdr.length + frame.length
  const msg = Buffer.alloc(32 + h.bodyLength)
  encodeMessageHeader(msg, 0, h)
  msg.set(vnetHdr, 32)
  msg.set(frame, 32 + vnetHdr.length)
  return msg
}

/** A broadcast ARP request from the NIC's MAC, padded to 60 bytes. */
function arpFrame(marker: number): Buffer {
  const f = Buffer.alloc(60)
  f.fill(0xff, 0, 6)
  f.set(Buffer.from(NIC_MAC.replaceAll(':', ''), 'hex'), 6)
  f.writeUInt16BE(0x0806, 12)
  f.set(Buffer.from('0001080006040001', 'hex'), 14)
  f.set(Buffer.from(NIC_MAC.replaceAll(':', ''), 'hex'), 22)
  f.set([192, 168, 77, 1], 28)
  f.set([192, 168, 77, marker], 38)
  return f
}

describe('remote NIC under hostile input from an authenticated guest and the link', () => {
  let pair: VrioPair
  let session: Session | undefined
  let driver: LinkDriver
  let guestSocket: PacketSocket
  let worldSocket: PacketSocket
  let attached: AttachNicParams | undefined
  const seenInWorld: number[] = []
  const plain = new Uint8Array(10)

  before(async () => {
    requireRoot()
    const link = directLink()
    pair = new VrioPair(link.a, link.b)
    ip(link.a.ns, ['addr', 'add', `${formatIPv4(link.a.ip)}/24`, 'dev', link.a.ifname])
    pair.startIohyp()
    await pair.iohyp.waitForLog('iohyp started')
    const keyPath = join(pair.dir, 'guest.key')
    assert.equal((await vrioAsync(['keygen', '--out', keyPath])).status, 0)
    const key = readKeyFile(keyPath)

    // The rogue guest: vrio's own transport and session, driven by this test.
    const guestMac = linkMac(link.b.ns, link.b.ifname)
    guestSocket = PacketSocket.open({
      ifname: link.b.ifname,
      netns: link.b.ns.path,
      ignoreOutgoing: true,
      vnetHdr: true,
      rcvBuf: PACKET_SOCKET_BUFFER,
      sndBuf: PACKET_SOCKET_BUFFER,
    })
    const rpc = new Rpc()
      .handle('net.attach', (p) => {
        attached = p as AttachNicParams
        return { ifname: attached.name }
      })
      .handle('net.detach', () => null)
    driver = new LinkDriver({
      channel: guestSocket,
      mac: parseMac(guestMac)!,
      ip: link.b.ip,
      listenPort: VRIO_PORT,
      vnetHdr: true,
      key,
      accept: (_remote, c) => {
        const s: Session = new Session(c, 'listener', key, {
          authenticated: () => {
            session = s
            rpc.attach(s)
          },
          control: (m) => rpc.onControl(m),
        })
        return s.connectionHandlers
      },
    })
    await pair.enrol(guestMac, link.b.ip, keyPath)
    pair.guestMac = guestMac
    await waitUntil(
      () => session?.authenticated === true,
      'the IOhyp to authenticate the rogue guest',
      10_000,
    )

    // The world: a bridge in the IOhyp's namespace and a namespace on it that watches what arrives.
    const world = worldOnBridge(link.a.ns)
    worldSocket = PacketSocket.open({ ifname: world.ifname, netns: world.ns.path })
    worldSocket.onBatch((b) => {
      for (let i = 0; i < b.count; i++) {
        const f = b.frame(i)
        if (f.length >= 42 && f.readUInt16BE(12) === 0x0806 && f.readUInt32BE(38) >>> 8 === 0xc0a84d)
          seenInWorld.push(f[41])
      }
    })
    const nic = await pair.createNic('vn1', NIC_MAC, onBridge('vt1'))
    assert.equal(nic.state, 'attached')
    assert.ok(attached, 'the rogue guest was told about the NIC')
  })

  after(async () => {
    driver?.stop({ silent: true })
    guestSocket?.close()
    worldSocket?.close()
    await pair?.stop()
  })

  const send = (msg: Buffer) => {
    assert.ok(session?.sendData(msg, Delivery.BestEffort), 'the channel took the frame')
    driver.flush()
  }
  const nic = async () => (await pair.list<ListNicsResponse>('nic')).nics[0]

  it('passes a good frame on to the world', async () => {
    send(netFrame(attached!.handle, plain, arpFrame(7)))
    await waitUntil(() => seenInWorld.includes(7), 'the ARP request to reach the world', 5000)
    assert.equal((await nic()).fromGuest.frames, 1)
  })

  it('counts and drops bad frames by reason, and frames for devices the guest does not have', async () => {
    const h = attached!.handle
    const gsoUnknown = Buffer.from([1, 9, 0, 0, 0xe8, 0x03, 14, 0, 16, 0]) // NEEDS_CSUM, gso_type 9
    const csumOutside = Buffer.from([1, 0, 0, 0, 0, 0, 0xf0, 0xff, 16, 0]) // csum_start past the end
    const badFlags = Buffer.from([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    send(netFrame(h, plain, Buffer.alloc(5))) // shorter than an Ethernet header
    send(netFrame(h, plain, Buffer.concat([arpFrame(8), Buffer.alloc(4000)]))) // 4 KB frame on a 1500 MTU, no GSO
    send(netFrame(h, gsoUnknown, arpFrame(9)))
    send(netFrame(h, csumOutside, arpFrame(10)))
    send(netFrame(h, badFlags, arpFrame(11)))
    send(netFrame({ high: h.high ^ 1, low: h.low }, plain, arpFrame(12))) // right slot, wrong tag
    send(netFrame({ high: h.high, low: h.low + 100 }, plain, arpFrame(13))) // no such slot
    let drops: Record<string, number> = {}
    for (let i = 0; i < 100; i++) {
      drops = (await nic()).drops
      if ((drops['bad-vnet-header'] ?? 0) >= 3) break
      await sleep(50)
    }
    assert.deepEqual(drops, { 'bad-length': 1, oversized: 1, 'bad-vnet-header': 3 })
    const guests = await pair.list<ListGuestsResponse>('guests')
    assert.equal(guests.guests[0].drops['net-unknown-device'], 2)
    await sleep(300)
    assert.deepEqual(
      seenInWorld.filter((m) => m >= 8),
      [],
      'nothing bad reached the world',
    )
    assert.equal(guests.guests[0].state, 'connected')
  })

  it('survives garbage on the link, and still carries good frames', async () => {
    const iohypMac = Buffer.from(linkMac(pair.iohypEnd.ns, pair.iohypEnd.ifname).replaceAll(':', ''), 'hex')
    const raw = PacketSocket.open({ ifname: pair.guestEnd.ifname, netns: pair.guestEnd.ns.path, protocol: 0 })
    try {
      // Half of it shaped to pass the IOhyp's kernel filter (IPv4 TCP from the guest's vrio port to
      // the IOhyp's address: src/io/packet-filter.ts), the rest anything: the daemon must count the
      // first half as drops (bad checksums, lengths, headers); the kernel drops the rest unseen.
      const frames: Buffer[] = []
      for (let i = 0; i < 200; i++) {
        const f = randomBytes(14 + (i % 2 === 0 ? 40 + (i % 100) : i % 120))
        f.set(iohypMac, 0)
        if (i % 2 === 0) {
          f.writeUInt16BE(0x0800, 12)
          f[14] = 0x45 // IPv4, no options
          f.writeUInt16BE(0, 20) // not a fragment
          f[23] = 6 // TCP
          f.writeUInt32BE(pair.guestEnd.ip, 26)
          f.writeUInt32BE(pair.iohypEnd.ip, 30)
          f.writeUInt16BE(VRIO_PORT, 34)
        }
        frames.push(f)
      }
      raw.send(frames)
    } finally {
      raw.close()
    }
    await sleep(200)
    const status = await vrioJsonAsync<StatusInfo>(['status', '--json', '--control', pair.sock('iohyp')])
    assert.ok(
      Object.values(status.drops ?? {}).reduce((a, b) => a + b, 0) >= 100,
      JSON.stringify(status.drops),
    )
    assert.ok(pair.iohyp.alive)
    send(netFrame(attached!.handle, plain, arpFrame(20)))
    await waitUntil(() => seenInWorld.includes(20), 'a good frame after the garbage', 5000)
  })
})
