/**
 * LUKS1 and LUKS2 volume headers (the modules under luks/): parsing (pure: bytes in, a header model out), unlocking a
 * keyslot with a passphrase, and building a new header (`formatLuks` writes it through a
 * BlockDevice). Only `aes-xts-plain64` is supported, for the data and for the keyslots; anything
 * else is refused with an error naming the cipher.
 *
 * References: the LUKS1 on-disk format spec (1.2.3) and the LUKS2 on-disk format spec (1.1.x),
 * both from the cryptsetup project. Interop is tested with cryptsetup 2.6, qemu-img/qemu-io's
 * luks driver (LUKS1 only in qemu 7.2) and nbdkit's luks filter (LUKS1 only in nbdkit 1.32).
 */
export type {
  LuksKeyslot,
  LuksDigest,
  LuksHeader,
} from './luks/header.ts'
export { readLuksHeader, payloadBytes, unlockLuks } from './luks/unlock.ts'
export {
  type LuksFormatOptions,
  type LuksFormatResult,
  formatLuks,
  type LuksSummary,
  summarizeLuks,
} from './luks/format.ts'
