/**
 * A parser for the Prometheus text exposition format (version 0.0.4), as served by the daemons'
 * `GET /metrics`: `# HELP` and `# TYPE` lines, other comments, and samples
 * `name{label="value",...} value [timestamp]`. Label values are unescaped (`\\`, `\"`, `\n`);
 * values may be `NaN`, `+Inf`, `-Inf`. A malformed line is a VrioError 'bad-metrics' naming its
 * line number, never a half-parsed result. Pure: no I/O.
 */
import { VrioError } from '../errors.ts'

export type Labels = Readonly<Record<string, string>>

export interface Sample {
  readonly name: string
  readonly labels: Labels
  readonly value: number
}

export interface Exposition {
  readonly samples: readonly Sample[]
  /** Metric family name -> type as declared by `# TYPE` (counter, gauge, histogram, summary, untyped). */
  readonly types: ReadonlyMap<string, string>
  /** Samples grouped by sample name (histograms: `x_bucket`, `x_sum`, `x_count`). */
  readonly byName: ReadonlyMap<string, readonly Sample[]>
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/

export function parseExposition(text: string): Exposition {
  const samples: Sample[] = []
  const types = new Map<string, string>()
  const byName = new Map<string, Sample[]>()
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim()
    if (line === '') continue
    if (line.startsWith('#')) {
      const m = /^#\s*TYPE\s+(\S+)\s+(\S+)/.exec(line)
      if (m) types.set(m[1], m[2])
      continue
    }
    const sample = parseSampleLine(line, i + 1)
    samples.push(sample)
    const group = byName.get(sample.name)
    if (group) group.push(sample)
    else byName.set(sample.name, [sample])
  }
  return { samples, types, byName }
}

function bad(lineNo: number, why: string): VrioError {
  return new VrioError('bad-metrics', `metrics exposition line ${lineNo}: ${why}`, { line: lineNo })
}

function parseSampleLine(line: string, lineNo: number): Sample {
  const nameMatch = NAME.exec(line)
  if (!nameMatch) throw bad(lineNo, 'expected a metric name')
  const name = nameMatch[0]
  let pos = name.length
  const labels: Record<string, string> = {}
  if (line[pos] === '{') {
    pos++
    for (;;) {
      while (line[pos] === ' ' || line[pos] === '\t') pos++
      if (line[pos] === '}') {
        pos++
        break
      }
      const ln = LABEL_NAME.exec(line.slice(pos))
      if (!ln) throw bad(lineNo, 'expected a label name')
      pos += ln[0].length
      while (line[pos] === ' ') pos++
      if (line[pos] !== '=') throw bad(lineNo, `expected '=' after label ${ln[0]}`)
      pos++
      while (line[pos] === ' ') pos++
      if (line[pos] !== '"') throw bad(lineNo, `expected '"' to open the value of label ${ln[0]}`)
      pos++
      let value = ''
      for (;;) {
        if (pos >= line.length) throw bad(lineNo, `unterminated value of label ${ln[0]}`)
        const c = line[pos++]
        if (c === '"') break
        if (c === '\\') {
          const e = line[pos++]
          if (e === 'n') value += '\n'
          else if (e === '\\' || e === '"') value += e
          else throw bad(lineNo, `bad escape '\\${e ?? ''}' in label ${ln[0]}`)
        } else value += c
      }
      if (Object.hasOwn(labels, ln[0])) throw bad(lineNo, `label ${ln[0]} given twice`)
      labels[ln[0]] = value
      while (line[pos] === ' ') pos++
      if (line[pos] === ',') pos++
      else if (line[pos] !== '}') throw bad(lineNo, "expected ',' or '}' after a label")
    }
  }
  const rest = line.slice(pos).trim().split(/\s+/)
  if (rest.length < 1 || rest.length > 2 || rest[0] === '') throw bad(lineNo, 'expected a value')
  const value = parseValue(rest[0])
  if (value === undefined) throw bad(lineNo, `bad value '${rest[0]}'`)
  if (rest.length === 2 && !/^-?\d+$/.test(rest[1])) throw bad(lineNo, `bad timestamp '${rest[1]}'`)
  return { name, labels, value }
}

/**
 * A sample value or bucket bound: a float, NaN, +Inf/Inf, -Inf; undefined when neither. The
 * special words in any case, as Prometheus reads them (Go's ParseFloat): prom-client writes NaN
 * as `Nan`.
 */
export function parseValue(text: string): number | undefined {
  switch (text.toLowerCase()) {
    case 'nan':
      return Number.NaN
    case '+inf':
    case 'inf':
    case '+infinity':
    case 'infinity':
      return Number.POSITIVE_INFINITY
    case '-inf':
    case '-infinity':
      return Number.NEGATIVE_INFINITY
  }
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text)) return undefined
  return Number(text)
}

/** A stable identity for a label set (order of labels does not matter), leaving out `omit`. */
export function labelKey(labels: Labels, omit?: string): string {
  return JSON.stringify(
    Object.keys(labels)
      .filter((k) => k !== omit)
      .sort()
      .map((k) => [k, labels[k]]),
  )
}
