import { isIP } from 'node:net'
import { VrioError } from '../errors.ts'

/** `ADDR:PORT` (IPv4, a host name, or `[IPv6]`) for --metrics; throws 'invalid-argument'. */
export function parseListenAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text)
  const host = m ? (m[1] ?? m[2]) : undefined
  const port = m ? Number(m[3]) : Number.NaN
  if (!host || !(port >= 0 && port <= 65_535) || (m?.[1] !== undefined && isIP(m[1]) !== 6))
    throw new VrioError(
      'invalid-argument',
      `metrics address '${text}' must be ADDR:PORT (e.g. 127.0.0.1:9860)`,
      {
        field: 'metrics',
      },
    )
  return { host, port }
}
