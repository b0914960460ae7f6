/**
 * DPI isolation between iocores (issue 16, must-hold): one guest running a pathological DPI load
 * does not take another guest's disk on a different iocore down with it. An IOhyp with
 * `--iocores 2`; guest A on iocore 0 with a NIC whose DPI rules cost the whole per-frame regex
 * budget on every crafted request (the pcres of nic-services-limits.test.ts against 40 KB headers),
 * guest B on iocore 1 reading its disk with fio at a fixed rate, first alone, then while A's
 * clients flood the DPI.
 *
 * Asserted on counters, never on time: A's DPI did the work (regex steps, budget exhaustion),
 * B's disk completed every request fio asked for at its fixed rate in both windows (no error, and
 * as many requests under A's load as alone, within 10%), and the DPI work stayed on iocore 0
 * (its event loop's busy time over the loaded window exceeds iocore 1's). B's p99 latency under
 * load over its p99 alone (fio's completion latency, and the IOhyp's service-time histogram from
 * the metrics) is printed as a reported figure.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ControlClient } from '../../src/control/control-client.ts'
import type { DiskInfo, IocoreInfo, NicInfo, StatusInfo } from '../../src/control/api.ts'
import { fio, sparseFile } from '../support/block-io.ts'
import { killDaemons, vrioAsync, vrioJsonAsync } from '../support/daemons.ts'
import { cleanupNetns, ip, requireRoot } from '../support/netns.ts'
import { firewalledLan, type World, worldOnBridge, worldWebServer } from '../support/topology.ts'
import { type ExtraGuest, onBridge, VrioPair } from '../support/vrio-pair.ts'

const MiB = 1024 * 1024
const WORLD = '192.168.81.100'
/** B's fixed request rate, and the length of each window. */
const RATE_IOPS = 400
const SECONDS = 6

/** Rules whose pcres exhaust the per-frame regex budget on a long "a a a ..." header. */
const PATHOLOGICAL = [
  'alert tcp any any -> any 80 (msg:"f20"; content:"X-Pad"; pcre:"/^(?:[^\\r\\n]*\\s){20}evil/"; sid:7200020;)',
  'alert tcp any any -> any 80 (msg:"f25"; content:"X-Pad"; pcre:"/^(?:[^\\r\\n]*\\s){25}evil/"; sid:7200021;)',
  'alert tcp any any -> any 80 (msg:"f30"; content:"X-Pad"; pcre:"/^(?:[^\\r\\n]*\\s){30}evil/"; sid:7200023;)',
  'alert tcp any any -> any 80 (msg:"nested"; content:"X-Pad"; pcre:"/(a+)+b$/"; sid:7200024;)',
  '',
].join('\n')

const children = new Set<ChildProcess>()

after(async () => {
  for (const c of children) c.kill('SIGKILL')
  await killDaemons()
  cleanupNetns()
})

interface FioLatency {
  jobs: {
    error: number
    read: { total_ios: number; clat_ns: { percentile?: Record<string, number> } }
  }[]
}

describe('iocores: a pathological DPI load on one iocore leaves a disk on the other alone', () => {
  let pair: VrioPair
  let b: ExtraGuest
  let world: World
  let disk: DiskInfo

  const status = () => vrioJsonAsync<StatusInfo>(['status', '--json', '--control', pair.sock('iohyp')])
  const dpiCounters = async () => {
    const nics = await pair.list<{ nics: NicInfo[] }>('nic')
    const n = nics.nics.find((x) => x.name === 'dpa0')!
    return n.services.services.dpi!.counters as Record<string, number>
  }
  const metrics = () => new ControlClient({ path: pair.sock('iohyp') }).get<string>('/metrics')

  before(async () => {
    requireRoot()
    const lan = firewalledLan(3)
    pair = new VrioPair(lan.ends[0], lan.ends[1], { iohypOptions: ['--iocores', '2'] })
    await pair.start()
    b = await pair.addGuest(lan.ends[2])
    world = worldOnBridge(lan.ends[0].ns, [`${WORLD}/24`])
    children.add(worldWebServer(world.ns, WORLD, join(pair.dir, 'www')))
    // A: a NIC onto the world with the pathological DPI rules.
    await pair.createNic('dpa0', '02:81:00:00:00:01', onBridge('dpt0'), { guest: pair.guestMac })
    ip(lan.ends[1].ns, ['addr', 'add', '192.168.81.1/24', 'dev', 'dpa0'])
    const rules = join(pair.dir, 'patho.rules')
    writeFileSync(rules, PATHOLOGICAL)
    const r = await pair.nicServices('dpa0', ['--dpi', rules])
    assert.equal(r.status, 0, r.stderr)
    // B: a disk.
    const backing = join(pair.dir, 'b.img')
    sparseFile(backing, 64 * MiB)
    disk = await vrioJsonAsync<DiskInfo>([
      'blk',
      'create',
      '--guest',
      b.mac,
      '--backing',
      backing,
      '--name',
      'dpb0',
      '--control',
      pair.sock('iohyp'),
    ])
    // A on iocore 0, B on iocore 1.
    for (const [mac, k] of [
      [pair.guestMac, 0],
      [b.mac, 1],
    ] as const) {
      const list = await vrioJsonAsync<{ guests: { mac: string; iocore?: number }[] }>([
        'guests',
        'list',
        '--json',
        '--control',
        pair.sock('iohyp'),
      ])
      if (list.guests.find((g) => g.mac === mac)?.iocore !== k) {
        const m = await vrioAsync([
          'guests',
          'move',
          mac,
          '--iocore',
          String(k),
          '--control',
          pair.sock('iohyp'),
        ])
        assert.equal(m.status, 0, m.stderr)
      }
    }
    await pair.waitConnected()
    // Written once, so that the reads below read data.
    const w = await fio(disk.nbd!, ['--rw=write', '--bs=1m', '--iodepth=4', '--size=32m']).result
    assert.equal(w.code, 0, w.stderr)
  })
  after(async () => {
    await pair?.stop()
  })

  /** B's fixed-rate random reads for SECONDS; the fio report. */
  async function readB(): Promise<FioLatency> {
    const r = await fio(disk.nbd!, [
      '--rw=randread',
      '--bs=4k',
      '--iodepth=4',
      '--size=32m',
      '--time_based',
      `--runtime=${SECONDS}`,
      `--rate_iops=${RATE_IOPS}`,
    ]).result
    assert.equal(r.code, 0, r.stderr)
    const json = r.json as unknown as FioLatency
    assert.equal(json.jobs[0].error, 0)
    return json
  }

  /** A window: counters around `work`. */
  async function window(work: () => Promise<FioLatency>) {
    const s0 = await status()
    const m0 = await metrics()
    const d0 = await dpiCounters()
    const fioReport = await work()
    const s1 = await status()
    const m1 = await metrics()
    const d1 = await dpiCounters()
    const busy = (s: StatusInfo, k: number) => (s.iocores as IocoreInfo[])[k].busyMs
    return {
      fio: fioReport,
      busy: [busy(s1, 0) - busy(s0, 0), busy(s1, 1) - busy(s0, 1)],
      requests: diskRequests(m1, 'dpb0') - diskRequests(m0, 'dpb0'),
      service: histogramDelta(m0, m1, 'dpb0'),
      regexSteps: d1.regexSteps - d0.regexSteps,
      budgetExceeded: d1.budgetExceeded - d0.budgetExceeded,
    }
  }

  it("B's disk keeps its rate and A's scanning stays on iocore 0 (p99 ratio reported)", async () => {
    const s = await status()
    assert.deepEqual(
      s.iocores!.map((c) => c.guests),
      [1, 1],
    )
    const alone = await window(readB)
    // A's clients: 3 loops of curl with 40 KB headers through the DPI until B's window ends.
    let stop = false
    const pad = 'a '.repeat(20_000)
    let requestsA = 0
    const client = async () => {
      while (!stop) {
        await new Promise<void>((resolve) =>
          execFile(
            'ip',
            [
              'netns',
              'exec',
              pair.guestEnd.ns.name,
              'curl',
              '-s',
              '-o',
              '/dev/null',
              '--max-time',
              '10',
              '-H',
              `X-Pad: ${pad}`,
              `http://${WORLD}/`,
            ],
            () => {
              requestsA++
              resolve()
            },
          ),
        )
      }
    }
    const clients = [client(), client(), client()]
    await sleep(500)
    const loaded = await window(readB)
    stop = true
    await Promise.all(clients)

    const p99 = (w: typeof alone) => (w.fio.jobs[0].read.clat_ns.percentile?.['99.000000'] ?? 0) / 1000
    console.log(
      `reported: B's p99 alone ${p99(alone).toFixed(0)} us, under A's DPI load ${p99(loaded).toFixed(0)} us ` +
        `(ratio ${(p99(loaded) / p99(alone)).toFixed(2)}); IOhyp service-time p99 bucket alone ≤ ${alone.service} s, ` +
        `loaded ≤ ${loaded.service} s; B's requests ${alone.requests} / ${loaded.requests}; ` +
        `iocore busy ms alone ${alone.busy.join('/')} loaded ${loaded.busy.join('/')}; ` +
        `A: ${requestsA} requests, ${loaded.regexSteps} regex steps, ${loaded.budgetExceeded} frames over budget`,
    )
    // A's load was real: the DPI ran its pcres to the budget on many frames.
    assert.ok(loaded.budgetExceeded >= 10, `A's DPI: ${loaded.budgetExceeded} frames over budget`)
    assert.ok(loaded.regexSteps >= 10_000_000, `A's DPI: ${loaded.regexSteps} regex steps`)
    // B got every request it asked for at its fixed rate, under A's load as alone.
    assert.ok(alone.requests >= RATE_IOPS * SECONDS * 0.9, `B alone: ${alone.requests} requests`)
    assert.ok(
      loaded.requests >= alone.requests * 0.9,
      `B under A's load: ${loaded.requests} requests, ${alone.requests} alone`,
    )
    assert.ok(loaded.fio.jobs[0].read.total_ios >= alone.fio.jobs[0].read.total_ios * 0.9)
    // The scanning ran on A's iocore, not on B's.
    assert.ok(
      loaded.busy[0] > loaded.busy[1],
      `iocore busy ms under load: ${loaded.busy[0]} (A's) vs ${loaded.busy[1]} (B's)`,
    )
  })
})

/** The sum of vrio_disk_requests_total over the ops of `disk`. */
function diskRequests(text: string, disk: string): number {
  let n = 0
  for (const m of text.matchAll(/^vrio_disk_requests_total\{([^}]*)\} (\S+)$/gm))
    if (m[1].includes(`disk="${disk}"`)) n += Number(m[2])
  return n
}

/** The upper bound of the bucket that holds the 99th percentile of `disk`'s service time between two scrapes. */
function histogramDelta(before: string, after: string, disk: string): string {
  const buckets = (text: string) => {
    const out = new Map<string, number>()
    for (const m of text.matchAll(/^vrio_disk_service_seconds_bucket\{([^}]*)\} (\S+)$/gm)) {
      if (!m[1].includes(`disk="${disk}"`)) continue
      const le = /le="([^"]+)"/.exec(m[1])![1]
      out.set(le, (out.get(le) ?? 0) + Number(m[2]))
    }
    return out
  }
  const a = buckets(before)
  const b = buckets(after)
  const rows = [...b].map(([le, n]) => [le, n - (a.get(le) ?? 0)] as const)
  rows.sort((x, y) => (x[0] === '+Inf' ? 1 : y[0] === '+Inf' ? -1 : Number(x[0]) - Number(y[0])))
  const total = rows.at(-1)?.[1] ?? 0
  for (const [le, n] of rows) if (n >= total * 0.99) return le
  return '?'
}
