import { fromNative } from './errors.ts'
import { native } from './native.ts'

/** posix_fadvise advice values (linux/fadvise.h). */
export const POSIX_FADV_WILLNEED = 3

/** One run of a file's allocation map: `length` bytes, a hole (reads as zeros) or data. */
export interface FileRun {
  length: number
  hole: boolean
}

let extentsOk: boolean | undefined
let fadviseOk: boolean | undefined

/** Whether the addon can map a file's holes here (it loads and has `extents`). */
export function fileExtentsAvailable(): boolean {
  if (extentsOk === undefined) {
    try {
      extentsOk = typeof native().extents === 'function'
    } catch {
      extentsOk = false
    }
  }
  return extentsOk
}

/** Whether the addon has posix_fadvise. */
export function fadviseAvailable(): boolean {
  if (fadviseOk === undefined) {
    try {
      fadviseOk = typeof native().fadvise === 'function'
    } catch {
      fadviseOk = false
    }
  }
  return fadviseOk
}

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
  return new Promise((resolve, reject) => {
    try {
      native().extents!(fd, offset, length, maxExtents, (error, runs) => {
        if (error || !runs) {
          reject(fromNative(error))
          return
        }
        const out: FileRun[] = []
        for (let i = 0; i + 1 < runs.length; i += 2) out.push({ length: runs[i], hole: runs[i + 1] === 1 })
        resolve(out)
      })
    } catch (e) {
      reject(fromNative(e))
    }
  })
}

/** posix_fadvise(2) on `fd`, on the libuv thread pool. Rejects with an IoError. */
export function fadvise(fd: number, offset: number, length: number, advice: number): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      native().fadvise!(fd, offset, length, advice, (error) =>
        error ? reject(fromNative(error)) : resolve(),
      )
    } catch (e) {
      reject(fromNative(e))
    }
  })
}
