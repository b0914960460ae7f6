/**
 * Wiring for blk tests and benchmarks: an IOhyp (BlockBackend over a device) and a guest
 * (RemoteBlockDevice) joined by authenticated sessions over the seeded in-memory link of
 * test/support/simulation.ts, on its virtual clock. The IOhyp is side A (it opens), the guest
 * side B (it listens), as in the daemons.
 *
 * Device operations are real promises (a file's run on the thread pool), so `run` interleaves
 * simulation steps with turns of the event loop, and holds virtual time still while the device
 * is busy — otherwise a slow disk would look like a dead link.
 */
import { randomBytes } from 'node:crypto'
import { BlockBackend, type BlockBackendOptions } from '../../src/devices/blk/backend.ts'
import { type BlockDevice, deviceExtents, type Extent } from '../../src/devices/blk/device.ts'
import { RemoteBlockDevice, type RemoteBlockDeviceOptions } from '../../src/devices/blk/frontend.ts'
import { type BlockHandle, BlockMessageFlag, nextBatchedResponse } from '../../src/devices/blk/protocol.ts'
import { Session } from '../../src/session/session.ts'
import type { ConnectionOptions } from '../../src/transport/config.ts'
import type { Connection } from '../../src/transport/connection.ts'
import { type MessageHeader, MessageType, newMessageHeader } from '../../src/wire/message-header.ts'
import { type FaultModel, NO_FAULTS } from '../support/memory-link.ts'
import { Simulation } from '../support/simulation.ts'

export const immediate = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

type Op = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes'

export interface LoggedOp {
  op: Op
  offset: number
  length: number
  /** Copy of the written data (writes). */
  data?: Uint8Array
}

/**
 * Wraps a device: counts operations in progress (the harness waits for them before moving virtual
 * time), logs mutations, and can hold operations back (`gate`) to build races.
 */
export class InstrumentedDevice implements BlockDevice {
  readonly inner: BlockDevice
  readonly log: LoggedOp[] = []
  /** Operations running and not held by a gate. */
  busy = 0
  active = 0
  maxActive = 0
  /** Return a promise to hold the operation until it settles (it then runs). */
  gate: ((op: LoggedOp) => Promise<void> | undefined) | undefined

  constructor(inner: BlockDevice) {
    this.inner = inner
  }
  get size(): number {
    return this.inner.size
  }
  get blockSize(): number {
    return this.inner.blockSize
  }
  get readOnly(): boolean {
    return this.inner.readOnly
  }
  get canFlush(): boolean {
    return this.inner.canFlush
  }
  get canFua(): boolean {
    return this.inner.canFua
  }
  get canTrim(): boolean {
    return this.inner.canTrim
  }
  get canWriteZeroes(): boolean {
    return this.inner.canWriteZeroes
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.wrap({ op: 'read', offset, length }, () => this.inner.read(offset, length))
  }
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.wrap({ op: 'write', offset, length: data.length, data: Uint8Array.from(data) }, () =>
      this.inner.write(offset, data, fua),
    )
  }
  flush(): Promise<void> {
    return this.wrap({ op: 'flush', offset: 0, length: 0 }, () => this.inner.flush())
  }
  trim(offset: number, length: number): Promise<void> {
    return this.wrap({ op: 'trim', offset, length }, () => this.inner.trim(offset, length))
  }
  writeZeroes(offset: number, length: number, mayTrim: boolean, fua: boolean): Promise<void> {
    return this.wrap({ op: 'writeZeroes', offset, length }, () =>
      this.inner.writeZeroes(offset, length, mayTrim, fua),
    )
  }

  /**
   * Forwarded (a device without them reports data, as deviceExtents does); not logged, not
   * gated, but counted busy: virtual time stands still while a file maps its holes.
   */
  extents(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    return this.busyWhile(() => deviceExtents(this.inner, offset, length, maxExtents))
  }
  prefetch(offset: number, length: number): Promise<void> {
    this.prefetches++
    return this.busyWhile(() =>
      this.inner.prefetch ? this.inner.prefetch(offset, length) : Promise.resolve(),
    )
  }
  prefetches = 0

  private async busyWhile<T>(fn: () => Promise<T>): Promise<T> {
    this.busy++
    try {
      return await fn()
    } finally {
      this.busy--
    }
  }

  private async wrap<T>(entry: LoggedOp, fn: () => Promise<T>): Promise<T> {
    this.active++
    this.maxActive = Math.max(this.maxActive, this.active)
    try {
      const held = this.gate?.(entry)
      if (held) await held
      this.busy++
      try {
        if (entry.op !== 'read') this.log.push(entry)
        return await fn()
      } finally {
        this.busy--
      }
    } finally {
      this.active--
    }
  }
}

export interface BlkPairOptions {
  seed?: number
  faults?: FaultModel
  connection?: Partial<ConnectionOptions>
  handle?: BlockHandle
  backend?: Omit<BlockBackendOptions, 'handle'>
  frontend?: Omit<RemoteBlockDeviceOptions, 'handle' | 'info' | 'clock'>
  /** The IOhyp's announced maxBatch, given to the front-end on every session as the guest's disks do. */
  batch?: number
}

/** A guest and an IOhyp joined over the simulated link. */
export class BlkPair {
  readonly sim: Simulation
  readonly faults: FaultModel
  readonly key = randomBytes(32)
  readonly device: InstrumentedDevice
  readonly handle: BlockHandle
  backend: BlockBackend
  readonly front: RemoteBlockDevice
  /** The current sessions of each side (undefined between sessions). */
  iohypSession: Session | undefined
  guestSession: Session | undefined
  /**
   * Every response the guest's session delivered, if `captureResponses` (tests of hostile input);
   * those of a batch response one by one (`batched`).
   */
  readonly responses: { header: MessageHeader; body: Uint8Array; batched: boolean }[] = []
  captureResponses = false
  /** Raw requests the guest sent, if `captureRequests`. */
  readonly requests: Buffer[] = []
  captureRequests = false
  private readonly backendOptions: BlockBackendOptions
  private readonly batch: number | undefined

  constructor(device: BlockDevice, options: BlkPairOptions = {}) {
    this.faults = { ...(options.faults ?? NO_FAULTS) }
    this.sim = new Simulation(options.seed ?? 1, this.faults, options.connection ?? {})
    this.device = new InstrumentedDevice(device)
    this.handle = options.handle ?? { high: 3, low: 0x9e37_79b9 }
    this.backendOptions = { ...(options.backend ?? {}), handle: this.handle }
    this.backend = new BlockBackend(this.device, this.backendOptions)
    this.batch = options.batch
    this.front = new RemoteBlockDevice({
      sweepInterval: 0,
      ...(options.frontend ?? {}),
      info: {
        size: device.size,
        blockSize: device.blockSize,
        readOnly: device.readOnly,
        canFlush: device.canFlush,
        canFua: device.canFua,
        canTrim: device.canTrim,
        canWriteZeroes: device.canWriteZeroes,
      },
      handle: this.handle,
      clock: () => this.sim.clock.now,
    })
    this.sim.acceptHandlers = (_remote, c) => this.acceptGuest(c)
  }

  /** Opens a new connection and session pair; resolves when both are authenticated and attached. */
  async connect(): Promise<void> {
    let iohyp: Session | undefined
    const c = this.sim.connect({ message() {} })
    iohyp = new Session(c, 'opener', this.key, {
      authenticated: () => {
        this.iohypSession = iohyp
        this.backend.attach(iohyp!)
      },
      control() {},
      // Lent messages are passed on as the daemons pass them.
      data: (h, m, _delivery, lender) => {
        if (h.type === MessageType.BlockRequest) this.backend.receive(h, m, lender)
      },
      writable: () => {
        if (this.iohypSession === iohyp) this.backend.writable()
      },
      closed: () => {
        if (this.iohypSession === iohyp) {
          this.iohypSession = undefined
          this.backend.detach()
        }
      },
    })
    const ok = await this.run(() => this.iohypSession === iohyp && this.guestSession !== undefined, 60_000)
    if (!ok) throw new Error('sessions did not come up')
  }

  private acceptGuest(c: Connection) {
    const session: Session = new Session(c, 'listener', this.key, {
      authenticated: () => {
        this.guestSession = session
        this.front.attach(session)
        this.front.useBatch(this.batch)
      },
      control() {},
      data: (h, m, _delivery, lender) => {
        if (h.type !== MessageType.BlockResponse) return
        if (this.captureResponses && h.flags === BlockMessageFlag.Batch) {
          // Each response of a batch response, as if it had come alone.
          const e = newMessageHeader()
          for (let at = 32; at < m.length; ) {
            const end = nextBatchedResponse(m, at, e)
            if (end < 0) break
            this.responses.push({
              header: { ...e },
              body: Uint8Array.from(m.subarray(at + 32, end)),
              batched: true,
            })
            at = end
          }
        } else if (this.captureResponses)
          this.responses.push({ header: { ...h }, body: Uint8Array.from(m.subarray(32)), batched: false })
        this.front.receive(h, m, lender)
      },
      writable: () => {
        if (this.guestSession === session) this.front.writable()
      },
      closed: () => {
        if (this.guestSession === session) {
          this.guestSession = undefined
          this.front.detach()
        }
      },
    })
    const send = session.sendData.bind(session)
    session.sendData = (parts, delivery) => {
      const ok = send(parts, delivery)
      if (ok && this.captureRequests) {
        const list = parts instanceof Uint8Array ? [parts] : parts
        this.requests.push(Buffer.concat(list.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length))))
      }
      return ok
    }
    return session.connectionHandlers
  }

  /** Ends the current sessions abruptly (RST), as a crash of the link or of a peer would. */
  killSessions(): void {
    const g = this.guestSession
    const i = this.iohypSession
    g?.connection.abort()
    i?.connection.abort()
  }

  /** The IOhyp restarts: a new BlockBackend over the same storage, its record of requests lost. */
  restartBackend(): void {
    this.killSessions()
    this.backend = new BlockBackend(this.device, this.backendOptions)
  }

  /**
   * Advances the simulation until `done()` or until `maxTime` of virtual time has passed (false).
   * Lets promise continuations run between steps; virtual time stands still while the device works.
   */
  async run(done: () => boolean, maxTime = 600_000): Promise<boolean> {
    const limit = this.sim.clock.now + maxTime
    let idle = 0
    while (!done()) {
      if (this.device.busy > 0) {
        await immediate()
        continue
      }
      let steps = 0
      const stepped = this.sim.run(
        () => steps++ > 0,
        limit,
        () => this.front.tick(),
      )
      await immediate()
      if (stepped) idle = 0
      else if (++idle > 3) return done()
    }
    return true
  }

  /** Runs until `p` settles; its result. Throws if the simulation gets stuck first. */
  async settle<T>(p: Promise<T>, maxTime = 600_000): Promise<T> {
    let settled = false
    p.then(
      () => (settled = true),
      () => (settled = true),
    )
    if (!(await this.run(() => settled, maxTime)))
      throw new Error('simulation idle before the request settled')
    return p
  }

  /** Moves virtual time forward by `ms` (in steps of `step`), running whatever falls due. */
  async advance(ms: number, step = 50): Promise<void> {
    const end = this.sim.clock.now + ms
    while (this.sim.clock.now < end) {
      const target = Math.min(end, this.sim.clock.now + step)
      await this.run(() => false, target - this.sim.clock.now)
      this.sim.clock.now = Math.max(this.sim.clock.now, target)
      this.sim.a.tick()
      this.sim.b.tick()
      this.front.tick()
      await immediate()
    }
  }
}

/** Deterministic bytes for write number `n`, so a read tells which write it saw. */
export function pattern(n: number, length: number): Uint8Array {
  const b = Buffer.allocUnsafe(length)
  let x = (n * 2654435761 + 1) >>> 0
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    b[i] = x >>> 24
  }
  return b
}

const view = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.length)

/** Asserts two byte arrays hold the same bytes (whatever their classes), reporting the first difference. */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, message = 'bytes differ'): void {
  if (actual.length === expected.length && view(actual).equals(view(expected))) return
  let i = 0
  while (i < Math.min(actual.length, expected.length) && actual[i] === expected[i]) i++
  throw new Error(
    `${message}: lengths ${actual.length}/${expected.length}, first difference at ${i} (${actual[i]} != ${expected[i]})`,
  )
}
