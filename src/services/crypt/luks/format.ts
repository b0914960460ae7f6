/** Formatting a LUKS1 or LUKS2 volume through a BlockDevice, and a summary of a header for people and JSON. */
import { randomBytes, randomUUID } from 'node:crypto'
import type { BlockDevice } from '../../../devices/blk/device.ts'
import { VrioError } from '../../../errors.ts'
import { afSplit, checkHash, deriveKey, hashLength, type KdfParams } from '../kdf.ts'
import { createXts } from '../xts.ts'
import { type LuksDigest, type LuksHeader, SUPPORTED_CIPHER, checkCipher } from './header.ts'
import { LUKS1_DIGEST_BYTES, LUKS1_SLOTS, encodeLuks1 } from './luks1.ts'
import { encodeLuks2 } from './luks2.ts'
import { payloadBytes } from './unlock.ts'

// ---------------------------------------------------------------------------------------------
// Formatting

export interface LuksFormatOptions {
  type: 'luks1' | 'luks2'
  /** The passphrase for keyslot 0 (or a key file's bytes). */
  passphrase: Uint8Array
  /** 'pbkdf2' (default for luks1, the only choice there) or 'argon2id' (default for luks2). */
  pbkdf?: 'pbkdf2' | 'argon2id'
  /** Volume key size: 64 (AES-256-XTS, default) or 32 (AES-128-XTS). */
  keyBytes?: number
  /** 512 (default) or 4096 (LUKS2 only). */
  sectorSize?: number
  hash?: string
  /** PBKDF2 iterations for the keyslot. Default 600 000 (about half a second here). */
  iterations?: number
  /** Argon2id cost. Defaults: 4 passes, 64 MiB, 1 lane (cryptsetup would take up to 1 GiB). */
  argon2?: { time?: number; memoryKiB?: number; parallelism?: number }
  label?: string
  /** The volume key to store (default: random). For tests and re-keying. */
  volumeKey?: Uint8Array
}

export interface LuksFormatResult {
  header: LuksHeader
  /** Bytes at the start of the device the header and keyslots take: the payload starts here. */
  payloadOffset: number
}

const STRIPES = 4000
const LUKS1_ALIGN_SECTORS = 2048 // 1 MiB payload alignment, as cryptsetup
export const LUKS2_HDR_SIZE = 16384
const LUKS2_KEYSLOTS_OFFSET = 2 * LUKS2_HDR_SIZE
const LUKS2_DATA_OFFSET = 16 * 1024 * 1024 // cryptsetup's default

/**
 * Writes a new LUKS volume header with one keyslot (random volume key) at the start of `device`.
 * The payload is left as it is: its old contents now read as noise.
 */
export async function formatLuks(device: BlockDevice, options: LuksFormatOptions): Promise<LuksFormatResult> {
  const keyBytes = options.keyBytes ?? 64
  const sectorSize = options.sectorSize ?? 512
  const hash = checkHash(options.hash ?? 'sha256')
  checkCipher(SUPPORTED_CIPHER, keyBytes)
  if (sectorSize !== 512 && sectorSize !== 4096)
    throw new VrioError('bad-sector-size', `sector size must be 512 or 4096, not ${sectorSize}`)
  if (options.type === 'luks1' && sectorSize !== 512)
    throw new VrioError('bad-sector-size', 'LUKS1 supports 512-byte sectors only; use --type luks2')
  const pbkdf = options.pbkdf ?? (options.type === 'luks1' ? 'pbkdf2' : 'argon2id')
  if (options.type === 'luks1' && pbkdf !== 'pbkdf2')
    throw new VrioError('bad-pbkdf', 'LUKS1 supports pbkdf2 only; use --type luks2 for argon2id')
  const volumeKey = options.volumeKey ? Buffer.from(options.volumeKey) : randomBytes(keyBytes)
  if (volumeKey.length !== keyBytes) throw new VrioError('bad-key', 'the volume key has the wrong size')
  try {
    const kdf: KdfParams =
      pbkdf === 'pbkdf2'
        ? { type: 'pbkdf2', hash, iterations: options.iterations ?? 600_000, salt: randomBytes(32) }
        : {
            type: 'argon2id',
            time: options.argon2?.time ?? 4,
            memoryKiB: options.argon2?.memoryKiB ?? 65536,
            parallelism: options.argon2?.parallelism ?? 1,
            salt: randomBytes(32),
          }
    const digestLength = options.type === 'luks1' ? LUKS1_DIGEST_BYTES : hashLength(hash)
    const digest: LuksDigest = {
      hash,
      iterations: 1000,
      salt: randomBytes(32),
      digest: new Uint8Array(0),
      keyslots: [0],
    }
    digest.digest = await deriveKey(
      volumeKey,
      { type: 'pbkdf2', hash, iterations: digest.iterations, salt: digest.salt },
      digestLength,
    )

    const materialBytes = keyBytes * STRIPES
    const uuid = randomUUID()
    let header: LuksHeader
    let headerBytes: Buffer[]
    if (options.type === 'luks1') {
      const slotSectors = roundUp(roundUp(materialBytes, 512) / 512, 8)
      const payloadOffset = roundUp(8 + LUKS1_SLOTS * slotSectors, LUKS1_ALIGN_SECTORS) * 512
      header = {
        version: 1,
        uuid,
        label: '',
        cipher: SUPPORTED_CIPHER,
        keyBytes,
        payloadOffset,
        payloadSize: 'dynamic',
        sectorSize: 512,
        ivTweak: 0,
        keyslots: [0, 1, 2, 3, 4, 5, 6, 7].map((id) => ({
          id,
          keyBytes,
          kdf,
          af: { stripes: STRIPES, hash },
          area: {
            offset: (8 + id * slotSectors) * 512,
            size: slotSectors * 512,
            cipher: SUPPORTED_CIPHER,
            keyBytes,
          },
          priority: 1,
        })),
        digests: [digest],
      }
      headerBytes = [encodeLuks1(header)]
    } else {
      const areaSize = roundUp(materialBytes, 4096)
      header = {
        version: 2,
        uuid,
        label: options.label ?? '',
        cipher: SUPPORTED_CIPHER,
        keyBytes,
        payloadOffset: LUKS2_DATA_OFFSET,
        payloadSize: 'dynamic',
        sectorSize,
        ivTweak: 0,
        keyslots: [
          {
            id: 0,
            keyBytes,
            kdf,
            af: { stripes: STRIPES, hash },
            area: { offset: LUKS2_KEYSLOTS_OFFSET, size: areaSize, cipher: SUPPORTED_CIPHER, keyBytes },
            priority: 1,
          },
        ],
        digests: [digest],
        hdrSize: LUKS2_HDR_SIZE,
        seqid: 1,
      }
      headerBytes = encodeLuks2(header)
    }
    if (device.size < header.payloadOffset)
      throw new VrioError(
        'too-small',
        `the device (${device.size} bytes) is smaller than the LUKS header area (${header.payloadOffset} bytes)`,
      )

    // Keyslot 0's material: AF-split volume key, encrypted with the passphrase-derived key.
    const slot = header.keyslots[0]
    const material = Buffer.alloc(roundUp(materialBytes, 512))
    const split = afSplit(volumeKey, STRIPES, hash)
    material.set(split)
    split.fill(0)
    const derived = await deriveKey(options.passphrase, kdf, keyBytes)
    try {
      const xts = createXts(derived)
      xts.crypt(true, material, material, 0, 512, 1)
      xts.destroy()
    } finally {
      derived.fill(0)
    }

    // Header area: zeroes over every keyslot area first (old key material must not survive).
    const clear = Buffer.alloc(header.payloadOffset)
    let at = 0
    for (const part of headerBytes) {
      clear.set(part, at)
      at += part.length
    }
    clear.set(material, slot.area.offset)
    await device.write(0, clear, false)
    if (device.canFlush) await device.flush()
    if (options.type === 'luks1') header.keyslots = [slot]
    return { header, payloadOffset: header.payloadOffset }
  } finally {
    volumeKey.fill(0)
  }
}

export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to
}

/** A summary of a header for people and JSON: no key material, no salts, no digests. */
export interface LuksSummary {
  type: 'luks1' | 'luks2'
  uuid: string
  label?: string
  cipher: string
  keyBits: number
  sectorSize: number
  payloadOffset: number
  payloadSize: number
  keyslots: { id: number; kdf: string; cost: string; priority: number }[]
  headerCopies?: { primary: boolean; secondary: boolean }
}

export function summarizeLuks(header: LuksHeader, deviceSize: number): LuksSummary {
  return {
    type: header.version === 1 ? 'luks1' : 'luks2',
    uuid: header.uuid,
    ...(header.version === 2 ? { label: header.label } : {}),
    cipher: header.cipher,
    keyBits: header.keyBytes * 8,
    sectorSize: header.sectorSize,
    payloadOffset: header.payloadOffset,
    payloadSize: payloadBytes(header, deviceSize),
    keyslots: header.keyslots.map((s) => ({
      id: s.id,
      kdf: s.kdf.type === 'pbkdf2' ? `pbkdf2-${s.kdf.hash}` : s.kdf.type,
      cost:
        s.kdf.type === 'pbkdf2'
          ? `${s.kdf.iterations} iterations`
          : `time ${s.kdf.time}, memory ${s.kdf.memoryKiB} KiB, ${s.kdf.parallelism} lanes`,
      priority: s.priority,
    })),
    ...(header.copies ? { headerCopies: header.copies } : {}),
  }
}
