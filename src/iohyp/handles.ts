import { randomInt } from 'node:crypto'

/** A device handle: `low` a slot unique on this IOhyp, `high` a random tag, so a guessed slot names nothing. */
export interface DeviceHandle {
  high: number
  low: number
}

export function newDeviceHandle(slot: number): DeviceHandle {
  return { high: randomInt(1, 0x1_0000_0000) >>> 0, low: slot }
}
