/**
 * The IOhyp's registry of one device kind (see devices/kind.ts): devices by name and by handle,
 * each bound to its guest's current session and re-announced on each new one, so a device exists
 * for its guest across reconnections. What differs between kinds is in the kind.
 */
import { randomInt } from 'node:crypto'
import { isDeepStrictEqual } from 'node:util'
import type { Logger } from '../daemon/log.ts'
import type { DeviceEntry, DeviceGuest, DeviceHandle, DeviceKind, DeviceSpec } from '../devices/kind.ts'
import { isVrioError, VrioError } from '../errors.ts'
import { formatMac } from '../wire/address.ts'
import type { MessageHeader } from '../wire/message-header.ts'
import type { Lender } from '../transport/message-buffers.ts'

/** How long a guest may take to confirm a removal. */
const DETACH_TIMEOUT_MS = 10_000

export class DeviceRegistry<Spec extends DeviceSpec, Dev, Info> {
  readonly kind: DeviceKind<Spec, Dev, Info>
  private readonly byName = new Map<string, DeviceEntry<Spec, Dev>>()
  private readonly bySlot = new Map<number, DeviceEntry<Spec, Dev>>()
  /** Names of devices being created (taken, not yet added). */
  private readonly pending = new Set<string>()
  /** Data messages naming no device of the sending guest, by guest MAC. */
  private readonly unknown = new Map<number, number>()
  private nextSlot = 1
  /** Slots this registry hands out: those ≡ slotOffset (mod slotStride), see partition. */
  private slotOffset = 0
  private slotStride = 1
  /** Set by close(): data messages are no longer handled. */
  private stopping = false
  private readonly log: Logger
  private readonly noun: string

  constructor(kind: DeviceKind<Spec, Dev, Info>, log: Logger) {
    this.kind = kind
    this.log = log
    this.noun = kind.noun.toLowerCase()
  }

  /**
   * This registry is iocore `index` of `count`: it numbers new devices' slots index, index + count,
   * ... (slot 0 unused), so slots stay unique across iocores and a device keeps its handle when its
   * guest moves.
   */
  partition(index: number, count: number): void {
    this.slotOffset = index
    this.slotStride = count
  }

  private takeSlot(): number {
    let slot = this.nextSlot
    while (slot === 0 || slot % this.slotStride !== this.slotOffset || this.bySlot.has(slot)) slot++
    this.nextSlot = slot + 1
    return slot
  }

  entries(): IterableIterator<DeviceEntry<Spec, Dev>> {
    return this.byName.values()
  }

  /** The device named `name`; 'not-found' otherwise. */
  get(name: string): DeviceEntry<Spec, Dev> {
    const e = this.byName.get(name)
    if (!e) throw new VrioError('not-found', `no ${this.kind.noun} named ${name}`)
    return e
  }

  list(): Info[] {
    return [...this.byName.values()]
      .sort((a, b) => a.spec.name.localeCompare(b.spec.name))
      .map((e) => this.kind.info(e))
  }

  /** The specs with their handles, as the state file keeps them. */
  state(): (Spec & { handle: DeviceHandle })[] {
    return [...this.byName.values()].map((e) => ({ ...e.spec, handle: e.handle }))
  }

  forGuest(mac: number): number {
    let n = 0
    for (const e of this.byName.values()) if (e.guest === mac) n++
    return n
  }

  /** Data messages from this guest that named no device of its. */
  unknownDeviceDrops(mac: number): number {
    return this.unknown.get(mac) ?? 0
  }

  /**
   * Creates a device from a request (checked by the kind) for its guest (`guestOf` finds it by the
   * request's `guest`) and waits until the guest has it; fails, undoing everything, otherwise.
   */
  async create(body: unknown, guestOf: DeviceGuest | ((text: string) => DeviceGuest)): Promise<Info> {
    const req = this.kind.parse(body)
    const guest = typeof guestOf === 'function' ? guestOf(req.guest) : guestOf
    const name = req.name ?? this.freeName()
    const spec = { ...req, name, guest: formatMac(guest.mac) } as Spec
    if (this.byName.has(name) || this.pending.has(name))
      throw new VrioError('conflict', `a ${this.kind.noun} named ${name} exists already`, { field: 'name' })
    this.kind.check?.(spec, this.byName.values())
    if (!guest.session?.authenticated)
      throw new VrioError('not-connected', `guest ${formatMac(guest.mac)} is not connected`)
    const handle = newDeviceHandle(this.takeSlot())
    this.pending.add(name)
    let device: Dev
    try {
      device = await this.kind.open(spec, handle, guest.mac)
    } finally {
      this.pending.delete(name)
    }
    const e = this.add(spec, handle, guest.mac, device)
    try {
      this.kind.bind(device, guest.session)
      await this.announce(e, guest)
    } catch (error) {
      await this.drop(e)
      throw error
    }
    this.log.info(`${this.noun} created`, { [this.noun]: name, ...this.kind.describe?.(e) })
    return this.kind.info(e)
  }

  /** Takes a device from its guest (best effort: one that does not answer loses it anyway). */
  async remove(name: string, guestOf: (mac: number) => DeviceGuest | undefined): Promise<Info> {
    const e = this.get(name)
    const guest = guestOf(e.guest)
    if (guest?.session?.authenticated) {
      await guest.rpc.call(this.kind.detachCall, { name }, DETACH_TIMEOUT_MS).catch((error) => {
        this.log.warn(`guest did not confirm ${this.noun} removal`, { [this.noun]: name, error })
      })
    }
    await this.drop(e)
    this.log.info(`${this.noun} removed`, { [this.noun]: name })
    return this.kind.info(e)
  }

  /** Recreates devices from the state file; they are announced when their guests connect. */
  async restore(
    entries: readonly (Spec & { handle: DeviceHandle })[],
    macOf: (text: string) => number | undefined,
  ): Promise<void> {
    for (const { handle, ...s } of entries) {
      const spec = s as unknown as Spec
      const mac = macOf(spec.guest)
      if (mac === undefined)
        throw new VrioError('invalid-state', `malformed ${this.kind.noun} entry ${spec.name}`)
      this.add(spec, handle, mac, await this.kind.open(spec, handle, mac))
      this.nextSlot = Math.max(this.nextSlot, handle.low + 1)
    }
  }

  /**
   * Devices declared in a config file, applied at start over those restored from the state file:
   * one with the same name is kept when nothing about it changed, else replaced. They are
   * announced when their guests connect, like restored ones.
   */
  async declare<E extends DeviceSpec>(
    entries: readonly E[],
    macOf: (text: string) => number | undefined,
  ): Promise<void> {
    for (const entry of entries) {
      const mac = macOf(entry.guest)
      if (mac === undefined)
        throw new VrioError(
          'invalid-argument',
          `${this.kind.noun} ${entry.name}: no enrolled guest ${entry.guest}`,
        )
      const spec = { ...this.kind.parse(entry), name: entry.name, guest: formatMac(mac) } as Spec
      const old = this.byName.get(entry.name)
      if (old && sameSpec(old.spec, spec)) continue
      if (old) await this.drop(old)
      const handle = newDeviceHandle(this.takeSlot())
      const device = await this.kind.open(spec, handle, mac).catch((error) => {
        if (isVrioError(error, 'conflict')) error.message = `${this.noun} ${entry.name}: ${error.message}`
        throw error
      })
      const e = this.add(spec, handle, mac, device)
      this.log.info(`${this.noun} declared`, { [this.noun]: entry.name, ...this.kind.describe?.(e) })
    }
  }

  /** A guest's session came (or went): its devices follow it; a new session gets each announced. */
  useSession(guest: DeviceGuest): void {
    for (const e of this.byName.values()) {
      if (e.guest !== guest.mac) continue
      e.announced = false
      this.kind.bind(e.device, guest.session)
      if (!guest.session) continue
      this.announce(e, guest).catch((error) =>
        this.log.warn(`could not give a ${this.noun} to its guest`, { [this.noun]: e.spec.name, error }),
      )
    }
  }

  /**
   * A data message of this kind from `guest`: to the device its handle names, if that is one of
   * the guest's; else counted (and answered as the kind says). `lender`: the buffer may be kept, and goes back to it.
   */
  receive(guest: DeviceGuest, h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    if (!guest.session || this.stopping) return
    const e = this.bySlot.get(h.deviceLow)
    if (e && e.guest === guest.mac && e.handle.high === h.deviceHigh) {
      this.kind.receive(e.device, h, message, lender)
      return
    }
    this.unknown.set(guest.mac, (this.unknown.get(guest.mac) ?? 0) + 1)
    this.kind.unknown?.(guest.session, h)
  }

  writable(guest: DeviceGuest): void {
    const writable = this.kind.writable
    if (!writable) return
    for (const e of this.byName.values()) if (e.guest === guest.mac) writable(e.device)
  }

  /**
   * A guest leaves this daemon (it moves to another iocore): its devices close as at a stop and
   * are forgotten here; nothing is asked of the guest.
   */
  async release(mac: number): Promise<void> {
    for (const e of [...this.byName.values()]) {
      if (e.guest !== mac) continue
      this.byName.delete(e.spec.name)
      if (this.bySlot.get(e.handle.low) === e) this.bySlot.delete(e.handle.low)
      await this.kind.close(e.device, 'stop')
    }
    this.unknown.delete(mac)
  }

  /** The daemon stops: each device closes as its kind does at a stop (data is no longer handled). */
  async close(): Promise<void> {
    this.stopping = true
    for (const e of [...this.byName.values()]) await this.kind.close(e.device, 'stop')
    this.byName.clear()
    this.bySlot.clear()
  }

  private add(spec: Spec, handle: DeviceHandle, guest: number, device: Dev): DeviceEntry<Spec, Dev> {
    const e: DeviceEntry<Spec, Dev> = { spec, handle, guest, device, announced: false }
    this.byName.set(spec.name, e)
    this.bySlot.set(handle.low, e)
    return e
  }

  private async announce(e: DeviceEntry<Spec, Dev>, guest: DeviceGuest): Promise<void> {
    const answer = await guest.rpc.call(
      this.kind.attachCall,
      this.kind.announcement(e),
      this.kind.attachTimeoutMs,
    )
    this.kind.announced?.(e.device, answer)
    e.announced = true
  }

  private async drop(e: DeviceEntry<Spec, Dev>): Promise<void> {
    this.byName.delete(e.spec.name)
    if (this.bySlot.get(e.handle.low) === e) this.bySlot.delete(e.handle.low)
    e.announced = false
    await this.kind.close(e.device, 'remove')
  }

  private freeName(): string {
    const prefix = this.kind.namePrefix
    for (let i = 0; ; i++)
      if (!this.byName.has(`${prefix}${i}`) && !this.pending.has(`${prefix}${i}`)) return `${prefix}${i}`
  }
}

/** A new handle for `slot`: `high` a random tag, so a guessed slot names nothing. */
function newDeviceHandle(slot: number): DeviceHandle {
  return { high: randomInt(1, 0x1_0000_0000) >>> 0, low: slot }
}

/** Same spec, whatever the order of its keys and with unset fields left out. */
function sameSpec(a: unknown, b: unknown): boolean {
  return isDeepStrictEqual(JSON.parse(JSON.stringify(a)), JSON.parse(JSON.stringify(b)))
}
