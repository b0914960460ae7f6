/**
 * The fields every device spec is built from, as zod schemas (MACs, addresses, names, paths), and
 * zod's problems in the words an operator reads, with the field's path (`guests[1].mac`). One
 * definition each, used by the config file, the control API and the state file alike.
 */
import * as z from 'zod'
import { formatIPv4Prefix, parseIPv4Prefix } from './net/source-guard.ts'
import { DEVICE_NAME_RULE, DEVICE_NAME_RE, IFNAME_RE, IFNAME_RULE } from './names.ts'
import { formatIPv4, formatMac, isGroupMac, parseIPv4, parseMac } from '../wire/address.ts'
import { VrioError } from '../errors.ts'

/** A problem with one field: `path` like `nics[0].tap` ('' for the whole document). */
export interface FieldIssue {
  path: string
  message: string
}

/** A value quoted for an error message, on one line whatever it holds. */
export function show(value: unknown): string {
  if (typeof value !== 'string') return JSON.stringify(value) ?? String(value)
  return `'${JSON.stringify(value).slice(1, -1).replace(/'/g, "\\'")}'`
}

export const textSchema = z.string().min(1, { error: 'must not be empty' })
export const pathSchema = textSchema

/** A string that `check` turns into its canonical form, or refuses with `{ error }` (the message). */
function canonicalText(check: (value: string) => string | { error: string }) {
  return z.string().transform((value, ctx) => {
    const r = check(value)
    if (typeof r === 'string') return r
    ctx.addIssue({ code: 'custom', message: r.error })
    return z.NEVER
  })
}

/** A unicast MAC, returned in canonical `aa:bb:cc:dd:ee:ff` form. */
export const macSchema = canonicalText((value) => {
  const mac = parseMac(value)
  if (mac === undefined)
    return { error: `${show(value)} is not a MAC address (six hex pairs like 52:54:00:12:34:56)` }
  if (mac === 0 || isGroupMac(mac))
    return { error: `${show(value)} is not a unicast MAC address (all-zero, multicast or broadcast)` }
  return formatMac(mac)
})

/** A unicast IPv4 address, returned as a canonical dotted quad. */
export const ipv4Schema = canonicalText((value) => {
  const ip = parseIPv4(value)
  if (ip === undefined)
    return { error: `${show(value)} is not an IPv4 address (a dotted quad like 10.0.0.2)` }
  const first = ip >>> 24
  if (ip === 0 || ip === 0xffff_ffff || first === 127 || first >= 224)
    return {
      error: `${show(value)} is not a unicast address (not 0.0.0.0, loopback, multicast or broadcast)`,
    }
  return formatIPv4(ip)
})

/** `a.b.c.d` or `a.b.c.d/n`, returned canonical (no `/32`). */
export const ipv4PrefixSchema = canonicalText((value) => {
  const p = parseIPv4Prefix(value)
  if (p === undefined)
    return { error: `${show(value)} is not an IPv4 address or prefix (like 10.0.0.5 or 10.0.0.0/29)` }
  return formatIPv4Prefix(p)
})

/** An absolute path (what the control API takes: the CLI resolves relative ones). */
export const absolutePathSchema = z.string().refine((p) => p.startsWith('/'), {
  error: (issue) => `${show(issue.input)} must be an absolute path`,
})

export const deviceNameSchema = z.string().regex(DEVICE_NAME_RE, {
  error: (issue) => `${show(issue.input)} is not a valid name (${DEVICE_NAME_RULE})`,
})

export const ifnameSchema = z.string().regex(IFNAME_RE, {
  error: (issue) => `${show(issue.input)} is not an interface name (${IFNAME_RULE})`,
})

const u32 = z.int().min(0).max(0xffff_ffff)
/** A device handle as the state file keeps it (see devices/handles.ts). */
export const handleSchema = z.strictObject({ high: u32, low: u32 })

/** A device request's problems as one VrioError('invalid-argument'): `field` the first, the message all. */
export function specError(issues: FieldIssue[]): VrioError {
  const message = issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('; ')
  return new VrioError('invalid-argument', message, { field: issues[0].path, errors: issues })
}

/**
 * `value` checked against `schema`: its output, or the problems as FieldIssues whose paths start at
 * `at` (`guests[1].mac`), in the words config errors use. Shared with the IOhyp's state file.
 */
export function checkWithSchema<S extends z.ZodType>(
  schema: S,
  value: unknown,
  at = '',
): { ok: true; data: z.output<S> } | { ok: false; issues: FieldIssue[] } {
  const r = schema.safeParse(value, { error: humanMessage, reportInput: true })
  if (r.success) return { ok: true, data: r.data }
  const issues: FieldIssue[] = []
  for (const i of r.error.issues) {
    const path = joinPath(at, i.path)
    if (i.code === 'unrecognized_keys')
      for (const k of i.keys) issues.push({ path: joinPath(path, [k]), message: 'unknown key' })
    else issues.push({ path, message: i.message })
  }
  return { ok: false, issues }
}

function joinPath(base: string, path: readonly PropertyKey[]): string {
  let out = base
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`
    else out += out ? `.${String(p)}` : String(p)
  }
  return out
}

function kindOf(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'a list'
  if (typeof value === 'object') return 'an object'
  if (typeof value === 'string') return 'a string'
  if (typeof value === 'number') return Number.isInteger(value) ? 'a whole number' : 'a number'
  return `a ${typeof value}`
}

const EXPECTED: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  object: 'an object (key: value pairs)',
  array: 'a list',
}

/** zod's issues in words an operator reads (schema-level messages take precedence over these). */
function humanMessage(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case 'invalid_type':
      if (issue.input === undefined) return 'required'
      return `expected ${EXPECTED[issue.expected] ?? issue.expected}, got ${kindOf(issue.input)}`
    case 'invalid_value':
      return `expected ${issue.values.map((v) => show(v)).join(' or ')}, got ${show(issue.input)}`
    case 'invalid_union':
      // A discriminated union: the path ends at the discriminator, the input is the whole object.
      if ('options' in issue && Array.isArray(issue.options) && typeof issue.discriminator === 'string') {
        const options = issue.options.map((v: unknown) => show(v)).join(' or ')
        const value = rawField(issue.input, issue.discriminator)
        return value === undefined ? `required (${options})` : `expected ${options}, got ${show(value)}`
      }
      return undefined
    case 'too_small':
      return `must be ${issue.inclusive ? 'at least' : 'more than'} ${issue.minimum}`
    case 'too_big':
      return `must be ${issue.inclusive ? 'at most' : 'less than'} ${issue.maximum}`
    default:
      return undefined
  }
}

/** `entry[key]` when entry is a plain object, else undefined (for messages about raw input). */
export function rawField(entry: unknown, key: string): unknown {
  return typeof entry === 'object' && entry !== null && !Array.isArray(entry)
    ? (entry as Record<string, unknown>)[key]
    : undefined
}
