/**
 * A NIC's spec: the one schema for what a NIC is made of, used by the config file (`nics:`), the
 * control API (`POST /v1/nic`) and the state file. The two uses differ only where their inputs do:
 * the config names each NIC and may give rules files relative to itself; the API may leave the
 * name to the IOhyp and takes absolute paths (the CLI resolves them).
 */
import * as z from 'zod'
import {
  absolutePathSchema,
  checkWithSchema,
  handleSchema,
  ifnameSchema,
  ipv4PrefixSchema,
  macSchema,
  pathSchema,
  specError,
  textSchema,
} from '../fields.ts'

const DEFAULT_NIC_MTU = 1500

const has = (v: unknown, key: string) =>
  typeof v === 'object' && v !== null && (v as Record<string, unknown>)[key] !== undefined

function nicShape<N extends z.ZodType, P extends z.ZodType>(name: N, file: P) {
  return {
    /** The NIC's name, which is also the interface name in the guest. */
    name,
    /** The guest's MAC, IPv4 address or (config) name. */
    guest: textSchema,
    /** The MAC of the guest's virtual NIC. */
    mac: macSchema,
    /** TAP device on the IOhyp carrying the NIC's traffic (exactly one of tap and macvtap). */
    tap: ifnameSchema.optional(),
    /** Bridge the TAP device joins (only with tap). */
    bridge: ifnameSchema.optional(),
    /** Lower device of a macvtap carrying the NIC's traffic (exactly one of tap and macvtap). */
    macvtap: ifnameSchema.optional(),
    mtu: z.int().min(68).max(65535).optional(),
    /** Firewall and DPI rules files for this NIC (their formats are the services'). */
    firewall: file.optional(),
    dpi: file.optional(),
    /**
     * IPv4 sources the guest may use on this NIC (`a.b.c.d` or `a.b.c.d/n`): other IPv4 and ARP
     * senders are dropped. The Ethernet source must be `mac` in any case, unless allowSpoofing.
     */
    ip: ipv4PrefixSchema.optional(),
    /** No source enforcement on this NIC (excludes ip). */
    allowSpoofing: z.boolean().optional(),
  }
}

// Checked even when a field is bad, so one report holds every problem of an entry.
const NIC_CHECKS = [
  z.refine((v) => has(v, 'tap') !== has(v, 'macvtap'), {
    path: ['tap'],
    when: () => true,
    error: (issue) =>
      `exactly one of tap and macvtap is needed (${has(issue.input, 'tap') ? 'got both' : 'got neither'})`,
  }),
  z.refine((v) => !has(v, 'bridge') || has(v, 'tap'), {
    path: ['bridge'],
    when: () => true,
    error: 'a bridge is only for a tap NIC',
  }),
  z.refine((v) => !(has(v, 'ip') && (v as { allowSpoofing?: unknown }).allowSpoofing === true), {
    path: ['ip'],
    when: () => true,
    error: 'ip (source enforcement) and allowSpoofing exclude each other',
  }),
]

/** A NIC in a config file: named, rules files relative to the file allowed. */
export const nicEntrySchema = z.strictObject(nicShape(ifnameSchema, pathSchema)).check(...NIC_CHECKS)
/** A NIC as the control API takes it: the name optional, rules files absolute. */
export const nicRequestSchema = z
  .strictObject(nicShape(ifnameSchema.optional(), absolutePathSchema))
  .check(...NIC_CHECKS)
/** A NIC in the IOhyp's state file: as created, with its handle. */
export const nicStateSchema = z
  .strictObject({
    ...nicShape(ifnameSchema, absolutePathSchema),
    mtu: z.int().min(68).max(65535),
    handle: handleSchema,
  })
  .check(...NIC_CHECKS)

export type NicRequest = z.output<typeof nicRequestSchema>

/**
 * Checks a NIC request (a `POST /v1/nic` body, or a config NIC as the IOhyp applies it); throws
 * VrioError('invalid-argument') whose `field` is the first bad field and whose message names all.
 */
export function parseNicRequest(body: unknown): NicRequest & { mtu: number; allowSpoofing: boolean } {
  const r = checkWithSchema(nicRequestSchema, body ?? {})
  if (!r.ok) throw specError(r.issues)
  return { ...r.data, mtu: r.data.mtu ?? DEFAULT_NIC_MTU, allowSpoofing: r.data.allowSpoofing === true }
}
