/**
 * The prefilter's scan loop in native code (native/dpi_scan.cc, the addon's `dpiScan`): the same
 * hits and states as AhoCorasick's JavaScript scan, several times faster per byte (long stretches
 * of text run four ways; see dpi_scan.cc). When the addon is not
 * there (not built, another platform), is an older build, or VRIO_DPI_NATIVE=0, the JavaScript scan
 * runs.
 */
import { type DpiScanFunction, native } from '../../io/native.ts'

export interface NativeScan {
  scan: DpiScanFunction
}

function load(): NativeScan | undefined {
  if (process.env.VRIO_DPI_NATIVE === '0') return undefined
  try {
    const scan = native().dpiScan
    return scan ? { scan } : undefined
  } catch {
    return undefined
  }
}

/** The native scan, or undefined. */
export const nativeScan: NativeScan | undefined = load()
