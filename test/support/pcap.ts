import { writeFileSync } from 'node:fs'

/** Writes Ethernet frames to a classic pcap file (microsecond timestamps), for tshark and Wireshark. */
export function writePcap(path: string, frames: readonly { at: number; frame: Uint8Array }[]): void {
  const header = Buffer.alloc(24)
  header.writeUInt32LE(0xa1b2c3d4, 0)
  header.writeUInt16LE(2, 4)
  header.writeUInt16LE(4, 6)
  header.writeUInt32LE(262_144, 16) // snaplen
  header.writeUInt32LE(1, 20) // LINKTYPE_ETHERNET
  const parts: Uint8Array[] = [header]
  const base = 1_700_000_000_000 // an arbitrary wall-clock origin, in ms
  for (const { at, frame } of frames) {
    const record = Buffer.alloc(16)
    const us = Math.round((base + at) * 1000)
    record.writeUInt32LE(Math.floor(us / 1e6), 0)
    record.writeUInt32LE(us % 1e6, 4)
    record.writeUInt32LE(frame.length, 8)
    record.writeUInt32LE(frame.length, 12)
    parts.push(record, frame)
  }
  writeFileSync(path, Buffer.concat(parts))
}
