/**
 * Issue 12, must-holds 1 and 2: an attacker on the tenant's shared segment. The IOhyp, tenant A's
 * guest and an attacker host sit on one bridge that floods every frame to every port, so the
 * attacker sees A's channel. Run twice: with the channel as it ships (sealed, the default), where
 * nothing the attacker injects may be obeyed and the capture must not show A's data, and as a
 * control with `--insecure-plaintext` on both daemons, where the same attack must work (the
 * injected write lands in A's disk, the read is answered, the NIC frame reaches A's bridge, the
 * RSTs kill the channel) and the capture shows A's data: proof that the attacker and the checks are
 * real and that the sealed run can fail.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { closeSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { DiskInfo, GuestInfo, ListGuestsResponse, StatusInfo } from '../../src/control/api.ts'
import { VRIO_PORT } from '../../src/daemon/runtime.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import { formatIPv4 } from '../../src/wire/address.ts'
import { type AttackConfig, type AttackReport, INJECTED_KINDS, runAttacker } from '../support/attacker.ts'
import { type FioResult, fio, sparseFile, started } from '../support/block-io.ts'
import { RssSampler, rssBytes } from '../support/proc.ts'
import { killDaemons, vrioJsonAsync } from '../support/daemons.ts'
import type { VethEnd } from '../support/harness.ts'
import { cleanupNetns, ip, requireRoot } from '../support/netns.ts'
import {
  BridgeCapture,
  findPatternRun,
  SegmentPair,
  type SharedSegment,
  sharedSegment,
} from '../support/shared-segment.ts'
import { firewallCounters, type World, worldOnBridge } from '../support/topology.ts'
import { tsharkFields, tsharkProblemsOfWholeStreams } from '../support/tshark.ts'
import { onBridge } from '../support/vrio-pair.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

// ======================================================================================
// THE ONE PLACE THAT KNOWS THE SEAL'S DROP COUNTER NAMES — adapt here if they differ.
// Counters of frames the channel dropped because they were not sealed, failed authentication or
// were replays: on the IOhyp per guest (`vrio guests list --json`), on the guest in
// `vrio status --json`. Every numeric field whose name matches (compared in lower case without
// separators or a `seal` prefix: `auth-failed`, `authFailed`, `sealAuthFailed` are one name),
// anywhere in those documents but under `sessionFailures` (channels that ended, not frames),
// counts; the same name twice on one side (e.g. `drops["auth-failed"]` and `seal.authFailed`)
// counts once (the larger).
// ======================================================================================
const SEAL_DROP_COUNTER =
  /^(seal)?(auth(entication)?fail(ed|ures?)?|bad(mac|tag|seal)|macfail(ed)?|replay(ed|s)?|unsealed|notsealed|missingseal)$/

/**
 * Whether verbatim replays of captured frames must show in those counters too (a replay window
 * counts them). A design that lets them through to TCP, which discards them as duplicates, would
 * set this false: then only forged frames (everything else the attacker sent) must be counted.
 */
const COUNT_VERBATIM_REPLAYS = true

function sealDrops(iohypSide: GuestInfo, guestSide: StatusInfo): { total: number; names: string[] } {
  let total = 0
  const names: string[] = []
  for (const [side, doc] of [
    ['iohyp', iohypSide],
    ['guest', guestSide],
  ] as const) {
    const found = new Map<string, number>()
    const walk = (value: unknown, key: string) => {
      if (key === 'sessionFailures' || value === null || typeof value !== 'object') return
      for (const [k, v] of Object.entries(value)) {
        const name = k.toLowerCase().replace(/[^a-z]/g, '')
        if (typeof v === 'number' && SEAL_DROP_COUNTER.test(name)) {
          const same = name.replace(/^seal/, '')
          found.set(same, Math.max(found.get(same) ?? 0, v))
        } else walk(v, k)
      }
    }
    walk(doc, '')
    for (const [name, n] of found) {
      total += n
      names.push(`${side}.${name}=${n}`)
    }
  }
  return { total, names }
}
// ======================================================================================

const MiB = 1024 * 1024
/** Tenant A's recognisable data: a 64-byte period. */
const PATTERN = createHash('sha512').update('vrio: tenant A, a recognisable 64-byte period').digest()
const PATTERN_OFFSET = 32 * MiB
/** What the attacker writes into A's disk, and where (fio stays below 16 MiB). */
const MARKER = Buffer.from('the attacker wrote this into tenant A disk. '.repeat(24).slice(0, 1024))
const MARKER_OFFSET = 48 * MiB
const NIC_MAC = '02:77:00:00:00:01'
const GUEST_NIC_IP = '192.168.77.1'
const WORLD_IP = '192.168.77.100'
/** The target address of the ARP request the attacker puts on A's NIC: the world watches for it. */
const NIC_MARKER_TARGET = [192, 168, 77, 250]

/** A broadcast ARP request from A's NIC MAC for NIC_MARKER_TARGET. */
function markerArp(): Buffer {
  const mac = Buffer.from(NIC_MAC.replaceAll(':', ''), 'hex')
  const f = Buffer.alloc(60)
  f.fill(0xff, 0, 6)
  mac.copy(f, 6)
  f.writeUInt16BE(0x0806, 12)
  Buffer.from('0001080006040001', 'hex').copy(f, 14)
  mac.copy(f, 22)
  f.set([192, 168, 77, 1], 28)
  f.set(NIC_MARKER_TARGET, 38)
  return f
}

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r')
  try {
    const b = Buffer.alloc(length)
    readSync(fd, b, 0, length, offset)
    return b
  } finally {
    closeSync(fd)
  }
}

interface Snapshot {
  guest: GuestInfo
  status: StatusInfo
  /** The IOhyp's status (its fast-path counters). */
  iohypStatus: StatusInfo
  events: { opened: number; closed: number }
}

interface AttackOutcome {
  report: AttackReport
  fio: FioResult
  ping: { transmitted: number; received: number; output: string }
  before: Snapshot
  after: Snapshot
  /** The IOhyp's RSS before the attack and its peak during it (bytes). */
  rss: { before: number; peak: number }
}

/**
 * `fastPath`: the IOhyp runs with its native fast path on (VRIO_FASTPATH=1 in its environment; the
 * default), so the attack meets a channel that is lent to the addon whenever it is quiet (issue 15,
 * must-hold "hostile frames against a channel in fast-path state"): the addon must take none of
 * the injected frames, the transport must drop and count them, and the IOhyp's memory stays
 * bounded. The second run forces the slow path (VRIO_FASTPATH=0): the transport alone meets the
 * attack. The plaintext control has no fast path (it needs the seal).
 */
const modes = [
  {
    name: 'sealed channel (the default: the IOhyp with its native fast path on)',
    sealed: true,
    fastPath: '1',
  },
  { name: 'sealed channel, the IOhyp on the slow path only (VRIO_FASTPATH=0)', sealed: true, fastPath: '0' },
  { name: 'control: --insecure-plaintext on both daemons', sealed: false, fastPath: undefined },
] as const

/** How far the IOhyp's RSS may grow during the attack with the fast path on: its budgets (the
 * per-guest pending replies and reassembly, 64 + 8 + 16 MiB by default) and the fast path's
 * fixed store (8 slots of 1 MiB), with slack for V8's lazy collection. */
const ATTACK_RSS_ALLOWANCE = 160 * MiB

for (const mode of modes) {
  describe(`attacker on the shared segment — ${mode.name}`, () => {
    let segment: SharedSegment
    let attackerEnd: VethEnd
    let world: World
    let pair: SegmentPair
    let capture: BridgeCapture
    let disk: DiskInfo
    let backing: string
    let worldSocket: PacketSocket | undefined
    let nicMarkerSeen = false
    let outcome: AttackOutcome | undefined

    before(async () => {
      requireRoot()
      segment = sharedSegment(3)
      const [iohypEnd, guestEnd] = segment.ends
      attackerEnd = segment.ends[2]
      world = worldOnBridge(iohypEnd.ns, [`${WORLD_IP}/24`])
      pair = new SegmentPair(iohypEnd, guestEnd, { plaintext: !mode.sealed })
      pair.guestOptions.push('--io-timeout', '5')
      // From before the handshake, so tshark judges whole streams.
      capture = await BridgeCapture.start(segment, join(pair.dir, 'segment.pcapng'))
      // The daemons inherit this process's environment when they start, and only then.
      const was = process.env.VRIO_FASTPATH
      if (mode.fastPath !== undefined) process.env.VRIO_FASTPATH = mode.fastPath
      try {
        await pair.start()
      } finally {
        if (was === undefined) delete process.env.VRIO_FASTPATH
        else process.env.VRIO_FASTPATH = was
      }
      backing = join(pair.dir, 'a.img')
      sparseFile(backing, 64 * MiB)
      disk = await pair.createDisk(backing, 'a')
    })
    after(async () => {
      await capture?.stop()
      worldSocket?.close()
      await pair?.stop()
    })

    it(`tenant A writes a known pattern while the bridge is captured: ${mode.sealed ? 'no' : 'a'} 64-byte run of it in the capture`, async () => {
      const file = join(pair.dir, 'pattern.bin')
      writeFileSync(file, Buffer.concat(Array.from({ length: MiB / 64 }, () => PATTERN)))
      execFileSync('qemu-io', ['-f', 'raw', '-c', `write -s ${file} ${PATTERN_OFFSET} ${MiB}`, disk.nbd!], {
        stdio: 'pipe',
      })
      await capture.stop()
      assert.ok(readAt(backing, PATTERN_OFFSET, MiB).equals(readFileSync(file)), 'the pattern is in A disk')
      assert.equal(capture.dropped, 0, `the capture lost frames: ${capture.log}`)
      // The write crossed the captured segment: at least its MiB of TCP payload from guest to IOhyp.
      const [iohyp, guest] = segment.ends.map((e) => formatIPv4(e.ip))
      const sent = tsharkFields(capture.file, ['tcp.len'], `ip.src == ${guest} && ip.dst == ${iohyp}`)
      const bytes = sent.reduce((a, [n]) => a + Number(n), 0)
      assert.ok(bytes >= MiB, `only ${bytes} bytes of channel payload from the guest in the capture`)
      const at = findPatternRun(readFileSync(capture.file), PATTERN)
      if (mode.sealed) assert.equal(at, -1, `A's data crossed the segment readable (capture offset ${at})`)
      else assert.ok(at >= 0, 'control: the plaintext capture shows the pattern')
    })

    it('the capture is valid TCP to tshark (checksums, no expert warnings) and conntrack marked nothing invalid', () => {
      const rows = tsharkFields(
        capture.file,
        ['frame.number', 'ip.proto', 'ip.checksum.status', 'tcp.checksum.status'],
        'ip.addr == 10.99.0.0/24',
      )
      assert.ok(rows.length > 500, `captured ${rows.length} IPv4 frames`)
      for (const [n, proto, ipStatus, tcpStatus] of rows) {
        assert.equal(proto, '6', `frame ${n} is TCP`)
        assert.equal(ipStatus, '1', `frame ${n}: IPv4 checksum good`)
        assert.equal(tcpStatus, '1', `frame ${n}: TCP checksum good`)
      }
      const { problems, streams } = tsharkProblemsOfWholeStreams(capture.file)
      assert.ok(streams >= 1, 'the channel handshake is in the capture')
      assert.deepEqual(problems, [])
      const counts = firewallCounters(segment.ns)
      assert.equal(counts.invalid, 0, 'conntrack marked packets of the channel invalid')
      assert.ok(counts.established > 500, JSON.stringify(counts))
    })

    it('the attacker sniffs A’s live channel (fio verify job, ping over A’s NIC) and injects every kind', async () => {
      const [iohypEnd, guestEnd] = segment.ends
      await pair.createNic('vn1', NIC_MAC, onBridge('vt1'))
      ip(guestEnd.ns, ['addr', 'add', `${GUEST_NIC_IP}/24`, 'dev', 'vn1'])
      worldSocket = PacketSocket.open({ ifname: world.ifname, netns: world.ns.path })
      worldSocket.onBatch((b) => {
        for (let i = 0; i < b.count; i++) {
          const f = b.frame(i)
          if (
            f.length >= 42 &&
            f.readUInt16BE(12) === 0x0806 &&
            f.subarray(38, 42).equals(Buffer.from(NIC_MARKER_TARGET))
          )
            nicMarkerSeen = true
        }
      })
      const before = await snapshot()
      const iohypPid = pair.iohyp.child.pid! // `ip netns exec` execs the daemon: the same process
      const rssBefore = rssBytes(iohypPid) ?? 0
      const rss = new RssSampler(iohypPid, 50)
      const ping = started('ip', [
        'netns',
        'exec',
        guestEnd.ns.name,
        'ping',
        '-n',
        '-q',
        '-i',
        '0.05',
        '-w',
        '30',
        WORLD_IP,
      ])
      // The attacker sniffs until it has seen the handles, injects messages at once (while fio
      // runs), then RSTs for 4 s: past fio's end, when the quiet channel makes its view exact.
      const config: AttackConfig = {
        ifname: attackerEnd.ifname,
        iohypIp: iohypEnd.ip,
        guestIp: guestEnd.ip,
        guestPort: VRIO_PORT,
        windowScale: 7,
        sniffMs: 15_000,
        write: { offset: MARKER_OFFSET, data: MARKER.toString('hex') },
        read: { offset: PATTERN_OFFSET, length: 4096 },
        nicFrame: markerArp().toString('hex'),
        replays: 8,
        rstMs: 4000,
        rstMax: 400,
      }
      const attack = runAttacker(attackerEnd.ns, config)
      await sleep(500)
      const job = fio(disk.nbd!, [
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--size=16m',
        '--verify=crc32c',
        '--verify_backlog=64',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--time_based',
        '--runtime=3',
      ])
      const report = await attack
      const fioResult = await job.result
      ping.kill('SIGINT') // ping prints its summary and exits
      const pinged = await ping.result
      await sleep(500) // counters and late reactions settle
      const m = /(\d+) packets transmitted, (\d+) received/.exec(pinged.stdout)
      outcome = {
        report,
        fio: fioResult,
        ping: { transmitted: Number(m?.[1] ?? 0), received: Number(m?.[2] ?? 0), output: pinged.stdout },
        before,
        after: await snapshot(),
        rss: { before: rssBefore, peak: rss.stop() },
      }
      // The attack itself is the same in both modes: it saw the channel and sent every kind.
      assert.ok(report.learned.framesSniffed.toIohyp > 0 && report.learned.framesSniffed.toGuest > 0)
      for (const kind of INJECTED_KINDS)
        assert.ok(report.injected[kind] > 0, `injected no ${kind}: ${JSON.stringify(report)}`)
    })

    if (mode.sealed) {
      it('A’s fio verify job finishes with zero errors, and its ping gets answers', () => {
        const o = need(outcome)
        assert.equal(o.fio.code, 0, `fio failed: ${o.fio.stderr}`)
        assert.equal(o.fio.json?.jobs[0].error, 0)
        assert.ok(o.ping.received > 0, `ping: ${o.ping.output}`)
      })

      it('A’s channel stays up: the same session, no reconnect', () => {
        const o = need(outcome)
        assert.ok(o.before.events.opened >= 2, 'both daemons logged the channel opening (log names changed?)')
        assert.deepEqual(o.after.events, o.before.events, 'channels opened / closed during the attack')
        assert.equal(o.after.guest.state, 'connected')
        assert.deepEqual(o.after.guest.sessionFailures, o.before.guest.sessionFailures)
        assert.deepEqual(o.report.learned.iohypPorts.length, 1, 'the IOhyp redialled from another port')
      })

      it('the seal drop counters grew by at least the number of injected frames', () => {
        const o = need(outcome)
        const was = sealDrops(o.before.guest, o.before.status)
        const now = sealDrops(o.after.guest, o.after.status)
        const expected = o.report.forged + (COUNT_VERBATIM_REPLAYS ? o.report.injected.replay : 0)
        assert.ok(
          now.total - was.total >= expected,
          `drop counters grew by ${now.total - was.total} (${now.names.join(', ') || 'none found'}), injected ${expected}: ${JSON.stringify(o.report.injected)}`,
        )
      })

      if (mode.fastPath === '1')
        it('the fast path was in use through the attack (lends, frames taken), and the IOhyp’s RSS stayed within its budgets', () => {
          const o = need(outcome)
          const fp = (s: Snapshot) => s.iohypStatus.fastPath
          const was = fp(o.before)
          const now = fp(o.after)
          assert.equal(now?.enabled, true, 'the IOhyp runs with its fast path on')
          const c = (f: StatusInfo['fastPath']) => f?.channels[0]
          const b = c(was)
          const a = c(now)
          assert.ok(a, `no fast-path counters: ${JSON.stringify(now)}`)
          assert.ok(a.lends > (b?.lends ?? 0) + 1, `lent during the attack: ${JSON.stringify([b, a])}`)
          assert.ok(
            a.framesIn > (b?.framesIn ?? 0),
            `frames taken natively during the attack: ${JSON.stringify([b, a])}`,
          )
          assert.ok(
            a.handbacks > (b?.handbacks ?? 0),
            `handed back during the attack: ${JSON.stringify([b, a])}`,
          )
          assert.ok(
            o.rss.peak < o.rss.before + ATTACK_RSS_ALLOWANCE,
            `IOhyp RSS ${(o.rss.before / MiB).toFixed(0)} MiB before, peak ${(o.rss.peak / MiB).toFixed(0)} MiB`,
          )
        })

      if (mode.fastPath === '0')
        it('the IOhyp ran on the slow path only (its fast path off)', () => {
          const o = need(outcome)
          assert.equal(o.after.iohypStatus.fastPath?.enabled, false)
        })

      it('nothing injected was obeyed: no write in A’s disk, no read answered, no frame on A’s bridge', () => {
        const o = need(outcome)
        assert.ok(!readAt(backing, MARKER_OFFSET, MARKER.length).equals(MARKER), 'the injected write landed')
        assert.equal(o.report.readAnswered, false, 'the injected read was answered')
        assert.equal(nicMarkerSeen, false, 'the injected NIC frame reached the bridge')
      })
    } else {
      it('control: the attacker learned the disk and NIC handles from the plaintext channel', () => {
        const o = need(outcome)
        assert.ok(o.report.learned.diskHandle, JSON.stringify(o.report))
        assert.ok(o.report.learned.nicHandle, JSON.stringify(o.report))
      })

      it('control: the injected write lands in A’s backing file and the injected read is answered', async () => {
        const o = need(outcome)
        for (let i = 0; i < 50 && !readAt(backing, MARKER_OFFSET, MARKER.length).equals(MARKER); i++)
          await sleep(100)
        assert.ok(readAt(backing, MARKER_OFFSET, MARKER.length).equals(MARKER), 'the injected write is there')
        assert.equal(o.report.readAnswered, true, JSON.stringify(o.report.notes))
      })

      it('control: the injected NIC frame reaches A’s bridge', () => {
        assert.equal(nicMarkerSeen, true)
      })

      it('control: the forged RST/FIN killed A’s channel (a reconnect was counted)', () => {
        const o = need(outcome)
        assert.ok(
          o.after.events.closed > o.before.events.closed,
          JSON.stringify([o.before.events, o.after.events]),
        )
      })
    }

    async function snapshot(): Promise<Snapshot> {
      const [guests, status, iohypStatus] = await Promise.all([
        pair.list<ListGuestsResponse>('guests'),
        vrioJsonAsync<StatusInfo>(['status', '--control', pair.sock('guest')]),
        vrioJsonAsync<StatusInfo>(['status', '--control', pair.sock('iohyp')]),
      ])
      return { guest: guests.guests[0], status, iohypStatus, events: pair.channelEvents() }
    }
  })
}

function need<T>(value: T | undefined): T {
  assert.ok(value !== undefined, 'the attack did not run (see the test before)')
  return value
}
