/**
 * Validation of control API inputs, shared by the CLI (to fail early with a message naming the
 * bad value) and the daemons (which must not trust a request body). Every failure is a
 * VrioError('invalid-argument') whose `field` detail names the offending field.
 */
import { VrioError } from '../errors.ts'
import { formatIPv4, formatMac, isGroupMac, parseIPv4, parseMac } from '../wire/address.ts'
import { budgetsSchema } from '../config/schema.ts'
import type { AddGuestRequest } from './api.ts'

const KEY_HEX_RE = /^[0-9a-f]{64}$/i

// JSON.stringify quotes the value and escapes newlines, so a hostile value cannot break the
// one-line error message.
const show = (value: unknown): string => (typeof value === 'string' ? JSON.stringify(value) : String(value))

function invalid(field: string, message: string): VrioError {
  return new VrioError('invalid-argument', message, { field })
}

/** Returns the canonical `aa:bb:cc:dd:ee:ff` form of a unicast MAC. */
export function parseGuestMac(value: unknown, field = 'mac'): string {
  const mac = typeof value === 'string' ? parseMac(value) : undefined
  if (mac === undefined)
    throw invalid(field, `invalid MAC address ${show(value)}: expected six hex pairs like 52:54:00:12:34:56`)
  if (mac === 0)
    throw invalid(field, `invalid MAC address ${show(value)}: the all-zero MAC is not an address`)
  if (isGroupMac(mac))
    throw invalid(
      field,
      `invalid MAC address ${show(value)}: it is a multicast/broadcast MAC; a guest needs a unicast one`,
    )
  return formatMac(mac)
}

/** Returns the canonical dotted-quad form of a unicast IPv4 address. */
export function parseGuestAddress(value: unknown, field = 'address'): string {
  const ip = typeof value === 'string' ? parseIPv4(value) : undefined
  if (ip === undefined)
    throw invalid(field, `invalid IPv4 address ${show(value)}: expected a dotted quad like 10.0.0.2`)
  const first = ip >>> 24
  if (ip === 0 || ip === 0xffff_ffff || first === 127 || first >= 224)
    throw invalid(
      field,
      `invalid IPv4 address ${show(value)}: a guest needs a unicast address (not 0.0.0.0, loopback, multicast or broadcast)`,
    )
  return formatIPv4(ip)
}

/** Returns the key as lowercase hex. Never puts the value in the message: it is a secret. */
export function parseKeyHex(value: unknown, field = 'key'): string {
  if (typeof value !== 'string' || !KEY_HEX_RE.test(value))
    throw invalid(field, `invalid ${field}: expected exactly 64 hex characters (a 32-byte key)`)
  return value.toLowerCase()
}

/** Validates a POST /v1/guests body and returns it in canonical form. */
export function parseAddGuestRequest(body: unknown): AddGuestRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw invalid('body', 'expected a JSON object with mac, address and key')
  const b = body as Record<string, unknown>
  const request: AddGuestRequest = {
    mac: parseGuestMac(b.mac),
    address: parseGuestAddress(b.address),
    key: parseKeyHex(b.key),
  }
  if (b.budgets !== undefined) {
    const parsed = budgetsSchema.safeParse(b.budgets)
    if (!parsed.success) {
      const issue = parsed.error.issues[0]
      const at = issue?.path.length ? `budgets.${issue.path.join('.')}` : 'budgets'
      throw invalid(
        at,
        `invalid ${at}: ${issue?.message ?? 'expected {pendingReplyBytes?, reassemblyBytes?}'}`,
      )
    }
    request.budgets = parsed.data
  }
  return request
}
