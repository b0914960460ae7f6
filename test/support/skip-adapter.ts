/**
 * The one place tests reach into a Connection's private members to emit Skip segments as the
 * transport itself would (its own `sendSkip`, so whatever the connection adds to every segment it
 * emits — sealing included — is applied). Adapt only this function when Connection's internals
 * change.
 */
import { Delivery } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'

/** The members of Connection this adapter uses (private there: reached with a cast). */
interface ConnectionSkipInternals {
  /** Sender position just past every queued message. */
  sndMax: number
  sendSkip(
    position: number,
    m: { start: number; end: number; flags: number; chunks: readonly Uint8Array[] },
  ): void
}

/**
 * Emits one Skip segment on `c` for a best-effort message of `length` bytes that starts `offset`
 * bytes past everything `c` has queued (a message never sent: with offset > 0 the receiver is left
 * a gap before it, so each such Skip adds a separate interval and an abandoned message there).
 * The frame goes to the connection's sink like any other; the link sends it on its next flush.
 */
export function emitSkip(c: Connection, offset: number, length: number): void {
  const internals = c as unknown as ConnectionSkipInternals
  const start = internals.sndMax + offset
  internals.sendSkip(start, { start, end: start + length, flags: Delivery.BestEffort, chunks: [] })
}
