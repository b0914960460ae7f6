/** Reading a LUKS header through a BlockDevice and unlocking a keyslot with a passphrase. */
import { timingSafeEqual } from 'node:crypto'
import type { BlockDevice } from '../../../devices/blk/device.ts'
import { VrioError } from '../../../errors.ts'
import { afMerge, deriveKey } from '../kdf.ts'
import { createXts } from '../xts.ts'
import { roundUp } from './format.ts'
import { LUKS_MAGIC, type LuksDigest, type LuksHeader, type LuksKeyslot, bad, luksVersion } from './header.ts'
import { parseLuks1 } from './luks1.ts'
import { readLuks2 } from './luks2.ts'

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
async function openKeyslot(
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
