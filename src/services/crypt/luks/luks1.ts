/** LUKS1 on-disk header (spec 1.2.3): parse and encode. Pure. */
import { VrioError } from '../../../errors.ts'
import { checkHash } from '../kdf.ts'
import { roundUp } from './format.ts'
import {
  LUKS_MAGIC,
  type LuksDigest,
  type LuksHeader,
  type LuksKeyslot,
  MAX_KEY_MATERIAL,
  bad,
  cString,
  checkCipher,
  luksVersion,
} from './header.ts'

// ---------------------------------------------------------------------------------------------
// LUKS1

const LUKS1_PHDR = 592
const LUKS1_KEY_ENABLED = 0x00ac71f3
const LUKS1_KEY_DISABLED = 0x0000dead
export const LUKS1_DIGEST_BYTES = 20
export const LUKS1_SLOTS = 8

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

export function encodeLuks1(h: LuksHeader): Buffer {
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
