/**
 * AES-XTS for disk sectors, dm-crypt's `aes-xts-plain64`: each sector is one XTS data unit whose
 * tweak is a sector number as a little-endian 64-bit integer zero-padded to 16 bytes.
 *
 * Which sector number (the IV rule):
 * - dm-crypt counts it in 512-byte units whatever the encryption sector size, unless the table
 *   has `iv_large_sectors`. So with 4096-byte sectors the tweaks of consecutive sectors are
 *   0, 8, 16, ... by default and 0, 1, 2, ... with iv_large_sectors.
 * - cryptsetup sets iv_large_sectors only for plain mode with `--iv-large-sectors` (and for
 *   BitLocker). LUKS2 with `sector_size` 4096 uses 512-byte units: checked here against
 *   cryptsetup 2.6.1's own offline encryption (`reencrypt --encrypt`), see the tests. LUKS1 has
 *   512-byte sectors only.
 * - dm-crypt's iv_offset (LUKS2 `iv_tweak`) is added in 512-byte units before the shift.
 *
 * Two implementations of the same function: the native addon (OpenSSL; sectors under 4 KiB: all
 * tweaks of a request in one AES-ECB call, AES-ECB over the data 16 KiB at a time with the tweaks
 * XORed in by SIMD passes; 4 KiB and up: OpenSSL's XTS per sector; see native/xts.cc) and a JS
 * fallback that does the ECB way with node:crypto and JS XOR loops (about a quarter of the
 * speed). `referenceXtsCrypt` (test/support/reference-xts.ts) is the obvious per-sector version
 * the tests hold both to.
 */
import { type Cipher, createCipheriv, createDecipheriv, type Decipher } from 'node:crypto'
import { VrioError } from '../../errors.ts'
import { type NativeXtsCipher, native } from '../../io/native.ts'

/** Where a sector's tweak comes from. */
export interface TweakRule {
  /** Encryption sector size: 512 or 4096. */
  sectorSize: number
  /** dm-crypt `iv_large_sectors`: count tweaks in `sectorSize` units instead of 512 bytes. */
  ivLargeSectors: boolean
  /** dm-crypt `iv_offset` / LUKS2 `iv_tweak`, in 512-byte sectors. */
  ivOffset: number
}

/** The tweak of the sector starting at `offset` (bytes into the payload), and the step between sectors. */
export function tweakOf(rule: TweakRule, offset: number): { first: number; step: number } {
  const sector512 = offset / 512 + rule.ivOffset
  if (!rule.ivLargeSectors) return { first: sector512, step: rule.sectorSize / 512 }
  return { first: sector512 / (rule.sectorSize / 512), step: 1 }
}

/** Checks a tweak rule; throws a VrioError naming what is wrong. */
export function checkTweakRule(rule: TweakRule): void {
  if (rule.sectorSize !== 512 && rule.sectorSize !== 4096)
    throw new VrioError('bad-sector-size', `sector size must be 512 or 4096, not ${rule.sectorSize}`, {
      sectorSize: rule.sectorSize,
    })
  if (!Number.isSafeInteger(rule.ivOffset) || rule.ivOffset < 0)
    throw new VrioError('bad-iv-offset', `IV offset must be a non-negative integer, not ${rule.ivOffset}`)
  if (rule.ivLargeSectors && rule.ivOffset % (rule.sectorSize / 512) !== 0)
    throw new VrioError(
      'bad-iv-offset',
      'with iv_large_sectors the IV offset must be a whole number of sectors',
    )
}

/**
 * An AES-XTS key ready for use; the key bytes are held by OpenSSL (or node:crypto), not by this
 * object. `crypt` and `destroy` as NativeXtsCipher's, whichever implementation runs.
 */
export interface XtsCipher extends NativeXtsCipher {
  /** 256 (AES-128-XTS) or 512 (AES-256-XTS). */
  readonly keyBits: number
  /** 'native' or 'js': which implementation runs. */
  readonly implementation: 'native' | 'js'
}

/**
 * Checks an XTS key: 32 or 64 bytes, halves different (OpenSSL 3 and FIPS refuse equal halves,
 * which would make XTS weak).
 */
function checkXtsKey(key: Uint8Array): void {
  if (key.length !== 32 && key.length !== 64)
    throw new VrioError(
      'bad-key',
      `an aes-xts key is 32 or 64 bytes (256 or 512 bits), not ${key.length} bytes`,
      { keyBytes: key.length },
    )
  const half = key.length / 2
  if (Buffer.compare(key.subarray(0, half), key.subarray(half)) === 0)
    throw new VrioError('bad-key', 'the two halves of the aes-xts key are equal, which XTS does not allow')
}

/**
 * An XTS cipher for `key` (the data key then the tweak key, as dm-crypt takes it). `prefer`:
 * 'auto' takes the native addon when it loads, else the JS version.
 */
export function createXts(key: Uint8Array, prefer: 'auto' | 'native' | 'js' = 'auto'): XtsCipher {
  checkXtsKey(key)
  if (prefer !== 'js') {
    let ctor: (new (key: Uint8Array) => NativeXtsCipher) | undefined
    try {
      ctor = native().XtsCipher
    } catch (error) {
      if (prefer === 'native') throw error
    }
    if (ctor) return new NativeXts(new ctor(key), key.length * 8)
  }
  return new JsXts(key)
}

class NativeXts implements XtsCipher {
  readonly implementation = 'native'
  readonly keyBits: number
  readonly #handle: NativeXtsCipher

  constructor(handle: NativeXtsCipher, keyBits: number) {
    this.#handle = handle
    this.keyBits = keyBits
  }

  crypt(
    encrypt: boolean,
    src: Uint8Array,
    dst: Uint8Array,
    firstTweak: number,
    sectorSize: number,
    tweakStep: number,
  ): void {
    this.#handle.crypt(encrypt, src, dst, firstTweak, sectorSize, tweakStep)
  }

  destroy(): void {
    this.#handle.destroy()
  }

  toJSON(): Record<string, unknown> {
    return { cipher: 'aes-xts-plain64', keyBits: this.keyBits, implementation: this.implementation }
  }
}

/** The same algorithm as native/xts.cc, with node:crypto ECB contexts kept for the key's life. */
class JsXts implements XtsCipher {
  readonly implementation = 'js'
  readonly keyBits: number
  #enc: Cipher | undefined
  #dec: Decipher | undefined
  #tweak: Cipher | undefined
  #plainTweaks = new Uint32Array(0)

  constructor(key: Uint8Array) {
    this.keyBits = key.length * 8
    const half = key.length / 2
    const algorithm = half === 16 ? 'aes-128-ecb' : 'aes-256-ecb'
    // ECB keeps no state between blocks: one context serves every request (never finalised).
    this.#enc = createCipheriv(algorithm, key.subarray(0, half), null).setAutoPadding(false)
    this.#dec = createDecipheriv(algorithm, key.subarray(0, half), null).setAutoPadding(false)
    this.#tweak = createCipheriv(algorithm, key.subarray(half), null).setAutoPadding(false)
  }

  crypt(
    encrypt: boolean,
    src: Uint8Array,
    dst: Uint8Array,
    firstTweak: number,
    sectorSize: number,
    tweakStep: number,
  ): void {
    const aes = encrypt ? this.#enc : this.#dec
    if (!aes || !this.#tweak) throw new VrioError('destroyed', 'the XTS cipher was destroyed')
    checkCryptArgs(src, dst, firstTweak, sectorSize, tweakStep)
    // The XOR loops work on 32-bit words: buffers at odd offsets go through an aligned copy.
    if (dst.byteOffset % 4 !== 0) {
      const aligned = new Uint8Array(dst.length)
      this.crypt(encrypt, src, aligned, firstTweak, sectorSize, tweakStep)
      dst.set(aligned)
      return
    }
    if (src.byteOffset % 4 !== 0) {
      if (src !== dst) dst.set(src)
      src = dst
    }
    const sectors = src.length / sectorSize
    if (this.#plainTweaks.length < sectors * 4) this.#plainTweaks = new Uint32Array(sectors * 4)
    const plain = this.#plainTweaks
    for (let s = 0; s < sectors; s++) {
      const t = firstTweak + s * tweakStep
      plain[s * 4] = t >>> 0
      plain[s * 4 + 1] = Math.floor(t / 2 ** 32)
      plain[s * 4 + 2] = 0
      plain[s * 4 + 3] = 0
    }
    const encrypted = this.#tweak.update(new Uint8Array(plain.buffer, 0, sectors * 16))
    const tweaks = words(encrypted)
    const words32 = sectorSize >>> 2
    xorTweaks(words(dst), words(src), tweaks, sectors, words32)
    const out = aes.update(dst)
    xorTweaks(words(dst), words(out), tweaks, sectors, words32)
  }

  destroy(): void {
    this.#enc = undefined
    this.#dec = undefined
    this.#tweak = undefined
  }

  toJSON(): Record<string, unknown> {
    return { cipher: 'aes-xts-plain64', keyBits: this.keyBits, implementation: this.implementation }
  }
}

function checkCryptArgs(
  src: Uint8Array,
  dst: Uint8Array,
  firstTweak: number,
  sectorSize: number,
  tweakStep: number,
): void {
  if (
    dst.length !== src.length ||
    sectorSize < 16 ||
    sectorSize > 65536 ||
    sectorSize % 16 !== 0 ||
    src.length % sectorSize !== 0 ||
    !Number.isSafeInteger(firstTweak) ||
    firstTweak < 0 ||
    !Number.isSafeInteger(tweakStep) ||
    tweakStep < 0
  )
    throw new VrioError('bad-request', 'XTS requests are whole sectors with non-negative tweaks')
  if (
    src.buffer === dst.buffer &&
    src.byteOffset !== dst.byteOffset &&
    src.byteOffset < dst.byteOffset + dst.length &&
    dst.byteOffset < src.byteOffset + src.length
  )
    throw new VrioError('bad-request', 'XTS: dst must be src itself or not overlap it')
}

/** A Uint32Array over the same bytes (callers make sure the offset is 4-byte aligned). */
function words(bytes: Uint8Array): Uint32Array {
  return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2)
}

/** dst = src ^ T for each sector, T starting at that sector's encrypted tweak, times alpha per block. */
function xorTweaks(
  dst: Uint32Array,
  src: Uint32Array,
  tweaks: Uint32Array,
  sectors: number,
  words32: number,
): void {
  for (let s = 0; s < sectors; s++) {
    let a = tweaks[s * 4]
    let b = tweaks[s * 4 + 1]
    let c = tweaks[s * 4 + 2]
    let d = tweaks[s * 4 + 3]
    let p = s * words32
    const end = p + words32
    while (p < end) {
      dst[p] = src[p] ^ a
      dst[p + 1] = src[p + 1] ^ b
      dst[p + 2] = src[p + 2] ^ c
      dst[p + 3] = src[p + 3] ^ d
      const carry = d >> 31 // 0 or -1
      d = (d << 1) | (c >>> 31)
      c = (c << 1) | (b >>> 31)
      b = (b << 1) | (a >>> 31)
      a = (a << 1) ^ (carry & 0x87)
      p += 4
    }
  }
}
