/**
 * Suricata EVE JSON alert records (event_type "alert"), the format SIEMs and jq scripts expect:
 * https://docs.suricata.io/en/latest/output/eve/eve-json-format.html
 */

export interface EveFlow {
  pkts_toserver: number
  pkts_toclient: number
  bytes_toserver: number
  bytes_toclient: number
  start: string
}

export interface EveAlert {
  action: 'allowed' | 'blocked'
  gid: number
  signature_id: number
  rev: number
  signature: string
  category: string
  severity: number
}

export interface EveAlertRecord {
  timestamp: string
  flow_id: number
  in_iface?: string
  event_type: 'alert'
  vlan?: number[]
  src_ip: string
  src_port?: number
  dest_ip: string
  dest_port?: number
  proto: string
  icmp_type?: number
  icmp_code?: number
  direction: 'to_server' | 'to_client'
  alert: EveAlert
  flow: EveFlow
  [key: string]: unknown
}

const pad = (n: number, width: number): string => String(n).padStart(width, '0')

/**
 * Suricata's timestamp: local time with microseconds and the UTC offset without a colon,
 * e.g. 2024-05-01T13:04:05.123456+0200. `micros` is microseconds since the epoch.
 */
export function eveTimestamp(micros: number, utcOffsetMinutes?: number): string {
  const ms = Math.floor(micros / 1000)
  const offset = utcOffsetMinutes ?? -new Date(ms).getTimezoneOffset()
  const local = new Date(ms + offset * 60_000)
  const sign = offset < 0 ? '-' : '+'
  const abs = Math.abs(offset)
  return (
    `${pad(local.getUTCFullYear(), 4)}-${pad(local.getUTCMonth() + 1, 2)}-${pad(local.getUTCDate(), 2)}` +
    `T${pad(local.getUTCHours(), 2)}:${pad(local.getUTCMinutes(), 2)}:${pad(local.getUTCSeconds(), 2)}` +
    `.${pad(Math.floor(micros) % 1_000_000, 6)}${sign}${pad(Math.floor(abs / 60), 2)}${pad(abs % 60, 2)}`
  )
}

/** IANA protocol name as Suricata prints it. */
export function eveProto(protocol: number): string {
  switch (protocol) {
    case 6:
      return 'TCP'
    case 17:
      return 'UDP'
    case 1:
      return 'ICMP'
    case 58:
      return 'IPv6-ICMP'
    case 132:
      return 'SCTP'
    default:
      return String(protocol)
  }
}
