/** LUKS2 on-disk header (spec 1.1.x): the binary header, its checksums and JSON metadata; parse and encode. Pure. */
import { createHash, randomBytes } from 'node:crypto'
import { VrioError } from '../../../errors.ts'
import { checkHash, type KdfParams } from '../kdf.ts'
import { LUKS2_HDR_SIZE } from './format.ts'
import {
  LUKS2_HDR_SIZES,
  LUKS2_MAGIC_2ND,
  LUKS_MAGIC,
  type LuksDigest,
  type LuksHeader,
  type LuksKeyslot,
  MAX_KEY_MATERIAL,
  bad,
  cString,
  checkCipher,
} from './header.ts'

// ---------------------------------------------------------------------------------------------
// LUKS2

/** What the binary header of one LUKS2 copy says, before its checksum is checked. */
export interface Luks2Binary {
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

export type Json = Record<string, unknown>

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

export function encodeLuks2(h: LuksHeader): Buffer[] {
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
