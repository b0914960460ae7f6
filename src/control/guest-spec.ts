/**
 * A guest as the IOhyp enrols it: one zod schema for the control API (`POST /v1/guests`), the
 * IOhyp's state file and, with a key file in place of the key, the config file (config/schema.ts).
 * Failures are VrioError('invalid-argument') naming the field (`budgets.reassemblyBytes`); the key is
 * a secret, so no message ever quotes it.
 */
import * as z from 'zod'
import { checkWithSchema, ipv4Schema, macSchema, specError } from '../devices/fields.ts'

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

const KEY_HEX_RE = /^[0-9a-f]{64}$/i
const KEY_RULE = 'expected exactly 64 hex characters (a 32-byte key)'

/** The channel key as 64 hex digits, returned lowercase; its messages never show the value. */
const keyHexSchema = z
  .string({ error: KEY_RULE })
  .regex(KEY_HEX_RE, { error: KEY_RULE })
  .transform((key) => key.toLowerCase())

/** An enrolled guest: the API's request, and what the state file keeps of it. */
export const guestSpecSchema = z.strictObject({
  /** Unicast MAC; any case, `:` or `-` separated. The daemon answers with the canonical form. */
  mac: macSchema,
  /** Unicast IPv4 address of the guest's end of the channel. */
  address: ipv4Schema,
  /**
   * The guest's 32-byte channel key as 64 hex characters. It travels only over the control
   * socket (mode 0600); daemons must never log it or echo it back.
   */
  key: keyHexSchema,
  /** The guest's budgets; the IOhyp's defaults for those not given. */
  budgets: budgetsSchema.optional(),
})

function parse<S extends z.ZodType>(schema: S, value: unknown, at = ''): z.output<S> {
  const r = checkWithSchema(schema, value, at)
  if (!r.ok) throw specError(r.issues)
  return r.data
}

/** Returns the canonical `aa:bb:cc:dd:ee:ff` form of a unicast MAC (`field` names it in errors). */
export function parseGuestMac(value: unknown, field = 'mac'): string {
  return parse(macSchema, value, field)
}

/** Returns the canonical dotted-quad form of a unicast IPv4 address. */
export function parseGuestAddress(value: unknown, field = 'address'): string {
  return parse(ipv4Schema, value, field)
}

/** Returns the key as lowercase hex. */
export function parseKeyHex(value: unknown, field = 'key'): string {
  return parse(keyHexSchema, value, field)
}

/** Validates a POST /v1/guests body and returns it in canonical form. */
export function parseAddGuestRequest(body: unknown): z.output<typeof guestSpecSchema> {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw specError([{ path: 'body', message: 'expected a JSON object with mac, address and key' }])
  return parse(guestSpecSchema, body)
}
