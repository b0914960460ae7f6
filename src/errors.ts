/**
 * One error class for the whole project, with a stable string `code` that scripts and the control
 * API can rely on; `details` carries the fields that belong to that code. Serialises to JSON as
 * `{code, message, ...details}` and back.
 *
 * Every code is declared once, in ERROR_CATALOGUE, with the HTTP status the control API answers it
 * with (500 only for `internal`: a bug) and the exit status `vrio` ends with; `VrioError`'s constructor takes only a catalogued code
 * (an unknown one is a type error). docs/operations.md ("Errors") lists them.
 */

/** How `vrio` ends on a failure, by kind (docs/operations.md, "Exit status"). */
export const EXIT = {
  /** Any other failure (an I/O error, a refused device, a failed command). */
  failure: 1,
  /** Bad input: an argument, a config or rule file, a key file, a request body. */
  usage: 2,
  /** What was named does not exist (a guest, a disk, a file, a route). */
  notFound: 3,
  /** It exists already or is in use (a name, a MAC, a socket, a busy device). */
  conflict: 4,
  /** The daemon or the channel is not there now; trying again later may work. */
  unavailable: 5,
  /** Not allowed: permissions of a file or of the caller. */
  permission: 6,
  /** A bug in vrio (EX_SOFTWARE). */
  internal: 70,
  /** Interrupted by a signal (128 + SIGINT). */
  interrupted: 130,
} as const

interface CodeEntry {
  /** HTTP status of the control API's answer. */
  readonly http: number
  /** `vrio`'s exit status. */
  readonly exit: number
  /** What the code means, for docs/operations.md. */
  readonly meaning: string
}

const entry = (http: number, exit: number, meaning: string): CodeEntry => ({ http, exit, meaning })

export const ERROR_CATALOGUE = {
  // Bad input
  'invalid-argument': entry(400, EXIT.usage, 'an argument or request field is invalid (`field` names it)'),
  'invalid-json': entry(400, EXIT.usage, 'a request body is not JSON'),
  'invalid-config': entry(400, EXIT.usage, 'a config file is invalid (`path` names the field)'),
  'invalid-rules': entry(
    400,
    EXIT.usage,
    'a firewall or DPI rule file is invalid (`errors` lists FILE:LINE)',
  ),
  'rules-too-large': entry(413, EXIT.usage, 'a rule file is over the size, rule or memory limits'),
  'invalid-state': entry(
    503,
    EXIT.failure,
    'the state file is corrupt or was edited wrongly (`field` names it)',
  ),
  'request-aborted': entry(400, EXIT.usage, 'the client went away before its request body was read'),
  'request-too-large': entry(413, EXIT.usage, 'a request body is over the limit'),
  'unsupported-media-type': entry(415, EXIT.usage, 'a request body is not application/json'),
  'bad-request': entry(400, EXIT.usage, 'a block request is malformed'),
  'bad-size': entry(400, EXIT.usage, 'a device or file size is not usable'),
  'too-small': entry(400, EXIT.usage, 'a device or file is too small for what was asked'),
  'bad-offset': entry(400, EXIT.usage, 'an offset is not aligned or out of range'),
  symlink: entry(400, EXIT.usage, 'a path that must not be a symbolic link is one'),
  'key-file-invalid': entry(400, EXIT.usage, 'a key file does not hold a key of the right form'),
  'key-file-missing': entry(400, EXIT.notFound, 'a key file does not exist'),
  'key-file-unreadable': entry(400, EXIT.failure, 'a key file cannot be read'),
  'key-file-permissions': entry(400, EXIT.permission, 'a key file can be read by others than its owner'),
  'bad-key': entry(400, EXIT.usage, 'an encryption key is not usable (length, equal halves)'),
  'bad-passphrase': entry(400, EXIT.usage, 'no LUKS key slot opens with this passphrase or key'),
  'bad-sector-size': entry(400, EXIT.usage, 'an encryption sector size is not 512 or 4096'),
  'bad-iv-offset': entry(400, EXIT.usage, 'an IV offset is out of range'),
  'bad-pbkdf': entry(400, EXIT.usage, 'a LUKS key derivation setting is not usable'),
  'not-luks': entry(400, EXIT.usage, 'the file is not a LUKS volume'),
  'no-keyslot': entry(400, EXIT.usage, 'the LUKS volume has no free or matching key slot'),
  'unsupported-luks': entry(400, EXIT.usage, 'a LUKS feature vrio does not implement'),
  'unsupported-cipher': entry(400, EXIT.usage, 'a cipher vrio does not implement'),
  'unsupported-hash': entry(400, EXIT.usage, 'a hash vrio does not implement'),
  // Names and existence
  'not-found': entry(404, EXIT.notFound, 'what was named does not exist'),
  'unknown-route': entry(404, EXIT.notFound, 'the control API has no such route'),
  'unknown-method': entry(404, EXIT.notFound, 'the RPC has no such method'),
  'unknown-interface': entry(404, EXIT.notFound, 'no network interface has that name'),
  'method-not-allowed': entry(405, EXIT.usage, 'the route does not take this HTTP method'),
  conflict: entry(409, EXIT.conflict, 'the name, MAC or address is in use already'),
  'file-exists': entry(409, EXIT.conflict, 'a file that would be created exists already'),
  busy: entry(409, EXIT.conflict, 'a device or file is in use'),
  'control-socket-in-use': entry(409, EXIT.conflict, "another daemon answers on the control socket's path"),
  'nbd-socket-in-use': entry(409, EXIT.conflict, "another process answers on the NBD socket's path"),
  'address-in-use': entry(409, EXIT.conflict, 'a TCP listen address (metrics, dashboard) is in use'),
  // Permissions
  'permission-denied': entry(403, EXIT.permission, 'the operating system refused access'),
  // Device and I/O outcomes
  'read-only': entry(409, EXIT.failure, 'the device is read-only'),
  'no-space': entry(507, EXIT.failure, 'the backing has no space left'),
  'out-of-range': entry(400, EXIT.usage, 'a request goes beyond the end of the device'),
  unsupported: entry(501, EXIT.failure, 'the device or peer does not support the request'),
  'not-implemented': entry(501, EXIT.failure, 'this daemon does not implement the request'),
  'io-error': entry(502, EXIT.failure, 'an I/O operation failed'),
  'message-size': entry(400, EXIT.usage, 'a message is larger than the protocol allows'),
  'bad-header': entry(502, EXIT.failure, 'a peer sent a malformed header'),
  'bad-response': entry(502, EXIT.failure, 'a peer sent a malformed answer'),
  'attach-failed': entry(502, EXIT.failure, 'a disk could not be attached as a block device'),
  'command-failed': entry(502, EXIT.failure, 'an outside command (ip, losetup, ...) failed'),
  'missing-tool': entry(503, EXIT.failure, 'an outside command needed is not installed'),
  'kernel-guard-failed': entry(
    502,
    EXIT.failure,
    "the kernel's answers to the channel could not be silenced",
  ),
  'no-address': entry(400, EXIT.usage, 'the interface has no IPv4 address and none was given'),
  'listen-failed': entry(502, EXIT.failure, 'a TCP listen address could not be bound'),
  'bad-metrics': entry(502, EXIT.failure, "a daemon's metrics exposition could not be parsed"),
  'missing-dependency': entry(503, EXIT.failure, 'a file vrio ships with (a dashboard asset) is missing'),
  'file-write-failed': entry(507, EXIT.failure, 'a file could not be written'),
  'control-socket-path-invalid': entry(400, EXIT.usage, 'the control socket path is not usable'),
  'control-socket-error': entry(502, EXIT.failure, 'the control socket could not be set up'),
  'nbd-socket-path-invalid': entry(400, EXIT.usage, 'the NBD socket path is not usable'),
  'nbd-socket-error': entry(502, EXIT.failure, 'the NBD socket could not be set up'),
  // Availability
  'not-connected': entry(503, EXIT.unavailable, 'the channel to the peer is down'),
  unavailable: entry(503, EXIT.unavailable, 'the service is not ready'),
  timeout: entry(504, EXIT.unavailable, 'no answer in time'),
  'daemon-not-running': entry(503, EXIT.unavailable, 'no daemon answers on the control socket'),
  'control-connection-failed': entry(503, EXIT.unavailable, 'the control socket could not be reached'),
  destroyed: entry(503, EXIT.unavailable, 'the object was closed while the request ran'),
  // The rest
  interrupted: entry(503, EXIT.interrupted, 'stopped by a signal'),
  'demo-failed': entry(502, EXIT.failure, 'a step of the demo failed'),
  internal: entry(500, EXIT.internal, 'a bug in vrio'),
  unknown: entry(502, EXIT.failure, 'an error a peer reported with a code this version does not know'),
} as const satisfies Record<string, CodeEntry>

export type ErrorCode = keyof typeof ERROR_CATALOGUE

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CATALOGUE, code)
}

/** The HTTP status the control API answers `code` with; 500 for a code it does not know. */
export function httpStatusForCode(code: string): number {
  return isErrorCode(code) ? ERROR_CATALOGUE[code].http : 500
}

/** The exit status `vrio` ends with for `code`. */
export function exitStatusForCode(code: string): number {
  return isErrorCode(code) ? ERROR_CATALOGUE[code].exit : EXIT.failure
}

export class VrioError extends Error {
  readonly code: ErrorCode
  readonly details: Readonly<Record<string, unknown>>

  constructor(
    code: ErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    if (!isErrorCode(code)) throw new TypeError(`VrioError: '${String(code)}' is not a catalogued error code`)
    super(message, options)
    this.name = 'VrioError'
    this.code = code
    this.details = details
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, ...this.details }
  }

  /** From a `{code, message, ...}` a daemon answered; a code this version does not know becomes `unknown` (the peer's is kept as `peerCode`). */
  static fromJSON(value: unknown): VrioError {
    const v = (value ?? {}) as Record<string, unknown>
    const { code, message, ...details } = v
    const known = isErrorCode(code)
    return new VrioError(
      known ? code : 'unknown',
      typeof message === 'string' ? message : 'unknown error',
      known || code === undefined ? details : { ...details, peerCode: code },
    )
  }
}

export function isVrioError(error: unknown, code?: ErrorCode): error is VrioError {
  return error instanceof VrioError && (code === undefined || error.code === code)
}
