import type { FastDisk } from '../../src/io/fast-path.ts'

/** A writable 1 MiB disk on `fd` for a fast-path lend, with counters of its own. */
export function testFastDisk(fd: number): FastDisk {
  return {
    high: 1,
    low: 2,
    fd,
    size: 1 << 20,
    maxRead: 1 << 20,
    readOnly: false,
    stats: {
      requests: new Float64Array(2),
      bytes: new Float64Array(2),
      errors: new Float64Array(64),
      latency: {
        bounds: [0.001],
        buckets: new Float64Array(4),
        count: new Float64Array(2),
        sum: new Float64Array(2),
      },
    },
  }
}
