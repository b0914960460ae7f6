/**
 * Building the crypt service from configuration: what the IOhyp calls to put encryption around a
 * disk's back-end. Secrets come from files only (never from the config object itself, which is
 * logged and shown); the bytes are wiped once the key is set up.
 *
 * - plain: `keyFile` holds the raw XTS key, 32 or 64 bytes (e.g. `head -c 64 /dev/urandom`),
 *   used as is (cryptsetup `open --type plain --key-file F --key-size 512` without hashing).
 * - luks: `passphraseFile` holds a passphrase; one trailing newline is dropped. `keyFile` holds a
 *   LUKS key file, whose bytes are the passphrase exactly (cryptsetup `--key-file`).
 */
import { readSecretFile } from '../../auth/key-file.ts'
import type { BlockDevice } from '../../devices/blk/device.ts'
import { VrioError } from '../../errors.ts'
import { EncryptedDevice } from './encrypted-device.ts'
import { payloadBytes, readLuksHeader, unlockLuks } from './luks.ts'
import { createXts } from './xts.ts'

export type EncryptionSpec =
  | {
      kind: 'plain'
      cipher: 'aes-xts-plain64'
      keyFile: string
      /** 512 (default) or 4096. */
      sectorSize?: number
      /** dm-crypt iv_large_sectors (cryptsetup --iv-large-sectors). Default false. */
      ivLargeSectors?: boolean
      /** Payload offset on the back-end in bytes (cryptsetup --offset × 512). Default 0. */
      offset?: number
      allowDiscards?: boolean
    }
  | {
      kind: 'luks'
      passphraseFile?: string
      keyFile?: string
      allowDiscards?: boolean
    }

/** A passphrase file's passphrase: its bytes less one trailing "\n" or "\r\n". */
function passphraseFromFile(bytes: Buffer): Buffer {
  let end = bytes.length
  if (end > 0 && bytes[end - 1] === 0x0a) end--
  if (end > 0 && bytes[end - 1] === 0x0d) end--
  return bytes.subarray(0, end)
}

/** The LUKS passphrase bytes a spec names (exactly one of passphraseFile and keyFile). */
export function luksSecret(spec: { passphraseFile?: string; keyFile?: string }): Buffer {
  if ((spec.passphraseFile === undefined) === (spec.keyFile === undefined))
    throw new VrioError('invalid-argument', 'give exactly one of a passphrase file and a key file')
  if (spec.passphraseFile !== undefined) {
    const raw = readSecretFile(spec.passphraseFile, 'passphrase file')
    const pass = Buffer.from(passphraseFromFile(raw))
    raw.fill(0)
    if (pass.length === 0)
      throw new VrioError('key-file-invalid', `the passphrase file ${spec.passphraseFile} is empty`, {
        path: spec.passphraseFile,
      })
    return pass
  }
  const key = readSecretFile(spec.keyFile as string, 'key file')
  if (key.length === 0)
    throw new VrioError('key-file-invalid', `the key file ${spec.keyFile} is empty`, { path: spec.keyFile })
  return key
}

/** Puts encryption around `inner` as `spec` says: reads the key (or unlocks the LUKS header). */
export async function openEncryption(inner: BlockDevice, spec: EncryptionSpec): Promise<EncryptedDevice> {
  if (spec.kind === 'plain') {
    if (spec.cipher !== 'aes-xts-plain64')
      throw new VrioError(
        'unsupported-cipher',
        `cipher ${String(spec.cipher)} is not supported (only aes-xts-plain64)`,
      )
    const key = readSecretFile(spec.keyFile, 'key file')
    try {
      if (key.length !== 32 && key.length !== 64)
        throw new VrioError(
          'bad-key',
          `the key file ${spec.keyFile} must hold a raw 32- or 64-byte aes-xts key, not ${key.length} bytes`,
          { path: spec.keyFile },
        )
      const cipher = createXts(key)
      return new EncryptedDevice(inner, {
        cipher,
        sectorSize: spec.sectorSize ?? 512,
        ivLargeSectors: spec.ivLargeSectors,
        payloadOffset: spec.offset ?? 0,
        allowDiscards: spec.allowDiscards,
        format: 'plain',
      })
    } finally {
      key.fill(0)
    }
  }
  if (spec.kind !== 'luks') throw new VrioError('invalid-argument', 'encryption kind must be plain or luks')
  const secret = luksSecret(spec)
  let volumeKey: Buffer | undefined
  try {
    const header = await readLuksHeader(inner)
    volumeKey = await unlockLuks(inner, header, secret)
    return new EncryptedDevice(inner, {
      cipher: createXts(volumeKey),
      payloadOffset: header.payloadOffset,
      payloadSize: payloadBytes(header, inner.size),
      sectorSize: header.sectorSize,
      ivOffset: header.ivTweak,
      allowDiscards: spec.allowDiscards,
      format: header.version === 1 ? 'luks1' : 'luks2',
    })
  } finally {
    secret.fill(0)
    volumeKey?.fill(0)
  }
}
