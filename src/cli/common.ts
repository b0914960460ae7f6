/**
 * Pieces every CLI command shares: the control socket option, JSON and table output. Everything
 * printed goes through escapeControl/escapeJsonText (src/escape.ts): names, states and messages
 * in daemon answers may come from a peer, and must not drive the operator's terminal.
 */
import type { Command } from 'commander'
import type * as z from 'zod'
import { DEFAULT_GUEST_SOCKET, DEFAULT_IOHYP_SOCKET, routePath } from '../control/api.ts'
import { ControlClient } from '../control/control-client.ts'
import { checkWithSchema, specError } from '../devices/fields.ts'
import { VrioError } from '../errors.ts'
import { escapeControl, escapeJsonText } from '../escape.ts'
import { parseIPv4, parseMac } from '../wire/address.ts'

export interface ControlOptions {
  control?: string
  json?: boolean
}

/** `--control PATH`; with `defaultPath` commander fills it in (and shows it in --help). */
function addControlOption(command: Command, defaultPath?: string, description?: string): Command {
  const text = description ?? "unix socket of the daemon's control API"
  return defaultPath === undefined
    ? command.option('--control <path>', text)
    : command.option('--control <path>', text, defaultPath)
}

export interface DaemonChoiceOptions extends ControlOptions {
  guest?: boolean
}

/**
 * `--guest` and `--control PATH` for commands either daemon answers: `--guest` only changes the
 * default socket, so `--guest --control PATH` reaches a guest daemon at PATH.
 */
export function addDaemonChoice(command: Command): Command {
  command.option('--guest', `ask the guest daemon (${DEFAULT_GUEST_SOCKET}) instead of the IOhyp`)
  return addControlOption(
    command,
    undefined,
    `unix socket of the daemon's control API (default: ${DEFAULT_IOHYP_SOCKET}, or ${DEFAULT_GUEST_SOCKET} with --guest)`,
  )
}

export function chosenDaemonSocket(o: DaemonChoiceOptions): string {
  return o.control ?? (o.guest ? DEFAULT_GUEST_SOCKET : DEFAULT_IOHYP_SOCKET)
}

/**
 * A request made of flags, checked by its one schema before it is sent (the daemon checks it
 * again); returns it parsed. Its problems name the flag that set each field (`--mtu: must be at
 * least 68`).
 */
export function checkedRequest<S extends z.ZodType>(
  schema: S,
  request: Record<string, unknown>,
): z.output<S> {
  const r = checkWithSchema(schema, request)
  if (r.ok) return r.data
  throw specError(
    r.issues.map((i) => ({
      path: flagOf(i.path),
      message: i.message === 'unknown key' ? 'does not go with the other options' : i.message,
    })),
  )
}

/** `--guest` of a device: a MAC or an IPv4 address (a config file may also name guests). */
export function guestFlag(text: string): string {
  if (parseMac(text) === undefined && parseIPv4(text) === undefined)
    throw new VrioError('invalid-argument', `--guest '${text}' is neither a MAC nor an IPv4 address`)
  return text
}

/** A whole number flag as a number, anything else as given (for the schema to refuse). */
export function numberFlag(text: string | undefined): number | string | undefined {
  return text !== undefined && /^[0-9]{1,15}$/.test(text) ? Number(text) : text
}

/** The flag that sets a request field: `mtu` is --mtu, `encrypt.keyFile` --key-file, `encrypt.kind` --encrypt. */
function flagOf(path: string): string {
  const field = path
    .split('.')
    .filter((p) => p !== 'kind')
    .at(-1)
  return field ? `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` : path
}

export function addJsonOption(command: Command): Command {
  return command.option('--json', 'print one machine-readable JSON document to stdout')
}

/** `--control` (the IOhyp's socket by default) and `--json`: the options of the IOhyp's commands. */
export function addIohypOptions(command: Command): Command {
  return addJsonOption(addControlOption(command, DEFAULT_IOHYP_SOCKET))
}

/**
 * `<parent> remove NAME` on the IOhyp: DELETE `route` (a `:name` route), then `removed NAME` or,
 * with --json, the removed device as the daemon answered.
 */
export function addRemoveCommand(parent: Command, route: string, description: string, what: string): void {
  const remove = parent.command('remove').description(description).argument('<name>', `${what} name`)
  addIohypOptions(remove).action(async (name: string, o: ControlOptions) => {
    const removed = await controlClient(o.control!).delete<{ name: string }>(routePath(route, { name }))
    if (o.json) printJson(removed)
    else printLines([`removed ${removed.name}`])
  })
}

/** One column of a `list` table: header, alignment, and the cell for an item. */
export type Column<T> = readonly [header: string, align: Align, cell: (item: T) => string]

/**
 * `<parent> list [--guest] [--control PATH] [--json]`: GET `route` from either daemon, print the
 * answer as JSON, or its `key` items as a table (`none` when there are none).
 */
export function addListCommand<T>(
  parent: Command,
  o: { description: string; route: string; key: string; none: string; columns: readonly Column<T>[] },
): void {
  const list = parent.command('list').description(o.description)
  addJsonOption(addDaemonChoice(list)).action(async (options: DaemonChoiceOptions) => {
    const answer = await controlClient(chosenDaemonSocket(options)).get<Record<string, T[]>>(o.route)
    if (options.json) {
      printJson(answer)
      return
    }
    const items = answer[o.key] ?? []
    printLines(items.length === 0 ? [o.none] : columnTable(o.columns, items))
  })
}

/** `items` as a table of `columns` (formatTable). */
export function columnTable<T>(columns: readonly Column<T>[], items: readonly T[]): string[] {
  return formatTable(
    columns.map(([header]) => header),
    items.map((item) => columns.map(([, , cell]) => cell(item))),
    columns.map(([, align]) => align),
  )
}

export function controlClient(path: string, timeoutMs?: number): ControlClient {
  return new ControlClient({ path, timeoutMs })
}

export function printJson(value: unknown): void {
  process.stdout.write(`${escapeJsonText(JSON.stringify(value, null, 2))}\n`)
}

/** One line per string; control characters in a string (a newline too) are printed escaped. */
export function printLines(lines: readonly string[]): void {
  if (lines.length > 0) process.stdout.write(`${lines.map(escapeControl).join('\n')}\n`)
}

export type Align = 'left' | 'right'

/**
 * Lays rows out in columns two spaces apart; the last column is not padded. Cells are escaped
 * (escapeControl) first, so the widths are those of what is printed.
 */
export function formatTable(
  rawHeader: readonly string[],
  rawRows: readonly string[][],
  align: readonly Align[],
): string[] {
  const header = rawHeader.map(escapeControl)
  const rows = rawRows.map((r) => r.map(escapeControl))
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, i) => {
        if (i === cells.length - 1 && align[i] !== 'right') return cell
        return align[i] === 'right' ? cell.padStart(widths[i]) : cell.padEnd(widths[i])
      })
      .join('  ')
  return [line(header), ...rows.map(line)]
}

/** `key: value` lines with the values aligned; keys and values escaped (escapeControl). */
export function formatFields(rawFields: readonly [string, string][]): string[] {
  const fields = rawFields.map(([k, v]) => [escapeControl(k), escapeControl(v)] as const)
  const width = Math.max(0, ...fields.map(([k]) => k.length + 1))
  return fields.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}`)
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']

export function formatBytes(n: number): string {
  let value = n
  let unit = 0
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${BYTE_UNITS[unit]}`
}

export function formatRtt(rttMs: number | null | undefined): string {
  if (rttMs === null || rttMs === undefined) return '-'
  return rttMs < 10 ? `${rttMs.toFixed(2)} ms` : `${Math.round(rttMs)} ms`
}

export function formatDuration(ms: number): string {
  let s = Math.floor(ms / 1000)
  const d = Math.floor(s / 86400)
  s -= d * 86400
  const h = Math.floor(s / 3600)
  s -= h * 3600
  const m = Math.floor(s / 60)
  s -= m * 60
  if (d > 0) return `${d}d ${h}h ${m}m`
  if (h > 0) return `${h}h ${m}m ${s}s`
  if (m > 0) return `${m}m ${s}s`
  return `${s}s`
}
