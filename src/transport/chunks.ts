/** A message given as chunks (a header, then a body): copying parts of their concatenation. */

/** Copies `length` bytes starting `offset` bytes into the concatenation of `chunks` to `dst[at]`. */
export function copyChunks(
  chunks: readonly Uint8Array[],
  offset: number,
  dst: Uint8Array,
  at: number,
  length: number,
): void {
  let skip = offset
  let i = 0
  while (skip >= chunks[i].length) skip -= chunks[i++].length
  let remaining = length
  let p = at
  while (remaining > 0) {
    const c = chunks[i++]
    const n = Math.min(c.length - skip, remaining)
    dst.set(n === c.length ? c : c.subarray(skip, skip + n), p)
    p += n
    remaining -= n
    skip = 0
  }
}

/** The chunks' bytes in one new buffer. */
export function concatChunks(chunks: readonly Uint8Array[], length: number): Uint8Array {
  const out = Buffer.allocUnsafe(length)
  copyChunks(chunks, 0, out, 0, length)
  return out
}
