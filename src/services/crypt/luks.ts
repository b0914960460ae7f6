/**
 * LUKS1 and LUKS2 volume headers: parsing (pure: bytes in, a header model out), unlocking a
 * keyslot with a passphrase, and building a new header (`formatLuks` writes it through a
 * BlockDevice). Only `aes-xts-plain64` is supported, for the data and for the keyslots; anything
 * else is refused with an error naming the cipher.
 *
 * References: the LUKS1 on-disk format spec (1.2.3) and the LUKS2 on-disk format spec (1.1.x),
 * both from the cryptsetup project. Interop is tested with cryptsetup 2.6, qemu-img/qemu-io's
 * luks driver (LUKS1 only in qemu 7.2) and nbdkit's luks filter (LUKS1 only in nbdkit 1.32).
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import type { BlockDevice } from '../../devices/blk/device.ts'
import { VrioError } from '../../errors.ts'
import { afMerge, afSplit, checkHash, deriveKey, hashLength, type KdfParams } from './kdf.ts'
import { createXts } from './xts.ts'

export const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]) // "LUKS\xba\xbe"
export const LUKS2_MAGIC_2ND = Buffer.from([0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]) // "SKUL\xba\xbe"
export const SUPPORTED_CIPHER = 'aes-xts-plain64'

/** LUKS2 header sizes (binary header + JSON area) the spec allows. */
const LUKS2_HDR_SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096].map((k) => k * 1024)
/** Key material of one keyslot is at most this large (4000 stripes of 64 bytes is 250 KiB). */
const MAX_KEY_MATERIAL = 16 * 1024 * 1024

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

function bad(message: string, details: Record<string, unknown> = {}): VrioError {
  return new VrioError('bad-header', message, details)
}

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0)
  return Buffer.from(end < 0 ? bytes : bytes.subarray(0, end)).toString('latin1')
}

/** 'luks1', 'luks2' or undefined, from the first bytes of a device. */
export function luksVersion(start: Uint8Array): 1 | 2 | undefined {
  if (start.length < 8 || !LUKS_MAGIC.equals(start.subarray(0, 6))) return undefined
  const version = (start[6] << 8) | start[7]
  return version === 1 || version === 2 ? version : undefined
}

// ---------------------------------------------------------------------------------------------
// LUKS1

const LUKS1_PHDR = 592
const LUKS1_KEY_ENABLED = 0x00ac71f3
const LUKS1_KEY_DISABLED = 0x0000dead
const LUKS1_DIGEST_BYTES = 20
const LUKS1_SLOTS = 8

/** Parses a LUKS1 phdr (the first 592 bytes of the device). */
export function parseLuks1(bytes: Uint8Array): LuksHeader {
  if (bytes.length < LUKS1_PHDR) throw bad(`LUKS1 header truncated (${bytes.length} of ${LUKS1_PHDR} bytes)`)
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, LUKS1_PHDR)
  if (luksVersion(b) !== 1) throw bad('not a LUKS1 header')
  const cipherName = cString(b.subarray(8, 40))
  const cipherMode = cString(b.subarray(40, 72))
  const hash = checkHash(cString(b.subarray(72, 104)))
  const payloadSectors = b.readUInt32BE(104)
  const keyBytes = b.readUInt32BE(108)
  const cipher = `${cipherName}-${cipherMode}`
  checkCipher(cipher, keyBytes)
  const digest: LuksDigest = {
    hash,
    digest: Buffer.from(b.subarray(112, 132)),
    salt: Buffer.from(b.subarray(132, 164)),
    iterations: b.readUInt32BE(164),
    keyslots: [],
  }
  if (digest.iterations < 1) throw bad('LUKS1 digest iteration count is 0')
  const keyslots: LuksKeyslot[] = []
  for (let i = 0; i < LUKS1_SLOTS; i++) {
    const at = 208 + i * 48
    const active = b.readUInt32BE(at)
    if (active === LUKS1_KEY_DISABLED) continue
    if (active !== LUKS1_KEY_ENABLED)
      throw bad(`LUKS1 keyslot ${i} has an invalid state 0x${active.toString(16)}`)
    const stripes = b.readUInt32BE(at + 44)
    const materialSectors = b.readUInt32BE(at + 40)
    const size = roundUp(keyBytes * stripes, 512)
    if (stripes < 1 || size > MAX_KEY_MATERIAL) throw bad(`LUKS1 keyslot ${i} has ${stripes} stripes`)
    if (materialSectors * 512 + size > payloadSectors * 512 && payloadSectors !== 0)
      throw bad(`LUKS1 keyslot ${i} overlaps the payload`)
    keyslots.push({
      id: i,
      keyBytes,
      kdf: {
        type: 'pbkdf2',
        hash,
        iterations: b.readUInt32BE(at + 4),
        salt: Buffer.from(b.subarray(at + 8, at + 40)),
      },
      af: { stripes, hash },
      area: { offset: materialSectors * 512, size, cipher, keyBytes },
      priority: 1,
    })
    digest.keyslots.push(i)
  }
  if (payloadSectors * 512 < LUKS1_PHDR)
    throw bad(`LUKS1 payload offset ${payloadSectors} overlaps the header`)
  return {
    version: 1,
    uuid: cString(b.subarray(168, 208)),
    label: '',
    cipher,
    keyBytes,
    payloadOffset: payloadSectors * 512,
    payloadSize: 'dynamic',
    sectorSize: 512,
    ivTweak: 0,
    keyslots,
    digests: [digest],
  }
}

// ---------------------------------------------------------------------------------------------
// LUKS2

/** What the binary header of one LUKS2 copy says, before its checksum is checked. */
interface Luks2Binary {
  hdrSize: number
  seqid: number
  label: string
  checksumAlg: string
  uuid: string
  hdrOffset: number
}

function parseLuks2Binary(b: Buffer, secondary: boolean): Luks2Binary {
  const magic = secondary ? LUKS2_MAGIC_2ND : LUKS_MAGIC
  if (b.length < 4096 || !magic.equals(b.subarray(0, 6)) || b.readUInt16BE(6) !== 2)
    throw bad(`no LUKS2 ${secondary ? 'secondary' : 'primary'} header`)
  const hdrSize = Number(b.readBigUInt64BE(8))
  if (!LUKS2_HDR_SIZES.includes(hdrSize)) throw bad(`LUKS2 header size ${hdrSize} is not allowed`)
  return {
    hdrSize,
    seqid: Number(b.readBigUInt64BE(16)),
    label: cString(b.subarray(24, 72)),
    checksumAlg: cString(b.subarray(72, 104)),
    uuid: cString(b.subarray(168, 208)),
    hdrOffset: Number(b.readBigUInt64BE(256)),
  }
}

/** The checksum of one LUKS2 header copy (binary header + JSON area, with the csum field zeroed). */
function luks2Checksum(area: Uint8Array, alg: string): Buffer {
  const h = createHash(alg)
  h.update(area.subarray(0, 448))
  h.update(Buffer.alloc(64))
  h.update(area.subarray(512))
  return h.digest()
}

function checkLuks2Copy(area: Buffer, bin: Luks2Binary): boolean {
  let alg: string
  try {
    alg = checkHash(bin.checksumAlg)
  } catch {
    return false
  }
  const sum = luks2Checksum(area, alg)
  return sum.equals(area.subarray(448, 448 + sum.length))
}

/**
 * Reads and checks a LUKS2 header from `read` (a reader of the device's bytes): both copies, each
 * with its checksum; the valid copy with the higher sequence id wins.
 */
export async function readLuks2(
  read: (offset: number, length: number) => Promise<Uint8Array>,
  deviceSize: number,
): Promise<LuksHeader> {
  const copies: { bin: Luks2Binary; json: string }[] = []
  const status = { primary: false, secondary: false }
  const tryCopy = async (offset: number, secondary: boolean): Promise<Luks2Binary | undefined> => {
    if (offset + 4096 > deviceSize) return undefined
    let bin: Luks2Binary
    try {
      bin = parseLuks2Binary(Buffer.from(await read(offset, 4096)), secondary)
    } catch {
      return undefined
    }
    if (bin.hdrOffset !== offset || offset + bin.hdrSize > deviceSize) return undefined
    const area = Buffer.from(await read(offset, bin.hdrSize))
    if (!checkLuks2Copy(area, bin)) return undefined
    copies.push({ bin, json: cString(area.subarray(4096)) })
    if (secondary) status.secondary = true
    else status.primary = true
    return bin
  }
  const primary = await tryCopy(0, false)
  if (primary) await tryCopy(primary.hdrSize, true)
  else for (const size of LUKS2_HDR_SIZES) if (await tryCopy(size, true)) break
  if (copies.length === 0) throw bad('no LUKS2 header copy has a valid checksum')
  copies.sort((a, b) => b.bin.seqid - a.bin.seqid)
  const { bin, json } = copies[0]
  let metadata: unknown
  try {
    metadata = JSON.parse(json)
  } catch (error) {
    throw bad(`the LUKS2 JSON area does not parse: ${(error as Error).message}`)
  }
  return { ...parseLuks2Json(metadata, bin), copies: status }
}

type Json = Record<string, unknown>

function obj(v: unknown, what: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`LUKS2 ${what} is not an object`)
  return v as Json
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw bad(`LUKS2 ${what} is not a string`)
  return v
}

function int(v: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max)
    throw bad(`LUKS2 ${what} is not an integer in range`)
  return v
}

/** uint64 fields are decimal strings in LUKS2 JSON. */
function u64(v: unknown, what: string): number {
  const s = str(v, what)
  if (!/^\d{1,16}$/.test(s)) throw bad(`LUKS2 ${what} is not a decimal uint64 string`)
  const n = Number(s)
  if (!Number.isSafeInteger(n)) throw bad(`LUKS2 ${what} is too large`)
  return n
}

function b64(v: unknown, what: string): Buffer {
  const s = str(v, what)
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw bad(`LUKS2 ${what} is not base64`)
  return Buffer.from(s, 'base64')
}

function ids(v: unknown, what: string): number[] {
  if (!Array.isArray(v)) throw bad(`LUKS2 ${what} is not an array`)
  return v.map((x) => u64(x, what))
}

function parseLuks2Json(metadata: unknown, bin: Luks2Binary): Omit<LuksHeader, 'copies'> {
  const root = obj(metadata, 'metadata')
  const config = obj(root.config, 'config')
  const jsonSize = u64(config.json_size, 'config.json_size')
  if (jsonSize !== bin.hdrSize - 4096) throw bad('LUKS2 config.json_size does not match the header size')
  if (config.requirements !== undefined) {
    const mandatory = obj(config.requirements, 'config.requirements').mandatory
    if (Array.isArray(mandatory) && mandatory.length > 0)
      throw new VrioError(
        'unsupported-luks',
        `the LUKS2 volume has requirements vrio does not support (${mandatory.map(String).join(', ')})`,
      )
  }
  const segments = Object.entries(obj(root.segments, 'segments'))
  if (segments.length !== 1)
    throw new VrioError(
      'unsupported-luks',
      `the LUKS2 volume has ${segments.length} segments; vrio supports exactly one (no reencryption in progress)`,
    )
  const [segmentId, segmentValue] = segments[0]
  const segment = obj(segmentValue, 'segment')
  if (str(segment.type, 'segment.type') !== 'crypt')
    throw new VrioError(
      'unsupported-luks',
      `LUKS2 segment type ${JSON.stringify(segment.type)} is not supported`,
    )
  if (segment.integrity !== undefined)
    throw new VrioError('unsupported-luks', 'LUKS2 volumes with integrity protection are not supported')
  const cipher = str(segment.encryption, 'segment.encryption')
  const sectorSize = int(segment.sector_size, 'segment.sector_size', 4096)
  if (sectorSize !== 512 && sectorSize !== 4096)
    throw new VrioError('unsupported-luks', `LUKS2 sector size ${sectorSize} is not supported (512 or 4096)`)
  const payloadOffset = u64(segment.offset, 'segment.offset')
  if (payloadOffset < 2 * bin.hdrSize || payloadOffset % sectorSize !== 0)
    throw bad(`LUKS2 segment offset ${payloadOffset} overlaps the headers or is not sector aligned`)
  const payloadSize = segment.size === 'dynamic' ? 'dynamic' : u64(segment.size, 'segment.size')
  const ivTweak = u64(segment.iv_tweak ?? '0', 'segment.iv_tweak')

  const digests: LuksDigest[] = []
  for (const [id, value] of Object.entries(obj(root.digests, 'digests'))) {
    const d = obj(value, `digest ${id}`)
    if (str(d.type, 'digest.type') !== 'pbkdf2')
      throw new VrioError('unsupported-luks', `LUKS2 digest type ${JSON.stringify(d.type)} is not supported`)
    if (!ids(d.segments, 'digest.segments').includes(Number(segmentId))) continue
    const digest = b64(d.digest, 'digest.digest')
    if (digest.length < 16 || digest.length > 64) throw bad('LUKS2 digest has an odd length')
    digests.push({
      hash: checkHash(str(d.hash, 'digest.hash')),
      iterations: int(d.iterations, 'digest.iterations', 2 ** 32 - 1),
      salt: b64(d.salt, 'digest.salt'),
      digest,
      keyslots: ids(d.keyslots, 'digest.keyslots'),
    })
  }
  if (digests.length === 0) throw bad('no LUKS2 digest covers the data segment')

  let keyBytes = 0
  const keyslots: LuksKeyslot[] = []
  for (const [id, value] of Object.entries(obj(root.keyslots, 'keyslots'))) {
    const slot = obj(value, `keyslot ${id}`)
    const slotId = u64(id, 'keyslot id')
    if (str(slot.type, 'keyslot.type') !== 'luks2') continue // e.g. a reencryption slot
    if (!digests.some((d) => d.keyslots.includes(slotId))) continue // not for this segment
    const af = obj(slot.af, 'keyslot.af')
    if (str(af.type, 'keyslot.af.type') !== 'luks1') throw bad(`LUKS2 keyslot ${id} has an unknown AF type`)
    const area = obj(slot.area, 'keyslot.area')
    if (str(area.type, 'keyslot.area.type') !== 'raw')
      throw bad(`LUKS2 keyslot ${id} has an unknown area type`)
    const kdf = obj(slot.kdf, 'keyslot.kdf')
    const kdfType = str(kdf.type, 'keyslot.kdf.type')
    let params: KdfParams
    if (kdfType === 'pbkdf2') {
      params = {
        type: 'pbkdf2',
        hash: checkHash(str(kdf.hash, 'kdf.hash')),
        iterations: int(kdf.iterations, 'kdf.iterations', 2 ** 32 - 1),
        salt: b64(kdf.salt, 'kdf.salt'),
      }
    } else if (kdfType === 'argon2i' || kdfType === 'argon2id') {
      params = {
        type: kdfType,
        time: int(kdf.time, 'kdf.time', 2 ** 32 - 1),
        memoryKiB: int(kdf.memory, 'kdf.memory', 2 ** 32 - 1),
        parallelism: int(kdf.cpus, 'kdf.cpus', 2 ** 32 - 1),
        salt: b64(kdf.salt, 'kdf.salt'),
      }
    } else {
      throw new VrioError(
        'unsupported-luks',
        `LUKS2 keyslot ${id} uses the unsupported KDF ${JSON.stringify(kdfType)}`,
      )
    }
    const slotKeyBytes = int(slot.key_size, 'keyslot.key_size', 512)
    const stripes = int(af.stripes, 'keyslot.af.stripes', 2 ** 32 - 1)
    const areaSize = u64(area.size, 'keyslot.area.size')
    const areaOffset = u64(area.offset, 'keyslot.area.offset')
    const areaKeyBytes = int(area.key_size, 'keyslot.area.key_size', 512)
    const areaCipher = str(area.encryption, 'keyslot.area.encryption')
    if (slotKeyBytes * stripes > Math.min(areaSize, MAX_KEY_MATERIAL) || stripes < 1)
      throw bad(`LUKS2 keyslot ${id}'s key material does not fit its area`)
    if (areaOffset < 2 * bin.hdrSize || areaOffset + areaSize > payloadOffset)
      throw bad(`LUKS2 keyslot ${id}'s area lies outside the keyslots area`)
    checkCipher(areaCipher, areaKeyBytes)
    keyslots.push({
      id: slotId,
      keyBytes: slotKeyBytes,
      kdf: params,
      af: { stripes, hash: checkHash(str(af.hash, 'keyslot.af.hash')) },
      area: { offset: areaOffset, size: areaSize, cipher: areaCipher, keyBytes: areaKeyBytes },
      priority: slot.priority === undefined ? 1 : int(slot.priority, 'keyslot.priority', 2),
    })
    keyBytes ||= slotKeyBytes
    if (slotKeyBytes !== keyBytes) throw bad('LUKS2 keyslots disagree on the volume key size')
  }
  if (keyBytes === 0) keyBytes = 64 // no keyslot: the header still describes the volume
  checkCipher(cipher, keyBytes)
  return {
    version: 2,
    uuid: bin.uuid,
    label: bin.label,
    cipher,
    keyBytes,
    payloadOffset,
    payloadSize,
    sectorSize,
    ivTweak,
    keyslots,
    digests,
    hdrSize: bin.hdrSize,
    seqid: bin.seqid,
  }
}

function checkCipher(cipher: string, keyBytes: number): void {
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

// ---------------------------------------------------------------------------------------------
// Reading and unlocking through a BlockDevice

/** Reads the LUKS header (either version) at the start of `device`. */
export async function readLuksHeader(device: BlockDevice): Promise<LuksHeader> {
  if (device.size < 4096) throw bad(`the device is too small for a LUKS header (${device.size} bytes)`)
  const start = await device.read(0, 4096)
  const version = luksVersion(start)
  if (version === undefined) {
    // The primary LUKS2 copy may be damaged while the secondary is fine.
    if (!LUKS_MAGIC.equals(Buffer.from(start.subarray(0, 6))))
      try {
        return await readLuks2((o, l) => device.read(o, l), device.size)
      } catch {
        throw new VrioError('not-luks', 'no LUKS header found on the device')
      }
    throw bad('the LUKS header has an unknown version')
  }
  const header = version === 1 ? parseLuks1(start) : await readLuks2((o, l) => device.read(o, l), device.size)
  if (header.payloadOffset > device.size)
    throw bad(`the LUKS payload offset ${header.payloadOffset} is beyond the device (${device.size} bytes)`)
  for (const slot of header.keyslots)
    if (slot.area.offset + slot.area.size > device.size)
      throw bad(`LUKS keyslot ${slot.id} is beyond the device`)
  return header
}

/** The payload size in bytes of `header` on a device of `deviceSize` bytes (whole sectors). */
export function payloadBytes(header: LuksHeader, deviceSize: number): number {
  const available = Math.max(0, deviceSize - header.payloadOffset)
  const size = header.payloadSize === 'dynamic' ? available : Math.min(header.payloadSize, available)
  return size - (size % header.sectorSize)
}

async function verifyKey(candidate: Uint8Array, digest: LuksDigest): Promise<boolean> {
  const check = await deriveKey(
    candidate,
    { type: 'pbkdf2', hash: digest.hash, iterations: digest.iterations, salt: digest.salt },
    digest.digest.length,
  )
  return timingSafeEqual(check, digest.digest)
}

/** Tries one keyslot; resolves with the volume key, or undefined when the passphrase does not open it. */
export async function openKeyslot(
  device: BlockDevice,
  header: LuksHeader,
  slot: LuksKeyslot,
  passphrase: Uint8Array,
): Promise<Buffer | undefined> {
  const derived = await deriveKey(passphrase, slot.kdf, slot.area.keyBytes)
  const length = roundUp(slot.keyBytes * slot.af.stripes, 512)
  const material = Buffer.from(await device.read(slot.area.offset, length))
  try {
    const xts = createXts(derived)
    xts.crypt(false, material, material, 0, 512, 1)
    xts.destroy()
  } catch {
    return undefined // e.g. a derived key with equal halves: cannot be the right one
  } finally {
    derived.fill(0)
  }
  const candidate = afMerge(material, slot.keyBytes, slot.af.stripes, slot.af.hash)
  material.fill(0)
  for (const digest of header.digests)
    if (digest.keyslots.includes(slot.id) && (await verifyKey(candidate, digest))) return candidate
  candidate.fill(0)
  return undefined
}

/**
 * The volume key, from the first keyslot (high priority first, priority-0 slots skipped) that
 * `passphrase` opens. Fails with 'bad-passphrase' when none does.
 */
export async function unlockLuks(
  device: BlockDevice,
  header: LuksHeader,
  passphrase: Uint8Array,
): Promise<Buffer> {
  const slots = header.keyslots
    .filter((s) => s.priority > 0)
    .sort((a, b) => b.priority - a.priority || a.id - b.id)
  if (slots.length === 0) throw new VrioError('no-keyslot', 'the LUKS volume has no usable key slot')
  for (const slot of slots) {
    const key = await openKeyslot(device, header, slot, passphrase)
    if (key) return key
  }
  throw new VrioError('bad-passphrase', 'no key slot opens with this passphrase', { keyslots: slots.length })
}

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
const LUKS2_HDR_SIZE = 16384
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

function encodeLuks1(h: LuksHeader): Buffer {
  const b = Buffer.alloc(4096)
  LUKS_MAGIC.copy(b, 0)
  b.writeUInt16BE(1, 6)
  b.write('aes', 8, 'latin1')
  b.write('xts-plain64', 40, 'latin1')
  b.write(h.digests[0].hash, 72, 'latin1')
  b.writeUInt32BE(h.payloadOffset / 512, 104)
  b.writeUInt32BE(h.keyBytes, 108)
  b.set(h.digests[0].digest, 112)
  b.set(h.digests[0].salt, 132)
  b.writeUInt32BE(h.digests[0].iterations, 164)
  b.write(h.uuid, 168, 'latin1')
  for (const slot of h.keyslots) {
    const at = 208 + slot.id * 48
    const kdf = slot.kdf
    if (kdf.type !== 'pbkdf2') throw new VrioError('bad-pbkdf', 'LUKS1 keyslots use pbkdf2')
    const active = slot.id === 0
    b.writeUInt32BE(active ? LUKS1_KEY_ENABLED : LUKS1_KEY_DISABLED, at)
    b.writeUInt32BE(active ? kdf.iterations : 0, at + 4)
    if (active) b.set(kdf.salt, at + 8)
    b.writeUInt32BE(slot.area.offset / 512, at + 40)
    b.writeUInt32BE(slot.af.stripes, at + 44)
  }
  return b
}

function encodeLuks2(h: LuksHeader): Buffer[] {
  const hdrSize = h.hdrSize ?? LUKS2_HDR_SIZE
  const slot = h.keyslots[0]
  const kdf = slot.kdf
  const digest = h.digests[0]
  const metadata = {
    keyslots: {
      '0': {
        type: 'luks2',
        key_size: slot.keyBytes,
        af: { type: 'luks1', stripes: slot.af.stripes, hash: slot.af.hash },
        area: {
          type: 'raw',
          offset: String(slot.area.offset),
          size: String(slot.area.size),
          encryption: slot.area.cipher,
          key_size: slot.area.keyBytes,
        },
        kdf:
          kdf.type === 'pbkdf2'
            ? { type: 'pbkdf2', hash: kdf.hash, iterations: kdf.iterations, salt: b64s(kdf.salt) }
            : {
                type: kdf.type,
                time: kdf.time,
                memory: kdf.memoryKiB,
                cpus: kdf.parallelism,
                salt: b64s(kdf.salt),
              },
      },
    },
    tokens: {},
    segments: {
      '0': {
        type: 'crypt',
        offset: String(h.payloadOffset),
        size: 'dynamic',
        iv_tweak: String(h.ivTweak),
        encryption: h.cipher,
        sector_size: h.sectorSize,
      },
    },
    digests: {
      '0': {
        type: 'pbkdf2',
        keyslots: ['0'],
        segments: ['0'],
        hash: digest.hash,
        iterations: digest.iterations,
        salt: b64s(digest.salt),
        digest: b64s(digest.digest),
      },
    },
    config: { json_size: String(hdrSize - 4096), keyslots_size: String(h.payloadOffset - 2 * hdrSize) },
  }
  const json = Buffer.from(JSON.stringify(metadata), 'utf8')
  if (json.length >= hdrSize - 4096) throw new VrioError('bad-header', 'LUKS2 metadata does not fit its area')
  const copy = (secondary: boolean): Buffer => {
    const b = Buffer.alloc(hdrSize)
    ;(secondary ? LUKS2_MAGIC_2ND : LUKS_MAGIC).copy(b, 0)
    b.writeUInt16BE(2, 6)
    b.writeBigUInt64BE(BigInt(hdrSize), 8)
    b.writeBigUInt64BE(BigInt(h.seqid ?? 1), 16)
    b.write(h.label.slice(0, 47), 24, 'utf8')
    b.write('sha256', 72, 'latin1')
    randomBytes(64).copy(b, 104)
    b.write(h.uuid, 168, 'latin1')
    b.writeBigUInt64BE(BigInt(secondary ? hdrSize : 0), 256)
    json.copy(b, 4096)
    luks2Checksum(b, 'sha256').copy(b, 448)
    return b
  }
  return [copy(false), copy(true)]
}

function b64s(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64')
}

function roundUp(n: number, to: number): number {
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
