import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  parseAddGuestRequest,
  parseGuestAddress,
  parseGuestMac,
  parseKeyHex,
} from '../../src/control/guest-spec.ts'
import { isVrioError } from '../../src/errors.ts'

const KEY = 'a1'.repeat(32)

function invalid(fn: () => unknown, field: string, message: RegExp): void {
  assert.throws(fn, (error) => {
    assert.ok(isVrioError(error, 'invalid-argument'), String(error))
    assert.equal(error.details.field, field)
    assert.match(error.message, message)
    return true
  })
}

describe("guest spec: the control API's and the state file's one schema", () => {
  it('canonicalises MACs and rejects malformed, zero and group ones, naming the value', () => {
    assert.equal(parseGuestMac('52-54-00-AB-cd-EF'), '52:54:00:ab:cd:ef')
    invalid(() => parseGuestMac('52:54:00:12:34'), 'mac', /^mac: '52:54:00:12:34' is not a MAC address/)
    invalid(
      () => parseGuestMac('zz:54:00:12:34:56', '--mac'),
      '--mac',
      /'zz:54:00:12:34:56' is not a MAC address/,
    )
    invalid(() => parseGuestMac('00:00:00:00:00:00'), 'mac', /all-zero/)
    invalid(() => parseGuestMac('01:00:5e:00:00:01'), 'mac', /multicast/)
    invalid(() => parseGuestMac('ff:ff:ff:ff:ff:ff'), 'mac', /broadcast/)
    invalid(() => parseGuestMac(42), 'mac', /expected a string, got a whole number/)
    invalid(() => parseGuestMac('a\nb'), 'mac', /'a\\nb'/)
  })

  it('canonicalises unicast IPv4 addresses and rejects the rest, naming the value', () => {
    assert.equal(parseGuestAddress(' 10.0.0.2 '), '10.0.0.2')
    invalid(() => parseGuestAddress('10.0.0.256'), 'address', /'10.0.0.256' is not an IPv4 address/)
    invalid(() => parseGuestAddress('10.0.0'), 'address', /'10.0.0'/)
    for (const bad of ['0.0.0.0', '255.255.255.255', '127.0.0.1', '224.0.0.1'])
      invalid(() => parseGuestAddress(bad), 'address', /unicast/)
  })

  it('accepts a 64-hex-character key and never echoes a bad one', () => {
    assert.equal(parseKeyHex(KEY.toUpperCase()), KEY)
    invalid(() => parseKeyHex('abc123secret'), 'key', /^key: expected exactly 64 hex characters/)
    assert.throws(
      () => parseKeyHex(`${KEY.slice(0, 62)}zz`),
      (e: Error) => !e.message.includes('a1a1'),
    )
  })

  it('parses a whole AddGuestRequest', () => {
    assert.deepEqual(parseAddGuestRequest({ mac: '52:54:00:12:34:56', address: '10.0.0.2', key: KEY }), {
      mac: '52:54:00:12:34:56',
      address: '10.0.0.2',
      key: KEY,
    })
    invalid(() => parseAddGuestRequest(null), 'body', /JSON object/)
    invalid(() => parseAddGuestRequest([]), 'body', /JSON object/)
    invalid(() => parseAddGuestRequest({ mac: '52:54:00:12:34:56', address: '10.0.0.2' }), 'key', /64 hex/)
    const guest = { mac: '52:54:00:12:34:56', address: '10.0.0.2', key: KEY }
    assert.deepEqual(parseAddGuestRequest({ ...guest, budgets: { pendingReplyBytes: 1 << 20 } }).budgets, {
      pendingReplyBytes: 1 << 20,
    })
    invalid(
      () => parseAddGuestRequest({ ...guest, budgets: { reassemblyBytes: 10 } }),
      'budgets.reassemblyBytes',
      /budgets\.reassemblyBytes/,
    )
    invalid(() => parseAddGuestRequest({ ...guest, budgets: { typo: 1 } }), 'budgets.typo', /unknown key/)
    invalid(
      () => parseAddGuestRequest({ ...guest, budgets: { pendingReplyBytes: -1 } }),
      'budgets.pendingReplyBytes',
      /budgets/,
    )
  })
})
