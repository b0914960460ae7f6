/**
 * The device model: what a kind of remote device (disk, NIC, …) is on each side, as the daemons'
 * registries see it. A registry (src/iohyp/registry.ts, src/guest/registry.ts) owns what every kind
 * shares: names and handles, routing data messages by handle (a message naming no device of its
 * guest goes nowhere), create with rollback, remove, restore, declare with diffing, re-announce on
 * a new session, counters. A kind says only how one of its devices is opened, announced, fed and
 * closed; the files, TAPs and links it touches are passed to it (see each kind's access interface),
 * so registries, kinds and daemons run in unit tests without root.
 */
import type * as z from 'zod'
import { VrioError } from '../errors.ts'
import type { MessageHeader } from '../wire/message-header.ts'
import type { Session } from '../session/session.ts'
import type { Lender } from '../transport/message-buffers.ts'

/** A device handle: `low` a slot unique on this IOhyp, `high` a random tag, so a guessed slot names nothing. */
export interface DeviceHandle {
  high: number
  low: number
}

/** What every device spec holds: its name and its guest (canonical MAC once parsed). */
export interface DeviceSpec {
  name: string
  guest: string
}

/** What the IOhyp's registry needs of a device's guest: its MAC, current session and control calls. */
export interface DeviceGuest {
  mac: number
  session: Session | undefined
  rpc: { call(method: string, params: unknown, timeoutMs?: number): Promise<unknown> }
}

/** One device in the IOhyp's registry: its spec as served now, and the open device. */
export interface DeviceEntry<Spec extends DeviceSpec, Dev> {
  spec: Spec
  readonly handle: DeviceHandle
  /** The guest's MAC. */
  readonly guest: number
  readonly device: Dev
  /** The guest confirmed it has the device on its current session. */
  announced: boolean
}

/** A device kind on the IOhyp: `Req` what create takes (unparsed), `Spec` the parsed spec. */
export interface DeviceKind<Spec extends DeviceSpec, Dev, Info> {
  /** In messages ('disk', 'NIC'); logs use it in lower case. */
  readonly noun: string
  /** A device created without a name gets this and the first free number. */
  readonly namePrefix: string
  /** The data message type of the guest's messages to these devices (the daemon routes by it). */
  readonly messageType: number
  /** The control calls that give a device to its guest and take it away. */
  readonly attachCall: string
  readonly detachCall: string
  readonly attachTimeoutMs: number
  /** A request (control API body, config entry) checked and completed; throws 'invalid-argument'. */
  parse(body: unknown): Omit<Spec, 'name'> & { name?: string }
  /** Refuses `spec` when it clashes with a device there already ('conflict'). */
  check?(spec: Spec, devices: Iterable<DeviceEntry<Spec, Dev>>): void
  /** Opens what the device is made of; throws (having undone its part) when it cannot. */
  open(spec: Spec, handle: DeviceHandle, guest: number): Promise<Dev>
  /** 'remove': the device goes; 'stop': the daemon stops (a successor takes over). */
  close(device: Dev, why: 'remove' | 'stop'): Promise<void>
  /** Binds the device to its guest's session, or (undefined) unbinds it. */
  bind(device: Dev, session: Session | undefined): void
  /** The attach call's parameters. */
  announcement(entry: DeviceEntry<Spec, Dev>): unknown
  /** The guest's answer to the attach call (untrusted). */
  announced?(device: Dev, answer: unknown): void
  /** A data message for this device from its guest. */
  receive(device: Dev, h: MessageHeader, message: Uint8Array, lender: Lender | undefined): void
  /** A data message naming no device of the guest's (after it was counted). */
  unknown?(session: Session, h: MessageHeader): void
  /** The guest's session may take data again. */
  writable?(device: Dev): void
  info(entry: DeviceEntry<Spec, Dev>): Info
  /** Fields of the created/declared log lines. */
  describe?(entry: DeviceEntry<Spec, Dev>): Record<string, unknown>
}

/** What the guest's registry keeps of a device: its name, current handle and the open device. */
export interface GuestDeviceEntry<Dev> {
  readonly name: string
  handle: DeviceHandle
  readonly device: Dev
}

/** A device kind in the guest: `P` the IOhyp's attach parameters, checked. */
export interface GuestDeviceKind<P extends { name: string; handle: DeviceHandle }, Dev, Info, Answer> {
  readonly noun: string
  readonly messageType: number
  /** The IOhyp's control calls that give a device and take it away (see DeviceKind). */
  readonly attachCall: string
  readonly detachCall: string
  /** The IOhyp's attach call checked; throws 'invalid-argument'. */
  parse(params: unknown): P
  /** Opens the device (not yet reachable by handle). */
  open(p: P, handle: DeviceHandle): Promise<Dev>
  /** Once reachable and bound: what may need the IOhyp (a block device's set-up); undone on failure. */
  ready?(device: Dev, p: P): Promise<void>
  /** A known device announced again (new session, or a restarted IOhyp): the new handle, and the announcement. */
  rebind(device: Dev, session: Session | undefined, handle: DeviceHandle, p: P): void
  bind(device: Dev, session: Session | undefined): void
  /** The attach call's answer. */
  answer(entry: GuestDeviceEntry<Dev>): Answer
  /** 'detach': the IOhyp took it away; 'failed': its set-up failed; 'stop': the agent stops. */
  close(device: Dev, why: 'detach' | 'failed' | 'stop'): Promise<void>
  receive(device: Dev, h: MessageHeader, message: Uint8Array, lender: Lender | undefined): void
  writable?(device: Dev): void
  info(entry: GuestDeviceEntry<Dev>): Info
  describe?(entry: GuestDeviceEntry<Dev>): Record<string, unknown>
}

/** The other side's attach call checked against `schema`; 'invalid-argument' saying what it needs otherwise. */
export function parseAttach<S extends z.ZodType>(schema: S, params: unknown, needs: string): z.output<S> {
  const r = schema.safeParse(params)
  if (!r.success) throw new VrioError('invalid-argument', needs)
  return r.data
}
