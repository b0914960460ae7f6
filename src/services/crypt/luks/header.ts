/** LUKS headers: the model both versions parse into, the magic, and the checks they share. */
import { VrioError } from '../../../errors.ts'
import type { KdfParams } from '../kdf.ts'

export const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]) // "LUKS\xba\xbe"
export const LUKS2_MAGIC_2ND = Buffer.from([0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]) // "SKUL\xba\xbe"
export const SUPPORTED_CIPHER = 'aes-xts-plain64'

/** LUKS2 header sizes (binary header + JSON area) the spec allows. */
export const LUKS2_HDR_SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096].map((k) => k * 1024)
/** Key material of one keyslot is at most this large (4000 stripes of 64 bytes is 250 KiB). */
export const MAX_KEY_MATERIAL = 16 * 1024 * 1024

export interface LuksKeyslot {
  /** Slot number (LUKS1: 0..7; LUKS2: the JSON key). */
  id: number
  /** Size of the volume key this slot holds. */
  keyBytes: number
  kdf: KdfParams
  af: { stripes: number; hash: string }
  /** Key material area: byte offset from the start of the device, its size, its cipher and key size. */
  area: { offset: number; size: number; cipher: string; keyBytes: number }
  /** LUKS2 priority: 0 ignore (only tried when named), 1 normal, 2 high. LUKS1: 1. */
  priority: number
}

export interface LuksDigest {
  hash: string
  iterations: number
  salt: Uint8Array
  digest: Uint8Array
  /** Keyslots whose volume key this digest verifies. */
  keyslots: number[]
}

export interface LuksHeader {
  version: 1 | 2
  uuid: string
  label: string
  /** The data segment's cipher as dm-crypt names it, e.g. 'aes-xts-plain64'. */
  cipher: string
  /** Volume key size in bytes. */
  keyBytes: number
  /** Encrypted payload: byte offset on the device; size in bytes, or 'dynamic' (to the end). */
  payloadOffset: number
  payloadSize: number | 'dynamic'
  sectorSize: number
  /** LUKS2 `iv_tweak`, in 512-byte sectors (0 for LUKS1). */
  ivTweak: number
  keyslots: LuksKeyslot[]
  digests: LuksDigest[]
  /** LUKS2: header size (binary + JSON), sequence id, and which copies passed their checksum. */
  hdrSize?: number
  seqid?: number
  copies?: { primary: boolean; secondary: boolean }
}

export function bad(message: string, details: Record<string, unknown> = {}): VrioError {
  return new VrioError('bad-header', message, details)
}

export function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0)
  return Buffer.from(end < 0 ? bytes : bytes.subarray(0, end)).toString('latin1')
}

/** 'luks1', 'luks2' or undefined, from the first bytes of a device. */
export function luksVersion(start: Uint8Array): 1 | 2 | undefined {
  if (start.length < 8 || !LUKS_MAGIC.equals(start.subarray(0, 6))) return undefined
  const version = (start[6] << 8) | start[7]
  return version === 1 || version === 2 ? version : undefined
}

export function checkCipher(cipher: string, keyBytes: number): void {
  if (cipher !== SUPPORTED_CIPHER)
    throw new VrioError(
      'unsupported-cipher',
      `cipher ${cipher} is not supported (only ${SUPPORTED_CIPHER})`,
      {
        cipher,
      },
    )
  if (keyBytes !== 32 && keyBytes !== 64)
    throw new VrioError(
      'unsupported-cipher',
      `a ${keyBytes * 8}-bit ${cipher} key is not supported (256 or 512 bits)`,
    )
}
