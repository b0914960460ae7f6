/**
 * The IOhyp's live state as a config file, so an IOhyp set up by hand (`vrio guests add`, `vrio blk
 * create`) can be turned into a declared one. Keys are never written inline: each guest's key goes
 * to its own key file `guest-<mac with dashes>.key` (mode 0600) in a directory the caller names, and
 * the config refers to it. A key file that exists already is kept when it holds the same key and
 * refused otherwise (unless `force`), so an export never silently replaces a key.
 */
import { mkdirSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import YAML from 'yaml'
import type { AddGuestRequest, GuestBudgets } from '../control/api.ts'
import type { DiskSpec } from '../devices/blk/spec.ts'
import { readKeyFile, writeKeyFile } from '../auth/key-file.ts'
import { isVrioError, VrioError } from '../errors.ts'
import { formatMac, parseMac } from '../wire/address.ts'

/** What the IOhyp exports (`GET /v1/config`): the state file's shape plus the daemon's settings. */
export interface ExportableState {
  interface: string
  /** Only when the daemon was given one (else it follows the interface's address). */
  address?: string
  stateDir?: string
  /** Only when the daemon runs with --insecure-plaintext. */
  insecurePlaintext?: boolean
  /** Only when the daemon runs with --metrics. */
  metrics?: string
  /** Only when the daemon runs more than one iocore. */
  iocores?: number
  /** As enrolled (the key as 64 hex characters). */
  guests: (AddGuestRequest & { name?: string })[]
  /** The budgets every guest gets unless it sets its own. */
  budgets?: Partial<GuestBudgets>
  disks: (Omit<DiskSpec, 'readOnly'> & { readOnly?: boolean })[]
  /** NICs as config entries, once the IOhyp has them. */
  nics?: Record<string, unknown>[]
}

export interface ExportOptions {
  /** Where the key files go (created, mode 0700, when missing). */
  keyDir: string
  /**
   * Where the config will be written: key files are then referred to relative to its directory
   * (the loader resolves them from there), so the config and its keys move together. Without it,
   * they are referred to by absolute path.
   */
  configPath?: string
  /** Replace key files holding another key. */
  force?: boolean
}

export interface ExportResult {
  /** The config document (YAML). */
  text: string
  /** The key files written or found up to date, absolute. */
  keyFiles: string[]
}

/** Name of a guest's key file in the key directory. */
export function keyFileName(mac: string): string {
  const n = parseMac(mac)
  if (n === undefined) throw new VrioError('invalid-argument', `invalid MAC ${JSON.stringify(mac)}`)
  return `guest-${formatMac(n).replaceAll(':', '-')}.key`
}

/**
 * The config document for `state`, with each guest's key file given by `keyFileOf` (no I/O).
 * The result loads with loadIohypConfig once the key files exist.
 */
function buildConfigDocument(
  state: ExportableState,
  keyFileOf: (mac: string) => string,
): Record<string, unknown> {
  const doc: Record<string, unknown> = { interface: state.interface }
  if (state.address !== undefined) doc.address = state.address
  if (state.stateDir !== undefined) doc.stateDir = state.stateDir
  if (state.insecurePlaintext === true) doc.insecurePlaintext = true
  if (state.metrics !== undefined) doc.metrics = state.metrics
  if (state.iocores !== undefined) doc.iocores = state.iocores
  if (state.budgets && Object.keys(state.budgets).length > 0) doc.budgets = state.budgets
  doc.guests = state.guests.map((g) => ({
    mac: g.mac,
    address: g.address,
    keyFile: keyFileOf(g.mac),
    ...(g.name !== undefined && { name: g.name }),
    ...(g.budgets && Object.keys(g.budgets).length > 0 && { budgets: g.budgets }),
  }))
  // Encryption included: a disk re-declared without it would serve its ciphertext.
  doc.disks = state.disks.map(({ readOnly, ...d }) => ({ ...d, ...(readOnly && { readOnly: true }) }))
  if (state.nics && state.nics.length > 0) doc.nics = state.nics
  return doc
}

/** Writes the key files and returns the config document that refers to them. */
export function exportConfig(state: ExportableState, options: ExportOptions): ExportResult {
  const keyDir = resolve(options.keyDir)
  mkdirSync(keyDir, { recursive: true, mode: 0o700 })
  const base = options.configPath === undefined ? undefined : dirname(resolve(options.configPath))
  const keyFiles: string[] = []
  const refs = new Map<string, string>()
  for (const g of state.guests) {
    if (!/^[0-9a-f]{64}$/i.test(g.key))
      throw new VrioError('invalid-argument', `guest ${g.mac}: the exported key is malformed`)
    const path = join(keyDir, keyFileName(g.mac))
    const key = Buffer.from(g.key, 'hex')
    try {
      if (!sameKey(path, key)) writeKeyFile(path, key, { force: options.force })
    } finally {
      key.fill(0)
    }
    keyFiles.push(path)
    refs.set(g.mac, base === undefined ? path : relativeRef(base, path))
  }
  const doc = new YAML.Document(buildConfigDocument(state, (mac) => refs.get(mac)!))
  doc.commentBefore =
    ' vrio iohyp config, exported from the live state. Keys are in the key files it names, never inline.'
  return { text: doc.toString(), keyFiles }
}

/** True when `path` already holds `key`; false when it does not exist (a different key: see writeKeyFile). */
function sameKey(path: string, key: Buffer): boolean {
  try {
    const current = readKeyFile(path)
    const same = current.equals(key)
    current.fill(0)
    return same
  } catch (error) {
    if (isVrioError(error, 'key-file-missing')) return false
    // Unreadable or not a key: writeKeyFile refuses it unless forced, with its own message.
    return false
  }
}

function relativeRef(base: string, path: string): string {
  const r = relative(base, path)
  return r.startsWith('..') ? r : `./${r}`
}
