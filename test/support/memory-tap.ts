/**
 * In-memory stand-ins for the kernel's frame channels and `ip link`, so NIC kinds, registries and
 * both daemons run in unit tests without root. A MemoryChannel delivers what it sends to its peer
 * (another MemoryChannel, or nothing: then frames are only recorded), in a later event, as the
 * kernel does, one batch per send.
 */
import type { LinkAccess } from '../../src/daemon/daemon-link.ts'
import { FrameBatch, type FrameChannel } from '../../src/io/frame-channel.ts'
import type { NetLinks, TapQueue } from '../../src/io/net-links.ts'
import type { NativeStats } from '../../src/io/native.ts'

export class MemoryChannel {
  readonly name: string
  readonly created = true
  closed = false
  /** Every frame sent (copies), oldest first. */
  readonly sent: Uint8Array[] = []
  peer: MemoryChannel | undefined
  private handler: ((batch: FrameBatch) => void) | undefined
  private readonly counters = { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0 }

  constructor(name = 'mem0') {
    this.name = name
  }

  onBatch(handler: (batch: FrameBatch) => void): this {
    this.handler = handler
    return this
  }

  onError(): this {
    return this
  }

  send(frames: readonly Uint8Array[]): number {
    if (this.closed) return 0
    const copies = frames.map((f) => Uint8Array.from(f))
    for (const c of copies) {
      this.sent.push(c)
      this.counters.txFrames++
      this.counters.txBytes += c.length
    }
    const peer = this.peer
    if (peer) setImmediate(() => peer.deliver(copies))
    return frames.length
  }

  /** send() for frames described by a table (as FrameChannel.sendBatch). */
  sendBatch(
    slab: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    count = offsets.length,
    start = 0,
  ): number {
    const frames: Uint8Array[] = []
    for (let i = start; i < start + count; i++)
      frames.push(slab.subarray(offsets[i], offsets[i] + lengths[i]))
    return this.send(frames)
  }

  /** Hands `frames` to the handler as one batch, as a read from the kernel would. */
  deliver(frames: readonly Uint8Array[]): void {
    if (this.closed || !this.handler || frames.length === 0) return
    const slab = Buffer.concat(frames)
    const offsets = new Uint32Array(frames.length)
    const lengths = new Uint32Array(frames.length)
    let at = 0
    frames.forEach((f, i) => {
      offsets[i] = at
      lengths[i] = f.length
      at += f.length
      this.counters.rxFrames++
      this.counters.rxBytes += f.length
    })
    const batch = new FrameBatch(slab, offsets, lengths)
    batch.setCount(frames.length)
    this.handler(batch)
  }

  drain(): void {}
  ref(): this {
    return this
  }
  unref(): this {
    return this
  }

  stats(): NativeStats {
    return { ...ZERO_STATS, ...this.counters }
  }

  close(): void {
    this.closed = true
  }

  asTap(): TapQueue {
    return this as unknown as TapQueue
  }

  asChannel(): FrameChannel {
    return this as unknown as FrameChannel
  }
}

const ZERO_STATS: NativeStats = {
  rxFrames: 0,
  rxBytes: 0,
  rxBatches: 0,
  rxTruncated: 0,
  rxErrors: 0,
  txFrames: 0,
  txBytes: 0,
  txEagain: 0,
  kernelPackets: 0,
  kernelDrops: 0,
} as NativeStats

/** Two channels joined like the two ends of a veth pair. */
export function channelPair(a = 'mem-a', b = 'mem-b'): [MemoryChannel, MemoryChannel] {
  const x = new MemoryChannel(a)
  const y = new MemoryChannel(b)
  x.peer = y
  y.peer = x
  return [x, y]
}

/** A daemon's interface in memory: `channel` is its packet socket; no kernel guard. */
export function memoryLinkAccess(channel: MemoryChannel, mac: number, ip: number): LinkAccess {
  return {
    open: () => ({ socket: channel.asChannel(), mac, ip }),
    guard: () => ({ install: async () => {}, remove: async () => {} }),
  }
}

/** `ip link` over a table of interface kinds; TAPs are MemoryChannels (`taps`, by name). */
export function memoryLinks(initial: Record<string, string> = {}) {
  const kinds = new Map(Object.entries(initial))
  const taps = new Map<string, MemoryChannel>()
  const deleted: string[] = []
  const settings = new Map<string, unknown>()
  const links: NetLinks & {
    kinds: typeof kinds
    taps: typeof taps
    deleted: typeof deleted
    settings: typeof settings
  } = {
    kinds,
    taps,
    deleted,
    settings,
    openTap(o) {
      const name = o.name ?? 'vrio0'
      if (o.path === undefined) kinds.set(name, 'tun')
      const tap = new MemoryChannel(name)
      taps.set(name, tap)
      return tap.asTap()
    },
    linkKind: async (name) => kinds.get(name),
    setLink: async (name, s) => {
      settings.set(name, s)
    },
    addMacvtap: async (_uplink, name) => {
      kinds.set(name, 'macvtap')
    },
    deleteLink: async (name) => {
      kinds.delete(name)
      deleted.push(name)
    },
    macvtapDevice: async (name) => `/dev/tap-${name}`,
  }
  return links
}
