import type { ConnectionOptions } from '../../src/transport/config.ts'
import type { Address, Connection, ConnectionHandlers } from '../../src/transport/connection.ts'
import { Endpoint } from '../../src/transport/endpoint.ts'
import { type FaultModel, MemoryLink, NO_FAULTS } from './memory-link.ts'
import { seededRandom } from './random.ts'

export const MAC_A = 0x02_00_00_00_00_0a
export const MAC_B = 0x02_00_00_00_00_0b
export const IP_A = 0x0a_00_00_01
export const IP_B = 0x0a_00_00_02
export const PORT_B = 7860
/** The guest key both sides seal with (sealed mode is the default). */
export const TEST_KEY = Buffer.alloc(32, 0x5c)

/**
 * Two endpoints joined by a MemoryLink on a virtual clock: A (side 0) connects, B (side 1)
 * listens. `run` advances time event by event, so a test of minutes of retransmission takes
 * milliseconds and replays exactly from its seed.
 */
export class Simulation {
  readonly clock = { now: 0 }
  readonly link: MemoryLink
  readonly a: Endpoint
  readonly b: Endpoint
  private readonly splitGso: boolean
  /** Handlers for connections B accepts; replace to observe them. */
  acceptHandlers: (remote: Address, c: Connection) => ConnectionHandlers | undefined = () => ({
    message() {},
  })

  constructor(
    seed: number,
    faults: FaultModel = NO_FAULTS,
    options: Partial<ConnectionOptions> = {},
    capture = false,
    /** Split GSO super-frames as the kernel does (default: sealed, hand them over whole, as veth). */
    splitGso = options.insecurePlaintext === true,
  ) {
    const random = seededRandom(seed)
    this.link = new MemoryLink(this.clock, seededRandom(seed ^ 0x5eed), faults, capture)
    const clock = () => this.clock.now
    // Sealed, a GSO super-frame is one record: whole, as on veth, unless a test splits it (the
    // receiver then re-joins the pieces, protocol.md).
    this.splitGso = splitGso
    this.a = new Endpoint({
      mac: MAC_A,
      ip: IP_A,
      sink: this.link.sinkFor(0, this.splitGso),
      clock,
      random,
      options,
      peerPort: PORT_B,
      key: TEST_KEY,
    })
    this.b = this.newB(random, options)
  }

  /** Replaces B by a fresh endpoint, as if its process restarted and lost all state. */
  restartB(seed: number, options: Partial<ConnectionOptions> = {}): void {
    ;(this as { b: Endpoint }).b = this.newB(seededRandom(seed), options)
  }

  private newB(random: () => number, options: Partial<ConnectionOptions>): Endpoint {
    return new Endpoint({
      mac: MAC_B,
      ip: IP_B,
      sink: this.link.sinkFor(1, this.splitGso),
      clock: () => this.clock.now,
      random,
      options,
      listenPort: PORT_B,
      key: TEST_KEY,
      accept: (remote, c) => this.acceptHandlers(remote, c),
    })
  }

  connect(handlers: ConnectionHandlers): Connection {
    return this.a.connect({ mac: MAC_B, ip: IP_B, port: PORT_B }, handlers)
  }

  /** Nothing on the link and no delayed ACK owed: the exchange is over. */
  quiet(): boolean {
    if (this.link.nextDelivery() !== Number.POSITIVE_INFINITY) return false
    for (const e of [this.a, this.b]) {
      for (const c of e.connections()) if (c.ackDue !== Number.POSITIVE_INFINITY) return false
    }
    return true
  }

  /** Advances until `done()` holds (true) or nothing is left to do or `maxTime` passes (false). */
  run(done: () => boolean, maxTime = 600_000, onStep?: () => void): boolean {
    while (!done()) {
      const next = Math.min(this.link.nextDelivery(), this.a.nextDeadline(), this.b.nextDeadline())
      if (next === Number.POSITIVE_INFINITY || next > maxTime) return false
      this.clock.now = Math.max(this.clock.now, next)
      const [toA, toB] = this.link.takeDue()
      for (const f of toA) this.a.receive(f)
      this.a.flush()
      for (const f of toB) this.b.receive(f)
      this.b.flush()
      this.a.tick()
      this.b.tick()
      onStep?.()
    }
    return true
  }
}
