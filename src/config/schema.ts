/**
 * The shapes of the daemons' config files, as zod schemas. Every object is strict: an unknown key
 * (a typo such as `readonly` for `readOnly`) is refused, never ignored. These schemas check one
 * value at a time (types, MAC and IPv4 syntax, ranges); what needs the whole document (duplicates,
 * references between guests and devices) and the file system (key files, backing files) is checked
 * by load.ts.
 */
import * as z from 'zod'
import { formatIPv4Prefix, parseIPv4Prefix } from '../devices/net/source-guard.ts'
import { formatIPv4, formatMac, isGroupMac, parseIPv4, parseMac } from '../wire/address.ts'
import { parseListenAddress } from '../daemon/listen-address.ts'

/** Disk and NIC names: what `vrio blk create --name` accepts. */
export const DEVICE_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/
/** A Linux interface name: 1-15 bytes, no '/', ':' or white space. */
const IFNAME_RE = /^[^\s/:]{1,15}$/

/** A value quoted for an error message, on one line whatever it holds. */
export function show(value: unknown): string {
  if (typeof value !== 'string') return JSON.stringify(value) ?? String(value)
  return `'${JSON.stringify(value).slice(1, -1).replace(/'/g, "\\'")}'`
}

const text = z.string().min(1, { error: 'must not be empty' })
const path = text

/** A unicast MAC, returned in canonical `aa:bb:cc:dd:ee:ff` form. */
export const macSchema = z.string().transform((value, ctx) => {
  const mac = parseMac(value)
  if (mac === undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `${show(value)} is not a MAC address (six hex pairs like 52:54:00:12:34:56)`,
    })
    return z.NEVER
  }
  if (mac === 0 || isGroupMac(mac)) {
    ctx.addIssue({
      code: 'custom',
      message: `${show(value)} is not a unicast MAC address (all-zero, multicast or broadcast)`,
    })
    return z.NEVER
  }
  return formatMac(mac)
})

/** A unicast IPv4 address, returned as a canonical dotted quad. */
export const ipv4Schema = z.string().transform((value, ctx) => {
  const ip = parseIPv4(value)
  if (ip === undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `${show(value)} is not an IPv4 address (a dotted quad like 10.0.0.2)`,
    })
    return z.NEVER
  }
  const first = ip >>> 24
  if (ip === 0 || ip === 0xffff_ffff || first === 127 || first >= 224) {
    ctx.addIssue({
      code: 'custom',
      message: `${show(value)} is not a unicast address (not 0.0.0.0, loopback, multicast or broadcast)`,
    })
    return z.NEVER
  }
  return formatIPv4(ip)
})

/** `a.b.c.d` or `a.b.c.d/n`, returned canonical (no `/32`). */
export const ipv4PrefixSchema = z.string().transform((value, ctx) => {
  const p = parseIPv4Prefix(value)
  if (p === undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `${show(value)} is not an IPv4 address or prefix (like 10.0.0.5 or 10.0.0.0/29)`,
    })
    return z.NEVER
  }
  return formatIPv4Prefix(p)
})

const deviceName = z.string().regex(DEVICE_NAME_RE, {
  error: (issue) => `${show(issue.input)} is not a valid name (1-64 letters, digits, '.', '-' or '_')`,
})

const ifname = z.string().regex(IFNAME_RE, {
  error: (issue) => `${show(issue.input)} is not an interface name (1-15 characters, no '/', ':' or spaces)`,
})

/**
 * Per-guest memory budgets of the IOhyp, in bytes (docs/operations.md, "Budgets"): read replies
 * held for a guest (running reads and replies waiting for its window) and its partly received and
 * out-of-order messages. The limits mirror src/devices/blk/backend.ts and src/transport/config.ts.
 */
export const budgetsSchema = z.strictObject({
  pendingReplyBytes: z
    .int()
    .min(64 * 1024)
    .max(64 * 1024 ** 3)
    .optional(),
  reassemblyBytes: z
    .int()
    .min(4 * 1024 * 1024, { error: 'must be at least 4194304 (the largest message)' })
    .max(4 * 1024 ** 3)
    .optional(),
})

export const guestEntrySchema = z.strictObject({
  mac: macSchema,
  address: ipv4Schema,
  /** The guest's channel key (from `vrio keygen`); read and checked at load. */
  keyFile: path,
  /** A name devices may use to refer to the guest instead of its MAC or address. */
  name: deviceName.optional(),
  /** This guest's budgets, over the file's top-level `budgets`. */
  budgets: budgetsSchema.optional(),
})

/**
 * Block encryption of a disk on the IOhyp. `plain`: dm-crypt plain mode with a raw key file;
 * `luks`: a LUKS volume opened with either a passphrase file or a key file (exactly one).
 */
export const encryptSchema = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('plain'),
    cipher: z.literal('aes-xts-plain64'),
    keyFile: path,
    sectorSize: z.literal([512, 4096]).optional(),
  }),
  z.strictObject({
    kind: z.literal('luks'),
    passphraseFile: path.optional(),
    keyFile: path.optional(),
  }),
])

export const diskEntrySchema = z.strictObject({
  name: deviceName,
  /** The guest's MAC, IPv4 address or name (from `guests`). */
  guest: text,
  /** A raw image file or a block device on the IOhyp. */
  backing: path,
  readOnly: z.boolean().optional(),
  encrypt: encryptSchema.optional(),
})

export const nicEntrySchema = z.strictObject({
  /** The NIC's name, which is also the interface name in the guest. */
  name: ifname,
  /** The guest's MAC, IPv4 address or name (from `guests`). */
  guest: text,
  /** The MAC of the guest's virtual NIC. */
  mac: macSchema,
  /** TAP device on the IOhyp carrying the NIC's traffic (exactly one of tap and macvtap). */
  tap: ifname.optional(),
  /** Bridge the TAP device joins (only with tap). */
  bridge: ifname.optional(),
  /** Lower device of a macvtap carrying the NIC's traffic (exactly one of tap and macvtap). */
  macvtap: ifname.optional(),
  mtu: z.int().min(68).max(65535).optional(),
  /** Firewall rules file for this NIC (its format is the firewall service's). */
  firewall: path.optional(),
  /** DPI rules file for this NIC (its format is the DPI service's). */
  dpi: path.optional(),
  /**
   * IPv4 sources the guest may use on this NIC (`a.b.c.d` or `a.b.c.d/n`): other IPv4 and ARP
   * senders are dropped. The Ethernet source must be `mac` in any case, unless allowSpoofing.
   */
  ip: ipv4PrefixSchema.optional(),
  /** No source enforcement on this NIC (excludes ip). */
  allowSpoofing: z.boolean().optional(),
})

/** `ADDR:PORT` of the metrics listener (`--metrics`). */
export const listenAddressSchema = z.string().refine(
  (value) => {
    try {
      parseListenAddress(value)
      return true
    } catch {
      return false
    }
  },
  { error: 'must be ADDR:PORT, e.g. 127.0.0.1:9860' },
)

/** Top level of the IOhyp's file; list entries are parsed one by one (see load.ts). */
export const iohypTopSchema = z.strictObject({
  interface: ifname,
  address: ipv4Schema.optional(),
  stateDir: path.optional(),
  control: path.optional(),
  /** Unsealed channel (protocol version 1), for a segment the operator alone owns; guests must agree. */
  insecurePlaintext: z.boolean().optional(),
  /** Serve Prometheus metrics on this `ADDR:PORT` too (always on the control socket). */
  metrics: listenAddressSchema.optional(),
  /** Budgets of every guest that does not set its own. */
  budgets: budgetsSchema.optional(),
  guests: z.array(z.unknown()).optional(),
  disks: z.array(z.unknown()).optional(),
  nics: z.array(z.unknown()).optional(),
})

export const guestFileSchema = z.strictObject({
  interface: ifname,
  address: ipv4Schema.optional(),
  keyFile: path,
  runDir: path.optional(),
  control: path.optional(),
  attach: z.boolean().optional(),
  /** Unsealed channel (protocol version 1); the IOhyp must agree. */
  insecurePlaintext: z.boolean().optional(),
  /** Serve Prometheus metrics on this `ADDR:PORT` too (always on the control socket). */
  metrics: listenAddressSchema.optional(),
  /** Seconds; a disk request unanswered this long fails with EIO. */
  ioTimeout: z.number().gt(0).max(86_400).optional(),
  /**
   * The IOhyp's IPv4 address: connections from any other address are refused. Unset: the first
   * IOhyp that authenticates is remembered (in the run dir) and only it is accepted afterwards.
   */
  iohyp: ipv4Schema.optional(),
})

export type EncryptConfig = z.output<typeof encryptSchema>
export type BudgetsConfig = z.output<typeof budgetsSchema>
