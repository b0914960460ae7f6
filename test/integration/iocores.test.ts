/**
 * iocores: an IOhyp with `--iocores 2` serving two guests, each with a remote disk and a remote
 * NIC. Both guests run fio (random writes, crc32c verify, QD32) while iperf3 runs between their
 * NICs, and `vrio guests move` moves each guest between the iocores 20 times: no verify error,
 * iperf3 carries on, every move counted. Then an iocore is made to throw (a test hook) while a
 * recording writer runs on its guest's disk: the iocore is started again with its guest, and every
 * acknowledged write is on the disk.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ControlClient } from '../../src/control/control-client.ts'
import type { DiskInfo, StatusInfo } from '../../src/control/api.ts'
import { fio, recordedWrites, sparseFile, VERIFY_WRITES, verifyRecordedWrites } from '../support/block-io.ts'
import { killDaemons, vrioAsync, vrioJsonAsync } from '../support/daemons.ts'
import { cleanupNetns, ip, requireRoot } from '../support/netns.ts'
import { firewalledLan, worldOnBridge } from '../support/topology.ts'
import { type ExtraGuest, onBridge, VrioPair } from '../support/vrio-pair.ts'
import { settlesWithin } from '../support/wait.ts'

const MiB = 1024 * 1024
const children = new Set<ChildProcess>()

after(async () => {
  for (const c of children) c.kill('SIGKILL')
  await killDaemons()
  cleanupNetns()
})

describe('iocores: two guests on two iocores, moved 20 times each under fio and iperf3', () => {
  let pair: VrioPair
  let g2: ExtraGuest
  const disks: DiskInfo[] = []

  const status = () => vrioJsonAsync<StatusInfo>(['status', '--json', '--control', pair.sock('iohyp')])
  const move = async (mac: string, iocore: number) => {
    const r = await vrioAsync([
      'guests',
      'move',
      mac,
      '--iocore',
      String(iocore),
      '--control',
      pair.sock('iohyp'),
    ])
    assert.equal(r.status, 0, r.stderr)
  }

  before(async () => {
    requireRoot()
    process.env.VRIO_TEST_HOOKS = '1'
    const lan = firewalledLan(3)
    pair = new VrioPair(lan.ends[0], lan.ends[1], { iohypOptions: ['--iocores', '2'] })
    pair.guestOptions = ['--io-timeout', '60']
    await pair.start()
    g2 = await pair.addGuest(lan.ends[2])
    worldOnBridge(lan.ends[0].ns, ['192.168.79.100/24'])
    for (const [i, mac] of [pair.guestMac, g2.mac].entries()) {
      const backing = join(pair.dir, `io${i}.img`)
      sparseFile(backing, 64 * MiB)
      disks.push(
        await vrioJsonAsync<DiskInfo>([
          'blk',
          'create',
          '--guest',
          mac,
          '--backing',
          backing,
          '--name',
          `io${i}`,
          '--control',
          pair.sock('iohyp'),
        ]),
      )
      await pair.createNic(`vio${i}`, `02:79:00:00:00:0${i + 1}`, onBridge(`vti${i}`), { guest: mac })
    }
    ip(lan.ends[1].ns, ['addr', 'add', '192.168.79.1/24', 'dev', 'vio0'])
    ip(g2.end.ns, ['addr', 'add', '192.168.79.2/24', 'dev', 'vio1'])
  })
  after(async () => {
    await pair?.stop()
  })

  it('runs one guest on each iocore and shows both in status', async () => {
    const s = await status()
    assert.equal(s.iocores?.length, 2)
    assert.deepEqual(
      s.iocores!.map((c) => c.guests),
      [1, 1],
    )
    assert.equal(s.guests?.connected, 2)
    // The metrics: every iocore's guests and disks, merged into one exposition.
    const r = await vrioAsync(['status', '--json', '--control', pair.sock('iohyp')])
    assert.equal(r.status, 0)
    const text = await new ControlClient({ path: pair.sock('iohyp') }).get<string>('/metrics')
    assert.match(text, /^vrio_iocore_guests\{iocore="0"\} 1$/m)
    assert.match(text, /^vrio_iocore_guests\{iocore="1"\} 1$/m)
    // The iocores' own families are the ones docs/operations.md lists (in its tables; the unit test
    // of the metric list checks every other family, which exists without --iocores too).
    const doc = readFileSync(new URL('../../../docs/operations.md', import.meta.url), 'utf8')
    const documented = new Set(
      doc
        .split('\n')
        .filter((line) => line.startsWith('| `vrio_iocore_'))
        .flatMap((line) => line.split('|')[1].match(/vrio_iocore_[a-z_]+/g) ?? []),
    )
    const exposed = new Set([...text.matchAll(/^# TYPE (vrio_iocore_\S+) /gm)].map((m) => m[1]))
    assert.deepEqual([...exposed].sort(), [...documented].sort())
    for (const d of disks)
      assert.match(text, new RegExp(`^vrio_disk_requests_total\\{[^}]*disk="${d.name}"`, 'm'))
    assert.equal(text.match(/^# TYPE vrio_disk_requests_total /gm)?.length, 1)
  })

  it('moves each guest 20 times while fio verifies and iperf3 runs: no error, every move counted', async () => {
    const before = await status()
    const moved = (x: StatusInfo) => x.iocores!.reduce((n, c) => n + c.movesIn, 0)
    const iperfServer = spawn(
      'ip',
      ['netns', 'exec', g2.end.ns.name, 'iperf3', '-s', '-1', '-B', '192.168.79.2'],
      {
        stdio: 'ignore',
      },
    )
    children.add(iperfServer)
    await sleep(300)
    const iperf = spawn(
      'ip',
      [
        'netns',
        'exec',
        pair.guestEnd.ns.name,
        'iperf3',
        '-c',
        '192.168.79.2',
        '-t',
        '600',
        '-b',
        '20M',
        '-J',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    children.add(iperf)
    let iperfOut = ''
    iperf.stdout.on('data', (d: Buffer) => {
      iperfOut += d.toString()
    })
    const iperfExit = new Promise<number | null>((resolve) => iperf.on('exit', (code) => resolve(code)))
    const jobs = disks.map((d) =>
      fio(d.nbd!, [...VERIFY_WRITES, '--size=32m', '--rate_iops=150', '--thread']),
    )
    const owner = [0, 1]
    for (let round = 0; round < 20; round++) {
      for (const [i, mac] of [pair.guestMac, g2.mac].entries()) {
        owner[i] = 1 - owner[i]
        await move(mac, owner[i])
      }
      await sleep(100)
    }
    const results = await Promise.all(jobs.map((j) => j.result))
    for (const r of results) {
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.json?.jobs[0].error, 0)
      assert.equal(r.json?.jobs[0].verify_errors ?? 0, 0)
    }
    // iperf3 ran through all the moves: still going, then stopped by us and reporting bytes.
    assert.equal(iperf.exitCode, null, 'iperf3 stopped during the moves')
    iperf.kill('SIGINT')
    await iperfExit
    const report = JSON.parse(iperfOut.slice(iperfOut.indexOf('{')))
    assert.ok(report.end.sum_sent.bytes > 0, 'iperf3 moved no data')
    // Still carrying traffic after the last move (1 s intervals).
    const intervals = report.intervals as { sum: { bytes: number } }[]
    assert.ok(intervals.length >= 10, `iperf3 ran ${intervals.length} s`)
    assert.ok(
      intervals.slice(-3).some((i) => i.sum.bytes > 0),
      'iperf3 carried nothing after the moves',
    )
    const after = await status()
    assert.equal(moved(after) - moved(before), 40)
    assert.equal(
      after.iocores!.reduce((n, c) => n + c.movesOut, 0) -
        before.iocores!.reduce((n, c) => n + c.movesOut, 0),
      40,
    )
  })

  it('starts a crashed iocore again with its guest; every acknowledged write is on the disk', async () => {
    const s0 = await status()
    const guests = await vrioJsonAsync<{ guests: { mac: string; iocore?: number }[] }>([
      'guests',
      'list',
      '--json',
      '--control',
      pair.sock('iohyp'),
    ])
    assert.equal(guests.guests.length, 2)
    const k = guests.guests.find((g) => g.mac === pair.guestMac)?.iocore
    assert.ok(k !== undefined)
    const log = join(pair.dir, 'crash-writes.log')
    const w = recordedWrites(disks[0].nbd!, log, { first: 12_000, blocks: 2048, seed: 7, seconds: 8, qd: 8 })
    children.add(w.child)
    await settlesWithin(w.firstAck, 'the recording writer’s first acknowledged write', 60_000)
    await sleep(300)
    const crash = await fetchUnix(pair.sock('iohyp'), `/v1/test/iocores/${k}/crash`)
    assert.equal(crash, 200)
    const written = await w.result
    assert.equal(written.error, null)
    assert.ok(written.acked > 0)
    await pair.waitConnected(30_000)
    const s1 = await status()
    assert.equal(s1.iocores![k].restarts, s0.iocores![k].restarts + 1)
    const v = await verifyRecordedWrites(disks[0].nbd!, log)
    assert.ok(v.acked > 0)
  })
})

/** POST to the control socket (a route the CLI does not have: the test hook). */
async function fetchUnix(socket: string, path: string): Promise<number> {
  const { request } = await import('node:http')
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath: socket, path, method: 'POST', headers: { 'content-type': 'application/json' } },
      (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      },
    )
    req.on('error', reject)
    req.end('{}')
  })
}
