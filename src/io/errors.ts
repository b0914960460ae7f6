import { constants } from 'node:os'
import { getSystemErrorName } from 'node:util'
import { type ErrorCode, VrioError } from '../errors.ts'

/**
 * A failed system call in the packet I/O layer: a VrioError whose `code` is the catalogue's
 * (`io-error`, or `permission-denied` / `not-found` / `unknown-interface` where the errno says so),
 * with `errnoName` ('ENODEV'), `errno` the negated errno number (Node's convention: ENODEV -> -19)
 * and `syscall`, shaped like Node's own system errors. `ifname`/`netns` say where, when known.
 */
export class IoError extends VrioError {
  readonly errnoName: string
  readonly errno: number
  readonly syscall: string
  readonly ifname: string | undefined
  readonly netns: string | undefined

  constructor(
    errnoName: string,
    errno: number,
    syscall: string,
    message: string,
    where: { ifname?: string; netns?: string } = {},
    options?: ErrorOptions,
  ) {
    super(codeForErrno(errnoName), message, { errno, errnoName, syscall, ...where }, options)
    this.name = 'IoError'
    this.errnoName = errnoName
    this.errno = errno
    this.syscall = syscall
    this.ifname = where.ifname
    this.netns = where.netns
  }
}

/** The catalogue code of a failed system call. */
function codeForErrno(name: string): ErrorCode {
  switch (name) {
    case 'ENODEV':
      return 'unknown-interface'
    case 'ENOENT':
      return 'not-found'
    case 'EACCES':
    case 'EPERM':
      return 'permission-denied'
    case 'EBUSY':
      return 'busy'
    default:
      return 'io-error'
  }
}

/** Whether `error` is an IoError, and when `errnoName` is given, of that errno ('ENODEV'). */
export function isIoError(error: unknown, errnoName?: string): error is IoError {
  return error instanceof IoError && (errnoName === undefined || error.errnoName === errnoName)
}

interface NativeSysError {
  message: string
  errno: number
  syscall: string
  detail?: string
}

function isNativeSysError(e: unknown): e is NativeSysError {
  return e instanceof Error && typeof (e as { errno?: unknown }).errno === 'number' && 'syscall' in e
}

/**
 * Turns what the addon throws (an Error with a positive `errno`, `syscall`, `detail`) into an
 * IoError; anything else (TypeErrors for bad arguments) passes through unchanged.
 */
export function fromNative(e: unknown, where: { ifname?: string; netns?: string } = {}): unknown {
  if (!isNativeSysError(e)) return e
  const errno = Math.abs(e.errno)
  const code = errnoName(errno)
  const place = [
    e.syscall,
    e.detail ? `'${e.detail}'` : '',
    where.ifname && where.ifname !== e.detail ? `on '${where.ifname}'` : '',
    where.netns ? `in netns ${where.netns}` : '',
  ]
    .filter(Boolean)
    .join(' ')
  let message = `${code}: ${e.message.toLowerCase()}, ${place}`
  if (code === 'ENODEV' && where.ifname) {
    message += ` (no interface named '${where.ifname}'${where.netns ? ` in netns ${where.netns}` : ''})`
  }
  return new IoError(code, -errno, e.syscall, message, where)
}

// libuv names most errnos; a few Linux-only ones (EBADFD, which tun returns for a deleted
// device) it does not, so fall back to os.constants and then to a small table.
const EXTRA_ERRNO_NAMES: Record<number, string> = { 77: 'EBADFD' }

function errnoName(errno: number): string {
  const name = getSystemErrorName(-errno)
  if (!name.startsWith('Unknown')) return name
  for (const [k, v] of Object.entries(constants.errno)) if (v === errno) return k
  return EXTRA_ERRNO_NAMES[errno] ?? `ERRNO_${errno}`
}
