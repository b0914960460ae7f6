/**
 * The NBD transmission phase of one connection: requests parsed out of the received bytes, checked,
 * run on the export's BlockDevice and answered (simple or structured replies). Admission (requests
 * and bytes in flight) is counted here; the connection owns the socket. See nbd-server.ts for the
 * commands and limits.
 */
import { VrioError } from '../../errors.ts'
import { deviceExtents, MAX_EXTENTS } from './device.ts'
import {
  BASE_ALLOCATION_ID,
  Command,
  CommandFlag,
  commandName,
  decodeRequest,
  encodeBlockStatusReply,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  encodeStructuredError,
  encodeStructuredNone,
  type Export,
  NBD_MAX_PAYLOAD,
  NbdErrno,
  nbdErrnoForError,
  nbdErrnoName,
  type NbdRequest,
  type NbdRequestCounts,
  newRequest,
  REQUEST_HEADER_LENGTH,
  TransmissionFlag,
} from './nbd-protocol.ts'
import type { Connection } from './nbd-connection.ts'

/** A request between admission and its reply. */
interface Pending {
  type: number
  flags: number
  cookieHigh: number
  cookieLow: number
  offset: number
  length: number
  /** Counted against maxInflightBytes. */
  cost: number
}

/** A write whose payload is still arriving. */
interface Payload {
  request: Pending
  /** Undefined when the payload is being discarded (the request is refused with `errno`). */
  buffer: Buffer | undefined
  filled: number
  errno: number
  message: string
}

export class Transmission {
  readonly export: Export
  /** Requests admitted and not answered, and the payload bytes they count. */
  inflight = 0
  inflightBytes = 0
  /** The write whose payload is arriving now, if one is. */
  payload: Payload | undefined
  private readonly host: Connection
  private readonly structured: boolean
  /** base:allocation is active on this export (BLOCK_STATUS is answered). */
  private readonly allocation: boolean
  private readonly header: NbdRequest = newRequest()
  /** Why the last check refused a request (its errno is what the check returned). */
  private reason = ''

  constructor(host: Connection, exp: Export, structured: boolean, allocation: boolean) {
    this.host = host
    this.export = exp
    this.structured = structured
    this.allocation = allocation
  }

  /** Handles one request (or part of a write payload); false when it needs more bytes or must wait. */
  step(): boolean {
    return this.payload ? this.fillPayload() : this.nextRequest()
  }

  /** One more request of `cost` payload bytes may start. */
  canAdmit(cost: number): boolean {
    const server = this.host.server
    if (this.inflight >= server.maxInflight) return false
    const unsent = this.host.writableLength
    if (this.inflight === 0 && unsent === 0) return true
    return this.inflightBytes + cost + unsent <= server.maxInflightBytes
  }

  /** The client's EOF cut a write payload short: it can never be answered. True if there was one. */
  abandonPayload(): boolean {
    const payload = this.payload
    if (!payload) return false
    this.payload = undefined
    this.inflight--
    this.inflightBytes -= payload.request.cost
    return true
  }

  private nextRequest(): boolean {
    const host = this.host
    if (host.draining || host.rx.length < REQUEST_HEADER_LENGTH) return false
    const r = this.header
    if (!decodeRequest(host.rx.peek(REQUEST_HEADER_LENGTH, host.scratch), 0, r))
      return host.violation('bad request magic')
    if (r.type === Command.Disc) {
      host.rx.skip(REQUEST_HEADER_LENGTH)
      this.export.stats.requests.disconnect++
      host.disconnect()
      return false
    }
    if (r.type === Command.Write && r.length > NBD_MAX_PAYLOAD)
      return host.violation(`write of ${r.length} bytes exceeds the ${NBD_MAX_PAYLOAD}-byte maximum`)
    const cost = r.type === Command.Read || r.type === Command.Write ? Math.min(r.length, NBD_MAX_PAYLOAD) : 0
    if (!this.canAdmit(cost)) return false
    host.rx.skip(REQUEST_HEADER_LENGTH)

    const p: Pending = {
      type: r.type,
      flags: r.flags,
      cookieHigh: r.cookieHigh,
      cookieLow: r.cookieLow,
      offset: r.offset,
      length: r.length,
      cost,
    }
    const exp = this.export
    const counts = exp.stats.requests
    const name = commandName(r.type) as keyof NbdRequestCounts
    if (name in counts) counts[name]++
    else counts.other++
    this.inflight++
    this.inflightBytes += cost
    if (this.inflight > exp.stats.inflightHighWater) exp.stats.inflightHighWater = this.inflight

    if (host.shuttingDown) {
      if (p.type === Command.Write) this.startPayload(p, NbdErrno.ESHUTDOWN, 'the server is shutting down')
      else this.fail(p, NbdErrno.ESHUTDOWN, 'the server is shutting down')
      return true
    }
    switch (p.type) {
      case Command.Read:
        this.read(p)
        break
      case Command.Write: {
        const errno = this.checkWrite(p, CommandFlag.Fua)
        this.startPayload(p, errno, this.reason)
        break
      }
      case Command.Flush:
        this.flush(p)
        break
      case Command.Trim:
        this.trim(p)
        break
      case Command.WriteZeroes:
        this.writeZeroes(p)
        break
      case Command.BlockStatus:
        this.blockStatus(p)
        break
      case Command.Cache:
        this.cache(p)
        break
      default:
        this.fail(p, NbdErrno.EINVAL, `unknown command ${p.type}`)
    }
    return true
  }

  // -------------------------------------------------------------------------------------------
  // Checks: each returns 0, or the errno to answer with (the message in `reason`).

  private refuse(errno: number, reason: string): number {
    this.reason = reason
    return errno
  }

  /** Fails `p` when a check returned an errno; true if it did. */
  private refused(p: Pending, errno: number): boolean {
    if (errno === 0) return false
    this.fail(p, errno, this.reason)
    return true
  }

  /** `flags` may only hold bits from `allowed` (FUA only when advertised, DF only when structured). */
  private checkFlags(p: Pending, allowed: number): number {
    let ok = allowed
    if (!(this.export.flags & TransmissionFlag.SendFua)) ok &= ~CommandFlag.Fua
    if (!this.structured) ok &= ~CommandFlag.Df
    if ((p.flags & ~ok) !== 0)
      return this.refuse(
        NbdErrno.EINVAL,
        `flags 0x${p.flags.toString(16)} are not valid for ${commandName(p.type)}`,
      )
    return 0
  }

  /**
   * The range of READ, WRITE, WRITE_ZEROES, TRIM, CACHE and BLOCK_STATUS: inside the export (past
   * its end: `pastEnd`), and whole blocks when `aligned`.
   */
  private checkRange(p: Pending, aligned: boolean, pastEnd: number = NbdErrno.EINVAL): number {
    const exp = this.export
    if (p.offset + p.length > exp.size)
      return this.refuse(pastEnd, 'the request goes past the end of the export')
    if (aligned && (p.offset % exp.blockSize !== 0 || p.length % exp.blockSize !== 0))
      return this.refuse(NbdErrno.EINVAL, `the request is not aligned to ${exp.blockSize} bytes`)
    return 0
  }

  private checkReadLength(p: Pending): number {
    if (p.length <= NBD_MAX_PAYLOAD) return 0
    return this.refuse(NbdErrno.EINVAL, `reads are limited to ${NBD_MAX_PAYLOAD} bytes`)
  }

  private checkNotEmpty(p: Pending): number {
    return p.length === 0 ? this.refuse(NbdErrno.EINVAL, 'the range is empty') : 0
  }

  private checkWritable(): number {
    return this.export.device.readOnly ? this.refuse(NbdErrno.EPERM, 'the export is read-only') : 0
  }

  /** Checks shared by WRITE and WRITE_ZEROES. */
  private checkWrite(p: Pending, allowedFlags: number): number {
    return (
      this.checkWritable() || this.checkFlags(p, allowedFlags) || this.checkRange(p, true, NbdErrno.ENOSPC)
    )
  }

  // -------------------------------------------------------------------------------------------
  // Commands

  private read(p: Pending): void {
    const exp = this.export
    const flags = CommandFlag.Fua | CommandFlag.Df
    if (this.refused(p, this.checkFlags(p, flags) || this.checkReadLength(p) || this.checkRange(p, true)))
      return
    if (p.length === 0) {
      this.readDone(p, new Uint8Array(0))
      return
    }
    this.call(
      p,
      () => exp.device.read(p.offset, p.length),
      (data: Uint8Array) => this.readDone(p, data),
    )
  }

  private readDone(p: Pending, data: Uint8Array): void {
    if (data.length !== p.length) {
      this.host.server.log?.error('NBD device returned the wrong amount of data', {
        export: this.export.name,
        expected: p.length,
        got: data.length,
      })
      this.fail(p, NbdErrno.EIO, 'the device returned a short read')
      return
    }
    this.export.stats.bytesRead += data.length
    if (this.structured) {
      if (data.length === 0) this.host.send(encodeStructuredNone(p.cookieHigh, p.cookieLow))
      else {
        this.host.send(encodeOffsetDataHeader(p.cookieHigh, p.cookieLow, p.offset, data.length, true))
        this.sendRead(data)
      }
    } else {
      this.host.send(encodeSimpleReply(p.cookieHigh, p.cookieLow, 0))
      if (data.length > 0) this.sendRead(data)
    }
    this.complete(p)
  }

  /** Queues what the device read; once written, a device that pools gets it back (no other does). */
  private sendRead(data: Uint8Array): void {
    const device = this.export.device
    if (device.release) this.host.send(data, () => device.release!(data))
    else this.host.send(data)
  }

  private startPayload(p: Pending, errno: number, message: string): void {
    const payload: Payload = { request: p, buffer: undefined, filled: 0, errno, message }
    const rx = this.host.rx
    if (errno === 0 && p.length > 0) {
      // A payload already here inside one socket chunk is taken as a view of it; else it is
      // gathered into a buffer of the server's pool (fillPayload), given back once written.
      payload.buffer = rx.takeView(p.length)
      if (payload.buffer) payload.filled = p.length
      else payload.buffer = this.host.server.writePayloads.take(p.length)
    }
    this.payload = payload
  }

  /** Moves received bytes into (or past) the current write payload; true once it is complete. */
  private fillPayload(): boolean {
    const payload = this.payload!
    const p = payload.request
    const rx = this.host.rx
    const missing = p.length - payload.filled
    if (missing > 0) {
      if (rx.length === 0) return false
      if (payload.buffer) payload.filled += rx.drainInto(payload.buffer, payload.filled, missing)
      else {
        const n = Math.min(missing, rx.length)
        rx.skip(n)
        payload.filled += n
      }
      if (payload.filled < p.length) return false
    }
    this.payload = undefined
    if (payload.errno) {
      this.fail(p, payload.errno, payload.message)
      return true
    }
    const exp = this.export
    const data = payload.buffer ?? new Uint8Array(0)
    if (data.length === 0) {
      this.ok(p)
      return true
    }
    const fua = (p.flags & CommandFlag.Fua) !== 0
    this.call(
      p,
      () => this.withFua(fua, (nativeFua) => exp.device.write(p.offset, data, nativeFua)),
      () => {
        exp.stats.bytesWritten += data.length
        // Written: the device holds no reference any more (BlockDevice.write). A failed write's
        // buffer is left to the collector, in case a device lets go of it only later.
        this.host.server.writePayloads.giveBack(data)
        this.ok(p)
      },
    )
    return true
  }

  /** Runs `op` with FUA passed through when the device has it, else followed by a flush. */
  private async withFua(fua: boolean, op: (nativeFua: boolean) => Promise<void>): Promise<void> {
    const device = this.export.device
    if (!fua || device.canFua) return op(fua)
    await op(false)
    if (device.canFlush) await device.flush()
  }

  private flush(p: Pending): void {
    const exp = this.export
    if (this.refused(p, this.checkFlags(p, CommandFlag.Fua))) return
    if (!(exp.flags & TransmissionFlag.SendFlush)) {
      this.fail(p, NbdErrno.EINVAL, 'flush is not supported by this export')
      return
    }
    if (p.offset !== 0 || p.length !== 0) {
      this.fail(p, NbdErrno.EINVAL, 'flush offset and length must be zero')
      return
    }
    this.call(
      p,
      () => exp.device.flush(),
      () => this.ok(p),
    )
  }

  private trim(p: Pending): void {
    const exp = this.export
    if (this.refused(p, this.checkWritable())) return
    if (!(exp.flags & TransmissionFlag.SendTrim)) {
      this.fail(p, NbdErrno.EINVAL, 'trim is not supported by this export')
      return
    }
    if (this.refused(p, this.checkFlags(p, CommandFlag.Fua) || this.checkRange(p, false))) return
    // Trim is a hint: an unaligned range is shrunk to the whole blocks inside it.
    const bs = exp.blockSize
    const start = Math.ceil(p.offset / bs) * bs
    const end = Math.floor((p.offset + p.length) / bs) * bs
    if (end <= start) {
      this.ok(p)
      return
    }
    const fua = (p.flags & CommandFlag.Fua) !== 0
    this.call(
      p,
      async () => {
        await exp.device.trim(start, end - start)
        if (fua && exp.device.canFlush) await exp.device.flush()
      },
      () => {
        exp.stats.bytesTrimmed += end - start
        this.ok(p)
      },
    )
  }

  private writeZeroes(p: Pending): void {
    const exp = this.export
    if (!(exp.flags & TransmissionFlag.SendWriteZeroes) && !exp.device.readOnly) {
      this.fail(p, NbdErrno.EINVAL, 'write-zeroes is not supported by this export')
      return
    }
    if (this.refused(p, this.checkWrite(p, CommandFlag.Fua | CommandFlag.NoHole))) return
    if (p.length === 0) {
      this.ok(p)
      return
    }
    const mayTrim = (p.flags & CommandFlag.NoHole) === 0
    const fua = (p.flags & CommandFlag.Fua) !== 0
    this.call(
      p,
      () => this.withFua(fua, (nativeFua) => exp.device.writeZeroes(p.offset, p.length, mayTrim, nativeFua)),
      () => {
        exp.stats.bytesZeroed += p.length
        this.ok(p)
      },
    )
  }

  /**
   * base:allocation for [offset, offset + length): the device's extents, clipped to the range (one
   * with REQ_ONE); they may cover only a prefix of it, as the protocol allows.
   */
  private blockStatus(p: Pending): void {
    const exp = this.export
    if (!this.allocation) {
      this.fail(p, NbdErrno.EINVAL, 'no metadata context was negotiated')
      return
    }
    const flags = CommandFlag.ReqOne
    if (this.refused(p, this.checkFlags(p, flags) || this.checkNotEmpty(p) || this.checkRange(p, false)))
      return
    const one = (p.flags & CommandFlag.ReqOne) !== 0
    this.call(
      p,
      () => deviceExtents(exp.device, p.offset, p.length, one ? 1 : MAX_EXTENTS),
      (extents) => {
        this.host.send(encodeBlockStatusReply(p.cookieHigh, p.cookieLow, BASE_ALLOCATION_ID, extents))
        this.complete(p)
      },
    )
  }

  /** NBD_CMD_CACHE: the device prefetches the range (a hint; nothing to do without prefetch). */
  private cache(p: Pending): void {
    if (this.refused(p, this.checkFlags(p, 0) || this.checkRange(p, false))) return
    const device = this.export.device
    if (p.length === 0 || !device.prefetch) {
      this.ok(p)
      return
    }
    this.call(
      p,
      () => device.prefetch!(p.offset, p.length),
      () => this.ok(p),
    )
  }

  // -------------------------------------------------------------------------------------------
  // Replies

  /** Runs a device operation; a synchronous throw counts as a failure like a rejection. */
  private call<T>(p: Pending, op: () => Promise<T>, done: (value: T) => void): void {
    let promise: Promise<T>
    try {
      promise = op()
    } catch (error) {
      promise = Promise.reject(error)
    }
    promise
      .then(done, (error: unknown) => this.deviceFailed(p, error))
      .catch((error: unknown) => {
        // A bug in the reply path: this connection's state can no longer be trusted.
        this.host.server.log?.error('NBD reply failed', { export: this.export.name, error })
        this.host.destroy('internal error')
      })
  }

  private deviceFailed(p: Pending, error: unknown): void {
    const errno = nbdErrnoForError(error)
    if (!(error instanceof VrioError))
      this.host.server.log?.warn('NBD device failed with an unexpected error', {
        export: this.export.name,
        command: commandName(p.type),
        error,
      })
    const message = error instanceof VrioError ? error.message : 'I/O error in the device'
    this.fail(p, errno, message)
  }

  private ok(p: Pending): void {
    this.host.send(encodeSimpleReply(p.cookieHigh, p.cookieLow, 0))
    this.complete(p)
  }

  private fail(p: Pending, errno: number, message: string): void {
    const errors = this.export.stats.errors
    const name = nbdErrnoName(errno)
    errors[name] = (errors[name] ?? 0) + 1
    if (this.structured) this.host.send(encodeStructuredError(p.cookieHigh, p.cookieLow, errno, message))
    else this.host.send(encodeSimpleReply(p.cookieHigh, p.cookieLow, errno))
    this.complete(p)
  }

  private complete(p: Pending): void {
    this.inflight--
    this.inflightBytes -= p.cost
    this.host.replied()
  }
}
