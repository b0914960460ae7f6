import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { Delivery } from '../../src/transport/config.ts'
import type { CloseReason } from '../../src/transport/connection.ts'
import { writePcap } from '../support/pcap.ts'
import { patternMessage } from '../support/random.ts'
import { CHANNEL_MODES } from '../support/harness.ts'
import { Simulation } from '../support/simulation.ts'
import { tsharkFields, tsharkProblems } from '../support/tshark.ts'

describe('frames the transport produces, judged by tshark', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vrio-tshark-'))
  after(() => rmSync(dir, { recursive: true, force: true }))

  for (const mode of CHANNEL_MODES)
    it(`handshake, data both ways and FIN: valid TCP, correct checksums, no expert warnings (${mode.name})`, () => {
      const sim = new Simulation(11, undefined, { insecurePlaintext: mode.insecurePlaintext }, true)
      const closed: CloseReason[] = []
      let bReceived = 0
      sim.acceptHandlers = (_r, c) => ({
        message: (m) => {
          bReceived++
          c.send(patternMessage(bReceived, Math.max(4, m.length >> 1)), Delivery.Reliable)
        },
        peerClosed: () => c.close(),
        closed: (r) => closed.push(r),
      })
      let aReceived = 0
      let up = false
      const a = sim.connect({
        message: () => aReceived++,
        established: () => (up = true),
        closed: (r) => closed.push(r),
      })
      assert.ok(sim.run(() => up))
      const sizes = [8, 700, 1432, 4000, 200_000, 64, 3_000]
      for (const [i, n] of sizes.entries()) a.send(patternMessage(i + 100, n), (i % 3) as Delivery)
      assert.ok(sim.run(() => aReceived === sizes.length))
      a.close()
      assert.ok(sim.run(() => closed.length === 2))
      assert.deepEqual(closed, ['normal', 'normal'])

      const file = join(dir, `session-${mode.name}.pcap`)
      const frames = sim.link.capture!
      writePcap(file, frames)
      const rows = tsharkFields(file, [
        'frame.number',
        'ip.proto',
        'ip.checksum.status',
        'tcp.checksum.status',
        'tcp.flags.str',
        'tcp.len',
      ])
      assert.equal(rows.length, frames.length, 'tshark read every frame')
      for (const [n, proto, ipStatus, tcpStatus] of rows) {
        assert.equal(proto, '6', `frame ${n} is TCP`)
        assert.equal(ipStatus, '1', `frame ${n}: IPv4 checksum good`)
        assert.equal(tcpStatus, '1', `frame ${n}: TCP checksum good`)
      }
      const flags = rows.map((r) => r[4])
      assert.match(flags[0], /S/)
      assert.match(flags[1], /A.*S|S.*A/)
      assert.ok(rows.filter((r) => r[4].includes('F')).length >= 2, 'a FIN each way')
      assert.ok(
        rows.some((r) => Number(r[5]) > 1000),
        'data segments present',
      )
      assert.deepEqual(tsharkProblems(file), [])
    })
})
