/**
 * LUKS key derivation and anti-forensic splitting: PBKDF2 (node:crypto, on the libuv pool),
 * Argon2i/Argon2id (@node-rs/argon2: native, raw output, lanes on threads, off the event loop),
 * and the AF split/merge with its hash diffusion (LUKS1 spec, section 2.4; LUKS2 reuses it).
 */
import { hashRaw } from '@node-rs/argon2'
import { createHash, getHashes, pbkdf2, randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import { VrioError } from '../../errors.ts'

const pbkdf2Async = promisify(pbkdf2)

/** The hashes LUKS headers may name that vrio accepts (cryptsetup's common ones). */
const LUKS_HASHES = ['sha1', 'sha224', 'sha256', 'sha384', 'sha512'] as const

/** Normalises a header's hash name, or throws a VrioError naming it. */
export function checkHash(name: string): string {
  const lower = name.toLowerCase()
  if (!(LUKS_HASHES as readonly string[]).includes(lower) || !getHashes().includes(lower))
    throw new VrioError(
      'unsupported-hash',
      `hash ${JSON.stringify(name)} is not supported (${LUKS_HASHES.join(', ')})`,
      {
        hash: name,
      },
    )
  return lower
}

export function hashLength(hash: string): number {
  return createHash(hash).digest().length
}

export type KdfParams =
  | { type: 'pbkdf2'; hash: string; iterations: number; salt: Uint8Array }
  | { type: 'argon2i' | 'argon2id'; time: number; memoryKiB: number; parallelism: number; salt: Uint8Array }

/** Limits on header-supplied KDF costs, so a hostile header cannot make vrio spin or swap forever. */
const KDF_LIMITS = {
  // cryptsetup calibrates to ~2 s: a few million iterations on fast CPUs. A hostile header cannot
  // ask for hours (it runs on the libuv pool either way, never on the event loop).
  pbkdf2MaxIterations: 100_000_000,
  argon2MaxMemoryKiB: 4 * 1024 * 1024, // cryptsetup's own maximum
  argon2MaxTime: 2 ** 16,
  argon2MaxParallelism: 16,
}

/** Derives `length` bytes from `secret` as the header says. */
export async function deriveKey(secret: Uint8Array, params: KdfParams, length: number): Promise<Buffer> {
  if (params.type === 'pbkdf2') {
    const { iterations } = params
    if (!Number.isSafeInteger(iterations) || iterations < 1 || iterations > KDF_LIMITS.pbkdf2MaxIterations)
      throw new VrioError('bad-header', `PBKDF2 iteration count ${iterations} is out of range`)
    return pbkdf2Async(secret, params.salt, iterations, length, checkHash(params.hash))
  }
  const { time, memoryKiB, parallelism } = params
  if (
    !Number.isSafeInteger(time) ||
    time < 1 ||
    time > KDF_LIMITS.argon2MaxTime ||
    !Number.isSafeInteger(memoryKiB) ||
    memoryKiB < 8 * parallelism ||
    memoryKiB > KDF_LIMITS.argon2MaxMemoryKiB ||
    !Number.isSafeInteger(parallelism) ||
    parallelism < 1 ||
    parallelism > KDF_LIMITS.argon2MaxParallelism
  )
    throw new VrioError(
      'bad-header',
      `${params.type} parameters out of range (time ${time}, memory ${memoryKiB} KiB, parallelism ${parallelism})`,
    )
  if (params.salt.length < 8) throw new VrioError('bad-header', `${params.type} salt is shorter than 8 bytes`)
  return hashRaw(secret, {
    algorithm: params.type === 'argon2i' ? 1 : 2, // @node-rs/argon2's Algorithm.Argon2i / Argon2id
    timeCost: time,
    memoryCost: memoryKiB,
    parallelism,
    outputLen: length,
    salt: params.salt,
  })
}

/** The LUKS AF diffusion: each hash-sized piece i becomes H(be32(i) || piece), cut to the piece's length. */
function diffuse(block: Uint8Array, hash: string): void {
  const size = hashLength(hash)
  const counter = Buffer.alloc(4)
  for (let i = 0, pos = 0; pos < block.length; i++, pos += size) {
    const piece = block.subarray(pos, Math.min(pos + size, block.length))
    counter.writeUInt32BE(i, 0)
    const digest = createHash(hash).update(counter).update(piece).digest()
    piece.set(digest.subarray(0, piece.length))
  }
}

/** Recovers the key from `stripes` AF stripes of `keyBytes` each (LUKS AF-merge). */
export function afMerge(material: Uint8Array, keyBytes: number, stripes: number, hash: string): Buffer {
  const h = checkHash(hash)
  if (material.length < keyBytes * stripes)
    throw new VrioError('bad-header', 'key material is shorter than its stripes')
  const d = Buffer.alloc(keyBytes)
  for (let i = 0; i < stripes - 1; i++) {
    const stripe = material.subarray(i * keyBytes, (i + 1) * keyBytes)
    for (let j = 0; j < keyBytes; j++) d[j] ^= stripe[j]
    diffuse(d, h)
  }
  const last = material.subarray((stripes - 1) * keyBytes, stripes * keyBytes)
  for (let j = 0; j < keyBytes; j++) d[j] ^= last[j]
  return d
}

/** Splits `key` into `stripes` stripes (random but the last), the inverse of afMerge. */
export function afSplit(key: Uint8Array, stripes: number, hash: string): Buffer {
  const h = checkHash(hash)
  const n = key.length
  const out = randomBytes(n * stripes)
  const d = Buffer.alloc(n)
  for (let i = 0; i < stripes - 1; i++) {
    const stripe = out.subarray(i * n, (i + 1) * n)
    for (let j = 0; j < n; j++) d[j] ^= stripe[j]
    diffuse(d, h)
  }
  const last = out.subarray((stripes - 1) * n)
  for (let j = 0; j < n; j++) last[j] = d[j] ^ key[j]
  d.fill(0)
  return out
}
