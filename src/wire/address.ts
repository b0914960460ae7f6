/**
 * MAC and IPv4 addresses as plain numbers: a MAC is a 48-bit integer (exact in a double), an IPv4
 * address an unsigned 32-bit integer. Numbers compare, hash and copy for free on the data path;
 * strings exist only at the edges (config, CLI, logs).
 */

const MAC_RE =
  /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i
const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

/** Parses `aa:bb:cc:dd:ee:ff` (or with dashes); returns undefined when malformed. */
export function parseMac(text: string): number | undefined {
  const m = MAC_RE.exec(text.trim())
  if (!m) return undefined
  let value = 0
  for (let i = 1; i <= 6; i++) value = value * 256 + Number.parseInt(m[i], 16)
  return value
}

export function formatMac(mac: number): string {
  const parts: string[] = []
  for (let i = 5; i >= 0; i--)
    parts.push((Math.floor(mac / 2 ** (8 * i)) & 0xff).toString(16).padStart(2, '0'))
  return parts.join(':')
}

export function writeMac(buf: Uint8Array, offset: number, mac: number): void {
  const high = Math.floor(mac / 0x1_0000_0000)
  const low = mac >>> 0
  buf[offset] = high >>> 8
  buf[offset + 1] = high & 0xff
  buf[offset + 2] = low >>> 24
  buf[offset + 3] = (low >>> 16) & 0xff
  buf[offset + 4] = (low >>> 8) & 0xff
  buf[offset + 5] = low & 0xff
}

export function readMac(buf: Uint8Array, offset: number): number {
  const high = (buf[offset] << 8) | buf[offset + 1]
  const low =
    ((buf[offset + 2] << 24) | (buf[offset + 3] << 16) | (buf[offset + 4] << 8) | buf[offset + 5]) >>> 0
  return high * 0x1_0000_0000 + low
}

/** True for a multicast or broadcast MAC (group bit set). */
export function isGroupMac(mac: number): boolean {
  return (Math.floor(mac / 0x100_0000_0000) & 1) === 1
}

/** Parses dotted-quad IPv4; returns undefined when malformed. */
export function parseIPv4(text: string): number | undefined {
  const m = IPV4_RE.exec(text.trim())
  if (!m) return undefined
  let value = 0
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i])
    if (octet > 255) return undefined
    value = value * 256 + octet
  }
  return value
}

export function formatIPv4(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 0xff}.${(ip >>> 8) & 0xff}.${ip & 0xff}`
}

/**
 * Parses IPv6 text (RFC 4291 section 2.2: hex groups, one `::`, an optional dotted-quad tail) into
 * 16 bytes; returns undefined when malformed. No zone ids.
 */
export function parseIPv6(text: string): Uint8Array | undefined {
  const s = text.trim()
  if (!/^[0-9a-f:.]+$/i.test(s)) return undefined
  const halves = s.split('::')
  if (halves.length > 2) return undefined
  const groups = (part: string): number[] | undefined => {
    if (part === '') return []
    const out: number[] = []
    const pieces = part.split(':')
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]
      if (i === pieces.length - 1 && piece.includes('.')) {
        const v4 = parseIPv4(piece)
        if (v4 === undefined) return undefined
        out.push(v4 >>> 16, v4 & 0xffff)
      } else {
        if (!/^[0-9a-f]{1,4}$/i.test(piece)) return undefined
        out.push(Number.parseInt(piece, 16))
      }
    }
    return out
  }
  const head = groups(halves[0])
  const tail = halves.length === 2 ? groups(halves[1]) : []
  if (head === undefined || tail === undefined) return undefined
  // A dotted quad may only end the address.
  if (halves.length === 2 && halves[0].includes('.')) return undefined
  const missing = 8 - head.length - tail.length
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined
  const all = [...head, ...new Array<number>(missing).fill(0), ...tail]
  const bytes = new Uint8Array(16)
  for (let i = 0; i < 8; i++) {
    bytes[2 * i] = all[i] >>> 8
    bytes[2 * i + 1] = all[i] & 0xff
  }
  return bytes
}
