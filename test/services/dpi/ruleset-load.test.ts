/**
 * The rule sets operators load (Emerging Threats Open, Suricata's own rules/), from the offline
 * fixture (test/fixtures/dpi/README.md), parsed as the daemon parses them: skip-and-count, one
 * set across files. At least 90 % must load; the figure and the top reasons for the rest are
 * printed, and every skipped rule is counted with FILE:LINE and a reason.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { brotliDecompressSync } from 'node:zlib'
import { type ParsedRules, RuleParser } from '../../../src/services/dpi/index.ts'

const FIXTURES = join(import.meta.dirname, '../../../../test/fixtures/dpi')
const RULE_LINE = /^\s*(alert|drop|pass|reject\w*)\s/

/** ET Open's files, as {name: text}. */
export function etOpenFiles(): Record<string, string> {
  const packed = readFileSync(join(FIXTURES, 'et-open/et-open-2024-04-21.json.br'))
  return JSON.parse(brotliDecompressSync(packed).toString('latin1'))
}

export function suricataFiles(): Record<string, string> {
  const dir = join(FIXTURES, 'suricata-rules')
  const files: Record<string, string> = {}
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.rules'))) {
    files[f] = readFileSync(join(dir, f), 'latin1')
  }
  return files
}

/** The number of rule lines (active rules) in `files`. */
function ruleLines(files: Record<string, string>): number {
  let n = 0
  for (const text of Object.values(files)) for (const line of text.split('\n')) if (RULE_LINE.test(line)) n++
  return n
}

function parseSet(files: Record<string, string>): ParsedRules {
  const parser = new RuleParser()
  for (const [name, text] of Object.entries(files)) parser.parse(text, name)
  return parser.result()
}

/** A reason with its specifics (values, offsets) taken out, for counting. */
export function reasonKind(message: string): string {
  const option = /^unsupported (rule option|protocol|action|flow option|pcre flag) '[^']*'/.exec(message)
  if (option) return option[0]
  return message.replace(/'[^']*'/g, "'…'").replace(/\d+/g, 'N')
}

function report(label: string, files: Record<string, string>): { total: number; loaded: number } {
  const total = ruleLines(files)
  const parsed = parseSet(files)
  const loaded = parsed.rules.length
  const reasons = new Map<string, number>()
  for (const e of parsed.errors) {
    const k = reasonKind(e.message)
    reasons.set(k, (reasons.get(k) ?? 0) + 1)
  }
  const top = [...reasons].sort((a, b) => b[1] - a[1]).slice(0, 15)
  console.log(
    `${label}: ${loaded} of ${total} rules loaded (${((100 * loaded) / total).toFixed(1)} %), ` +
      `${parsed.errors.length} skipped; top reasons:\n${top.map(([k, n]) => `  ${n}\t${k}`).join('\n')}`,
  )
  // Every rule is either loaded or skipped with a located reason.
  assert.equal(loaded + parsed.errors.length, total)
  for (const e of parsed.errors) {
    assert.ok(e.file in files && e.line > 0 && e.message !== '', `${e.file}:${e.line}: ${e.message}`)
  }
  return { total, loaded }
}

describe('real rule sets load (skip and count)', () => {
  it('ET Open 2024-04-21 and Suricata rules/: at least 90 % of the rules load', () => {
    const et = report('ET Open', etOpenFiles())
    const suricata = report("Suricata's rules/", suricataFiles())
    const total = et.total + suricata.total
    const loaded = et.loaded + suricata.loaded
    console.log(`both: ${loaded} of ${total} (${((100 * loaded) / total).toFixed(1)} %)`)
    assert.ok(et.total > 24_000, 'the ET fixture is whole')
    assert.ok(loaded >= 0.9 * total, `${loaded} of ${total} rules loaded, under 90 %`)
  })
})
