/**
 * The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of 16-bit
 * big-endian words. Sums are kept unfolded in a JS number (safe far beyond any frame size) and
 * folded once at the end.
 */

/** Adds the bytes of `buf[start, end)` as big-endian 16-bit words to `sum`. An odd tail byte is padded with zero. */
export function sumWords(buf: Uint8Array, start: number, end: number, sum = 0): number {
  let i = start
  const evenEnd = end - ((end - start) & 1)
  // Unrolled by four words: the loop body is the hot path of every frame we build or verify.
  const fastEnd = evenEnd - ((evenEnd - i) % 8)
  for (; i < fastEnd; i += 8) {
    sum += ((buf[i] << 8) | buf[i + 1]) + ((buf[i + 2] << 8) | buf[i + 3])
    sum += ((buf[i + 4] << 8) | buf[i + 5]) + ((buf[i + 6] << 8) | buf[i + 7])
  }
  for (; i < evenEnd; i += 2) sum += (buf[i] << 8) | buf[i + 1]
  if (evenEnd < end) sum += buf[evenEnd] << 8
  return sum
}

/** Folds a running sum to 16 bits (end-around carry), without complementing. */
export function foldSum(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000)
  return sum
}

/** The checksum field value for a running sum: folded and complemented. */
export function finishChecksum(sum: number): number {
  return ~foldSum(sum) & 0xffff
}

/** Sum of the IPv4 pseudo-header used by TCP and UDP checksums. */
export function pseudoHeaderSum(src: number, dst: number, protocol: number, length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + length
}
