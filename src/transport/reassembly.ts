import type { AbandonedMessages } from './abandoned.ts'
import { Delivery } from './config.ts'
import { takeMessageBuffer } from './message-buffers.ts'

/** A message being reassembled from several segments, by receiver stream position. */
export interface InMessage {
  start: number
  end: number
  flags: number
  buffer: Uint8Array
  /**
   * Bytes of `buffer` written from this message's own segments. Positions can also become
   * "received" through another message's segment or a Skip that claims them (only a hostile
   * peer does that); such a message is never delivered, since part of its buffer was never
   * written (it would carry a recycled buffer's old bytes).
   */
  filled: number
  firstAt: number
}

/**
 * The messages a connection is reassembling: by start position, with the bytes they hold and the
 * ordered ones in stream order (delivered as the stream passes their end). What is received where
 * (the receive space) stays with the connection; this holds only the messages' memory.
 */
export class Reassembly {
  private readonly byStart = new Map<number, InMessage>()
  /** Ordered messages in reassembly, by start: delivered in this order. */
  private readonly ordered: InMessage[] = []
  /** Bytes held, all messages together. */
  bytes = 0
  /** The earliest time a best-effort message may time out (Infinity: none held). */
  expiresAt = Number.POSITIVE_INFINITY

  get size(): number {
    return this.byStart.size
  }

  get(start: number): InMessage | undefined {
    return this.byStart.get(start)
  }

  /** The message held, when there is exactly one. */
  sole(): InMessage | undefined {
    if (this.byStart.size !== 1) return undefined
    for (const m of this.byStart.values()) return m
    return undefined
  }

  /**
   * A new message of `[start, end)` with an uninitialised buffer (delivered only once every byte is
   * written): `buffer` (end - start bytes from messageBuffers) when given, else one taken now.
   */
  open(
    start: number,
    end: number,
    flags: number,
    now: number,
    timeout: number,
    buffer?: Uint8Array,
  ): InMessage {
    const m: InMessage = {
      start,
      end,
      flags,
      buffer: buffer ?? takeMessageBuffer(end - start),
      filled: 0,
      firstAt: now,
    }
    this.byStart.set(start, m)
    this.bytes += end - start
    if (flags === Delivery.Ordered) {
      const list = this.ordered
      let i = list.length
      while (i > 0 && list[i - 1].start > start) i--
      list.splice(i, 0, m)
    } else if (flags === Delivery.BestEffort) {
      this.expiresAt = Math.min(this.expiresAt, now + timeout)
    }
    return m
  }

  /** Forgets `m` (its buffer is then the caller's, or garbage). */
  free(m: InMessage): void {
    this.byStart.delete(m.start)
    this.bytes -= m.end - m.start
    if (m.flags === Delivery.Ordered) {
      const i = this.ordered.indexOf(m)
      if (i >= 0) this.ordered.splice(i, 1)
    }
  }

  /** The first ordered message wholly below `position`, forgotten; undefined when there is none. */
  takeOrderedBelow(position: number): InMessage | undefined {
    const list = this.ordered
    if (list.length === 0 || list[0].end > position) return undefined
    const m = list.shift()!
    this.byStart.delete(m.start)
    this.bytes -= m.end - m.start
    return m
  }

  /**
   * Gives up on the best-effort messages older than `timeout` (added to `abandoned`, counted in
   * `stats`); sets `expiresAt` for the rest.
   */
  expire(
    now: number,
    timeout: number,
    abandoned: AbandonedMessages,
    stats: { reassemblyTimeouts: number },
  ): void {
    let next = Number.POSITIVE_INFINITY
    for (const m of this.byStart.values()) {
      if (m.flags !== Delivery.BestEffort) continue
      if (now - m.firstAt >= timeout) {
        this.free(m)
        abandoned.add(m.start, m.end)
        stats.reassemblyTimeouts++
      } else {
        next = Math.min(next, m.firstAt + timeout)
      }
    }
    this.expiresAt = next
  }

  clear(): void {
    this.byStart.clear()
    this.ordered.length = 0
    this.bytes = 0
    this.expiresAt = Number.POSITIVE_INFINITY
  }
}
