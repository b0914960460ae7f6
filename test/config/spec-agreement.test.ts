/**
 * The config file and the IOhyp check a NIC and a disk with one schema each (src/devices/net/spec.ts,
 * src/devices/blk/spec.ts): what `vrio config check` accepts, the daemon accepts as it applies the
 * file at start; and what the daemon refuses, `vrio config check` refuses too, naming the same fields.
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import * as fc from 'fast-check'
import { writeKeyFile } from '../../src/auth/key-file.ts'
import { checkIohypConfig } from '../../src/config/load.ts'
import { parseDiskRequest } from '../../src/devices/blk/spec.ts'
import { parseNicRequest } from '../../src/devices/net/spec.ts'
import { isVrioError } from '../../src/errors.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

let tmp: TempDir

const KEEP = Symbol('keep')
const DROP = Symbol('drop')
const BASE: Record<string, unknown> = { name: 'lan0', guest: 'g1', mac: '52:54:00:bb:00:01', tap: 'vt-db0' }

/** One field: mostly kept as in the base, else one of `values` (DROP: the field left out). */
const field = (...values: unknown[]) =>
  fc.oneof(
    { weight: 5, arbitrary: fc.constant<unknown>(KEEP) },
    { weight: 1, arbitrary: fc.constantFrom(...values) },
  )

/** Devices made from a valid `base` by changing a few fields as `fields` say. */
function variants(base: Record<string, unknown>, fields: Record<string, fc.Arbitrary<unknown>>) {
  return fc.record(fields).map((changes) => {
    const device: Record<string, unknown> = { ...base }
    for (const [k, v] of Object.entries(changes)) {
      if (v === DROP) delete device[k]
      else if (v !== KEEP) device[k] = v
    }
    return device
  })
}

/**
 * NICs made from a valid one by changing a few fields to valid values and to the ways operators
 * and scripts get them wrong.
 */
function nicArbitrary(rulesFile: string) {
  return variants(BASE, {
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
}

const DISK: Record<string, unknown> = { name: 'root', guest: 'g1', backing: 'disk.img' }
const PLAIN = { kind: 'plain', cipher: 'aes-xts-plain64', keyFile: 'disk.key' }

/** Disks made from a valid one as NICs are (see nicArbitrary). */
function diskArbitrary(keyFile: string) {
  return variants(DISK, {
    name: field(DROP, 'web.0', 'a b', '', 'a'.repeat(65), 7),
    guest: field(DROP, '10.0.0.2', '52:54:00:00:00:01', '', 3),
    backing: field(DROP, '', 12),
    readOnly: field(true, false, 'yes'),
    encrypt: field(
      PLAIN,
      { ...PLAIN, keyFile },
      { ...PLAIN, sectorSize: 4096 },
      { ...PLAIN, sectorSize: 1024 },
      { ...PLAIN, cipher: 'aes-cbc' },
      { kind: 'luks', keyFile },
      { kind: 'luks', passphraseFile: 'disk.key' },
      { kind: 'luks' },
      { kind: 'luks', keyFile, passphraseFile: keyFile },
      { kind: 'zfs' },
      { ...PLAIN, extra: 1 },
      'plain',
    ),
    extra: field(1),
  })
}

type Kind = 'nics' | 'disks'

/** `vrio config check`'s verdict on a file holding one guest and this device. */
function configCheck(
  kind: Kind,
  device: Record<string, unknown>,
): { device?: Record<string, unknown>; paths: string[] } {
  const doc = {
    interface: 'eth0',
    guests: [{ mac: '52:54:00:00:00:01', address: '10.0.0.2', keyFile: 'g1.key', name: 'g1' }],
    [kind]: [device],
  }
  try {
    const config = checkIohypConfig(doc, tmp.path('iohyp.yaml'))
    return { device: config[kind][0] as unknown as Record<string, unknown>, paths: [] }
  } catch (error) {
    assert.ok(isVrioError(error, 'invalid-config'), String(error))
    const errors = error.details.errors as { path: string }[]
    return { paths: errors.map((e) => e.path) }
  }
}

const resolve = (o: Record<string, unknown>, fields: string[]) => {
  const resolved = { ...o }
  for (const f of fields)
    if (typeof resolved[f] === 'string' && resolved[f] !== '' && !isAbsolute(resolved[f] as string))
      resolved[f] = join(tmp.dir, resolved[f] as string)
  return resolved
}

/** The daemon's verdict on a device as it gets it from the config (relative paths resolved). */
function daemonCheck(kind: Kind, device: Record<string, unknown>): { ok: boolean; paths: string[] } {
  let resolved = resolve(device, ['firewall', 'dpi', 'backing'])
  if (typeof resolved.encrypt === 'object' && resolved.encrypt !== null)
    resolved = {
      ...resolved,
      encrypt: resolve(resolved.encrypt as Record<string, unknown>, ['keyFile', 'passphraseFile']),
    }
  try {
    if (kind === 'nics') parseNicRequest(resolved)
    else parseDiskRequest(resolved)
    return { ok: true, paths: [] }
  } catch (error) {
    assert.ok(isVrioError(error, 'invalid-argument'), String(error))
    return { ok: false, paths: (error.details.errors as { path: string }[]).map((e) => e.path) }
  }
}

describe('one schema per device kind for the config file and the daemon', () => {
  before(() => {
    tmp = tempDir('vrio-spec-')
    writeKeyFile(tmp.path('g1.key'), Buffer.alloc(32, 1))
    writeFileSync(tmp.path('disk.key'), Buffer.alloc(64, 2), { mode: 0o600 })
    writeFileSync(tmp.path('fw.rules'), '')
    writeFileSync(tmp.path('disk.img'), Buffer.alloc(4096))
  })
  after(() => tmp.remove())

  const cases = [
    { kind: 'nics' as const, what: 'NIC', arbitrary: () => nicArbitrary(tmp.path('fw.rules')) },
    { kind: 'disks' as const, what: 'disk', arbitrary: () => diskArbitrary(tmp.path('disk.key')) },
  ]
  for (const { kind, what, arbitrary } of cases) {
    it(`${what}: what config check accepts, the daemon accepts; what the daemon refuses, config check refuses at the same fields`, () => {
      let accepted = 0
      let refused = 0
      fc.assert(
        fc.property(arbitrary(), (device) => {
          const config = configCheck(kind, device)
          if (config.device) {
            accepted++
            const d = daemonCheck(kind, config.device)
            assert.ok(d.ok, `config check accepted ${JSON.stringify(device)}; the daemon refused ${d.paths}`)
          }
          const d = daemonCheck(kind, device)
          if (!d.ok) {
            refused++
            assert.ok(
              !config.device,
              `the daemon refused ${JSON.stringify(device)} (${d.paths}); config check accepted it`,
            )
            for (const p of d.paths)
              assert.ok(
                config.paths.includes(p ? `${kind}[0].${p}` : `${kind}[0]`),
                `${JSON.stringify(device)}: the daemon refused ${p}, config check said ${config.paths}`,
              )
          }
        }),
        { numRuns: 600, seed: 42 },
      )
      // Both sides were exercised, not only refusals.
      assert.ok(accepted > 5, `accepted ${accepted}`)
      assert.ok(refused > 50, `refused ${refused}`)
    })
  }
})
