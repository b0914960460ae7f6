import { fromNative } from './errors.ts'
import { type NativeAddon, native } from './native.ts'

/** posix_fadvise advice values (linux/fadvise.h). */
export const POSIX_FADV_WILLNEED = 3

/** One run of a file's allocation map: `length` bytes, a hole (reads as zeros) or data. */
export interface FileRun {
  length: number
  hole: boolean
}

const present = new Map<keyof NativeAddon, boolean>()

/** Whether the addon loads here and has the function `name` (older builds lack some). */
export function addonHas(name: keyof NativeAddon): boolean {
  let ok = present.get(name)
  if (ok === undefined) {
    try {
      ok = typeof native()[name] === 'function'
    } catch {
      ok = false
    }
    present.set(name, ok)
  }
  return ok
}

/**
 * An addon call that runs on the libuv thread pool, as a promise: `start` is given the callback;
 * its error (or a throw at the start) rejects with an IoError.
 */
export function poolCall<T = void>(start: (done: (error: unknown, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    try {
      start((error, value) => (error ? reject(fromNative(error)) : resolve(value as T)))
    } catch (e) {
      reject(fromNative(e))
    }
  })
}

/** Whether the addon can map a file's holes here (it loads and has `extents`). */
export const fileExtentsAvailable = (): boolean => addonHas('extents')

/** Whether the addon has posix_fadvise. */
export const fadviseAvailable = (): boolean => addonHas('fadvise')

/**
 * The allocation map of [offset, offset + length) of the open file `fd` (lseek SEEK_DATA /
 * SEEK_HOLE, on the libuv thread pool): alternating runs of data and holes, at most `maxExtents`,
 * covering a prefix of the range (all of it unless the count ran out). Past the end of the file
 * is a hole. A file system without SEEK_DATA reports data. Rejects with an IoError.
 */
export function fileExtents(
  fd: number,
  offset: number,
  length: number,
  maxExtents: number,
): Promise<FileRun[]> {
  return poolCall<Float64Array | undefined>((done) =>
    native().extents!(fd, offset, length, maxExtents, done),
  ).then((runs) => {
    if (!runs) throw fromNative(runs)
    const out: FileRun[] = []
    for (let i = 0; i + 1 < runs.length; i += 2) out.push({ length: runs[i], hole: runs[i + 1] === 1 })
    return out
  })
}

/** posix_fadvise(2) on `fd`, on the libuv thread pool. Rejects with an IoError. */
export function fadvise(fd: number, offset: number, length: number, advice: number): Promise<void> {
  return poolCall((done) => native().fadvise!(fd, offset, length, advice, done))
}
