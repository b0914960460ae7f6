import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { VrioError } from '../errors.ts'
import { Delivery } from '../transport/config.ts'
import type { CloseReason, Connection, ConnectionHandlers } from '../transport/connection.ts'
import { type Lender, messageBuffers } from '../transport/message-buffers.ts'
import {
  decodeMessageHeader,
  encodeMessageHeader,
  MESSAGE_HEADER_LENGTH,
  type MessageHeader,
  MessageType,
  newMessageHeader,
} from '../wire/message-header.ts'

/**
 * The authenticated session on top of one connection. The opener (the IOhyp) and the listener
 * (a guest) prove to each other that they hold the guest's key, then every control message carries
 * an HMAC under a key derived for this session only, and a sequence number that must be the next
 * one — so control messages cannot be forged, replayed from an earlier session, or replayed within
 * this one. Block and network data messages carry no tag of their own: below the session, the
 * sealed channel (protocol version 2) authenticates and encrypts every segment under keys this
 * session's nonces feed (Connection.installTrafficKeys); see docs/protocol.md.
 *
 *   opener → listener  Hello  body: nonceO (16)
 *   listener → opener  Auth   body: nonceL (16) | HMAC(key, "vrio guest"  | nonceO | nonceL)
 *   opener → listener  Auth   body:               HMAC(key, "vrio iohyp"  | nonceO | nonceL)
 *   session key = HMAC(key, "vrio session" | nonceO | nonceL)
 *   control message: header (request = sequence number) | JSON | tag(16) where
 *   tag = first 16 bytes of HMAC(session key, direction | header | JSON)
 */

export type SessionRole = 'opener' | 'listener'

export type SessionFailure =
  | 'auth-failed'
  | 'unexpected-message'
  | 'bad-control-tag'
  | 'bad-control-sequence'
  | 'bad-message'
  | 'handshake-timeout'

export interface SessionHandlers {
  authenticated?(): void
  /** A verified control message (decoded JSON). */
  control(message: unknown): void
  /**
   * A block or network message: its decoded header and the whole message. Without a `lender` the
   * message is a view valid during the call only (copy what you keep); with one it is lent: the
   * handler may keep it and gives it back to `lender` once nothing refers to it (or never).
   */
  data?(header: MessageHeader, message: Uint8Array, delivery: Delivery, lender: Lender | undefined): void
  /** The session ended: `failure` says why when authentication or integrity failed. */
  closed?(reason: CloseReason, failure?: SessionFailure): void
  writable?(): void
}

const NONCE_LENGTH = 16
const TAG_LENGTH = 16
const MAC_LENGTH = 32
/** Largest control message JSON, in bytes (UTF-8). */
export const MAX_CONTROL_JSON = 1024 * 1024

type Phase = 'waiting-hello' | 'waiting-auth' | 'waiting-confirm' | 'authenticated' | 'closed'

export class Session {
  readonly role: SessionRole
  readonly connection: Connection
  /** The handlers this session installed on its connection (an Endpoint's accept callback returns them). */
  readonly connectionHandlers: ConnectionHandlers
  failure: SessionFailure | undefined
  /** Data messages of a type this version does not know: dropped. */
  unknownMessages = 0
  private phase: Phase
  private readonly key: Buffer
  private readonly handlers: SessionHandlers
  private readonly ownNonce = randomBytes(NONCE_LENGTH)
  private peerNonce: Buffer | undefined
  private sessionKey: Buffer | undefined
  private sendSequence = 0
  private receiveSequence = 0
  private readonly header = newMessageHeader()
  private readonly rxHeader = newMessageHeader()

  /**
   * Takes over `connection`'s handlers. The opener sends its Hello once the connection is
   * established (at once if it already is).
   */
  constructor(connection: Connection, role: SessionRole, key: Buffer, handlers: SessionHandlers) {
    if (key.length !== 32) throw new VrioError('invalid-argument', 'session keys are 32 bytes')
    this.connection = connection
    this.role = role
    this.key = key
    this.handlers = handlers
    this.phase = role === 'opener' ? 'waiting-auth' : 'waiting-hello'
    this.connectionHandlers = this.makeConnectionHandlers()
    connection.setHandlers(this.connectionHandlers)
    if (role === 'opener' && connection.state === 'established') this.sendHello()
  }

  get authenticated(): boolean {
    return this.phase === 'authenticated'
  }

  /** Sends one control message (reliable, ordered). False when the connection cannot take it now. */
  sendControl(message: unknown): boolean {
    if (this.phase !== 'authenticated') {
      throw new VrioError('not-connected', 'the session is not authenticated yet')
    }
    const json = Buffer.from(JSON.stringify(message))
    if (json.length > MAX_CONTROL_JSON) throw new VrioError('message-size', 'control message too large')
    const msg = Buffer.allocUnsafe(MESSAGE_HEADER_LENGTH + json.length + TAG_LENGTH)
    const h = this.header
    resetHeader(h, MessageType.Control, json.length + TAG_LENGTH)
    h.requestLow = this.sendSequence + 1
    encodeMessageHeader(msg, 0, h)
    json.copy(msg, MESSAGE_HEADER_LENGTH)
    this.controlTag(this.role, msg, MESSAGE_HEADER_LENGTH + json.length).copy(
      msg,
      MESSAGE_HEADER_LENGTH + json.length,
    )
    if (!this.connection.send(msg, Delivery.Ordered)) return false
    this.sendSequence++
    return true
  }

  /** Sends a data message (block or network): header and body as given, not authenticated. */
  sendData(parts: Uint8Array | readonly Uint8Array[], delivery: Delivery): boolean {
    if (this.phase !== 'authenticated') return false
    return this.connection.send(parts, delivery)
  }

  close(): void {
    this.connection.close()
  }

  private makeConnectionHandlers(): ConnectionHandlers {
    return {
      established: () => {
        if (this.role === 'opener') this.sendHello()
      },
      message: (data, delivery, owned) => this.onMessage(data, delivery, owned),
      peerClosed: () => this.connection.close(),
      closed: (reason) => {
        this.phase = 'closed'
        this.handlers.closed?.(reason, this.failure)
      },
      writable: () => this.handlers.writable?.(),
    }
  }

  private onMessage(data: Uint8Array, delivery: Delivery, owned: boolean): void {
    const h = this.rxHeader
    if (decodeMessageHeader(data, 0, data.length, h)) {
      this.fail('bad-message')
      return
    }
    const body = data.subarray(MESSAGE_HEADER_LENGTH)
    switch (this.phase) {
      case 'waiting-hello':
        if (h.type !== MessageType.Hello || body.length !== NONCE_LENGTH || delivery !== Delivery.Ordered) {
          this.fail('unexpected-message')
          return
        }
        this.peerNonce = Buffer.from(body)
        // Sealed channel: epoch-1 keys now; the connection keeps sending epoch 0 (this Auth too)
        // until it has verified a frame of the opener's at epoch 1.
        this.connection.installTrafficKeys(this.peerNonce, this.ownNonce)
        this.sendRaw(MessageType.Auth, [
          this.ownNonce,
          this.proof('vrio guest', this.peerNonce, this.ownNonce),
        ])
        this.phase = 'waiting-confirm'
        return
      case 'waiting-auth': {
        if (h.type !== MessageType.Auth || body.length !== NONCE_LENGTH + MAC_LENGTH) {
          this.fail('unexpected-message')
          return
        }
        const peerNonce = Buffer.from(body.subarray(0, NONCE_LENGTH))
        const expected = this.proof('vrio guest', this.ownNonce, peerNonce)
        if (!timingSafeEqual(expected, body.subarray(NONCE_LENGTH))) {
          this.fail('auth-failed')
          return
        }
        this.peerNonce = peerNonce
        // Sealed channel: from here on (this Auth included) the opener sends under epoch 1.
        this.connection.installTrafficKeys(this.ownNonce, peerNonce)
        this.sendRaw(MessageType.Auth, [this.proof('vrio iohyp', this.ownNonce, peerNonce)])
        this.becomeAuthenticated(this.ownNonce, peerNonce)
        return
      }
      case 'waiting-confirm': {
        const expected = this.proof('vrio iohyp', this.peerNonce!, this.ownNonce)
        if (h.type !== MessageType.Auth || body.length !== MAC_LENGTH || !timingSafeEqual(expected, body)) {
          this.fail(h.type === MessageType.Auth ? 'auth-failed' : 'unexpected-message')
          return
        }
        this.becomeAuthenticated(this.peerNonce!, this.ownNonce)
        return
      }
      case 'authenticated':
        if (h.type === MessageType.Control) {
          this.onControl(data, h)
        } else if (
          h.type === MessageType.BlockRequest ||
          h.type === MessageType.BlockResponse ||
          h.type === MessageType.NetFrame
        ) {
          // A message the connection gave away was reassembled in a buffer from messageBuffers.
          this.handlers.data?.(h, data, delivery, owned ? messageBuffers : undefined)
        } else if (h.type > MessageType.Control) {
          this.unknownMessages++ // a later version's data message: dropped, counted
        } else {
          this.fail('unexpected-message')
        }
        return
      case 'closed':
        return
    }
  }

  private onControl(data: Uint8Array, h: MessageHeader): void {
    const end = data.length - TAG_LENGTH
    if (end < MESSAGE_HEADER_LENGTH) {
      this.fail('bad-message')
      return
    }
    const peer: SessionRole = this.role === 'opener' ? 'listener' : 'opener'
    const tag = this.controlTag(peer, data, end)
    if (!timingSafeEqual(tag, data.subarray(end))) {
      this.fail('bad-control-tag')
      return
    }
    if (h.requestHigh !== 0 || h.requestLow !== this.receiveSequence + 1) {
      this.fail('bad-control-sequence')
      return
    }
    this.receiveSequence++
    let message: unknown
    try {
      message = JSON.parse(Buffer.from(data.subarray(MESSAGE_HEADER_LENGTH, end)).toString('utf8'))
    } catch {
      this.fail('bad-message')
      return
    }
    this.handlers.control(message)
  }

  private sendHello(): void {
    this.sendRaw(MessageType.Hello, [this.ownNonce])
  }

  private sendRaw(type: number, parts: Buffer[]): void {
    let length = 0
    for (const p of parts) length += p.length
    const head = Buffer.allocUnsafe(MESSAGE_HEADER_LENGTH)
    resetHeader(this.header, type, length)
    encodeMessageHeader(head, 0, this.header)
    this.connection.send([head, ...parts], Delivery.Ordered)
  }

  private proof(label: string, openerNonce: Buffer, listenerNonce: Buffer): Buffer {
    return createHmac('sha256', this.key).update(label).update(openerNonce).update(listenerNonce).digest()
  }

  private becomeAuthenticated(openerNonce: Buffer, listenerNonce: Buffer): void {
    this.sessionKey = this.proof('vrio session', openerNonce, listenerNonce)
    this.phase = 'authenticated'
    this.connection.authenticate() // lifts the transport's pre-authentication limits
    this.handlers.authenticated?.()
  }

  /** Tag of a control message sent by `sender`: covers the direction, the header and the JSON. */
  private controlTag(sender: SessionRole, message: Uint8Array, end: number): Buffer {
    return createHmac('sha256', this.sessionKey!)
      .update(sender === 'opener' ? 'o' : 'l')
      .update(message.subarray(0, end))
      .digest()
      .subarray(0, TAG_LENGTH)
  }

  /** Any authentication or integrity failure ends the connection: the opener will try again. */
  private fail(failure: SessionFailure): void {
    if (this.phase === 'closed') return
    this.failure = failure
    this.connection.abort('aborted')
  }
}

function resetHeader(h: MessageHeader, type: number, bodyLength: number): void {
  h.type = type
  h.flags = 0
  h.bodyLength = bodyLength
  h.deviceHigh = 0
  h.deviceLow = 0
  h.requestHigh = 0
  h.requestLow = 0
  h.replyLength = 0
  h.status = 0
}
