import { isIP } from 'node:net'
import { VrioError } from '../errors.ts'

/**
 * `ADDR:PORT` (IPv4, a host name, or `[IPv6]`) given as `option` (--metrics, the dashboard's
 * --listen); throws 'invalid-argument' naming the option, with an example on `examplePort`.
 */
export function parseListenAddress(
  text: string,
  option = '--metrics',
  examplePort = 9860,
): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text.trim())
  const host = m ? (m[1] ?? m[2]) : undefined
  const port = m ? Number(m[3]) : Number.NaN
  if (!host || !(port >= 0 && port <= 65_535) || (m?.[1] !== undefined && isIP(m[1]) !== 6))
    throw new VrioError(
      'invalid-argument',
      `${option} ${JSON.stringify(text)}: expected ADDR:PORT, e.g. 127.0.0.1:${examplePort}`,
      { field: option.replace(/^--/, '') },
    )
  return { host, port }
}
