import assert from 'node:assert/strict'
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { CHANNEL_MODES, vethHarness } from '../support/harness.ts'
import { type ImpairedLink, impairedLink } from '../support/impair.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { directLink, firewallCounters, firewalledLink, type Topology } from '../support/topology.ts'
import { patternMessage } from '../support/random.ts'
import { tsharkFields, tsharkProblemsOfWholeStreams } from '../support/tshark.ts'
import { waitUntil } from '../support/wait.ts'
import { conformanceCases } from './conformance-cases.ts'

after(cleanupNetns)

describe('transport conformance: veth between two namespaces', () => {
  let t: Topology
  before(() => {
    requireRoot()
    t = directLink()
  })
  for (const c of conformanceCases) it(c.name, () => c.run(vethHarness(t.a, t.b)))
})

describe('transport conformance: veth with virtio-net headers (GSO super-frames, checksum offload)', () => {
  let t: Topology
  before(() => {
    requireRoot()
    t = directLink()
  })
  for (const c of conformanceCases) it(c.name, () => c.run(vethHarness(t.a, t.b, { vnetHdr: true })))
  for (const mode of CHANNEL_MODES) {
    it(`${mode.name}: 1 MiB messages cross as GSO super-frames both ways and arrive whole (no split pieces)`, async () => {
      const h = await vethHarness(t.a, t.b, { vnetHdr: true })({ insecurePlaintext: mode.insecurePlaintext })
      try {
        const message = patternMessage(12, 1 << 20)
        const rounds = 4
        let server: Connection | undefined
        let atA = 0
        let intact = true
        h.setAccept((_r, c) => {
          server = c
          return {
            message: (m) => {
              intact &&= Buffer.compare(m, message) === 0
              c.send(Uint8Array.from(m), Delivery.Reliable)
            },
          }
        })
        const client = h.connect({
          message: (m) => {
            intact &&= Buffer.compare(m, message) === 0
            if (++atA < rounds) client.send(message, Delivery.Reliable)
          },
        })
        await h.until(() => client.state === 'established', 'connected')
        client.send(message, Delivery.Reliable)
        await h.until(() => atA === rounds, 'every message echoed')
        assert.ok(intact)
        for (const c of [client, server!]) {
          // 4 MiB each way: some 3 000 frames if they crossed MSS-sized, some 70 as super-frames.
          assert.ok(c.stats.framesReceived < 600, `${c.stats.framesReceived} frames received`)
          assert.equal(c.stats.piecesStaged, 0)
        }
      } finally {
        await h.close()
      }
    })
  }
})

describe('transport conformance: real link with 5% loss, 1% duplication, reordering, 5 ms delay', () => {
  // tc netem is not in this kernel; test/support/impair.ts applies the same faults in a forwarder.
  let link: ImpairedLink
  before(() => {
    requireRoot()
    link = impairedLink({
      loss: 0.05,
      duplicate: 0.01,
      reorder: 0.1,
      reorderDelayMs: 3,
      delayMs: 5,
      seed: 99,
    })
  })
  after(() => link?.stop())
  for (const c of conformanceCases) it(c.name, () => c.run(vethHarness(link.a, link.b)))
  it('the faults really happened', () => {
    assert.ok(link.stats.lost > 50, `lost ${link.stats.lost}`)
    assert.ok(link.stats.duplicated > 5, `duplicated ${link.stats.duplicated}`)
    assert.ok(link.stats.reordered > 50, `reordered ${link.stats.reordered}`)
  })
})

describe('transport conformance: through a strict stateful firewall (bridge + conntrack)', () => {
  let t: Topology
  let capture: ChildProcess
  let captureLog = () => ''
  const dir = mkdtempSync(join(tmpdir(), 'vrio-fw-'))
  const file = join(dir, 'firewall.pcap')
  before(async () => {
    requireRoot()
    t = firewalledLink()
    const fw = t.firewall!
    capture = spawn(
      'ip',
      ['netns', 'exec', fw.ns.name, 'tshark', '-q', '-B', '64', '-i', fw.bridge, '-w', file],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    )
    let err = ''
    capture.stderr?.on('data', (d) => (err += d))
    await waitUntil(() => err.includes('Capturing on'), 'tshark to start capturing', 15_000)
    // dumpcap says so a moment before frames really reach the file; streams it catches midway are
    // left out of the judgement below (their SYN is missing), and the last check makes sure most
    // streams are in.
    await sleep(1000)
    captureLog = () => err
  })
  after(async () => {
    // SIGINT lets tshark stop its dumpcap child; a SIGKILLed tshark would leave dumpcap running.
    if (capture && capture.exitCode === null && capture.signalCode === null) {
      const exited = new Promise((r) => capture.once('exit', r))
      capture.kill('SIGINT')
      await Promise.race([exited, sleep(3000)])
    }
    spawnSync('pkill', ['-f', file])
    rmSync(dir, { recursive: true, force: true })
  })

  for (const c of conformanceCases) it(c.name, () => c.run(vethHarness(t.a, t.b)))

  it('the firewall marked nothing invalid, and tshark finds valid TCP with correct checksums', async () => {
    const counts = firewallCounters(t.firewall!.ns)
    assert.equal(counts.invalid, 0, 'conntrack marked packets invalid')
    assert.ok(counts.established > 1000, `conntrack saw established traffic (${counts.established} packets)`)
    capture.kill('SIGINT')
    await new Promise((r) => capture.once('exit', r))
    assert.doesNotMatch(captureLog(), /[1-9]\d* packets? dropped/, 'the capture itself lost no frames')
    const rows = tsharkFields(
      file,
      ['frame.number', 'ip.proto', 'ip.checksum.status', 'tcp.checksum.status'],
      'ip.addr == 10.99.0.0/24',
    )
    assert.ok(rows.length > 1000, `captured ${rows.length} IPv4 frames`)
    for (const [n, proto, ipStatus, tcpStatus] of rows) {
      assert.equal(proto, '6', `frame ${n} is TCP`)
      assert.equal(ipStatus, '1', `frame ${n}: IPv4 checksum good`)
      assert.equal(tcpStatus, '1', `frame ${n}: TCP checksum good`)
    }
    // Only the warnings cases provoke on purpose (zero window, RST after a restart) may appear.
    const allowed = new Set(conformanceCases.flatMap((c) => c.expectedWarnings ?? []))
    const { problems, streams } = tsharkProblemsOfWholeStreams(file)
    assert.ok(streams >= conformanceCases.length - 1, `only ${streams} whole TCP streams captured`)
    assert.deepEqual(
      problems.filter((p) => !allowed.has(p.replace(/^frame \d+: /, '').replace(/ \([^)]*\)$/, ''))),
      [],
    )
  })
})
