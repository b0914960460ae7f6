/**
 * The sealed channel's key schedule, replay window and per-connection key state (protocol
 * version 2; docs/protocol.md, "Sealed segments"). Pure computation: the AEAD is injected.
 */
import { hkdfSync } from 'node:crypto'
import { VrioError } from '../errors.ts'
import { IP_OFFSET, type TcpFrame } from '../wire/frame.ts'
import { SEAL_TAG_OFFSET, type TcpOptions } from '../wire/tcp.ts'
import {
  createFrameAead,
  type FrameAead,
  type FrameAeadFactory,
  type FrameSource,
  SEAL_KEY_LENGTH,
  SEAL_TAG_BYTES,
  type SealCipher,
} from './aead.ts'

/** Frames a replay window remembers below the highest verified counter. */
export const REPLAY_WINDOW = 1024

const EMPTY = Buffer.alloc(0)
const SALT_HANDSHAKE = Buffer.from('vrio2 hs')
const SALT_TRAFFIC = Buffer.from('vrio2 traffic')
const INFO_REKEY = Buffer.from('vrio2 rekey')
const O = Buffer.from('o')
const L = Buffer.from('l')

function hkdf(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, SEAL_KEY_LENGTH))
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4)
  b.writeUInt32BE(n >>> 0)
  return b
}

/** opener IPv4 ‖ listener IPv4 ‖ opener port ‖ listener port ‖ ISS of the opener (16 bytes). */
export function sealIdentity(
  openerIp: number,
  listenerIp: number,
  openerPort: number,
  listenerPort: number,
  issOpener: number,
): Buffer {
  const b = Buffer.allocUnsafe(16)
  b.writeUInt32BE(openerIp >>> 0, 0)
  b.writeUInt32BE(listenerIp >>> 0, 4)
  b.writeUInt16BE(openerPort, 8)
  b.writeUInt16BE(listenerPort, 10)
  b.writeUInt32BE(issOpener >>> 0, 12)
  return b
}

/** Epoch 0, opener → listener: seals the SYN and every opener frame until epoch 1. */
function openerHandshakeKey(psk: Uint8Array, identity: Uint8Array): Buffer {
  return hkdf(psk, SALT_HANDSHAKE, Buffer.concat([identity, O]))
}

/** Epoch 0, listener → opener. */
function listenerHandshakeKey(psk: Uint8Array, identity: Uint8Array, issListener: number): Buffer {
  return hkdf(psk, SALT_HANDSHAKE, Buffer.concat([identity, u32(issListener), L]))
}

/** Epoch 1 keys of both directions, from the session's Hello and Auth nonces. */
function trafficKeys(
  psk: Uint8Array,
  identity: Uint8Array,
  issListener: number,
  nonceO: Uint8Array,
  nonceL: Uint8Array,
): { opener: Buffer; listener: Buffer } {
  const s = hkdf(psk, SALT_TRAFFIC, Buffer.concat([identity, u32(issListener), nonceO, nonceL]))
  const keys = { opener: hkdf(s, EMPTY, O), listener: hkdf(s, EMPTY, L) }
  s.fill(0)
  return keys
}

/** K(n+1) from K(n), per direction. */
function nextEpochKey(key: Uint8Array): Buffer {
  return hkdf(key, EMPTY, INFO_REKEY)
}

/**
 * The 64-bit counter (as an exact JS number) whose low 32 bits are `low`, nearest to `highest`,
 * the highest counter verified so far (-1: none, then the high bits are taken as zero).
 */
export function reconstructCounter(low: number, highest: number): number {
  if (highest < 0) return low >>> 0
  const base = highest - (highest % 0x1_0000_0000)
  let c = base + (low >>> 0)
  if (c > highest + 0x8000_0000 && c >= 0x1_0000_0000) c -= 0x1_0000_0000
  else if (c + 0x8000_0000 < highest) c += 0x1_0000_0000
  return c
}

/**
 * A sliding window over the last REPLAY_WINDOW counters (WireGuard's, RFC 6479's): `check` before
 * verifying, `update` after.
 */
export class ReplayWindow {
  /** Highest counter accepted, -1 before the first. */
  highest = -1
  private readonly bits = new Uint32Array(REPLAY_WINDOW / 32)

  /** Whether `counter` is new: above the highest, or inside the window and not seen. */
  check(counter: number): boolean {
    if (counter > this.highest) return true
    if (this.highest - counter >= REPLAY_WINDOW) return false
    const i = counter % REPLAY_WINDOW
    return (this.bits[i >>> 5] & (1 << (i & 31))) === 0
  }

  /** Copies the window into `highest` (returned) and `bits` (REPLAY_WINDOW / 32 words): for the fast path. */
  exportTo(bits: Uint32Array): number {
    bits.set(this.bits)
    return this.highest
  }

  /** Takes the window back from the fast path (see exportTo). */
  importFrom(highest: number, bits: Uint32Array): void {
    this.highest = highest
    this.bits.set(bits)
  }

  update(counter: number): void {
    if (counter > this.highest) {
      if (counter - this.highest >= REPLAY_WINDOW) this.bits.fill(0)
      else {
        for (let c = this.highest + 1; c <= counter; c++) {
          const i = c % REPLAY_WINDOW
          this.bits[i >>> 5] &= ~(1 << (i & 31))
        }
      }
      this.highest = counter
    }
    const i = counter % REPLAY_WINDOW
    this.bits[i >>> 5] |= 1 << (i & 31)
  }
}

/** Counters of the sealed channel, in connection and endpoint stats. */
export interface SealCounters {
  /** Frames whose tag did not verify (forged, corrupted, wrong key). */
  authFailed: number
  /** Frames whose counter was already seen or fell below the replay window. */
  replayed: number
  /** Frames of a sealed connection without a SEAL option. */
  unsealed: number
  /** Frames sealed under an epoch we hold no key for. */
  badEpoch: number
  /** SYN or SYN-ACK of the other mode (sealed against plaintext, or another cipher). */
  modeMismatch: number
  /** Epochs this side moved to after the first traffic epoch (sending). */
  rekeys: number
  /** Payload frames that failed verification alone and were staged as pieces of a split record. */
  piecesStaged: number
  /** Records rebuilt from staged pieces that verified (see rejoin.ts). */
  recordsRejoined: number
}

export function newSealCounters(): SealCounters {
  return {
    authFailed: 0,
    replayed: 0,
    unsealed: 0,
    badEpoch: 0,
    modeMismatch: 0,
    rekeys: 0,
    piecesStaged: 0,
    recordsRejoined: 0,
  }
}

/** The drop-counter names (as in `drops` records of the control API) of the SealCounters fields. */
export const SEAL_DROP_NAMES = {
  authFailed: 'auth-failed',
  replayed: 'replayed',
  unsealed: 'unsealed',
  badEpoch: 'bad-epoch',
  modeMismatch: 'mode-mismatch',
} as const

/** Adds the non-zero drop counters of `c` to `drops` under their names (SEAL_DROP_NAMES). */
export function addSealDrops(drops: Record<string, number>, c: SealCounters): void {
  for (const [field, name] of Object.entries(SEAL_DROP_NAMES)) {
    const n = c[field as keyof typeof SEAL_DROP_NAMES]
    if (n > 0) drops[name] = (drops[name] ?? 0) + n
  }
}

/** Why a frame was refused, as the SealCounters field that counts it. */
export type SealRejection = 'authFailed' | 'replayed' | 'unsealed' | 'badEpoch'

/** See ChannelSeal.steady. */
export interface SteadyKeys {
  txKey: Uint8Array
  txEpoch: number
  txCounter: number
  txBytes: number
  rekeyAfterFrames: number
  rekeyAfterBytes: number
  rxKey: Uint8Array
  rxEpoch: number
  rxHighest: number
}

interface TxKey {
  epoch: number
  key: Buffer
  aead: FrameAead
  counter: number
  bytes: number
}

interface RxKey {
  epoch: number
  key: Buffer
  aead: FrameAead
  window: ReplayWindow
}

export interface ChannelSealInit {
  role: 'opener' | 'listener'
  psk: Uint8Array
  cipher: SealCipher
  /** See sealIdentity. */
  identity: Buffer
  rekeyAfterFrames: number
  rekeyAfterBytes: number
  factory?: FrameAeadFactory
}

/**
 * The keys of one sealed connection, both directions. Sending: `prepare` (picks epoch and
 * counter, rekeys when due, fills the SEAL option) before the frame is encoded, `seal` after.
 * Receiving: `open` verifies and decrypts a decoded frame in place, or says why not.
 */
export class ChannelSeal {
  readonly role: 'opener' | 'listener'
  readonly cipher: SealCipher
  private readonly psk: Buffer
  private readonly identity: Buffer
  private readonly factory: FrameAeadFactory
  private readonly rekeyAfterFrames: number
  private readonly rekeyAfterBytes: number
  private counters: SealCounters = newSealCounters()
  private issListener = -1
  private tx: TxKey | undefined
  /** The listener's epoch-1 sending key, used once the opener has been seen at epoch 1. */
  private pendingTx: TxKey | undefined
  private prev: RxKey | undefined
  private cur: RxKey | undefined
  private next: RxKey | undefined
  private trafficInstalled = false
  /** The key and counter `prepare` chose for the frame being built. */
  private sealing: TxKey | undefined
  private sealingCounter = 0

  constructor(init: ChannelSealInit) {
    if (init.psk.length !== SEAL_KEY_LENGTH) {
      throw new VrioError('invalid-argument', 'a sealed connection needs the 32-byte key of its guest')
    }
    this.role = init.role
    this.cipher = init.cipher
    this.psk = Buffer.from(init.psk)
    this.identity = init.identity
    this.factory = init.factory ?? createFrameAead
    this.rekeyAfterFrames = init.rekeyAfterFrames
    this.rekeyAfterBytes = init.rekeyAfterBytes
    const k0o = openerHandshakeKey(this.psk, this.identity)
    if (this.role === 'opener') this.tx = this.txKey(0, k0o)
    else this.cur = this.rxKey(0, k0o)
  }

  /** Where the counters go (the connection's stats). */
  bindCounters(counters: SealCounters): void {
    this.counters = counters
  }

  /** The listener learns its own initial sequence number: its epoch-0 sending key. */
  bindListenerIss(iss: number): void {
    this.issListener = iss >>> 0
    this.tx = this.txKey(0, listenerHandshakeKey(this.psk, this.identity, this.issListener))
  }

  /**
   * Installs the epoch-1 keys from the session's nonces. The opener sends under them at once; the
   * listener once it has verified a frame of the opener's at epoch 1.
   */
  installTrafficKeys(nonceO: Uint8Array, nonceL: Uint8Array): void {
    if (this.trafficInstalled || this.issListener < 0) return
    this.trafficInstalled = true
    const k = trafficKeys(this.psk, this.identity, this.issListener, nonceO, nonceL)
    const own = this.role === 'opener' ? k.opener : k.listener
    const peer = this.role === 'opener' ? k.listener : k.opener
    if (this.cur && this.cur.epoch === 0) {
      this.next?.aead.destroy()
      this.next = this.rxKey(1, peer)
    }
    if (this.role === 'opener') {
      this.tx?.aead.destroy()
      this.tx = this.txKey(1, own)
    } else {
      this.pendingTx = this.txKey(1, own)
    }
  }

  /** The epoch frames are sent under now (for tests and status). */
  get sendEpoch(): number {
    return this.tx?.epoch ?? -1
  }

  get receiveEpoch(): number {
    return this.cur?.epoch ?? -1
  }

  /**
   * The keys of the steady state (one sending and one current receiving key, both of a traffic
   * epoch, no key change under way), for a native fast path to seal and open with while it holds
   * the connection; undefined otherwise. The receive window goes into `bits` (see ReplayWindow.exportTo).
   */
  steady(bits: Uint32Array): SteadyKeys | undefined {
    const t = this.tx
    const r = this.cur
    if (!t || !r || t.epoch < 1 || r.epoch < 1 || this.pendingTx || this.next) return undefined
    if (t.counter >= this.rekeyAfterFrames || t.bytes >= this.rekeyAfterBytes) return undefined
    return {
      txKey: t.key,
      txEpoch: t.epoch,
      txCounter: t.counter,
      txBytes: t.bytes,
      rekeyAfterFrames: this.rekeyAfterFrames,
      rekeyAfterBytes: this.rekeyAfterBytes,
      rxKey: r.key,
      rxEpoch: r.epoch,
      rxHighest: r.window.exportTo(bits),
    }
  }

  /** The fast path gives the steady state back: the counters it advanced, the receive window. */
  adoptSteady(txCounter: number, txBytes: number, rxHighest: number, bits: Uint32Array): void {
    this.tx!.counter = txCounter
    this.tx!.bytes = txBytes
    this.cur!.window.importFrom(rxHighest, bits)
  }

  /** Fills `opts.seal` for the next frame (payload of `payloadLength` bytes). */
  prepare(opts: TcpOptions, payloadLength: number): void {
    let t = this.tx
    if (!t) throw new VrioError('internal', 'sealed frame before the sending key is known')
    if (t.epoch >= 1 && (t.counter >= this.rekeyAfterFrames || t.bytes >= this.rekeyAfterBytes)) {
      const next = this.txKey(t.epoch + 1, nextEpochKey(t.key))
      t.aead.destroy()
      t.key.fill(0)
      this.tx = t = next
      this.counters.rekeys++
    }
    this.sealing = t
    this.sealingCounter = t.counter
    t.counter++
    t.bytes += payloadLength
    opts.seal.present = true
    opts.seal.epoch = t.epoch & 0xff
    opts.seal.counter = this.sealingCounter >>> 0
  }

  /**
   * Seals the encoded frame (checksum not yet computed) whose SEAL option `prepare` filled. With
   * `src`, the payload is encrypted from `src[srcOffset...]` — or from the concatenation of the
   * chunks `src` at `srcOffset` — into the frame (see FrameAead.seal); without, in place.
   */
  seal(frame: Uint8Array, f: TcpFrame, payloadOffset: number, src?: FrameSource, srcOffset = 0): void {
    const t = this.sealing!
    const tag = f.tcp.options.seal.offset + SEAL_TAG_OFFSET
    if (src) {
      t.aead.seal(
        frame,
        IP_OFFSET,
        f.tcpOffset,
        payloadOffset,
        frame.length,
        tag,
        this.sealingCounter,
        src,
        srcOffset,
      )
    } else {
      t.aead.seal(frame, IP_OFFSET, f.tcpOffset, payloadOffset, frame.length, tag, this.sealingCounter)
    }
  }

  /**
   * Verifies a decoded frame and decrypts its payload in place. Returns undefined when it may be
   * processed, else the counter that counts its drop (already incremented).
   */
  open(frame: Uint8Array, f: TcpFrame): SealRejection | undefined {
    const why = this.verify(frame, f, false)
    if (why) this.counters[why]++
    return why
  }

  /**
   * `open` without counting the drop (the caller does). With `restore`, a frame that fails
   * 'authFailed' gets its ciphertext back (the payload is encrypted again under the same key and
   * counter: one more cipher pass), so that it can be staged as a piece of a split record.
   */
  tryOpen(frame: Uint8Array, f: TcpFrame, restore: boolean): SealRejection | undefined {
    return this.verify(frame, f, restore)
  }

  /**
   * `tryOpen` that decrypts the payload into `dst[dstOffset, dstOffset + payloadLength)` (where the
   * receiver would copy it: the cipher pass is the copy) and leaves the frame as it came, so a
   * frame that fails is still ciphertext (no restore pass). Those `dst` bytes are written even when
   * the frame is refused: pass only memory that holds nothing yet.
   */
  tryOpenInto(frame: Uint8Array, f: TcpFrame, dst: Uint8Array, dstOffset: number): SealRejection | undefined {
    return this.verify(frame, f, false, dst, dstOffset)
  }

  /** Forgets every key (the connection ended). */
  destroy(): void {
    for (const k of [this.tx, this.pendingTx, this.prev, this.cur, this.next]) {
      k?.aead.destroy()
      k?.key.fill(0)
    }
    this.tx = this.pendingTx = this.prev = this.cur = this.next = undefined
    this.psk.fill(0)
  }

  private verify(
    frame: Uint8Array,
    f: TcpFrame,
    restore: boolean,
    dst?: Uint8Array,
    dstOffset = 0,
  ): SealRejection | undefined {
    const s = f.tcp.options.seal
    if (!s.present) return 'unsealed'
    if (!this.cur) {
      // The opener before the SYN-ACK: its sequence number is the listener's ISS the key needs.
      if (this.role !== 'opener' || s.epoch !== 0) return 'badEpoch'
      const candidate = this.rxKey(0, listenerHandshakeKey(this.psk, this.identity, f.tcp.seq))
      const why = this.verifyWith(candidate, frame, f, restore, dst, dstOffset)
      if (why) {
        candidate.aead.destroy()
        return why
      }
      this.cur = candidate
      this.issListener = f.tcp.seq >>> 0
      return undefined
    }
    let k: RxKey | undefined
    if ((this.cur.epoch & 0xff) === s.epoch) k = this.cur
    else if (this.prev && (this.prev.epoch & 0xff) === s.epoch) k = this.prev
    else if (((this.cur.epoch + 1) & 0xff) === s.epoch) {
      if (!this.next && this.cur.epoch >= 1)
        this.next = this.rxKey(this.cur.epoch + 1, nextEpochKey(this.cur.key))
      k = this.next
    }
    if (!k) return 'badEpoch'
    const why = this.verifyWith(k, frame, f, restore, dst, dstOffset)
    if (why) return why
    if (k === this.next) {
      if (this.prev) {
        this.prev.aead.destroy()
        this.prev.key.fill(0)
      }
      this.prev = this.cur
      this.cur = k
      this.next = undefined
      if (this.role === 'listener' && this.pendingTx && k.epoch >= 1) {
        this.tx?.aead.destroy()
        this.tx = this.pendingTx
        this.pendingTx = undefined
      }
    }
    return undefined
  }

  private verifyWith(
    k: RxKey,
    frame: Uint8Array,
    f: TcpFrame,
    restore: boolean,
    dst: Uint8Array | undefined,
    dstOffset: number,
  ): SealRejection | undefined {
    const counter = reconstructCounter(f.tcp.options.seal.counter, k.window.highest)
    if (!k.window.check(counter)) return 'replayed'
    const tag = f.tcp.options.seal.offset + SEAL_TAG_OFFSET
    const end = f.payloadOffset + f.payloadLength
    const ok = dst
      ? k.aead.open(frame, IP_OFFSET, f.tcpOffset, f.payloadOffset, end, tag, counter, dst, dstOffset)
      : k.aead.open(frame, IP_OFFSET, f.tcpOffset, f.payloadOffset, end, tag, counter)
    if (!ok) {
      if (restore && !dst && f.payloadLength > 0) {
        // Counter-mode: encrypting the failed decryption under the same key and nonce gives the
        // ciphertext back; seal writes a tag, the received one is put back.
        const received = Buffer.from(frame.subarray(tag, tag + SEAL_TAG_BYTES))
        k.aead.seal(frame, IP_OFFSET, f.tcpOffset, f.payloadOffset, end, tag, counter)
        frame.set(received, tag)
      }
      return 'authFailed'
    }
    k.window.update(counter)
    return undefined
  }

  private txKey(epoch: number, key: Buffer): TxKey {
    return { epoch, key, aead: this.factory(this.cipher, key), counter: 0, bytes: 0 }
  }

  private rxKey(epoch: number, key: Buffer): RxKey {
    return { epoch, key, aead: this.factory(this.cipher, key), window: new ReplayWindow() }
  }
}
