import { createCipheriv, createDecipheriv } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { VrioError } from '../errors.ts'
import { native } from '../io/native.ts'
import { copyChunks } from './chunks.ts'

/** Cipher numbers of the sealed hello (protocol version 2). */
export const SEAL_CIPHER_AES_256_GCM = 1
export const SEAL_CIPHER_CHACHA20_POLY1305 = 2
export type SealCipher = typeof SEAL_CIPHER_AES_256_GCM | typeof SEAL_CIPHER_CHACHA20_POLY1305

/** Option value naming the cipher; 'auto' picks AES-256-GCM when the CPU has AES instructions. */
export type SealCipherName = 'auto' | 'aes-256-gcm' | 'chacha20-poly1305'

export const SEAL_KEY_LENGTH = 32
export const SEAL_TAG_BYTES = 12

/**
 * Where a seal reads the plaintext from outside the frame: one buffer, or a message's chunks (a
 * header, then a body) read as their concatenation.
 */
export type FrameSource = Uint8Array | readonly Uint8Array[]

/** Chunks of a FrameSource the addon's seal takes at most (a payload spanning more is copied first). */
export const SEAL_MAX_CHUNKS = 16

function sealCipherName(cipher: SealCipher): 'aes-256-gcm' | 'chacha20-poly1305' {
  return cipher === SEAL_CIPHER_AES_256_GCM ? 'aes-256-gcm' : 'chacha20-poly1305'
}

let cpuHasAes: boolean | undefined

/** Whether /proc/cpuinfo lists the `aes` flag (x86) or feature (arm64); read once. */
function cpuHasAesInstructions(): boolean {
  if (cpuHasAes === undefined) {
    try {
      cpuHasAes = /^(flags|Features)\s*:.*\baes\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'))
    } catch {
      cpuHasAes = false
    }
  }
  return cpuHasAes
}

/** What `status` shows: `sealed (aes-256-gcm)`, or `plaintext (insecure)`; a cipher of 0 or less: `sealed`. */
export function channelDescription(insecurePlaintext: boolean, cipher = 0): string {
  if (insecurePlaintext) return 'plaintext (insecure)'
  return cipher > 0 ? `sealed (${sealCipherName(cipher as SealCipher)})` : 'sealed'
}

export function resolveSealCipher(name: SealCipherName): SealCipher {
  if (name === 'aes-256-gcm') return SEAL_CIPHER_AES_256_GCM
  if (name === 'chacha20-poly1305') return SEAL_CIPHER_CHACHA20_POLY1305
  return cpuHasAesInstructions() ? SEAL_CIPHER_AES_256_GCM : SEAL_CIPHER_CHACHA20_POLY1305
}

/**
 * The AEAD of one key, applied to whole frames in place (protocol.md, "Sealed segments"):
 * nonce = 4 zero bytes ‖ counter (64-bit big-endian); AAD = IPv4 source and destination
 * (`frame[ipOffset + 12, ipOffset + 20)`) ‖ the TCP header `frame[tcpOffset, payloadOffset)` with
 * its checksum and the 12 tag bytes at `tagOffset` taken as zero; the payload
 * `frame[payloadOffset, end)` is en- or decrypted in place; the tag is truncated to 96 bits.
 */
export interface FrameAead {
  /**
   * Encrypts the payload and writes the tag at `tagOffset`. With `src`, the payload's first
   * `inFrame` bytes (default 0) are in the frame already and the rest of the plaintext is read from
   * `src[srcOffset, srcOffset + end - payloadOffset - inFrame)` — or, `src` being chunks (at most
   * SEAL_MAX_CHUNKS), from the same range of their concatenation — and written encrypted into the
   * frame after them: the cipher pass replaces the copy into the frame.
   */
  seal(
    frame: Uint8Array,
    ipOffset: number,
    tcpOffset: number,
    payloadOffset: number,
    end: number,
    tagOffset: number,
    counter: number,
    src?: FrameSource,
    srcOffset?: number,
    inFrame?: number,
  ): void
  /**
   * Verifies the tag and decrypts the payload; false when it does not verify. The payload is then
   * left XORed with the key stream of (key, counter), as counter mode leaves it: `seal` under the
   * same counter gives the ciphertext back (the receiver's re-joining of split records uses this).
   * With `dst`, the frame is left as it was and the payload is decrypted into
   * `dst[dstOffset, dstOffset + end - payloadOffset)` instead (the cipher pass replaces the copy
   * out of the frame); those bytes are written whether or not the tag verifies.
   */
  open(
    frame: Uint8Array,
    ipOffset: number,
    tcpOffset: number,
    payloadOffset: number,
    end: number,
    tagOffset: number,
    counter: number,
    dst?: Uint8Array,
    dstOffset?: number,
  ): boolean
  /** Frees (and wipes) the key schedule now. */
  destroy(): void
}

export type FrameAeadFactory = (cipher: SealCipher, key: Uint8Array) => FrameAead

function checkKey(cipher: number, key: Uint8Array): void {
  if (key.length !== SEAL_KEY_LENGTH || (cipher !== 1 && cipher !== 2)) {
    throw new VrioError('invalid-argument', 'a frame AEAD takes cipher 1 or 2 and a 32-byte key')
  }
}

function nonceFor(counter: number): Buffer {
  const iv = Buffer.alloc(12)
  iv.writeUInt32BE(Math.floor(counter / 0x1_0000_0000), 4)
  iv.writeUInt32BE(counter >>> 0, 8)
  return iv
}

function aadFor(
  frame: Uint8Array,
  ipOffset: number,
  tcpOffset: number,
  payloadOffset: number,
  tagOffset: number,
) {
  const aad = Buffer.allocUnsafe(8 + payloadOffset - tcpOffset)
  aad.set(frame.subarray(ipOffset + 12, ipOffset + 20), 0)
  aad.set(frame.subarray(tcpOffset, payloadOffset), 8)
  aad[8 + 16] = 0
  aad[8 + 17] = 0
  aad.fill(0, 8 + tagOffset - tcpOffset, 8 + tagOffset - tcpOffset + SEAL_TAG_BYTES)
  return aad
}

/** The node:crypto implementation: the reference the native one is tested against, and the fallback. */
export class NodeFrameAead implements FrameAead {
  private readonly name: string
  private key: Buffer | undefined

  constructor(cipher: SealCipher, key: Uint8Array) {
    checkKey(cipher, key)
    this.name = sealCipherName(cipher)
    this.key = Buffer.from(key)
  }

  seal(
    frame: Uint8Array,
    ipOffset: number,
    tcpOffset: number,
    payloadOffset: number,
    end: number,
    tagOffset: number,
    counter: number,
    src?: FrameSource,
    srcOffset = 0,
    inFrame = 0,
  ): void {
    if (src) {
      if (inFrame < 0 || inFrame > end - payloadOffset)
        throw new VrioError('invalid-argument', 'seal: inFrame must lie within the payload')
      const n = end - payloadOffset - inFrame
      if (src instanceof Uint8Array)
        frame.set(src.subarray(srcOffset, srcOffset + n), payloadOffset + inFrame)
      else copyChunks(src, srcOffset, frame, payloadOffset + inFrame, n)
    }
    const c = createCipheriv(this.name as 'aes-256-gcm', this.liveKey(), nonceFor(counter), {
      authTagLength: 16,
    })
    c.setAAD(aadFor(frame, ipOffset, tcpOffset, payloadOffset, tagOffset))
    if (end > payloadOffset) frame.set(c.update(frame.subarray(payloadOffset, end)), payloadOffset)
    c.final()
    frame.set(c.getAuthTag().subarray(0, SEAL_TAG_BYTES), tagOffset)
  }

  open(
    frame: Uint8Array,
    ipOffset: number,
    tcpOffset: number,
    payloadOffset: number,
    end: number,
    tagOffset: number,
    counter: number,
    dst?: Uint8Array,
    dstOffset = 0,
  ): boolean {
    const d = createDecipheriv(this.name as 'aes-256-gcm', this.liveKey(), nonceFor(counter), {
      authTagLength: SEAL_TAG_BYTES,
    })
    d.setAuthTag(frame.subarray(tagOffset, tagOffset + SEAL_TAG_BYTES))
    d.setAAD(aadFor(frame, ipOffset, tcpOffset, payloadOffset, tagOffset))
    // In place (or into dst) before the tag is checked, as the addon does (see FrameAead.open).
    if (end > payloadOffset) {
      const plain = d.update(frame.subarray(payloadOffset, end))
      if (dst) dst.set(plain, dstOffset)
      else frame.set(plain, payloadOffset)
    }
    try {
      d.final()
    } catch {
      return false
    }
    return true
  }

  destroy(): void {
    this.key?.fill(0)
    this.key = undefined
  }

  private liveKey(): Buffer {
    if (!this.key) throw new VrioError('invalid-argument', 'the frame AEAD was destroyed')
    return this.key
  }
}

/**
 * The addon's frame AEAD as it is called: numbers in `args` (see NativeFrameAead). The methods'
 * names differ from an older build's (seal/open with every number as an argument), so that a
 * stale build is not taken for this one: it is then ignored and node:crypto's is used.
 */
export interface AddonFrameAead {
  sealFrame(frame: Uint8Array, src?: FrameSource, srcOffset?: number, inFrame?: number): void
  openFrame(frame: Uint8Array, dst?: Uint8Array, dstOffset?: number): boolean
  destroy(): void
}

export type AddonFrameAeadConstructor = new (
  cipher: number,
  key: Uint8Array,
  args: Float64Array,
) => AddonFrameAead

/**
 * Where every NativeFrameAead puts a call's numbers for the addon to read (calls are synchronous:
 * one array serves them all). Through it, a call crosses into the addon with one to three
 * arguments instead of seven to nine: numbers passed one by one, and N-API's heap allocation past
 * six arguments, cost more than sealing a small frame.
 */
const ADDON_ARGS = new Float64Array(6)

let addonCtor: AddonFrameAeadConstructor | undefined | null

function addonFrameAead(): AddonFrameAeadConstructor | null {
  if (addonCtor === undefined) {
    try {
      const ctor = native().FrameAead
      const proto = (ctor as unknown as { prototype?: Partial<AddonFrameAead> } | undefined)?.prototype
      addonCtor = ctor && typeof proto?.sealFrame === 'function' ? ctor : null
    } catch {
      addonCtor = null
    }
  }
  return addonCtor
}

/** The addon's implementation (OpenSSL EVP, no allocation per frame); throws without the addon. */
export class NativeFrameAead implements FrameAead {
  private readonly n: AddonFrameAead

  constructor(cipher: SealCipher, key: Uint8Array) {
    checkKey(cipher, key)
    const ctor = addonFrameAead()
    if (!ctor) throw new VrioError('unsupported', 'the native addon has no frame AEAD: rebuild it')
    this.n = new ctor(cipher, key, ADDON_ARGS)
  }

  seal(
    frame: Uint8Array,
    ipOffset: number,
    tcpOffset: number,
    payloadOffset: number,
    end: number,
    tagOffset: number,
    counter: number,
    src?: FrameSource,
    srcOffset = 0,
    inFrame = 0,
  ): void {
    const a = ADDON_ARGS
    a[0] = ipOffset
    a[1] = tcpOffset
    a[2] = payloadOffset
    a[3] = end
    a[4] = tagOffset
    a[5] = counter
    if (src) this.n.sealFrame(frame, src, srcOffset, inFrame)
    else this.n.sealFrame(frame)
  }

  open(
    frame: Uint8Array,
    ipOffset: number,
    tcpOffset: number,
    payloadOffset: number,
    end: number,
    tagOffset: number,
    counter: number,
    dst?: Uint8Array,
    dstOffset = 0,
  ): boolean {
    const a = ADDON_ARGS
    a[0] = ipOffset
    a[1] = tcpOffset
    a[2] = payloadOffset
    a[3] = end
    a[4] = tagOffset
    a[5] = counter
    return dst ? this.n.openFrame(frame, dst, dstOffset) : this.n.openFrame(frame)
  }

  destroy(): void {
    this.n.destroy()
  }
}

/**
 * What seals frames of `cipher` in this process: the addon's implementation ("ipsec-mb-avx512" and
 * the like for AES-256-GCM when built with Intel's multi-buffer library, else "openssl"), or
 * "node:crypto" without the addon. The environment variable VRIO_AEAD=openssl makes the addon use
 * OpenSSL (for A/B runs).
 */
export function aeadImplementation(cipher: SealCipher): string {
  if (!addonFrameAead()) return 'node:crypto'
  return native().aeadImplementation?.(cipher) ?? 'openssl'
}

/**
 * The AEAD the transport uses: the addon's (in place, no allocation per frame; AES-256-GCM by
 * Intel's multi-buffer library where built with it, else OpenSSL EVP) when it has one, else
 * node:crypto's.
 */
export function createFrameAead(cipher: SealCipher, key: Uint8Array): FrameAead {
  checkKey(cipher, key)
  return addonFrameAead() ? new NativeFrameAead(cipher, key) : new NodeFrameAead(cipher, key)
}
