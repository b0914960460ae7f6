import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { checkSource, parseIPv4Prefix, type SourcePolicy } from '../../src/devices/net/source-guard.ts'
import { parseNicRequest as parseCreateNicRequest } from '../../src/devices/net/spec.ts'
import { parseMac } from '../../src/wire/address.ts'
import { arpReply, arpRequest, ETHERTYPE_TEST, ethHeader, icmpEcho, ipv4, mac } from '../support/packets.ts'

const NIC = '02:78:00:00:00:01'
const OTHER = '02:78:00:00:00:99'
const BCAST = mac('ff:ff:ff:ff:ff:ff')
const policy = (ip?: string): SourcePolicy => ({
  mac: parseMac(NIC)!,
  ip: ip === undefined ? undefined : parseIPv4Prefix(ip),
})
const echo = (src: string, ip: string) =>
  icmpEcho(BCAST, mac(src), ipv4(ip), ipv4('10.0.0.250'), 1, 1, Buffer.alloc(8))
const plain = (src: string) => Buffer.concat([ethHeader(BCAST, mac(src), ETHERTYPE_TEST), Buffer.alloc(46)])
/** The frame with one 802.1Q tag inserted after the MAC addresses. */
const tagged = (f: Buffer) =>
  Buffer.concat([f.subarray(0, 12), Buffer.from([0x81, 0x00, 0x00, 0x05]), f.subarray(12)])

/** A DHCP discover's first bytes: IPv4 from 0.0.0.0, UDP 68 -> 67. */
function dhcpDiscover(src: string): Buffer {
  const f = Buffer.alloc(14 + 20 + 8 + 8)
  ethHeader(BCAST, mac(src), 0x0800).copy(f)
  f[14] = 0x45
  f[14 + 9] = 17
  ipv4('255.255.255.255').copy(f, 14 + 16)
  f.writeUInt16BE(68, 34)
  f.writeUInt16BE(67, 36)
  return f
}

describe('NIC source enforcement (checkSource)', () => {
  it('the Ethernet source must be the NIC MAC, whatever the frame', () => {
    assert.equal(checkSource(plain(NIC), policy()), undefined)
    assert.equal(checkSource(plain(OTHER), policy()), 'spoofed-mac')
    assert.equal(checkSource(echo(OTHER, '10.0.0.5'), policy()), 'spoofed-mac')
  })

  it("an ARP's sender hardware address must be the NIC MAC too", () => {
    assert.equal(checkSource(arpRequest(mac(NIC), ipv4('10.0.0.5'), ipv4('10.0.0.1')), policy()), undefined)
    const poison = arpReply(mac(OTHER), ipv4('10.0.0.1'), mac('02:00:00:00:00:01'), ipv4('10.0.0.1'))
    poison.set(mac(NIC), 6) // Ethernet source right, ARP sender wrong
    assert.equal(checkSource(poison, policy()), 'spoofed-mac')
  })

  it('without an ip range, any IPv4 source passes; with one, only sources inside it', () => {
    assert.equal(checkSource(echo(NIC, '10.9.9.9'), policy()), undefined)
    assert.equal(checkSource(echo(NIC, '10.0.0.5'), policy('10.0.0.5')), undefined)
    assert.equal(checkSource(echo(NIC, '10.0.0.6'), policy('10.0.0.5')), 'spoofed-ip')
    assert.equal(checkSource(echo(NIC, '10.0.0.6'), policy('10.0.0.0/29')), undefined)
    assert.equal(checkSource(echo(NIC, '10.0.0.8'), policy('10.0.0.0/29')), 'spoofed-ip')
    assert.equal(checkSource(tagged(echo(NIC, '10.0.0.6')), policy('10.0.0.5')), 'spoofed-ip')
    assert.equal(checkSource(tagged(echo(NIC, '10.0.0.5')), policy('10.0.0.5')), undefined)
  })

  it('with an ip range, the ARP sender address must lie in it (0.0.0.0 probes allowed)', () => {
    const arp = (spa: string) => arpRequest(mac(NIC), ipv4(spa), ipv4('10.0.0.1'))
    assert.equal(checkSource(arp('10.0.0.5'), policy('10.0.0.5')), undefined)
    assert.equal(checkSource(arp('10.0.0.1'), policy('10.0.0.5')), 'spoofed-ip')
    assert.equal(checkSource(arp('0.0.0.0'), policy('10.0.0.5')), undefined)
    assert.equal(checkSource(tagged(arp('10.0.0.1')), policy('10.0.0.5')), 'spoofed-ip')
  })

  it('with an ip range, 0.0.0.0 passes only as a DHCP client; truncated headers count as spoofed', () => {
    assert.equal(checkSource(dhcpDiscover(NIC), policy('10.0.0.5')), undefined)
    assert.equal(checkSource(echo(NIC, '0.0.0.0'), policy('10.0.0.5')), 'spoofed-ip')
    assert.equal(checkSource(echo(NIC, '10.0.0.5').subarray(0, 30), policy('10.0.0.5')), 'spoofed-ip')
    assert.equal(checkSource(plain(NIC), policy('10.0.0.5')), undefined, 'other EtherTypes are not IPv4')
  })

  it('parses addresses and prefixes strictly', () => {
    assert.deepEqual(parseIPv4Prefix('10.0.0.5'), { address: 0x0a00_0005, prefix: 32 })
    assert.deepEqual(parseIPv4Prefix('10.0.0.0/29'), { address: 0x0a00_0000, prefix: 29 })
    for (const bad of ['10.0.0.5/29', '10.0.0.0/33', '10.0.0/8', '10.0.0.0/', '10.0.0.0/x'])
      assert.equal(parseIPv4Prefix(bad), undefined, bad)
  })
})

describe('NIC create request: ip and allowSpoofing', () => {
  const base = { guest: '10.0.0.2', mac: NIC, tap: 'vt1' }
  it('canonicalises ip, defaults allowSpoofing to false', () => {
    const r = parseCreateNicRequest({ ...base, ip: '10.0.0.005/32' })
    assert.equal(r.ip, '10.0.0.5')
    assert.equal(r.allowSpoofing, false)
    assert.equal(parseCreateNicRequest({ ...base, allowSpoofing: true }).allowSpoofing, true)
  })
  it('refuses a bad ip, a non-boolean allowSpoofing, and both together, naming the field', () => {
    const field = (body: Record<string, unknown>) => {
      try {
        parseCreateNicRequest({ ...base, ...body })
      } catch (e) {
        return (e as { details?: { field?: string } }).details?.field ?? String(e)
      }
      return 'accepted'
    }
    assert.equal(field({ ip: '10.0.0.1/24' }), 'ip')
    assert.equal(field({ ip: 5 }), 'ip')
    assert.equal(field({ allowSpoofing: 'yes' }), 'allowSpoofing')
    assert.equal(field({ ip: '10.0.0.5', allowSpoofing: true }), 'ip')
  })
})
