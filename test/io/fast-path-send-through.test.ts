import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { testFastDisk } from '../support/fast-disk.ts'
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { driverAndPeer } from '../support/link-peer-host.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink } from '../support/topology.ts'

// A connection lent to the native fast path (native/fastpath.cc) and a message the transport
// sends meanwhile (the answer to a request it took): a reliable one goes through the lease, the
// connection staying lent; one it cannot send that way takes the connection back first. Either
// way the peer gets every message whole, once.

after(() => cleanupNetns())

const sha = (parts: Uint8Array[]) => {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return h.digest('hex')
}

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

it('reliable messages sent while lent go through the lease (the connection stays lent); others take it back; the peer gets each whole, once', async () => {
  requireRoot()
  const t = directLink()
  // The traffic keys (epoch 1), as a session installs them after its handshake: a fast path
  // takes only a channel in its traffic epoch.
  const nonces = [randomBytes(32), randomBytes(32)]
  const dir = mkdtempSync(join(tmpdir(), 'vrio-through-'))
  const fd = openSync(join(dir, 'disk.img'), 'w+')
  const { driver, peer, got, stop } = await driverAndPeer(t, { report: true, nonces })
  // The lend needs a disk for the peer; nothing here reads or writes it.
  const disk = testFastDisk(fd)
  try {
    assert.ok(
      driver.enableFastPath(() => [disk]),
      'the addon has a fast path',
    )
    const c: Connection = driver.connect(peer, { message() {} })
    await until('established', () => c.state === 'established')
    c.installTrafficKeys(nonces[0], nonces[1])
    const counters = () => driver.fastPath!.counters().get(t.b.ip)!
    const sent: string[] = []
    const send = (parts: Uint8Array[], delivery: Delivery) => {
      sent.push(sha(parts))
      return c.send(parts.length === 1 ? parts[0] : parts, delivery)
    }
    // A few round trips first: the keys of the traffic epoch are steady once both sides used them.
    for (let i = 0; i < 3; i++) {
      assert.equal(send([randomBytes(64)], Delivery.Reliable), true)
      await until('the peer got it', () => got.length === sent.length)
    }
    // Once quiet, the connection is lent at the next flush. Lends that answered no request back
    // off for a few flushes: flushing here while waiting.
    const lentAgain = () =>
      until('the lend', () => {
        driver.flush()
        return c.lent
      })
    await lentAgain()
    const lends = counters().lends
    const through = counters().sentThrough
    // Reliable messages of one frame and of several, as one chunk and as head and body: each goes
    // through the lease, and the connection stays lent.
    const messages = [
      [randomBytes(200)],
      [randomBytes(32), randomBytes(4096)],
      [randomBytes(32), randomBytes(12_000)],
    ]
    for (const m of messages) {
      assert.equal(send(m, Delivery.Reliable), true)
      assert.equal(c.lent, true, 'still lent after a reliable send')
      await until('the peer got it', () => got.length === sent.length)
    }
    assert.equal(counters().sentThrough - through, messages.length)
    assert.equal(counters().lends, lends, 'no new lend: the connection never came back')
    // A message larger than the congestion window (still that of the start here: 13 segments)
    // goes through too: queued in the addon, it leaves as the ACKs the addon takes open the
    // window, and the connection stays lent throughout.
    const acks = counters().pureAcks
    assert.equal(send([randomBytes(32), randomBytes(300_000)], Delivery.Reliable), true)
    assert.equal(c.lent, true, 'still lent with a message larger than the congestion window queued')
    await until('the peer got it', () => got.length === sent.length)
    assert.equal(c.lent, true, 'still lent once it was all sent')
    assert.ok(counters().pureAcks > acks, 'the rest left on the ACKs the addon took')
    assert.equal(counters().sentThrough - through, messages.length + 1)
    assert.equal(counters().lends, lends, 'no new lend: the connection never came back')
    // One of three chunks or more, and an ordered one: each takes the connection back first.
    assert.equal(send([randomBytes(8), randomBytes(8), randomBytes(8)], Delivery.Reliable), true)
    assert.equal(c.lent, false, 'taken back for a message of three chunks')
    await until('the peer got it', () => got.length === sent.length)
    await lentAgain()
    assert.equal(send([randomBytes(100)], Delivery.Ordered), true)
    assert.equal(c.lent, false, 'taken back for an ordered message')
    await until('the peer got it', () => got.length === sent.length)
    assert.equal(counters().sentThrough - through, messages.length + 1)
    // Messages queued faster than the peer acknowledges them fill the slot's store (12 MiB): the
    // first that does not fit takes the connection back, and the transport sends it after the rest.
    await lentAgain()
    for (let i = 0; i < 3; i++) {
      assert.equal(send([randomBytes(32), randomBytes(3 << 20)], Delivery.Reliable), true)
      assert.equal(c.lent, true, `still lent after queuing ${i + 1} of 3 MiB`)
    }
    assert.equal(send([randomBytes(32), randomBytes(3 << 20)], Delivery.Reliable), true)
    assert.equal(c.lent, false, 'taken back for a message the store has no room for')
    await until('the peer got them', () => got.length === sent.length)
    assert.equal(counters().sentThrough - through, messages.length + 4)
    // Lent again, a message sent through and at once taken back (unacknowledged yet: the
    // transport retransmits it if need be) is still delivered once, and so is the next.
    await lentAgain()
    assert.equal(send([randomBytes(32), randomBytes(8_000)], Delivery.Reliable), true)
    assert.equal(c.lent, true)
    c.takeBack()
    assert.equal(send([randomBytes(64)], Delivery.Reliable), true)
    await until('the peer got both', () => got.length === sent.length)
    assert.deepEqual(got.map((g) => g.sha256).sort(), [...sent].sort(), 'every message arrived whole, once')
    assert.equal(counters().sentThrough - through, messages.length + 5)
  } finally {
    await stop()
    closeSync(fd)
    rmSync(dir, { recursive: true, force: true })
  }
})
