import { brotliDecompressSync } from 'node:zlib'

/** One captured frame as an Ethernet frame; `at` is the capture time in milliseconds. */
export interface CapturedFrame {
  at: number
  frame: Uint8Array
}

const ETHERTYPE_IPV4 = 0x0800
const ETHERTYPE_IPV6 = 0x86dd

/** An Ethernet header (zero MACs but for a locally administered bit) in front of an IP packet. */
function ethernet(ip: Uint8Array): Uint8Array | undefined {
  const version = ip[0] >> 4
  if (version !== 4 && version !== 6) return undefined
  const frame = new Uint8Array(14 + ip.length)
  frame[0] = 0x02
  frame[6] = 0x02
  frame[11] = 1
  const type = version === 4 ? ETHERTYPE_IPV4 : ETHERTYPE_IPV6
  frame[12] = type >> 8
  frame[13] = type & 0xff
  frame.set(ip, 14)
  return frame
}

/**
 * Frames of a classic pcap file (either byte order, µs or ns timestamps), brotli-compressed when
 * `data` is (a `.br` file). Link types: Ethernet (1); raw IP (101, 228, 229), Linux cooked (113),
 * BSD loopback (0) and IPv4-in-null are given an Ethernet header. Other records are skipped.
 */
export function readPcap(data: Uint8Array, compressed = false): CapturedFrame[] {
  const buf = Buffer.from(compressed ? brotliDecompressSync(data) : data)
  const magic = buf.readUInt32LE(0)
  let le: boolean
  let nano = false
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) le = true
  else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) le = false
  else throw new Error(`not a classic pcap file (magic ${magic.toString(16)})`)
  if (magic === 0xa1b23c4d || magic === 0x4d3cb2a1) nano = true
  const u32 = (at: number): number => (le ? buf.readUInt32LE(at) : buf.readUInt32BE(at))
  const linkType = u32(20) & 0xffff
  const frames: CapturedFrame[] = []
  for (let at = 24; at + 16 <= buf.length; ) {
    const seconds = u32(at)
    const fraction = u32(at + 4)
    const length = u32(at + 8)
    const start = at + 16
    at = start + length
    if (at > buf.length) break
    const record = new Uint8Array(buf.buffer, buf.byteOffset + start, length)
    const ms = seconds * 1000 + (nano ? fraction / 1e6 : fraction / 1e3)
    let frame: Uint8Array | undefined
    switch (linkType) {
      case 1:
        frame = Uint8Array.from(record)
        break
      case 101:
      case 228:
      case 229:
        frame = ethernet(record)
        break
      case 113: // Linux cooked: 16-byte header, protocol in the last two bytes
        frame = length > 16 ? ethernet(record.subarray(16)) : undefined
        break
      case 0: // BSD loopback: a 4-byte address family
        frame = length > 4 ? ethernet(record.subarray(4)) : undefined
        break
      default:
        throw new Error(`unsupported pcap link type ${linkType}`)
    }
    if (frame) frames.push({ at: ms, frame })
  }
  return frames
}
