/**
 * The guest's registry of one device kind (see devices/kind.ts): devices the IOhyp announced, by
 * name and by handle, bound to the current session with the IOhyp. An announcement of a device
 * the guest has already (a new session, a restarted IOhyp) only re-binds it to its new handle.
 */
import type { Logger } from '../daemon/log.ts'
import type { DeviceHandle, GuestDeviceEntry, GuestDeviceKind } from '../devices/kind.ts'
import { VrioError } from '../errors.ts'
import type { Session } from '../session/session.ts'
import type { MessageHeader } from '../wire/message-header.ts'
import type { Lender } from '../transport/message-buffers.ts'

export class GuestRegistry<P extends { name: string; handle: DeviceHandle }, Dev, Info, Answer> {
  readonly kind: GuestDeviceKind<P, Dev, Info, Answer>
  private readonly byName = new Map<string, GuestDeviceEntry<Dev>>()
  /** By the low half of their handle (the IOhyp's slot); the high half is checked too. */
  private readonly bySlot = new Map<number, GuestDeviceEntry<Dev>>()
  private session: Session | undefined
  private readonly log: Logger
  private readonly noun: string

  constructor(kind: GuestDeviceKind<P, Dev, Info, Answer>, log: Logger) {
    this.kind = kind
    this.log = log
    this.noun = kind.noun.toLowerCase()
  }

  entries(): IterableIterator<GuestDeviceEntry<Dev>> {
    return this.byName.values()
  }

  find(name: string): GuestDeviceEntry<Dev> | undefined {
    return this.byName.get(name)
  }

  list(): Info[] {
    return [...this.byName.values()].map((e) => this.kind.info(e))
  }

  /** The session to the IOhyp changed: devices send (and re-send what is unanswered) on the new one. */
  useSession(session: Session | undefined): void {
    this.session = session
    for (const e of this.byName.values()) this.kind.bind(e.device, session)
  }

  /** A data message of this kind: to the device its handle names; dropped when it names none. */
  receive(h: MessageHeader, message: Uint8Array, lender?: Lender): void {
    const e = this.bySlot.get(h.deviceLow)
    if (e && e.handle.high === h.deviceHigh) this.kind.receive(e.device, h, message, lender)
  }

  writable(): void {
    const writable = this.kind.writable
    if (writable) for (const e of this.byName.values()) writable(e.device)
  }

  /** The IOhyp's attach call: opens the device, or re-binds a known one to its new handle. */
  async attach(params: unknown): Promise<Answer> {
    const p = this.kind.parse(params)
    const handle = { high: p.handle.high >>> 0, low: p.handle.low >>> 0 }
    const known = this.byName.get(p.name)
    if (known) {
      if (this.bySlot.get(known.handle.low) === known) this.bySlot.delete(known.handle.low)
      known.handle = handle
      this.kind.rebind(known.device, this.session, handle, p)
      this.bySlot.set(handle.low, known)
      return this.kind.answer(known)
    }
    const device = await this.kind.open(p, handle)
    const e: GuestDeviceEntry<Dev> = { name: p.name, handle, device }
    this.byName.set(p.name, e)
    this.bySlot.set(handle.low, e)
    this.kind.bind(device, this.session)
    try {
      await this.kind.ready?.(device, p)
    } catch (error) {
      this.forget(e)
      await this.kind.close(device, 'failed')
      throw error
    }
    this.log.info(`${this.noun} attached`, { [this.noun]: p.name, ...this.kind.describe?.(e) })
    return this.kind.answer(e)
  }

  /** The IOhyp's detach call: the device goes. */
  async detach(params: unknown): Promise<null> {
    const name = (params as { name?: unknown } | null)?.name
    const e = typeof name === 'string' ? this.byName.get(name) : undefined
    if (!e) throw new VrioError('not-found', `no ${this.kind.noun} named ${String(name)}`)
    try {
      await this.kind.close(e.device, 'detach')
    } finally {
      this.forget(e)
    }
    this.log.info(`${this.noun} detached`, { [this.noun]: e.name })
    return null
  }

  /** The agent stops: every device closes as its kind does at a stop. */
  async close(): Promise<void> {
    for (const e of [...this.byName.values()]) {
      await this.kind.close(e.device, 'stop')
      this.forget(e)
    }
  }

  private forget(e: GuestDeviceEntry<Dev>): void {
    if (this.byName.get(e.name) === e) this.byName.delete(e.name)
    if (this.bySlot.get(e.handle.low) === e) this.bySlot.delete(e.handle.low)
  }
}
