import { addonHas, poolCall } from './extents.ts'
import { native } from './native.ts'

/** fallocate(2) mode bits (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10

/** Whether the addon (and so `fallocate`) can be loaded here. */
export const fallocateAvailable = (): boolean => addonHas('fallocate')

/**
 * fallocate(2) on `fd`, run on the libuv thread pool like Node's own fs calls. Rejects with an
 * IoError carrying the errno name (EOPNOTSUPP where the file system or device cannot do `mode`).
 */
export function fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
  return poolCall((done) => native().fallocate(fd, mode, offset, length, done))
}
