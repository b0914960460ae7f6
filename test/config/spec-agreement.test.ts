/**
 * The config file and the IOhyp check a NIC with one schema (src/devices/net/spec.ts): what `vrio
 * config check` accepts, the daemon accepts as it applies the file at start; and what the daemon
 * refuses, `vrio config check` refuses too, naming the same fields.
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import * as fc from 'fast-check'
import { writeKeyFile } from '../../src/auth/key-file.ts'
import { checkIohypConfig } from '../../src/config/load.ts'
import { parseNicRequest } from '../../src/devices/net/spec.ts'
import { isVrioError } from '../../src/errors.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

let tmp: TempDir

const KEEP = Symbol('keep')
const DROP = Symbol('drop')
const BASE: Record<string, unknown> = { name: 'lan0', guest: 'g1', mac: '52:54:00:bb:00:01', tap: 'vt-db0' }

/**
 * NICs made from a valid one by changing a few fields to valid values and to the ways operators
 * and scripts get them wrong (DROP: the field left out).
 */
function nicArbitrary(rulesFile: string) {
  const field = (...values: unknown[]) =>
    fc.oneof(
      { weight: 5, arbitrary: fc.constant<unknown>(KEEP) },
      { weight: 1, arbitrary: fc.constantFrom(...values) },
    )
  return fc
    .record({
      name: field(DROP, 'web.0', 'vt+web0', '', 'a'.repeat(16), '..', 7),
      guest: field(DROP, '10.0.0.2', '52:54:00:00:00:01', '', 3),
      mac: field(DROP, '52:54:00:BB:00:02', 'zz', 'ff:ff:ff:ff:ff:ff', '01:00:5e:00:00:01', 0),
      tap: field(DROP, 'vt+db0', 'x'.repeat(16), 'vt/0', ''),
      bridge: field('br0', 'br 0', true),
      macvtap: field('eth2', 'eth:2'),
      mtu: field(1500, 68, 65535, 67, 65536, 1500.5, '1500'),
      firewall: field('fw.rules', rulesFile, '', 12),
      dpi: field('fw.rules', rulesFile),
      ip: field('10.0.0.5', '10.0.0.0/29', '10.0.0.0/33', '10.0.0', 5),
      allowSpoofing: field(true, false, 'yes'),
      extra: field(1),
    })
    .map((changes) => {
      const nic: Record<string, unknown> = { ...BASE }
      for (const [k, v] of Object.entries(changes)) {
        if (v === DROP) delete nic[k]
        else if (v !== KEEP) nic[k] = v
      }
      return nic
    })
}

/** `vrio config check`'s verdict on a file holding one guest and this NIC. */
function configCheck(nic: Record<string, unknown>): { nic?: Record<string, unknown>; paths: string[] } {
  const doc = {
    interface: 'eth0',
    guests: [{ mac: '52:54:00:00:00:01', address: '10.0.0.2', keyFile: 'g1.key', name: 'g1' }],
    nics: [nic],
  }
  try {
    const config = checkIohypConfig(doc, tmp.path('iohyp.yaml'))
    return { nic: config.nics[0] as unknown as Record<string, unknown>, paths: [] }
  } catch (error) {
    assert.ok(isVrioError(error, 'invalid-config'), String(error))
    const errors = error.details.errors as { path: string }[]
    return { paths: errors.map((e) => e.path) }
  }
}

/** The daemon's verdict on a NIC as it gets it from the config (relative paths resolved). */
function daemonCheck(nic: Record<string, unknown>): { ok: boolean; paths: string[] } {
  const resolved = { ...nic }
  for (const f of ['firewall', 'dpi'])
    if (typeof resolved[f] === 'string' && resolved[f] !== '' && !isAbsolute(resolved[f] as string))
      resolved[f] = join(tmp.dir, resolved[f] as string)
  try {
    parseNicRequest(resolved)
    return { ok: true, paths: [] }
  } catch (error) {
    assert.ok(isVrioError(error, 'invalid-argument'), String(error))
    return { ok: false, paths: (error.details.errors as { path: string }[]).map((e) => e.path) }
  }
}

describe('one NIC schema for the config file and the daemon', () => {
  before(() => {
    tmp = tempDir('vrio-spec-')
    writeKeyFile(tmp.path('g1.key'), Buffer.alloc(32, 1))
    writeFileSync(tmp.path('fw.rules'), '')
  })
  after(() => tmp.remove())

  it('what config check accepts, the daemon accepts; what the daemon refuses, config check refuses at the same fields', () => {
    let accepted = 0
    let refused = 0
    fc.assert(
      fc.property(nicArbitrary(tmp.path('fw.rules')), (nic) => {
        const config = configCheck(nic)
        if (config.nic) {
          accepted++
          const d = daemonCheck(config.nic)
          assert.ok(d.ok, `config check accepted ${JSON.stringify(nic)}; the daemon refused ${d.paths}`)
        }
        const d = daemonCheck(nic)
        if (!d.ok) {
          refused++
          assert.ok(
            !config.nic,
            `the daemon refused ${JSON.stringify(nic)} (${d.paths}); config check accepted it`,
          )
          for (const p of d.paths)
            assert.ok(
              config.paths.includes(p ? `nics[0].${p}` : 'nics[0]'),
              `${JSON.stringify(nic)}: the daemon refused ${p}, config check said ${config.paths}`,
            )
        }
      }),
      { numRuns: 600, seed: 42 },
    )
    // Both sides were exercised, not only refusals.
    assert.ok(accepted > 5, `accepted ${accepted}`)
    assert.ok(refused > 50, `refused ${refused}`)
  })
})
