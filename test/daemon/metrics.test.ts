/** The daemons' Prometheus exposition (src/daemon/metrics.ts): names, labels, escaping, the listener. */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import type { GuestInfo, NicInfo } from '../../src/control/api.ts'
import { parseListenAddress } from '../../src/daemon/listen-address.ts'
import {
  aggregateMetrics,
  createGuestMetrics,
  type ChannelMetrics,
  createIohypMetrics,
  type IohypDiskMetrics,
  METRICS_CONTENT_TYPE,
  MetricsListener,
} from '../../src/daemon/metrics.ts'
import { BlockOpStats, LATENCY_BUCKETS } from '../../src/devices/blk/op-stats.ts'
import { BlockStatus } from '../../src/devices/blk/protocol.ts'
import { EXIT, isVrioError } from '../../src/errors.ts'
import { vrio } from '../support/daemons.ts'

/** Strings a hostile peer could put in a label value. */
const HOSTILE = 'evil"} 1\nvrio_info{role="x\\y'

function guest(mac: string, over: Partial<GuestInfo> = {}): GuestInfo {
  return {
    mac,
    address: '10.0.0.2',
    state: 'connected',
    rttMs: 0.25,
    framesIn: 10,
    framesOut: 20,
    bytesIn: 1000,
    bytesOut: 2000,
    retransmits: 3,
    rtoFirings: 1,
    fastRecoveries: 0,
    windowStalls: 4,
    drops: { 'bad-checksum': 2, [HOSTILE]: 7 },
    sessionFailures: { 'auth-failed': 1 },
    budgets: { pendingReplyBytes: 1, reassemblyBytes: 1 },
    held: { pendingReplyBytes: 0, reassemblyBytes: 0 },
    ...over,
  }
}

/** A guest agent's channel before any IOhyp connected. */
const idleChannel = (): ChannelMetrics => guest('52:54:00:00:00:01', { state: 'waiting', rttMs: null })

function nic(name: string, guestMac: string): NicInfo {
  return {
    name,
    guest: guestMac,
    mac: '52:54:00:00:00:09',
    mtu: 1500,
    ip: null,
    allowSpoofing: false,
    backend: { kind: 'tap', tap: 'tap0', bridge: null },
    state: 'attached',
    fromGuest: { frames: 5, bytes: 500 },
    toGuest: { frames: 6, bytes: 600 },
    drops: { 'spoofed-mac': 1 },
    services: {
      malformed: 0,
      services: {
        firewall: {
          file: '/x',
          counters: {
            rules: [{ direction: 'from-guest', line: 3, rule: 'tcp dport 22 drop', packets: 9, bytes: 90 }],
            'from-guest': { policyAccepted: 11, policyDropped: 0 },
          },
        },
        dpi: { file: '/y', counters: { bytes: 12345, alertsBySid: { '2100498': 2 } } },
      },
    },
  }
}

function disk(name: string, guestMac: string): IohypDiskMetrics {
  const ops = new BlockOpStats()
  ops.count(0)
  ops.moved(0, 4096)
  ops.count(0)
  ops.moved(0, 4096)
  ops.count(1)
  ops.moved(1, 8192)
  ops.latency.observe(0, 0.00003)
  ops.latency.observe(0, 0.2)
  ops.latency.observe(1, 20) // above the last bucket: only in +Inf
  ops.errors[BlockStatus.IoError] = 1
  return { guest: guestMac, disk: name, ops, inFlight: 2 }
}

/** Parses the text exposition: series (name + labels, as printed) to value; throws on a malformed line. */
function parse(text: string): Map<string, number> {
  const series = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    // name{label="value with \" and \\ and \n escaped",...} number
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*",?)*\})? (\S+)$/.exec(
        line,
      )
    assert.ok(m, `malformed exposition line: ${JSON.stringify(line)}`)
    series.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]))
  }
  return series
}

function unescapeLabel(v: string): string {
  return v.replace(/\\(["\\n])/g, (_, c: string) => (c === 'n' ? '\n' : c))
}

/** Label sets of `name`'s series, unescaped. */
function labelSets(
  series: Map<string, number>,
  name: string,
): { labels: Record<string, string>; value: number }[] {
  const out = []
  for (const [key, value] of series) {
    if (!key.startsWith(`${name}{`) && key !== name) continue
    const labels: Record<string, string> = {}
    for (const m of key.slice(name.length).matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[m[1]] = unescapeLabel(m[2])
    out.push({ labels, value })
  }
  return out
}

function hasPromtool(): boolean {
  return spawnSync('promtool', ['--version']).status === 0
}

/** `promtool check metrics` on `text`: its complaints, or '' when it has none. */
export function promtoolCheck(text: string): string {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' })
  assert.equal(r.error, undefined, `promtool could not run: ${r.error}`)
  return r.status === 0 ? '' : `${r.stdout}${r.stderr}`.trim()
}

describe('metrics exposition', () => {
  const mac = '52:54:00:12:34:56'
  const PLAIN = '52:54:00:00:00:03'
  const iohyp = () =>
    createIohypMetrics({
      version: '9.9.9',
      guests: () => [
        guest(mac, {
          fastRecoveries: 6,
          rekeys: 2,
          channel: 'sealed (chacha20-poly1305)',
          budgets: { pendingReplyBytes: 1 << 20, reassemblyBytes: 1 << 21 },
          held: { pendingReplyBytes: 4096, reassemblyBytes: 1500 },
        }),
        guest(PLAIN, { channel: 'plaintext (insecure)' }),
        guest('52:54:00:00:00:02', { state: 'waiting', rttMs: null }),
      ],
      disks: () => [disk('disk0', mac)],
      nics: () => [nic('vnic0', mac), nic('vnic1', PLAIN)],
      socket: () => ({ interface: 'eth0', kernelDrops: 5 }),
    })

  it('IOhyp: the contract names, label sets and values', async () => {
    const m = iohyp()
    try {
      const s = parse(await m.scrape())
      assert.equal(s.get('vrio_info{role="iohyp",version="9.9.9"}'), 1)
      assert.equal(s.get(`vrio_channel_up{guest="${mac}"}`), 1)
      assert.equal(s.get('vrio_channel_up{guest="52:54:00:00:00:02"}'), 0)
      assert.equal(s.get(`vrio_channel_state{guest="${mac}",state="connected"}`), 1)
      assert.equal(s.get(`vrio_channel_state{guest="${mac}",state="waiting"}`), 0)
      assert.equal(s.get(`vrio_channel_rtt_seconds{guest="${mac}"}`), 0.00025)
      assert.equal(
        s.get('vrio_channel_rtt_seconds{guest="52:54:00:00:00:02"}'),
        undefined,
        'no RTT before a sample',
      )
      assert.equal(s.get(`vrio_channel_bytes_total{guest="${mac}",direction="in"}`), 1000)
      assert.equal(s.get(`vrio_channel_frames_total{guest="${mac}",direction="out"}`), 20)
      assert.equal(s.get(`vrio_channel_retransmits_total{guest="${mac}"}`), 3)
      assert.equal(s.get(`vrio_channel_rto_firings_total{guest="${mac}"}`), 1)
      assert.equal(s.get(`vrio_channel_window_stalls_total{guest="${mac}"}`), 4)
      assert.equal(s.get(`vrio_channel_drops_total{guest="${mac}",reason="bad-checksum"}`), 2)
      assert.equal(s.get(`vrio_channel_auth_failures_total{guest="${mac}",reason="auth-failed"}`), 1)
      assert.equal(s.get(`vrio_channel_fast_recoveries_total{guest="${mac}"}`), 6)
      assert.equal(s.get(`vrio_channel_rekeys_total{guest="${mac}"}`), 2)
      assert.equal(s.get(`vrio_channel_encrypted{guest="${mac}",cipher="chacha20-poly1305"}`), 1)
      assert.equal(s.get(`vrio_channel_encrypted{guest="${PLAIN}",cipher="none"}`), 0)
      assert.deepEqual(
        labelSets(s, 'vrio_channel_encrypted').map((r) => r.labels.guest),
        [mac, PLAIN],
        'no encryption gauge before a first connection',
      )
      assert.equal(s.get(`vrio_guest_held_bytes{guest="${mac}",kind="pending_replies"}`), 4096)
      assert.equal(s.get(`vrio_guest_held_bytes{guest="${mac}",kind="reassembly"}`), 1500)
      assert.equal(s.get(`vrio_guest_budget_bytes{guest="${mac}",kind="pending_replies"}`), 1 << 20)
      assert.equal(s.get(`vrio_guest_budget_bytes{guest="${mac}",kind="reassembly"}`), 1 << 21)
      const d = `guest="${mac}",disk="disk0"`
      assert.equal(s.get(`vrio_disk_requests_total{${d},op="read"}`), 2)
      assert.equal(s.get(`vrio_disk_requests_total{${d},op="write"}`), 1)
      assert.equal(s.get(`vrio_disk_requests_total{${d},op="flush"}`), 0)
      assert.equal(s.get(`vrio_disk_bytes_total{${d},op="read"}`), 8192)
      assert.equal(s.get(`vrio_disk_bytes_total{${d},op="write"}`), 8192)
      assert.equal(s.get(`vrio_disk_bytes_total{${d},op="flush"}`), undefined, 'bytes: read and write only')
      assert.equal(s.get(`vrio_disk_errors_total{${d},status="io_error"}`), 1)
      assert.equal(s.get(`vrio_disk_in_flight{${d}}`), 2)
      assert.equal(s.get(`vrio_disk_service_seconds_bucket{${d},op="read",le="0.000025"}`), 0)
      assert.equal(s.get(`vrio_disk_service_seconds_bucket{${d},op="read",le="0.00005"}`), 1)
      assert.equal(s.get(`vrio_disk_service_seconds_bucket{${d},op="read",le="0.25"}`), 2)
      assert.equal(s.get(`vrio_disk_service_seconds_bucket{${d},op="write",le="10"}`), 0)
      assert.equal(s.get(`vrio_disk_service_seconds_bucket{${d},op="write",le="+Inf"}`), 1)
      assert.equal(s.get(`vrio_disk_service_seconds_count{${d},op="read"}`), 2)
      assert.ok(Math.abs(s.get(`vrio_disk_service_seconds_sum{${d},op="read"}`)! - 0.20003) < 1e-9)
      const buckets = labelSets(s, 'vrio_disk_service_seconds_bucket').filter((r) => r.labels.op === 'read')
      assert.equal(buckets.length, LATENCY_BUCKETS.length + 1, 'fixed buckets plus +Inf')
      const n = `guest="${mac}",nic="vnic0"`
      assert.equal(s.get(`vrio_nic_frames_total{${n},direction="in"}`), 5)
      assert.equal(s.get(`vrio_nic_bytes_total{${n},direction="out"}`), 600)
      assert.equal(s.get(`vrio_nic_drops_total{${n},reason="spoofed-mac"}`), 1)
      assert.equal(s.get(`vrio_nic_encrypted_bytes_total{${n},direction="in"}`), 500)
      assert.equal(s.get(`vrio_nic_encrypted_bytes_total{${n},direction="out"}`), 600)
      const p = `guest="${PLAIN}",nic="vnic1"`
      assert.equal(s.get(`vrio_nic_bytes_total{${p},direction="out"}`), 600)
      assert.equal(s.get(`vrio_nic_encrypted_bytes_total{${p},direction="out"}`), 0, 'plaintext channel')
      assert.equal(
        s.get('vrio_nic_firewall_verdicts_total{nic="vnic0",rule="from-guest:3",verdict="drop"}'),
        9,
      )
      assert.equal(
        s.get('vrio_nic_firewall_verdicts_total{nic="vnic0",rule="from-guest:policy",verdict="accept"}'),
        11,
      )
      assert.equal(s.get('vrio_nic_dpi_alerts_total{nic="vnic0",sid="2100498"}'), 2)
      assert.equal(s.get('vrio_nic_dpi_inspected_bytes_total{nic="vnic0"}'), 12345)
      assert.equal(s.get('vrio_packet_socket_kernel_drops_total{interface="eth0"}'), 5)
      // Not polling: the poll families have no samples.
      assert.equal(s.get('vrio_packet_socket_polls_total{interface="eth0"}'), undefined)
      assert.equal(s.get('vrio_packet_socket_poll_seconds_total{interface="eth0"}'), undefined)
      assert.ok(s.has('vrio_event_loop_delay_seconds_count'))
      assert.ok(s.has('process_cpu_seconds_total'), 'prom-client default metrics')
      assert.ok(s.has('process_resident_memory_bytes'))
      assert.ok([...s.keys()].some((k) => k.startsWith('nodejs_eventloop_lag_seconds')))
    } finally {
      m.close()
    }
  })

  it('guest: end-to-end disk metrics and its channel to the IOhyp, without a guest label', async () => {
    const ops = new BlockOpStats()
    ops.count(1)
    ops.moved(1, 65536)
    ops.latency.observe(1, 0.001)
    let channel: ChannelMetrics = { ...guest(mac), channel: 'sealed (aes-256-gcm)', rekeys: 1 }
    const m = createGuestMetrics({
      version: '1.0.0',
      disks: () => [{ disk: 'disk0', ops, inFlight: 32 }],
      channel: () => channel,
      socket: () => ({ interface: 'eth1', kernelDrops: 0, polls: 7, pollUs: 2500 }),
    })
    try {
      const s = parse(await m.scrape())
      assert.equal(s.get('vrio_info{role="guest",version="1.0.0"}'), 1)
      assert.equal(s.get('vrio_packet_socket_polls_total{interface="eth1"}'), 7)
      assert.equal(s.get('vrio_packet_socket_poll_seconds_total{interface="eth1"}'), 0.0025)
      assert.equal(s.get('vrio_disk_requests_total{disk="disk0",op="write"}'), 1)
      assert.equal(s.get('vrio_disk_bytes_total{disk="disk0",op="write"}'), 65536)
      assert.equal(s.get('vrio_disk_in_flight{disk="disk0"}'), 32)
      assert.equal(s.get('vrio_disk_request_seconds_bucket{disk="disk0",op="write",le="0.001"}'), 1)
      assert.equal(s.get('vrio_disk_request_seconds_bucket{disk="disk0",op="write",le="0.0005"}'), 0)
      assert.equal(s.get('vrio_channel_up'), 1)
      assert.equal(s.get('vrio_channel_state{state="connected"}'), 1)
      assert.equal(s.get('vrio_channel_rtt_seconds'), 0.00025)
      assert.equal(s.get('vrio_channel_bytes_total{direction="in"}'), 1000)
      assert.equal(s.get('vrio_channel_frames_total{direction="out"}'), 20)
      assert.equal(s.get('vrio_channel_retransmits_total'), 3)
      assert.equal(s.get('vrio_channel_drops_total{reason="bad-checksum"}'), 2)
      assert.equal(s.get('vrio_channel_auth_failures_total{reason="auth-failed"}'), 1)
      assert.equal(s.get('vrio_channel_encrypted{cipher="aes-256-gcm"}'), 1)
      assert.equal(s.get('vrio_channel_rekeys_total'), 1)
      const guestLabelled = [...s.keys()].filter((k) => k.includes('guest="'))
      assert.deepEqual(guestLabelled, [], 'a guest agent labels nothing with a guest')
      for (const name of ['vrio_fastpath_requests_total', 'vrio_guest_held_bytes', 'vrio_nic_bytes_total'])
        assert.ok(![...s.keys()].some((k) => k.startsWith(name)), `${name}: IOhyp only`)
      channel = { ...channel, state: 'waiting', rttMs: null, channel: undefined }
      const after = parse(await m.scrape())
      assert.equal(after.get('vrio_channel_up'), 0)
      assert.equal(after.get('vrio_channel_state{state="waiting"}'), 1)
      assert.equal(after.has('vrio_channel_rtt_seconds'), false)
      assert.equal(
        after.get('vrio_channel_bytes_total{direction="in"}'),
        1000,
        'counters of closed sessions kept',
      )
    } finally {
      m.close()
    }
  })

  it('escapes hostile label values: one series each, the value read back intact, promtool content', async () => {
    const m = createIohypMetrics({
      version: HOSTILE,
      guests: () => [guest(mac, { sessionFailures: { [HOSTILE]: 3 } })],
      disks: () => [disk(HOSTILE, mac)],
      nics: () => [],
      socket: () => ({ interface: HOSTILE, kernelDrops: 0 }),
    })
    try {
      const text = await m.scrape()
      const s = parse(text) // every line well formed: nothing broke out of its quotes
      const info = labelSets(s, 'vrio_info')
      assert.deepEqual(info, [{ labels: { role: 'iohyp', version: HOSTILE }, value: 1 }])
      const drops = labelSets(s, 'vrio_channel_drops_total').find((r) => r.labels.reason === HOSTILE)
      assert.equal(drops?.value, 7)
      const fails = labelSets(s, 'vrio_channel_auth_failures_total')
      assert.deepEqual(fails, [{ labels: { guest: mac, reason: HOSTILE }, value: 3 }])
      const reqs = labelSets(s, 'vrio_disk_requests_total').filter((r) => r.labels.disk === HOSTILE)
      assert.equal(reqs.length, 6)
      const hist = labelSets(s, 'vrio_disk_service_seconds_count').filter((r) => r.labels.disk === HOSTILE)
      assert.equal(hist.length, 6)
      assert.ok(!text.includes('\nvrio_info{role="x'), 'the injected series does not exist')
      if (hasPromtool()) assert.equal(promtoolCheck(text), '')
    } finally {
      m.close()
    }
  })

  it('a scrape while disks come and go never fails, and never shows a removed disk', async () => {
    const live = new Map<string, IohypDiskMetrics>()
    const m = createIohypMetrics({
      version: '1',
      guests: () => [],
      disks: () => live.values(),
      nics: () => [],
      socket: () => ({ interface: 'eth0', kernelDrops: 0 }),
    })
    try {
      for (let i = 0; i < 200; i++) {
        const name = `disk${i % 7}`
        if (live.has(name)) live.delete(name)
        else live.set(name, disk(name, mac))
        // Interleaved with the scrape's own steps (prom-client awaits per metric).
        const [text] = await Promise.all([
          m.scrape(),
          Promise.resolve().then(() => live.set(`late${i % 3}`, disk(`late${i % 3}`, mac))),
        ])
        const s = parse(text)
        const names = new Set(labelSets(s, 'vrio_disk_in_flight').map((r) => r.labels.disk))
        for (const n of names) assert.ok(live.has(n), `scrape ${i} shows removed disk ${n}`)
        live.delete(`late${i % 3}`)
      }
    } finally {
      m.close()
    }
  })

  it('a scrape reads the guests, disks and NICs once each, however many families use them', async () => {
    const calls = { guests: 0, disks: 0, nics: 0 }
    const m = createIohypMetrics({
      version: '1',
      guests: () => {
        calls.guests++
        return [guest(mac)]
      },
      disks: () => {
        calls.disks++
        return [disk('disk0', mac)]
      },
      nics: () => {
        calls.nics++
        return [nic('vnic0', mac)]
      },
      socket: () => ({ interface: 'eth0', kernelDrops: 0 }),
    })
    try {
      const s = parse(await m.scrape())
      assert.deepEqual(calls, { guests: 1, disks: 1, nics: 1 })
      assert.equal(s.get(`vrio_disk_in_flight{guest="${mac}",disk="disk0"}`), 2)
      assert.equal(s.get(`vrio_nic_frames_total{guest="${mac}",nic="vnic0",direction="in"}`), 5)
      await m.scrape()
      await m.json()
      assert.deepEqual(calls, { guests: 3, disks: 3, nics: 3 }, 'fresh figures at every scrape')
    } finally {
      m.close()
    }
  })

  it("json(): prom-client's shape, which aggregateMetrics merges (iocores) into the same exposition", async () => {
    const make = () => {
      const ops = new BlockOpStats()
      ops.count(0)
      ops.moved(0, 4096)
      ops.latency.observe(0, 0.0002)
      return createGuestMetrics({
        version: '1',
        disks: () => [{ disk: 'disk0', ops, inFlight: 1 }],
        channel: idleChannel,
        socket: () => ({ interface: 'eth0', kernelDrops: 0 }),
      })
    }
    const [a, b] = [make(), make()]
    try {
      const json = await a.json()
      const h = json.find((f) => f.name === 'vrio_disk_request_seconds')
      assert.equal(h?.type as unknown, 'histogram')
      const bucket = h?.values.find(
        (v) =>
          (v as { metricName?: string }).metricName === 'vrio_disk_request_seconds_bucket' &&
          v.labels.op === 'read' &&
          v.labels.le === '0.00025',
      )
      assert.equal(bucket?.value, 1)
      const merged = parse(await aggregateMetrics([json, await b.json()]))
      assert.equal(merged.get('vrio_disk_requests_total{disk="disk0",op="read"}'), 2)
      assert.equal(merged.get('vrio_disk_request_seconds_bucket{disk="disk0",op="read",le="0.00025"}'), 2)
    } finally {
      a.close()
      b.close()
    }
  })

  it('process metrics read at scrape time; every GC timed by the addon into the GC histogram', async () => {
    const metrics = createGuestMetrics({
      version: '1',
      disks: () => [],
      channel: idleChannel,
      socket: () => ({ interface: 'eth0', kernelDrops: 0 }),
    })
    try {
      const text = await metrics.scrape()
      const s = parse(text)
      for (const name of [
        'process_cpu_seconds_total',
        'process_resident_memory_bytes',
        'process_start_time_seconds',
        'nodejs_heap_size_used_bytes',
        'nodejs_eventloop_lag_seconds',
      ])
        assert.ok((s.get(name) ?? 0) > 0 || name === 'nodejs_eventloop_lag_seconds', name)
      assert.ok(s.has('nodejs_heap_space_size_used_bytes{space="new"}'))
      if (hasPromtool()) assert.equal(promtoolCheck(text), '')
      const before = s.get('nodejs_gc_duration_seconds_count{kind="minor"}')
      assert.ok(before !== undefined, 'the GC histogram is there')
      // Garbage enough for a few scavenges; the callbacks count them as they happen.
      let keep: unknown
      for (let i = 0; i < 2_000_000; i++) keep = { i, a: [i] }
      assert.ok(keep)
      const g = parse(await metrics.scrape())
      const minor = g.get('nodejs_gc_duration_seconds_count{kind="minor"}') ?? 0
      assert.ok(minor > before, `minor GCs counted: ${before} → ${minor}`)
      const sum = g.get('nodejs_gc_duration_seconds_sum{kind="minor"}') ?? 0
      assert.ok(sum > 0 && sum < minor, `their time in seconds: ${sum} for ${minor}`)
      assert.equal(g.get('nodejs_gc_duration_seconds_bucket{kind="minor",le="+Inf"}'), minor)
    } finally {
      metrics.close()
    }
  })
})

describe('metrics and their docs', () => {
  it("every family either daemon exposes is in docs/operations.md's metric list, and every vrio_ name there is exposed", async () => {
    const mac = '52:54:00:12:34:56'
    const encrypted = { ...disk('disk0', mac), crypt: { bytesEncrypted: 1, bytesDecrypted: 1 } }
    const iohyp = createIohypMetrics({
      version: '1',
      guests: () => [
        guest(mac, { channel: 'sealed (aes-256-gcm)', fastPath: { requests: 1, lends: 1, handbacks: 0 } }),
      ],
      disks: () => [encrypted],
      nics: () => [nic('vnic0', mac)],
      socket: () => ({ interface: 'eth0', kernelDrops: 0 }),
    })
    const agent = createGuestMetrics({
      version: '1',
      disks: () => [{ disk: 'disk0', ops: new BlockOpStats(), inFlight: 0 }],
      channel: () => ({ ...guest(mac), channel: 'sealed (aes-256-gcm)' }),
      socket: () => ({ interface: 'eth1', kernelDrops: 0 }),
    })
    const exposed = new Set<string>()
    try {
      for (const text of [await iohyp.scrape(), await agent.scrape()])
        for (const m of text.matchAll(/^# TYPE (\S+) /gm)) exposed.add(m[1])
    } finally {
      iohyp.close()
      agent.close()
    }
    const doc = readFileSync(new URL('../../../docs/operations.md', import.meta.url), 'utf8')
    const section = doc.slice(doc.indexOf('## Metrics'), doc.indexOf('\n## ', doc.indexOf('## Metrics') + 1))
    // Names in backticks, `{a,b}` alternatives expanded, a trailing `{labels}` dropped.
    const documented = new Set<string>()
    for (const m of section.matchAll(/`((?:vrio|process|nodejs)_[a-z0-9_{},]+?)(?:\{[a-z, ]+\})?`/g)) {
      const alt = /^(.*)\{([a-z,]+)\}(.*)$/.exec(m[1])
      for (const name of alt ? alt[2].split(',').map((a) => alt[1] + a + alt[3]) : [m[1]])
        documented.add(name)
    }
    const undocumented = [...exposed].filter((n) => !documented.has(n))
    assert.deepEqual(undocumented, [], 'exposed but not in docs/operations.md')
    // The iocores' families exist only with --iocores: test/integration/iocores.test.ts checks them.
    const missing = [...documented].filter(
      (n) => n.startsWith('vrio_') && !n.startsWith('vrio_iocore_') && !exposed.has(n),
    )
    assert.deepEqual(missing, [], 'in docs/operations.md but exposed by neither daemon')
  })
})

describe('metrics listener', () => {
  const source = () =>
    createGuestMetrics({
      version: '1',
      disks: () => [],
      channel: idleChannel,
      socket: () => ({ interface: 'x', kernelDrops: 0 }),
    })

  it('serves GET /metrics over HTTP with the exposition content type', async () => {
    const m = source()
    const l = await MetricsListener.start('127.0.0.1:0', m)
    try {
      const r = await fetch(`http://127.0.0.1:${l.address.port}/metrics`)
      assert.equal(r.status, 200)
      assert.equal(r.headers.get('content-type'), METRICS_CONTENT_TYPE)
      assert.match(await r.text(), /^vrio_info\{role="guest",version="1"\} 1$/m)
      assert.equal((await fetch(`http://127.0.0.1:${l.address.port}/nope`)).status, 404)
    } finally {
      await l.close()
      m.close()
    }
  })

  it('a port in use fails with address-in-use', async () => {
    const taken = createServer()
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
    const port = (taken.address() as { port: number }).port
    const m = source()
    try {
      await assert.rejects(MetricsListener.start(`127.0.0.1:${port}`, m), (e: unknown) => {
        assert.ok(isVrioError(e, 'address-in-use'), String(e))
        assert.match((e as Error).message, new RegExp(`127\\.0\\.0\\.1:${port} is already in use`))
        return true
      })
    } finally {
      m.close()
      taken.close()
    }
  })

  it('vrio iohyp and vrio guest with --metrics on a port in use: a clear error, exit 1, nothing left', async () => {
    const taken = createServer()
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
    const port = (taken.address() as { port: number }).port
    const dir = mkdtempSync(join(tmpdir(), 'vrio-metrics-'))
    try {
      const key = join(dir, 'k')
      assert.equal(vrio(['keygen', '--out', key]).status, 0)
      for (const args of [
        ['iohyp', '--interface', 'lo', '--state-dir', join(dir, 'state'), '--control', join(dir, 'i.sock')],
        [
          'guest',
          '--interface',
          'lo',
          '--key-file',
          key,
          '--run-dir',
          join(dir, 'run'),
          '--control',
          join(dir, 'g.sock'),
        ],
      ]) {
        const r = vrio([...args, '--metrics', `127.0.0.1:${port}`])
        assert.equal(r.status, EXIT.conflict, `${args[0]}: ${r.stderr}`)
        assert.equal(r.stderr.trim(), `vrio: metrics address 127.0.0.1:${port} is already in use`)
      }
    } finally {
      taken.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('parses ADDR:PORT and refuses the rest', () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:9860'), { host: '127.0.0.1', port: 9860 })
    assert.deepEqual(parseListenAddress('[::1]:80'), { host: '::1', port: 80 })
    assert.deepEqual(parseListenAddress('localhost:0'), { host: 'localhost', port: 0 })
    for (const bad of ['9860', '127.0.0.1', '127.0.0.1:70000', ':80', '[zz]:1', '::1:80', 'a:b'])
      assert.throws(
        () => parseListenAddress(bad),
        (e: unknown) => isVrioError(e, 'invalid-argument'),
        bad,
      )
  })
})
