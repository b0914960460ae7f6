/**
 * TCP sequence numbers are 32-bit and wrap. Inside the transport every byte instead has a
 * *position*: its distance from the initial sequence number, a plain increasing number that never
 * wraps (2^53 bytes). Conversion happens only where a segment is read or written, always relative
 * to a nearby known position, so wrap-around never leaks into the logic.
 */

/** The sequence number of `position` for a stream whose initial sequence number is `iss`. */
export function seqOf(iss: number, position: number): number {
  return (iss + (position % 0x1_0000_0000)) >>> 0
}

/** The position of `seq`, taking the one nearest to `reference` (a position known to be close). */
export function positionOf(iss: number, seq: number, reference: number): number {
  const delta = (seq - seqOf(iss, reference)) | 0 // signed 32-bit distance
  return reference + delta
}
