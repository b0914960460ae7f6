import type { ConnectionOptions } from '../transport/config.ts'
import type { Address, Connection, ConnectionHandlers } from '../transport/connection.ts'
import { Endpoint } from '../transport/endpoint.ts'
import type { FrameBatch, FrameChannel } from './frame-channel.ts'

export interface LinkDriverOptions {
  channel: FrameChannel
  mac: number
  ip: number
  listenPort?: number
  accept?: (remote: Address, connection: Connection) => ConnectionHandlers | undefined
  options?: Partial<ConnectionOptions>
}

/**
 * Runs a sans-I/O Endpoint over a real link: received batches go in (one ACK flush per batch),
 * frames the transport emits are collected and handed to the kernel in one sendmmsg per turn of the
 * event loop, and one timer follows the endpoint's next deadline.
 */
export class LinkDriver {
  readonly endpoint: Endpoint
  /** Frames the kernel refused (send buffer full): the transport recovers them like losses. */
  sendRefused = 0
  private readonly channel: FrameChannel
  private readonly outbox: Uint8Array[] = []
  private flushQueued = false
  private timer: NodeJS.Timeout | undefined
  private timerAt = Number.POSITIVE_INFINITY
  private stopped = false

  constructor(o: LinkDriverOptions) {
    this.channel = o.channel
    this.endpoint = new Endpoint({
      mac: o.mac,
      ip: o.ip,
      sink: (frame) => this.enqueue(frame),
      listenPort: o.listenPort,
      accept: o.accept,
      options: o.options,
    })
    this.channel.onBatch((batch) => this.onBatch(batch))
  }

  connect(remote: Address, handlers: ConnectionHandlers): Connection {
    const c = this.endpoint.connect(remote, handlers)
    this.flush()
    return c
  }

  /** Sends everything queued now and re-arms the timer; call after application sends outside a batch if latency matters. */
  flush(): void {
    this.flushQueued = false
    if (this.stopped || this.channel.closed) return
    if (this.outbox.length > 0) {
      const sent = this.channel.send(this.outbox)
      this.sendRefused += this.outbox.length - sent
      this.outbox.length = 0
    }
    this.schedule()
  }

  /**
   * Aborts every connection (peers get RSTs), sends that, stops the timer. With `silent`, nothing
   * is sent: the link just goes quiet, as when a process dies. The channel stays open.
   */
  stop(options: { silent?: boolean } = {}): void {
    if (!options.silent) {
      this.endpoint.close()
      this.flush()
    }
    this.stopped = true
    this.outbox.length = 0
    if (this.timer) clearTimeout(this.timer)
  }

  private onBatch(batch: FrameBatch): void {
    if (this.stopped) return
    for (let i = 0; i < batch.count; i++) this.endpoint.receive(batch.frame(i))
    this.endpoint.flush()
    this.flush()
  }

  private enqueue(frame: Uint8Array): void {
    this.outbox.push(frame)
    if (!this.flushQueued) {
      this.flushQueued = true
      queueMicrotask(() => this.flush())
    }
  }

  private schedule(): void {
    const at = this.endpoint.nextDeadline()
    if (at === this.timerAt) return
    if (this.timer) clearTimeout(this.timer)
    this.timerAt = at
    if (at === Number.POSITIVE_INFINITY) {
      this.timer = undefined
      return
    }
    this.timer = setTimeout(() => this.onTimer(), Math.max(0, Math.ceil(at - performance.now())))
  }

  private onTimer(): void {
    this.timer = undefined
    this.timerAt = Number.POSITIVE_INFINITY
    if (this.stopped) return
    this.endpoint.tick()
    this.flush()
  }
}
