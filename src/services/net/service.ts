/**
 * The shape of a remote NIC's I/O services (firewall, DPI): each inspects the frames crossing the
 * NIC in both directions and says whether each one goes on. The IOhyp composes them into a chain
 * around the NIC's back-end (see chain.ts): the frame is dissected once, then every service sees it
 * in order; the first that refuses it drops it. Services are pure (no I/O): alerts and replies
 * leave through the context.
 */
import type { Packet } from '../../wire/packet.ts'

/** Which way a frame crosses the NIC: from the guest out to the world, or from the world in. */
export type NetDirection = 'from-guest' | 'to-guest'

export interface NetContext {
  /** Monotonic milliseconds (the chain's clock): for connection-tracking timeouts. */
  now: number
  /**
   * Sends a frame back toward the sender of the frame being inspected (a TCP RST or ICMP
   * unreachable for a 'reject'). The frame is copied before this returns.
   */
  reply(frame: Uint8Array): void
  /** Reports an event (a DPI alert as a Suricata EVE record, say) to the daemon's event sinks. */
  event(record: Record<string, unknown>): void
}

export interface NetService {
  /** 'firewall', 'dpi', ...: names the service in listings and counters. */
  readonly kind: string
  /**
   * Inspects one Ethernet frame (`p` is its dissection; the frame may be a GSO super-frame of up
   * to 64 KiB whose L4 checksum is still partial). Returns true to let it through, false to drop
   * it. Must not keep `frame` after returning (copy what must be kept, e.g. for reassembly).
   */
  inspect(frame: Uint8Array, p: Packet, direction: NetDirection, ctx: NetContext): boolean
  /**
   * False while inspect() cannot return false (a DPI whose rules only alert): the chain then runs
   * it after the frame has been forwarded, off the frame's path (see NetServiceChain). Absent or
   * true: it runs before, and may drop.
   */
  readonly canDrop?: boolean
  /** Counters for `vrio nic list --json` (plain JSON values). */
  counters(): Record<string, unknown>
  /** Releases what it holds (a thread); the chain calls it when the service leaves the chain. */
  close?(): void
  /**
   * Resolves once it has done everything it was handed so far (a DPI on its own thread: the frames,
   * a rule swap) and its counters say so.
   */
  settled?(): Promise<void>
}
