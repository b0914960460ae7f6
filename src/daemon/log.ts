/**
 * Structured logs: one JSON object per line on stderr, `{time, level, msg, ...fields}`. Fields
 * often hold what a peer sent (names, error messages); every control character in them is a JSON
 * escape (escapeJsonText), so a log read on a terminal cannot drive it.
 */
import { escapeJsonText } from '../escape.ts'

export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
}

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 }

export function createLogger(
  name: string,
  level: LogLevel = (process.env.VRIO_LOG_LEVEL as LogLevel) ?? 'info',
): Logger {
  const min = ORDER[level] ?? ORDER.info
  const write = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[lvl] < min) return
    process.stderr.write(
      `${escapeJsonText(JSON.stringify({ time: new Date().toISOString(), level: lvl, name, msg, ...fields }, replacer))}\n`,
    )
  }
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
  }
}

function replacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) return { message: value.message, code: (value as { code?: unknown }).code }
  if (typeof value === 'bigint') return value.toString()
  return value
}
