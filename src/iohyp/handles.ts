import { randomInt } from 'node:crypto'
import type { DeviceHandle } from '../devices/kind.ts'

/** A new handle for `slot`: `high` a random tag, so a guessed slot names nothing. */
export function newDeviceHandle(slot: number): DeviceHandle {
  return { high: randomInt(1, 0x1_0000_0000) >>> 0, low: slot }
}
