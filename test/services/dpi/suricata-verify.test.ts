/**
 * Cases from Suricata's regression suite (OISF/suricata-verify, see test/fixtures/dpi/README.md)
 * replayed through the DPI service: each case's pcap goes frame by frame through
 * DpiService.inspect() as the NIC path feeds it, and the alerts per sid are compared with the
 * counts in the case's test.yaml. cases.json lists the cases that must match ("pass") and, for
 * the others, why vrio differs; every case runs and the differences are printed.
 */
import assert from 'node:assert/strict'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { parse } from 'yaml'
import { createDpi } from '../../../src/services/dpi/index.ts'
import type { NetContext } from '../../../src/services/net/service.ts'
import { dissectPacket, newPacket } from '../../../src/wire/packet.ts'
import { readPcap } from '../../support/pcap-read.ts'

const ROOT = join(import.meta.dirname, '../../../../test/fixtures/dpi/suricata-verify')
/** The Suricata version whose results the cases' `requires` select. */
const VERSION = [8, 0, 5]
/** Cases that must give Suricata's counts in CI. */
const MIN_PASSING = 40

interface CaseStatus {
  status: 'pass' | 'differs'
  reason?: string
}

interface Expected {
  /** Per sid, the alerts Suricata gives. */
  bySid: Map<number, number>
  /** All alerts, when the case counts them regardless of sid. */
  total: number | undefined
}

function versionOk(requires: Record<string, unknown> | undefined): boolean {
  if (!requires) return true
  const v = (text: unknown): number[] => String(text).split('.').map(Number).concat([0, 0, 0]).slice(0, 3)
  const cmp = (a: number[], b: number[]): number => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]
  if (requires['min-version'] !== undefined && cmp(VERSION, v(requires['min-version'])) < 0) return false
  if (requires['lt-version'] !== undefined && cmp(VERSION, v(requires['lt-version'])) >= 0) return false
  return true
}

function expected(yaml: { checks?: { filter?: Record<string, unknown> }[] }): Expected {
  const bySid = new Map<number, number>()
  let total: number | undefined
  for (const check of yaml.checks ?? []) {
    const f = check.filter
    if (!f) continue
    const match = f.match as Record<string, unknown> | undefined
    if (match?.event_type !== 'alert' || f.count === undefined) continue
    if (!versionOk(f.requires as Record<string, unknown> | undefined)) continue
    const sid = match['alert.signature_id']
    if (sid === undefined) total = Number(f.count)
    else bySid.set(Number(sid), Number(f.count))
  }
  return { bySid, total }
}

/** The alerts per sid (and in all) when the case's pcap is replayed through the DPI service. */
export function replayCase(name: string): { bySid: Map<number, number>; total: number; skipped: string[] } {
  const dir = join(ROOT, name)
  const yaml = parse(readFileSync(join(dir, 'test.yaml'), 'utf8')) ?? {}
  const args = JSON.stringify(yaml.args ?? [])
  const rules = readFileSync(join(dir, 'test.rules'), 'latin1')
  let wall = 0
  const dpi = createDpi(rules, 'test.rules', {
    strict: false,
    // Suricata's default: a TCP flow picked up mid-stream is not tracked as established.
    midstream: args.includes('stream.midstream=true'),
    utcOffsetMinutes: 0,
    wallClock: () => Math.round(wall * 1000),
  })
  const file = readdirSync(dir).find((f) => /\.pcap(\.br)?$/.test(f))
  if (!file) throw new Error(`${name}: no pcap`)
  const frames = readPcap(readFileSync(join(dir, file)), file.endsWith('.br'))
  const bySid = new Map<number, number>()
  let total = 0
  const ctx: NetContext = {
    now: 0,
    reply: () => {},
    event: (record) => {
      const sid = (record.alert as { signature_id: number } | undefined)?.signature_id
      if (sid === undefined) return
      bySid.set(sid, (bySid.get(sid) ?? 0) + 1)
      total++
    },
  }
  const p = newPacket()
  const start = frames[0]?.at ?? 0
  for (const { at, frame } of frames) {
    ctx.now = Math.max(ctx.now, at - start)
    wall = at
    dissectPacket(frame, p)
    dpi.inspect(frame, p, 'from-guest', ctx)
  }
  return { bySid, total, skipped: dpi.errors.map((e) => `${e.line}: ${e.message}`) }
}

function compare(name: string): string[] {
  const dir = join(ROOT, name)
  const exp = expected(parse(readFileSync(join(dir, 'test.yaml'), 'utf8')) ?? {})
  const got = replayCase(name)
  const diffs: string[] = []
  for (const [sid, count] of exp.bySid) {
    const n = got.bySid.get(sid) ?? 0
    if (n !== count) diffs.push(`sid ${sid}: ${n} alerts, Suricata ${count}`)
  }
  if (exp.total !== undefined && got.total !== exp.total)
    diffs.push(`${got.total} alerts in all, Suricata ${exp.total}`)
  if (diffs.length > 0 && got.skipped.length > 0) diffs.push(`skipped rules: ${got.skipped.join('; ')}`)
  return diffs
}

const cases = readdirSync(ROOT).filter((f) => existsSync(join(ROOT, f, 'test.yaml')))
const status: Record<string, CaseStatus> = JSON.parse(readFileSync(join(ROOT, 'cases.json'), 'utf8'))

describe('suricata-verify cases replayed through the DPI service', () => {
  it(`at least ${MIN_PASSING} cases are held to Suricata's counts`, () => {
    const passing = cases.filter((c) => status[c]?.status === 'pass')
    assert.ok(passing.length >= MIN_PASSING, `${passing.length} cases marked pass`)
    for (const c of Object.keys(status)) assert.ok(cases.includes(c), `cases.json names a missing case ${c}`)
  })

  for (const name of cases) {
    const s = status[name]
    if (s?.status === 'pass') {
      it(`${name}: Suricata's alert counts`, () => {
        assert.deepEqual(compare(name), [])
      })
    } else {
      it(`${name}: differs (${s?.reason ?? 'not classified'})`, (t) => {
        const diffs = compare(name)
        t.diagnostic(diffs.length === 0 ? 'now matches: mark it pass' : diffs.join(' | '))
      })
    }
  }
})
