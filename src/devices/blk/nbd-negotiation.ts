/**
 * The NBD handshake after the greeting: the client's flags, then options (fixed newstyle) until
 * NBD_OPT_EXPORT_NAME or NBD_OPT_GO selects an export. See nbd-server.ts for what is offered.
 */
import type { BlockDevice } from './device.ts'
import type { Connection } from './nbd-connection.ts'
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  CLIENT_FLAGS_LENGTH,
  ClientFlag,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeString,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
  type Export,
  InfoType,
  NBD_MAX_OPTION_LENGTH,
  NBD_MAX_OPTIONS,
  NBD_MAX_PAYLOAD,
  Option,
  OPTION_HEADER_LENGTH,
  OptionReply,
  TransmissionFlag,
} from './nbd-protocol.ts'

const ALLOWED_CLIENT_FLAGS = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes

export class Negotiation {
  private readonly host: Connection
  private greeted = false
  private fixed = false
  private noZeroes = false
  private structured = false
  /** The export base:allocation was selected for (NBD_OPT_SET_META_CONTEXT), if it was. */
  private allocationFor: string | undefined
  private optionCount = 0

  constructor(host: Connection) {
    this.host = host
  }

  /** Handles the client flags or one option; false when it needs more bytes or must wait. */
  step(): boolean {
    return this.greeted ? this.nextOption() : this.clientFlags()
  }

  private clientFlags(): boolean {
    if (this.host.rx.length < CLIENT_FLAGS_LENGTH) return false
    const flags = this.host.rx.peek(CLIENT_FLAGS_LENGTH, this.host.scratch).readUInt32BE(0)
    this.host.rx.skip(CLIENT_FLAGS_LENGTH)
    if ((flags & ~ALLOWED_CLIENT_FLAGS) !== 0)
      return this.host.violation(`unknown client flags 0x${flags.toString(16)}`)
    this.fixed = (flags & ClientFlag.FixedNewstyle) !== 0
    this.noZeroes = (flags & ClientFlag.NoZeroes) !== 0
    this.greeted = true
    return true
  }

  private nextOption(): boolean {
    if (this.host.rx.length < OPTION_HEADER_LENGTH) return false
    const header = decodeOptionHeader(this.host.rx.peek(OPTION_HEADER_LENGTH, this.host.scratch))
    if (!header) return this.host.violation('bad option magic')
    if (header.length > NBD_MAX_OPTION_LENGTH)
      return this.host.violation(`option ${header.option} carries ${header.length} bytes`)
    if (this.host.rx.length < OPTION_HEADER_LENGTH + header.length) return false
    this.host.rx.skip(OPTION_HEADER_LENGTH)
    const data = this.host.rx.take(header.length)
    if (++this.optionCount > NBD_MAX_OPTIONS) return this.host.violation('too many options')
    if (!this.fixed && header.option !== Option.ExportName)
      return this.host.violation(`option ${header.option} from a client without fixed newstyle`)
    this.option(header.option, data)
    return true
  }

  private option(option: number, data: Buffer): void {
    const reply = (type: number, payload?: Uint8Array | string) =>
      this.host.send(encodeOptionReply(option, type, payload))
    if (this.host.shuttingDown && option !== Option.Abort && option !== Option.ExportName) {
      reply(OptionReply.ErrShutdown, 'the server is shutting down')
      return
    }
    switch (option) {
      case Option.ExportName: {
        const name = decodeString(data)
        const device = name === undefined || this.host.shuttingDown ? undefined : this.lookup(name)
        if (name === undefined || !device) {
          // EXPORT_NAME cannot carry an error: the spec's answer is to drop the connection.
          this.host.server.log?.info('NBD client asked for an unknown export', { name })
          this.host.end()
          return
        }
        const exp = this.describe(name, device)
        this.host.send(encodeExportNameReply(exp.size, exp.flags, this.noZeroes))
        this.attach(exp)
        return
      }
      case Option.Abort:
        reply(OptionReply.Ack)
        this.host.end()
        return
      case Option.List: {
        if (data.length !== 0) {
          reply(OptionReply.ErrInvalid, 'NBD_OPT_LIST takes no data')
          return
        }
        const list = this.host.server.options.list
        if (!list) {
          reply(OptionReply.ErrPolicy, 'listing exports is disabled on this server')
          return
        }
        let names: string[]
        try {
          names = [...list()]
        } catch (error) {
          this.host.server.log?.warn('NBD export listing failed', { error })
          reply(OptionReply.ErrPlatform, 'cannot list exports')
          return
        }
        for (const name of names) reply(OptionReply.Server, encodeServerEntry(name))
        reply(OptionReply.Ack)
        return
      }
      case Option.Info:
      case Option.Go: {
        const request = decodeInfoRequest(data)
        if (!request.ok) {
          reply(OptionReply.ErrInvalid, request.message)
          return
        }
        const device = this.lookup(request.name)
        if (!device) {
          reply(OptionReply.ErrUnknown, `no export named ${JSON.stringify(request.name)}`)
          return
        }
        const exp = this.describe(request.name, device)
        reply(OptionReply.Info, encodeInfoExport(exp.size, exp.flags))
        // Sent even when not asked for: clients must ignore what they did not request, and the ones
        // that matter (qemu, libnbd) ask for it anyway.
        reply(
          OptionReply.Info,
          encodeInfoBlockSize(exp.blockSize, Math.max(exp.blockSize, 4096), NBD_MAX_PAYLOAD),
        )
        if (request.requests.includes(InfoType.Name))
          reply(OptionReply.Info, encodeInfoString(InfoType.Name, request.name))
        reply(OptionReply.Ack)
        if (option === Option.Go) this.attach(exp)
        return
      }
      case Option.StructuredReply:
        if (data.length !== 0) {
          reply(OptionReply.ErrInvalid, 'NBD_OPT_STRUCTURED_REPLY takes no data')
          return
        }
        this.structured = true
        reply(OptionReply.Ack)
        return
      case Option.ListMetaContext:
      case Option.SetMetaContext: {
        if (!this.structured) {
          reply(OptionReply.ErrInvalid, 'structured replies must be negotiated first')
          return
        }
        const request = decodeMetaContextRequest(data)
        if (!request.ok) {
          reply(OptionReply.ErrInvalid, request.message)
          return
        }
        if (!this.lookup(request.name)) {
          reply(OptionReply.ErrUnknown, `no export named ${JSON.stringify(request.name)}`)
          return
        }
        // One context exists: base:allocation. LIST matches it by its full name, by its namespace
        // ('base:') or with no query at all; SET selects it by its full name only. Queries for
        // other namespaces match nothing (they are not errors).
        const set = option === Option.SetMetaContext
        const wanted = request.queries.some((q) =>
          set ? q === BASE_ALLOCATION : q === BASE_ALLOCATION || q === 'base:',
        )
        if (wanted || (!set && request.queries.length === 0))
          reply(OptionReply.MetaContext, encodeMetaContext(set ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION))
        // A SET replaces what an earlier one selected.
        if (set) this.allocationFor = wanted ? request.name : undefined
        reply(OptionReply.Ack)
        return
      }
      case Option.StartTls:
        reply(OptionReply.ErrUnsup, 'TLS is not supported on this unix socket')
        return
      default:
        reply(OptionReply.ErrUnsup, `option ${option} is not supported`)
        return
    }
  }

  private lookup(name: string): BlockDevice | undefined {
    try {
      return this.host.server.options.lookup(name)
    } catch (error) {
      this.host.server.log?.warn('NBD export lookup failed', { name, error })
      return undefined
    }
  }

  private describe(name: string, device: BlockDevice): Export {
    const writable = !device.readOnly
    let flags = TransmissionFlag.HasFlags
    if (device.readOnly) flags |= TransmissionFlag.ReadOnly
    if (device.canFlush) flags |= TransmissionFlag.SendFlush
    if (writable && (device.canFua || device.canFlush)) flags |= TransmissionFlag.SendFua
    if (writable && device.canTrim) flags |= TransmissionFlag.SendTrim
    if (writable && device.canWriteZeroes) flags |= TransmissionFlag.SendWriteZeroes
    if (this.structured) flags |= TransmissionFlag.SendDf
    if (this.host.server.multiConn) flags |= TransmissionFlag.CanMultiConn
    // Cache is a hint: answered after the device's prefetch, or at once when it has none.
    flags |= TransmissionFlag.SendCache
    // An odd-sized device (a backing file whose size is not a multiple of its block size) is
    // served byte-granular, so its tail is reachable: NBD clients round an export down to its
    // minimum block size.
    const blockSize = device.blockSize > 0 && device.size % device.blockSize === 0 ? device.blockSize : 1
    return {
      name,
      device,
      size: device.size,
      blockSize,
      flags,
      stats: this.host.server.statsFor(name),
    }
  }

  private attach(exp: Export): void {
    // Contexts are selected for one export: a GO to another one has none.
    this.host.enterTransmission(exp, this.structured, this.structured && this.allocationFor === exp.name)
  }
}
