/**
 * The prefilter's scan loop in native code (native/dpi_scan.cc, built by node-gyp as
 * build/Release/vrio_dpi.node next to vrio_io.node): the same algorithm as AhoCorasick's JavaScript
 * scan, several times faster per byte. When the module is not there (not built, another platform)
 * or VRIO_DPI_NATIVE=0, the JavaScript scan runs.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export interface NativeScan {
  /**
   * io in: threshold, shallow, window, start, end, state; out: state at io[5], where it stopped at
   * io[4] (before `end` only when `hits` filled up), hits recorded at io[6] (pairs in `hits` of a
   * reporting scan state and the index just past its byte).
   */
  scan(
    delta: Int32Array,
    classes: Uint8Array,
    pairs: Uint8Array,
    data: Uint8Array,
    io: Int32Array,
    hits: Int32Array,
  ): void
}

/** The package root's build/Release/vrio_dpi.node, from src/ (run as TS) or dist/src/ alike. */
function modulePath(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url))
  for (let dir = here; dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, 'build', 'Release', 'vrio_dpi.node')
  }
  return undefined
}

function load(): NativeScan | undefined {
  if (process.env.VRIO_DPI_NATIVE === '0') return undefined
  const path = modulePath()
  if (!path || !existsSync(path)) return undefined
  try {
    return createRequire(import.meta.url)(path) as NativeScan
  } catch {
    return undefined
  }
}

/** The native scan, or undefined. */
export const nativeScan: NativeScan | undefined = load()
