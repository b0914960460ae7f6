/**
 * The shapes of the daemons' config files, as zod schemas. Every object is strict: an unknown key
 * (a typo such as `readonly` for `readOnly`) is refused, never ignored. These schemas check one
 * value at a time (types, MAC and IPv4 syntax, ranges); what needs the whole document (duplicates,
 * references between guests and devices) and the file system (key files, backing files) is checked
 * by load.ts.
 */
import * as z from 'zod'
import {
  deviceNameSchema as deviceName,
  ifnameSchema as ifname,
  ipv4Schema,
  pathSchema as path,
} from '../devices/fields.ts'
import { parseListenAddress } from '../daemon/listen-address.ts'
import { budgetsSchema, guestSpecSchema } from '../control/guest-spec.ts'

export { ipv4Schema, show } from '../devices/fields.ts'

/** A guest in the config file: the enrolled guest's spec, with its key in a file. */
export const guestEntrySchema = guestSpecSchema.omit({ key: true }).extend({
  /** The guest's channel key (from `vrio keygen`); read and checked at load. */
  keyFile: path,
  /** A name devices may use to refer to the guest instead of its MAC or address. */
  name: deviceName.optional(),
})

export { diskEntrySchema } from '../devices/blk/spec.ts'
export { nicEntrySchema } from '../devices/net/spec.ts'

/** `ADDR:PORT` of the metrics listener (`--metrics`). */
const listenAddressSchema = z.string().refine(
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

/** Default of `--poll-idle-us`: µs without a frame before a polling thread sleeps again. */
export const DEFAULT_POLL_IDLE_US = 50

/** µs a polling thread waits for work before it sleeps (`--poll-idle-us`). */
export const pollIdleUsSchema = z
  .int({ error: 'must be a whole number of microseconds' })
  .min(1, { error: 'must be at least 1 µs' })
  .max(1_000_000, { error: 'must be at most 1000000 µs (1 s)' })

/**
 * The CPUs a daemon's threads run on (`--cpus`), as taskset writes them: `0`, `0-3`, `0,2,5-7`.
 * Parsed into the sorted, distinct CPU numbers; whether they exist is checked at start.
 */
export const cpuListSchema = z
  .string()
  .regex(/^\d+(-\d+)?(,\d+(-\d+)?)*$/, { error: 'must be a CPU list such as 0, 0-3 or 0,2,5-7' })
  .transform((list, ctx) => {
    const cpus = new Set<number>()
    for (const part of list.split(',')) {
      const [a, b = a] = part.split('-').map(Number)
      if (b < a || b > 1023) {
        ctx.addIssue({ code: 'custom', message: `'${part}' is not a range of CPUs 0-1023` })
        return z.NEVER
      }
      for (let cpu = a; cpu <= b; cpu++) cpus.add(cpu)
    }
    return [...cpus].sort((x, y) => x - y)
  })

/**
 * Polling, for both daemons: `poll` (`--poll`, `--no-poll`) and `pollIdleUs` (`--poll-idle-us`),
 * how long. The IOhyp: true polls, unset or false does not. The guest agent: true polls after
 * every frame, false never, unset (the default) while its disks have calls outstanding.
 */
const pollKeys = {
  /** Poll the packet socket instead of sleeping until pollIdleUs pass without work (see above). */
  poll: z.boolean().optional(),
  /** µs without work before a polling thread sleeps (default DEFAULT_POLL_IDLE_US); needs polling on. */
  pollIdleUs: pollIdleUsSchema.optional(),
}

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
  /** Worker threads running the guests' data path (`--iocores`; default: cores − 1, at least 1). */
  iocores: z.int().min(1).max(64).optional(),
  ...pollKeys,
  /** The CPUs its threads run on (`--cpus`; default: all the process may use). */
  cpus: cpuListSchema.optional(),
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
  ...pollKeys,
  /** The CPUs its threads run on (`--cpus`; default: all the process may use). */
  cpus: cpuListSchema.optional(),
})
