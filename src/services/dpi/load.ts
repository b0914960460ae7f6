/**
 * The DPI service's only I/O: reading a rule file and appending EVE records to a log file (one
 * JSON object per line, as Suricata's eve.json).
 */
import { closeSync, openSync, writeSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { escapeJsonText } from '../../escape.ts'
import { createDpi, type DpiOptions, type DpiService } from './engine.ts'

/** A DPI service from the rule file at `path` (strict by default: errors name path:line). */
export async function loadDpi(path: string, options: DpiOptions = {}): Promise<DpiService> {
  return createDpi(await readFile(path, 'utf8'), path, options)
}

/**
 * Appends EVE records to a file, one JSON per line. Writes are synchronous so that an alert is on
 * disk when inspect() returns; alerts are rare next to frames, so this is not on the hot path.
 * Pass `sink.write` (bound) as, or from, the NetContext's `event`.
 */
export class EveFileSink {
  readonly path: string
  #fd: number | undefined

  constructor(path: string) {
    this.path = path
    // Alerts name hosts and flows: readable by the owner only, like the state file.
    this.#fd = openSync(path, 'a', 0o600)
  }

  readonly write = (record: Record<string, unknown>): void => {
    if (this.#fd === undefined) return
    // Records quote packets (host names, URIs): C1 and bidi controls as JSON escapes too.
    writeSync(this.#fd, `${escapeJsonText(JSON.stringify(record))}\n`)
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd)
    this.#fd = undefined
  }
}
