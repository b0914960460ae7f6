/**
 * Loading the daemons' config files: `.json` as JSON, `.yaml`/`.yml` as YAML, checked against
 * schema.ts, then as a whole (duplicates, references from devices to guests) and against the file
 * system (key files read with readKeyFile, secret files with readSecretFile: both refuse a file
 * group or others may read; backing and rules files must exist, a backing's last component must
 * not be a symlink, and one file backs at most one writable disk). Relative
 * paths are resolved against the config file's directory. Every problem found is reported at once,
 * in one VrioError('invalid-config') whose message names the file and each bad field path:
 *
 *   config /etc/vrio/iohyp.yaml: guests[0].mac: 'zz' is not a MAC address (...); disks[1].name: duplicate name 'root' (also disks[0])
 *
 * and whose `errors` detail lists them as `{ path, message, line?, column? }`. Key material never
 * appears in a message.
 */
import { lstatSync, readFileSync, statSync } from 'node:fs'
import { dirname, extname, resolve } from 'node:path'
import YAML from 'yaml'
import type * as z from 'zod'
import { readKeyFile, readSecretFile } from '../auth/key-file.ts'
import { isVrioError, VrioError } from '../errors.ts'
import { parseIPv4, parseMac } from '../wire/address.ts'
import { checkWithSchema, rawField } from '../devices/fields.ts'
import type { DiskSpec } from '../devices/blk/spec.ts'
import type { NicRequest } from '../devices/net/spec.ts'
import {
  diskEntrySchema,
  guestEntrySchema,
  guestFileSchema,
  iohypTopSchema,
  nicEntrySchema,
  show,
} from './schema.ts'

export interface ConfigIssue {
  /** Field path such as `guests[1].keyFile`; empty for the document itself. */
  path: string
  message: string
  /** Where a syntax error is (1-based). */
  line?: number
  column?: number
}

/** A config guest: its entry as the schema returns it (budgets as given), keyFile absolute, the key read. */
export type GuestEntry = z.output<typeof guestEntrySchema> & { key: Buffer }

/** A config disk as the IOhyp applies it: its guest by canonical MAC, paths absolute. */
export type DiskEntry = DiskSpec
/** A config NIC as the IOhyp applies it: its guest by canonical MAC, rules files absolute. */
export type NicEntry = NicRequest & { name: string }

/** The IOhyp's config: the file's top level as the schema returns it, paths absolute, lists checked. */
export type IohypConfig = Omit<z.output<typeof iohypTopSchema>, 'guests' | 'disks' | 'nics'> & {
  file: string
  guests: GuestEntry[]
  disks: DiskEntry[]
  nics: NicEntry[]
}

/** The guest agent's config: the file as the schema returns it, paths absolute, with the key read. */
export type GuestConfig = z.output<typeof guestFileSchema> & { file: string; key: Buffer }

/** Config files are a few KB; anything this large is a mistake. */
const MAX_CONFIG_BYTES = 1024 * 1024

/** Loads and checks the IOhyp's config file; throws VrioError('invalid-config') naming every problem. */
export function loadIohypConfig(file: string): IohypConfig {
  return checkIohypConfig(parseConfigText(readConfigFile(file), file), file)
}

/** Loads and checks the guest agent's config file; throws VrioError('invalid-config'). */
export function loadGuestConfig(file: string): GuestConfig {
  return checkGuestConfig(parseConfigText(readConfigFile(file), file), file)
}

/** The problems as one VrioError: `config FILE: path: reason; path: reason`. */
function configError(file: string, issues: readonly ConfigIssue[]): VrioError {
  const parts = issues.map((i) => {
    const where = i.line === undefined ? '' : `line ${i.line}${i.column ? `, column ${i.column}` : ''}: `
    return `${i.path ? `${i.path}: ` : ''}${where}${i.message}`
  })
  return new VrioError('invalid-config', `config ${file}: ${parts.join('; ')}`, {
    file,
    errors: issues.map((i) => ({ ...i })),
  })
}

function readConfigFile(file: string): string {
  try {
    const st = statSync(file)
    if (!st.isFile()) throw configError(file, [{ path: '', message: 'not a regular file' }])
    if (st.size > MAX_CONFIG_BYTES)
      throw configError(file, [{ path: '', message: `larger than ${MAX_CONFIG_BYTES} bytes` }])
    return readFileSync(file, 'utf8')
  } catch (error) {
    if (isVrioError(error)) throw error
    const code = (error as NodeJS.ErrnoException).code
    const message =
      code === 'ENOENT'
        ? 'does not exist'
        : code === 'EACCES'
          ? 'permission denied'
          : `cannot be read (${(error as Error).message})`
    throw configError(file, [{ path: '', message }])
  }
}

/** Parses the text by the file's extension: `.json` as JSON, `.yaml`/`.yml` as YAML. */
function parseConfigText(text: string, file: string): unknown {
  const ext = extname(file).toLowerCase()
  if (ext === '.json') {
    try {
      return JSON.parse(text)
    } catch (error) {
      throw configError(file, [jsonSyntaxIssue(text, (error as Error).message)])
    }
  }
  if (ext !== '.yaml' && ext !== '.yml') {
    throw configError(file, [
      { path: '', message: `unknown file type '${ext}': a config file ends in .json, .yaml or .yml` },
    ])
  }
  const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true })
  if (doc.errors.length > 0) {
    throw configError(
      file,
      doc.errors.map((e) => ({
        path: '',
        // yaml's message repeats the position and quotes the source lines after the first line.
        message: e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, ''),
        line: e.linePos?.[0].line,
        column: e.linePos?.[0].col,
      })),
    )
  }
  try {
    return doc.toJS({ maxAliasCount: 100 })
  } catch (error) {
    throw configError(file, [{ path: '', message: (error as Error).message }])
  }
}

function jsonSyntaxIssue(text: string, message: string): ConfigIssue {
  const m = / in JSON at position (\d+)/.exec(message)
  const reason = message.replace(/ in JSON at position \d+.*$/, '').replace(/^JSON\.parse: /, '')
  if (!m) return { path: '', message: reason }
  const before = text.slice(0, Number(m[1]))
  const line = before.split('\n').length
  return { path: '', message: reason, line, column: Number(m[1]) - before.lastIndexOf('\n') }
}

/** Checks a parsed IOhyp config document; `file` names it in errors and anchors relative paths. */
export function checkIohypConfig(raw: unknown, file: string): IohypConfig {
  const c = new Checker(file)
  const top = c.parse(iohypTopSchema, raw, '')
  if (!top) throw configError(file, c.issues)

  // Guests first: devices refer to them.
  const guests: GuestEntry[] = []
  /** How a device may name a guest whose own entry is broken: not reported a second time. */
  const brokenRefs = new Set<string>()
  let unknownGuests = false
  const byMac = new Map<string, number>()
  const byAddress = new Map<string, number>()
  const byName = new Map<string, number>()
  ;(top.guests ?? []).forEach((entry, i) => {
    const at = `guests[${i}]`
    const g = c.parse(guestEntrySchema, entry, at)
    if (!g) {
      // An entry with no readable identity: any reference may be to it, so none is reported.
      if (rawField(entry, 'mac') === undefined && rawField(entry, 'address') === undefined)
        unknownGuests = true
      for (const k of ['mac', 'address', 'name']) {
        const v = rawString(entry, k)
        if (v !== undefined) brokenRefs.add(refKey(v))
      }
      return
    }
    let ok = c.unique(byMac, g.mac, i, `${at}.mac`, 'guests', `MAC '${g.mac}'`)
    ok = c.unique(byAddress, g.address, i, `${at}.address`, 'guests', `address '${g.address}'`) && ok
    if (g.name !== undefined) {
      if (parseMac(g.name) !== undefined || parseIPv4(g.name) !== undefined) {
        c.issue(
          `${at}.name`,
          `${show(g.name)} looks like an address; a guest name must not be a MAC or IPv4 address`,
        )
        ok = false
      } else ok = c.unique(byName, g.name, i, `${at}.name`, 'guests', `name '${g.name}'`) && ok
    }
    const keyFile = c.path(g.keyFile)
    const key = c.keyFile(keyFile, `${at}.keyFile`)
    if (!ok || !key) {
      brokenRefs.add(refKey(g.mac)).add(refKey(g.address))
      if (g.name) brokenRefs.add(g.name)
      return
    }
    guests.push({ ...g, keyFile, key })
  })

  /** A device's `guest`: a MAC, an address or a name from `guests`; the owner's MAC, or undefined. */
  const owner = (ref: string, at: string): string | undefined => {
    const mac = parseMac(ref)
    const ip = parseIPv4(ref)
    const g = guests.find(
      (g) =>
        (mac !== undefined && parseMac(g.mac) === mac) ||
        (ip !== undefined && parseIPv4(g.address) === ip) ||
        g.name === ref,
    )
    if (g) return g.mac
    if (!unknownGuests && !brokenRefs.has(refKey(ref)))
      c.issue(at, `no guest ${show(ref)} in guests (a device names its guest by MAC, address or name)`)
    return undefined
  }

  const SECRET_FIELDS = [
    ['keyFile', 'key file'],
    ['passphraseFile', 'passphrase file'],
  ] as const
  const disks: DiskEntry[] = []
  /** Which file each accepted disk's backing is (device and inode), as IohypDisks compares them. */
  const backingIds: string[] = []
  const diskNames = new Map<string, number>()
  ;(top.disks ?? []).forEach((entry, i) => {
    const at = `disks[${i}]`
    const name = rawString(entry, 'name')
    let ok = name === undefined || c.unique(diskNames, name, i, `${at}.name`, 'disks', `name ${show(name)}`)
    const d = c.parse(diskEntrySchema, entry, at)
    if (!d) return
    const guest = owner(d.guest, `${at}.guest`)
    const backing = c.path(d.backing)
    const readOnly = d.readOnly === true
    const id = c.backing(backing, `${at}.backing`)
    if (id !== undefined) {
      const other = disks.findIndex((o, j) => backingIds[j] === id && (!o.readOnly || !readOnly))
      if (other >= 0) {
        const same =
          disks[other].backing === backing ? '' : ` (the same file as ${show(disks[other].backing)})`
        c.issue(
          `${at}.backing`,
          `${show(backing)}${same} already backs disk '${disks[other].name}'; only read-only disks may share a backing`,
        )
        ok = false
      }
    } else ok = false
    // Key files relative to the config file; each must be a secret file (checked as such).
    const encrypt = d.encrypt && { ...d.encrypt }
    for (const [k, what] of SECRET_FIELDS) {
      const f = encrypt?.[k as keyof typeof encrypt] as string | undefined
      if (!encrypt || f === undefined) continue
      Object.assign(encrypt, { [k]: c.path(f) })
      ok = c.secretFile(c.path(f), `${at}.encrypt.${k}`, what) && ok
    }
    if (ok && guest !== undefined && id !== undefined) {
      disks.push({ name: d.name, guest, backing, readOnly, ...(encrypt && { encrypt }) })
      backingIds.push(id)
    }
  })

  const nics: NicEntry[] = []
  const nicNames = new Map<string, number>()
  const nicMacs = new Map<string, number>()
  const taps = new Map<string, number>()
  ;(top.nics ?? []).forEach((entry, i) => {
    const at = `nics[${i}]`
    const name = rawString(entry, 'name')
    let ok = name === undefined || c.unique(nicNames, name, i, `${at}.name`, 'nics', `name ${show(name)}`)
    const n = c.parse(nicEntrySchema, entry, at)
    if (!n) return
    ok = c.unique(nicMacs, n.mac, i, `${at}.mac`, 'nics', `MAC '${n.mac}'`) && ok
    if (byMac.has(n.mac)) {
      c.issue(
        `${at}.mac`,
        `MAC '${n.mac}' is a guest's channel MAC (guests[${byMac.get(n.mac)}]); a NIC needs its own`,
      )
      ok = false
    }
    const guest = owner(n.guest, `${at}.guest`)
    if (n.tap !== undefined) ok = c.unique(taps, n.tap, i, `${at}.tap`, 'nics', `tap '${n.tap}'`) && ok
    const nic: NicEntry = { ...n, guest: guest ?? n.guest }
    for (const k of ['firewall', 'dpi'] as const) {
      const f = n[k]
      if (f === undefined) continue
      nic[k] = c.path(f)
      ok = c.exists(nic[k], `${at}.${k}`, 'rules file', 'file') && ok
    }
    if (ok && guest !== undefined) nics.push(nic)
  })

  if (c.issues.length > 0) throw configError(file, c.issues)
  return {
    file,
    ...top,
    ...(top.stateDir !== undefined && { stateDir: c.path(top.stateDir) }),
    ...(top.control !== undefined && { control: c.path(top.control) }),
    guests,
    disks,
    nics,
  }
}

/** Checks a parsed guest config document. */
export function checkGuestConfig(raw: unknown, file: string): GuestConfig {
  const c = new Checker(file)
  const g = c.parse(guestFileSchema, raw, '')
  if (!g) throw configError(file, c.issues)
  const keyFile = c.path(g.keyFile)
  const key = c.keyFile(keyFile, 'keyFile')
  if (!key) throw configError(file, c.issues)
  return {
    file,
    ...g,
    keyFile,
    key,
    ...(g.runDir !== undefined && { runDir: c.path(g.runDir) }),
    ...(g.control !== undefined && { control: c.path(g.control) }),
  }
}

/** A JSON-safe summary of a config without key material (for `vrio config check`). */
export function describeConfig(config: IohypConfig | GuestConfig): Record<string, unknown> {
  const { key: _, ...rest } = config as GuestConfig
  if (!('guests' in config)) return rest
  return { ...config, guests: config.guests.map(({ key: _k, ...g }) => g) }
}

function rawString(entry: unknown, key: string): string | undefined {
  const v = rawField(entry, key)
  return typeof v === 'string' ? v : undefined
}

function refKey(ref: string): string {
  const mac = parseMac(ref)
  if (mac !== undefined) return `mac:${mac}`
  const ip = parseIPv4(ref)
  return ip !== undefined ? `ip:${ip}` : ref
}

/** Collects issues; each helper records its problem and says whether the value was fine. */
class Checker {
  readonly issues: ConfigIssue[] = []
  private readonly dir: string

  constructor(file: string) {
    this.dir = dirname(resolve(file))
  }

  issue(path: string, message: string): void {
    this.issues.push({ path, message })
  }

  path(p: string): string {
    return resolve(this.dir, p)
  }

  parse<S extends z.ZodType>(schema: S, value: unknown, at: string): z.output<S> | undefined {
    const r = checkWithSchema(schema, value, at)
    if (r.ok) return r.data
    this.issues.push(...r.issues)
    return undefined
  }

  /** Records `value` at index `i` in `seen`; a second one is a duplicate. */
  unique(
    seen: Map<string, number>,
    value: string,
    i: number,
    at: string,
    list: string,
    what: string,
  ): boolean {
    const first = seen.get(value)
    if (first === undefined) {
      seen.set(value, i)
      return true
    }
    this.issue(at, `duplicate ${what} (also ${list}[${first}])`)
    return false
  }

  keyFile(path: string, at: string): Buffer | undefined {
    try {
      return readKeyFile(path)
    } catch (error) {
      if (!isVrioError(error)) throw error
      this.issue(at, error.message)
      return undefined
    }
  }

  /** A file holding key material: read as the daemon will (readSecretFile), then wiped. */
  secretFile(path: string, at: string, what: string): boolean {
    try {
      readSecretFile(path, what).fill(0)
      return true
    } catch (error) {
      if (!isVrioError(error)) throw error
      this.issue(at, error.message)
      return false
    }
  }

  /**
   * A disk's backing: a regular file or block device, not a symlink itself (the IOhyp opens it
   * with O_NOFOLLOW); returns which file it is as a string, or undefined after an issue.
   */
  backing(path: string, at: string): string | undefined {
    if (!this.exists(path, at, 'backing', 'disk')) return undefined
    const st = lstatSync(path, { bigint: true })
    if (st.isSymbolicLink()) {
      this.issue(at, `backing ${show(path)} is a symbolic link; name the file itself`)
      return undefined
    }
    // As FileDevice.identity: a block device is its device number, whichever node names it.
    return st.isBlockDevice() ? `block ${st.rdev}` : `${st.dev}:${st.ino}`
  }

  /** `kind` 'disk': a regular file or a block device; 'file': a regular file. */
  exists(path: string, at: string, what: string, kind: 'disk' | 'file'): boolean {
    try {
      const st = statSync(path)
      if (st.isFile() || (kind === 'disk' && st.isBlockDevice())) return true
      this.issue(
        at,
        `${what} ${show(path)} is not a ${kind === 'disk' ? 'regular file or block device' : 'regular file'}`,
      )
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      this.issue(
        at,
        `${what} ${show(path)} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code})`}`,
      )
    }
    return false
  }
}
