/**
 * What the NBD server's modules share: its limits, the export a connection is attached to and its
 * counters, and the errno a device failure is answered with.
 */
import { VrioError } from '../../errors.ts'
import type { BlockDevice } from './device.ts'
import { NbdErrno } from './nbd-protocol.ts'

/** Largest READ or WRITE (the maximum block size advertised; 2^25 is what every client expects). */
export const NBD_MAX_PAYLOAD = 32 * 1024 * 1024
/** Option data longer than this is treated as an attack: the connection is closed. */
export const NBD_MAX_OPTION_LENGTH = 64 * 1024
/** Options one connection may send before it is considered abusive. */
export const NBD_MAX_OPTIONS = 1024

/** The id this server gives base:allocation in NBD_OPT_SET_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1

export interface NbdRequestCounts {
  read: number
  write: number
  flush: number
  trim: number
  writeZeroes: number
  blockStatus: number
  cache: number
  disconnect: number
  other: number
}

export interface NbdExportStats {
  /** Connections in the transmission phase on this export now, and since the server started. */
  connections: number
  connectionsTotal: number
  requests: NbdRequestCounts
  bytesRead: number
  bytesWritten: number
  bytesTrimmed: number
  bytesZeroed: number
  /** Error replies by NBD errno name ('EIO', 'EINVAL', 'EPERM', 'ENOSPC', 'ESHUTDOWN', ...). */
  errors: Record<string, number>
  /** Most requests in flight at once on one connection. */
  inflightHighWater: number
}

/**
 * The NBD error for a failure: VrioError codes of the BlockDevice contract map to the errno the
 * spec suggests; anything else (a bug in a device) is EIO.
 */
export function nbdErrnoForError(error: unknown): number {
  if (error instanceof VrioError) {
    switch (error.code) {
      case 'read-only':
        return NbdErrno.EPERM
      case 'out-of-range':
      case 'unsupported':
      case 'invalid-argument':
        return NbdErrno.EINVAL
      case 'no-space':
        return NbdErrno.ENOSPC
      case 'not-connected':
        return NbdErrno.ESHUTDOWN
      default:
        return NbdErrno.EIO
    }
  }
  return NbdErrno.EIO
}

export function newExportStats(): NbdExportStats {
  return {
    connections: 0,
    connectionsTotal: 0,
    requests: {
      read: 0,
      write: 0,
      flush: 0,
      trim: 0,
      writeZeroes: 0,
      blockStatus: 0,
      cache: 0,
      disconnect: 0,
      other: 0,
    },
    bytesRead: 0,
    bytesWritten: 0,
    bytesTrimmed: 0,
    bytesZeroed: 0,
    errors: {},
    inflightHighWater: 0,
  }
}

/** An export as one connection sees it (after NBD_OPT_GO or NBD_OPT_EXPORT_NAME). */
export interface Export {
  name: string
  device: BlockDevice
  size: number
  blockSize: number
  flags: number
  stats: NbdExportStats
}
