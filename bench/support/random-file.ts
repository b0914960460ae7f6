import { closeSync, openSync, writeSync } from 'node:fs'
import { randomBytes } from 'node:crypto'

/** Writes `size` random bytes to `path` (a bench's backing file), 8 MiB at a time. */
export function writeRandomFile(path: string, size: number): void {
  const fd = openSync(path, 'w')
  try {
    for (let off = 0; off < size; off += 8 << 20) writeSync(fd, randomBytes(Math.min(8 << 20, size - off)))
  } finally {
    closeSync(fd)
  }
}
