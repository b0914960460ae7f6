/** mulberry32: a tiny seeded PRNG, so every simulated fault sequence replays from its seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Deterministic message content: byte i of message `id` of `length` bytes. Checkable without storing it. */
export function patternMessage(id: number, length: number): Uint8Array {
  const m = new Uint8Array(length)
  let x = (id * 2654435761) >>> 0
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    m[i] = x >>> 24
  }
  if (length >= 4) {
    m[0] = id >>> 24
    m[1] = (id >>> 16) & 0xff
    m[2] = (id >>> 8) & 0xff
    m[3] = id & 0xff
  }
  return m
}

export function messageId(m: Uint8Array): number {
  return ((m[0] << 24) | (m[1] << 16) | (m[2] << 8) | m[3]) >>> 0
}
