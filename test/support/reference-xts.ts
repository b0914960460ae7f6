/** The test oracle of the XTS ciphers (src/services/crypt/xts.ts). */
import { createCipheriv, createDecipheriv } from 'node:crypto'

/**
 * The obvious implementation: one node:crypto `aes-*-xts` cipher per sector with the tweak as
 * its IV. Slow; the reference the fast paths are tested against.
 */
export function referenceXtsCrypt(
  encrypt: boolean,
  key: Uint8Array,
  src: Uint8Array,
  firstTweak: number,
  sectorSize: number,
  tweakStep: number,
): Uint8Array {
  const algorithm = key.length === 32 ? 'aes-128-xts' : 'aes-256-xts'
  const out = new Uint8Array(src.length)
  const iv = Buffer.alloc(16)
  for (let s = 0; s * sectorSize < src.length; s++) {
    iv.writeBigUInt64LE(BigInt(firstTweak + s * tweakStep), 0)
    const c = encrypt ? createCipheriv(algorithm, key, iv) : createDecipheriv(algorithm, key, iv)
    out.set(c.update(src.subarray(s * sectorSize, (s + 1) * sectorSize)), s * sectorSize)
    c.final()
  }
  return out
}
