/** From two scrapes to rates and percentiles: what the dashboard plots and `vrio top` prints. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { computeFigures, histogramQuantile } from '../../src/dashboard/figures.ts'
import { historyPoint } from '../../src/dashboard/plots.ts'
import { type DiskState, exposition, histogram, iohypText, scrapeOf } from './fixtures.ts'

const G = '02:00:00:00:00:01'
const disk = (o: Partial<DiskState>): DiskState => ({
  guest: G,
  disk: 'd1',
  reads: 0,
  writes: 0,
  readBytes: 0,
  writeBytes: 0,
  latencies: [],
  inFlight: 0,
  ...o,
})

describe('histogramQuantile (Prometheus histogram_quantile)', () => {
  const b = (pairs: [number, number][]) => pairs.map(([le, count]) => ({ le, count }))
  it('interpolates linearly inside the bucket that holds the rank', () => {
    const h = b([
      [1, 10],
      [2, 20],
      [Infinity, 20],
    ])
    assert.equal(histogramQuantile(0.5, h), 1)
    assert.equal(histogramQuantile(0.75, h), 1.5)
    assert.equal(histogramQuantile(0.25, h), 0.5)
  })
  it('a rank in the +Inf bucket is the highest finite bound; an empty histogram has none', () => {
    assert.equal(
      histogramQuantile(
        0.99,
        b([
          [1, 10],
          [Infinity, 20],
        ]),
      ),
      1,
    )
    assert.equal(histogramQuantile(0.5, b([[Infinity, 0]])), null)
    assert.equal(histogramQuantile(0.5, []), null)
  })
  it('stays within the bucket bounds of the true quantile of the observations', () => {
    const bounds = [0.001, 0.01, 0.1, 1]
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 0.999, noNaN: true }), { minLength: 1, maxLength: 200 }),
        fc.double({ min: 0.01, max: 1, noNaN: true }),
        (obs, q) => {
          const buckets = [...bounds, Infinity].map((le) => ({
            le,
            count: obs.filter((o) => o <= le).length,
          }))
          const got = histogramQuantile(q, buckets) as number
          const sorted = [...obs].sort((x, y) => x - y)
          const truth = sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]
          const upper = bounds.find((le) => truth <= le) as number
          const lower = [0, ...bounds][bounds.indexOf(upper)]
          assert.ok(got >= lower - 1e-12 && got <= upper + 1e-12, `q=${q} got ${got} truth ${truth}`)
        },
      ),
    )
  })
})

describe('computeFigures', () => {
  it('IOPS, MB/s and in-flight per disk over the interval; percentiles from bucket deltas only', () => {
    const before = scrapeOf(
      10_000,
      iohypText({
        guest: G,
        disks: [
          // 1000 slow requests before the interval: must not show in its percentiles.
          disk({
            reads: 1000,
            writes: 500,
            readBytes: 4096e3,
            writeBytes: 2048e3,
            latencies: Array(1000).fill(5),
          }),
          disk({ disk: 'd2', reads: 10 }),
        ],
      }),
    )
    const after = scrapeOf(
      12_000,
      iohypText({
        guest: G,
        disks: [
          disk({
            reads: 3000,
            writes: 1500,
            readBytes: 4096e3 + 8192e3,
            writeBytes: 2048e3 + 4096e3,
            latencies: [...Array(1000).fill(5), ...Array(990).fill(0.00005), ...Array(10).fill(0.05)],
            inFlight: 4,
          }),
          disk({ disk: 'd2', reads: 10 }),
        ],
      }),
    )
    const f = computeFigures(before, after)
    assert.equal(f.seconds, 2)
    assert.equal(f.role, 'iohyp')
    const [d1, d2] = f.disks
    assert.equal(d1.disk, 'd1')
    assert.equal(d1.readIops, 1000)
    assert.equal(d1.writeIops, 500)
    assert.equal(d1.iops, 1500, 'flushes are not IOPS')
    assert.equal(d1.readBytesPerSec, 4096e3)
    assert.equal(d1.writeBytesPerSec, 2048e3)
    assert.equal(d1.inFlight, 4)
    // 1000 new observations: 990 in (25us, 100us], 10 in (10ms, 100ms].
    assert.ok(d1.p50 !== null && d1.p50 > 0.000025 && d1.p50 <= 0.0001, `p50 ${d1.p50}`)
    assert.ok(d1.p99 !== null && d1.p99 <= 0.0001, `p99 ${d1.p99}`)
    assert.equal(d2.iops, 0)
    assert.equal(d2.p50, null, 'no request in the interval: no percentile')
    const [g] = f.guests
    assert.equal(g.guest, G)
    assert.equal(g.state, 'connected')
    assert.equal(g.iops, 1500)
    assert.equal(g.diskBytesPerSec, 6144e3)
    assert.equal(g.rttSeconds, 0.00025)
  })

  it('a first scrape lists everything with null rates', () => {
    const f = computeFigures(undefined, scrapeOf(1, iohypText({ guest: G, disks: [disk({ reads: 5 })] })))
    assert.equal(f.seconds, null)
    assert.equal(f.disks.length, 1)
    assert.equal(f.disks[0].iops, null)
    assert.equal(f.guests[0].iops, null)
    assert.equal(f.guests[0].state, 'connected')
  })

  it('a counter that went down was reset (daemon restart): its new value is the increase', () => {
    const before = scrapeOf(0, iohypText({ guest: G, disks: [disk({ reads: 1_000_000 })] }))
    const after = scrapeOf(1000, iohypText({ guest: G, disks: [disk({ reads: 300 })] }))
    assert.equal(computeFigures(before, after).disks[0].readIops, 300)
  })

  it('a series absent from the earlier scrape counts from zero (created at its first increment)', () => {
    const before = scrapeOf(0, iohypText({ guest: G, disks: [] }))
    const after = scrapeOf(2000, iohypText({ guest: G, disks: [disk({ writes: 400 })] }))
    const f = computeFigures(before, after)
    assert.equal(f.disks[0].writeIops, 200)
  })

  it('NIC Gbit/s each way, drops and DPI alerts (joined by NIC name); channel state and drops per guest', () => {
    const nic = (inBytes: number, alerts: number) => ({
      name: 'eth1',
      inBytes,
      outBytes: inBytes / 2,
      drops: alerts * 2,
      alerts,
    })
    const before = scrapeOf(
      0,
      iohypText({ guest: G, state: 'connecting', disks: [], nic: nic(0, 0), drops: 1 }),
    )
    const after = scrapeOf(
      1000,
      iohypText({ guest: G, state: 'connecting', disks: [], nic: nic(125e6, 3), drops: 5, channelIn: 1e6 }),
    )
    const f = computeFigures(before, after)
    assert.deepEqual(f.nics[0], {
      guest: G,
      nic: 'eth1',
      inBitsPerSec: 1e9,
      outBitsPerSec: 0.5e9,
      inFramesPerSec: 0,
      outFramesPerSec: 0,
      dropsPerSec: 6,
      alertsPerSec: 3,
    })
    assert.equal(f.guests[0].state, 'connecting')
    assert.equal(f.guests[0].dropsPerSec, 4)
    assert.equal(f.guests[0].inBytesPerSec, 1e6)
    const up = historyPoint(f).find((p) => p.group === 'channel-up')
    assert.equal(up?.value, 0)
    const gbps = historyPoint(f).filter((p) => p.group === 'nic-gbps')
    assert.deepEqual(
      gbps.map((p) => [p.label, p.value]),
      [
        [`${G}/eth1 in`, 1],
        [`${G}/eth1 out`, 0.5],
      ],
    )
  })

  it("a guest agent's metrics (no guest label, end-to-end request_seconds)", () => {
    const text = (n: number, lat: number[]) =>
      exposition([
        ['vrio_info', { role: 'guest', version: '0.1.0' }, 1],
        ['vrio_disk_requests_total', { disk: 'd1', op: 'read' }, n],
        ['vrio_disk_in_flight', { disk: 'd1' }, 32],
        ...histogram('vrio_disk_request_seconds', { disk: 'd1', op: 'read' }, lat),
      ])
    const f = computeFigures(scrapeOf(0, text(0, [])), scrapeOf(500, text(100, Array(100).fill(0.0005))))
    assert.equal(f.role, 'guest')
    assert.equal(f.guests.length, 0)
    assert.equal(f.disks[0].guest, '')
    assert.equal(f.disks[0].iops, 200)
    assert.equal(f.disks[0].inFlight, 32)
    assert.ok(f.disks[0].p50 !== null && f.disks[0].p50 > 0.0001 && f.disks[0].p50 <= 0.001)
    assert.deepEqual(
      historyPoint(f)
        .filter((p) => p.group === 'disk-iops')
        .map((p) => p.label),
      ['d1'],
    )
  })
})
