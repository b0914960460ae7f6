/**
 * Checking and compiling NIC services' rules files within limits, the way Suricata loads rules:
 * the DPI skips (and reports, with FILE:LINE, sid and reason) the rules it cannot use, or, with
 * `strict`, refuses the whole set; the firewall, a policy, is always strict (a skipped rule could
 * open a hole). Limits (file size, rule count, rule and content length, compiled size) refuse the
 * set with a clear error. Synchronous and CPU-heavy: the IOhyp runs it in a worker thread
 * (compile-worker.ts), `vrio dpi check` in-process.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs'
import { VrioError } from '../../errors.ts'
import { DpiService, type DpiTables } from '../dpi/engine.ts'
import { MAX_CONTENT_BYTES, MAX_RULE_BYTES, RuleParser, type RuleParseOptions } from '../dpi/rules.ts'
import { parseRules as parseFirewallRules, type RuleSet as FirewallRuleSet } from '../firewall/rules.ts'
import type { NetServiceKind } from './chain.ts'

export interface LoadLimits {
  /** Largest rules file, in bytes. */
  maxFileBytes: number
  /** Most rules in one set (DPI: loaded + skipped; firewall: rule lines). */
  maxRules: number
  /** Longest rule (a logical line), in bytes: longer ones are skipped. */
  maxRuleBytes: number
  /** Longest `content`, in bytes: rules with longer ones are skipped. */
  maxContentBytes: number
  /** Largest compiled set (estimate: the prefilter's tables plus per-rule structures), in bytes. */
  maxCompiledBytes: number
  /** Heap of the worker thread that compiles, in MiB: a file needing more is refused. */
  workerHeapMb: number
}

/**
 * The defaults: room for all of ET Open (≈ 25 000 active rules in ≈ 35 MB of files, a few KiB per
 * rule at most, contents of at most a few hundred bytes) in one set, and no more.
 */
export const DEFAULT_LOAD_LIMITS: LoadLimits = {
  maxFileBytes: 64 * 1024 * 1024,
  maxRules: 50_000,
  maxRuleBytes: MAX_RULE_BYTES,
  maxContentBytes: MAX_CONTENT_BYTES,
  maxCompiledBytes: 512 * 1024 * 1024,
  workerHeapMb: 2048,
}

export interface SkippedRule {
  file: string
  line: number
  sid?: number
  reason: string
}

/** What loading a rules file gave: kept with the service, shown by `nic services` and `dpi check`. */
export interface LoadReport {
  kind: NetServiceKind
  files: string[]
  strict: boolean
  loaded: number
  skipped: SkippedRule[]
  /** The compiled set's estimated size in bytes. */
  compiledBytes: number
  /** How long reading, checking and compiling took (in the worker), in ms. */
  compileMs: number
}

export interface CompileRequest {
  kind: NetServiceKind
  files: string[]
  strict?: boolean
  limits?: Partial<LoadLimits>
  /** DPI rule variables (HOME_NET, ...). */
  vars?: Record<string, string>
}

/** A checked set: the report, and what the service's thread needs to build it quickly. */
export interface CompiledRules {
  report: LoadReport
  /** The files' text (DPI: parsed again where the service runs). */
  texts: { path: string; text: string }[]
  /** DPI: the prefilter automata (the whole set's and the groups'), built here. */
  tables?: DpiTables
  /** Firewall: the parsed rules (plain data). */
  firewall?: FirewallRuleSet
  /** DPI: the options the rules were parsed with (to parse them again the same way). */
  parse?: RuleParseOptions
  /** DPI: some rule drops (then the DPI runs on the frames' path, on the NIC's thread). */
  drops?: boolean
}

/** The buffers of the typed arrays in `value`, however deep: handed to another thread, not copied. */
export function transferables(value: unknown): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>()
  const collect = (v: unknown): void => {
    if (ArrayBuffer.isView(v)) {
      if (v.buffer instanceof ArrayBuffer) out.add(v.buffer)
    } else if (v && typeof v === 'object') {
      for (const x of Object.values(v)) collect(x)
    }
  }
  collect(value)
  return [...out]
}

export function limitsOf(partial: Partial<LoadLimits> | undefined): LoadLimits {
  return { ...DEFAULT_LOAD_LIMITS, ...partial }
}

const mib = (n: number) => `${(n / 1024 / 1024).toFixed(n % (1024 * 1024) === 0 ? 0 : 1)} MiB`

function tooLarge(kind: NetServiceKind, what: string, limit: string, details: Record<string, unknown>) {
  return new VrioError('rules-too-large', `${kind} rules: ${what} (the limit is ${limit})`, {
    field: kind,
    ...details,
  })
}

/** Reads a rules file, refusing it by its size before reading a byte. */
function readRulesText(kind: NetServiceKind, path: string, maxBytes: number): string {
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new VrioError(
      code === 'ENOENT' ? 'not-found' : 'invalid-rules',
      `${kind} rules file ${path}: ${code === 'ENOENT' ? 'does not exist' : (error as Error).message}`,
      { field: kind },
    )
  }
  try {
    const size = fstatSync(fd).size
    if (!fstatSync(fd).isFile())
      throw new VrioError('invalid-rules', `${kind} rules file ${path} is not a regular file`, {
        field: kind,
      })
    if (size > maxBytes)
      throw tooLarge(kind, `${path} is ${mib(size)}`, mib(maxBytes), { file: path, limit: 'maxFileBytes' })
    const buf = Buffer.allocUnsafe(size)
    let got = 0
    while (got < size) {
      const n = readSync(fd, buf, got, size - got, got)
      if (n === 0) break
      got += n
    }
    return buf.toString('utf8', 0, got)
  } finally {
    closeSync(fd)
  }
}

/** Lines that may hold a rule (not blank, not a comment): an upper bound on the rule count. */
function countRuleLines(text: string): number {
  let n = 0
  let at = 0
  while (at <= text.length) {
    let end = text.indexOf('\n', at)
    if (end < 0) end = text.length
    let i = at
    while (i < end && (text.charCodeAt(i) === 32 || text.charCodeAt(i) === 9 || text.charCodeAt(i) === 13))
      i++
    if (i < end && text.charCodeAt(i) !== 35) n++
    at = end + 1
  }
  return n
}

/**
 * Reads, checks and compiles a set of rules files. Throws VrioError: 'not-found' (a file is
 * missing), 'rules-too-large' (a limit), 'invalid-rules' (strict and a rule is bad; a firewall
 * rule is bad; or no DPI rule is usable out of a non-empty file).
 */
export function compileRules(request: CompileRequest): CompiledRules {
  const { kind, files } = request
  const started = performance.now()
  const elapsed = () => Math.round(performance.now() - started)
  const limits = limitsOf(request.limits)
  const strict = request.strict === true || kind === 'firewall'
  const texts = files.map((path) => ({ path, text: readRulesText(kind, path, limits.maxFileBytes) }))
  let lines = 0
  for (const t of texts) lines += countRuleLines(t.text)
  if (lines > limits.maxRules)
    throw tooLarge(kind, `${files.join(', ')}: ${lines} rule lines`, `${limits.maxRules} rules`, {
      limit: 'maxRules',
    })
  if (kind === 'firewall') {
    if (texts.length !== 1) throw new VrioError('invalid-argument', 'a firewall has one rules file')
    const set = parseFirewallRules(texts[0].text, texts[0].path)
    const compiledBytes = 512 * set.rules.length
    const report: LoadReport = {
      kind,
      files,
      strict,
      loaded: set.rules.length,
      skipped: [],
      compiledBytes,
      compileMs: elapsed(),
    }
    return { report, texts, firewall: set }
  }
  const parse: RuleParseOptions = {
    ...(request.vars && { vars: request.vars }),
    maxRuleBytes: limits.maxRuleBytes,
    maxContentBytes: limits.maxContentBytes,
  }
  const parser = new RuleParser(parse)
  for (const t of texts) parser.parse(t.text, t.path)
  const parsed = parser.result()
  const skipped = parsed.errors.map((e) => ({
    file: e.file,
    line: e.line,
    ...(e.sid !== undefined && { sid: e.sid }),
    reason: e.message,
  }))
  if (strict && skipped.length > 0) {
    const shown = skipped.slice(0, 100).map((e) => `${e.file}:${e.line}: ${e.reason}`)
    if (skipped.length > shown.length) shown.push(`... and ${skipped.length - shown.length} more`)
    throw new VrioError('invalid-rules', `invalid rules (strict):\n${shown.join('\n')}`, {
      field: kind,
      errors: skipped,
    })
  }
  if (parsed.rules.length === 0 && skipped.length > 0) {
    const first = skipped[0]
    throw new VrioError(
      'invalid-rules',
      `no usable rule in ${files.join(', ')}: ${skipped.length} skipped, the first at ${first.file}:${first.line}: ${first.reason}`,
      { field: kind, errors: skipped },
    )
  }
  const service = new DpiService(parsed, { strict: false })
  const compiledBytes = service.compiledBytes()
  if (compiledBytes > limits.maxCompiledBytes)
    throw tooLarge(
      kind,
      `${files.join(', ')} would compile to about ${mib(compiledBytes)}`,
      mib(limits.maxCompiledBytes),
      { limit: 'maxCompiledBytes' },
    )
  const report: LoadReport = {
    kind,
    files,
    strict,
    loaded: parsed.rules.length,
    skipped,
    compiledBytes,
    compileMs: elapsed(),
  }
  return { report, texts, tables: service.compiledTables(), parse, drops: service.canDrop }
}
