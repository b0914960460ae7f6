/**
 * What the IOhyp's control routes (routes.ts) call: one daemon running every guest on its event
 * loop (IohypDaemon), or the main thread of several iocores (IocoreRouter), which asks the iocore
 * that holds the guest.
 */
import type { GuestInfo, StatusInfo } from '../control/api.ts'
import type { ExportableState } from '../config/export.ts'

export type DeviceKindName = 'disks' | 'nics'

type Sync<T> = T | Promise<T>

export interface IohypApi {
  status(): Sync<StatusInfo>
  scrape(): Promise<string>
  guests(): Sync<GuestInfo[]>
  addGuest(body: unknown): Promise<GuestInfo>
  removeGuest(mac: string): Promise<GuestInfo>
  /** Moves a guest to the iocore the body names (`{ iocore: K }`). */
  moveGuest(mac: string, body: unknown): Promise<GuestInfo>
  exportable(): Sync<ExportableState>
  listDevices(kind: DeviceKindName): Sync<unknown[]>
  createDevice(kind: DeviceKindName, body: unknown): Promise<unknown>
  removeDevice(kind: DeviceKindName, name: string): Promise<unknown>
  setNicServices(name: string, body: unknown): Promise<unknown>
  nicAlerts(name: string): Sync<unknown[]>
}
