import { fromNative } from './errors.ts'
import { native } from './native.ts'

/** fallocate(2) mode bits (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10

let available: boolean | undefined

/** Whether the addon (and so `fallocate`) can be loaded here. */
export function fallocateAvailable(): boolean {
  if (available === undefined) {
    try {
      available = typeof native().fallocate === 'function'
    } catch {
      available = false
    }
  }
  return available
}

/**
 * fallocate(2) on `fd`, run on the libuv thread pool like Node's own fs calls. Rejects with an
 * IoError carrying the errno name (EOPNOTSUPP where the file system or device cannot do `mode`).
 */
export function fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      native().fallocate(fd, mode, offset, length, (error) => (error ? reject(fromNative(error)) : resolve()))
    } catch (e) {
      reject(fromNative(e))
    }
  })
}
