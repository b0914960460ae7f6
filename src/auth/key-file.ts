/**
 * Secrets on disk, and the one place they are read from. Per-guest channel keys: 32 random bytes
 * stored as 64 lowercase hex characters and a newline, mode 0600 (readKeyFile). Disk encryption
 * key and passphrase files: raw bytes (readSecretFile). Both refuse a file that group or others
 * may access ('key-file-permissions', naming the file, its mode and `chmod 600`). Neither a key
 * nor any part of a key file's content ever goes into an error message: messages name the path
 * and the problem only.
 */
import { randomBytes } from 'node:crypto'
import {
  closeSync,
  constants,
  fchmodSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { VrioError } from '../errors.ts'

export const KEY_BYTES = 32

// A key file is 65 bytes; anything much larger is not one, and is not worth reading into memory.
const MAX_KEY_FILE_BYTES = 4096
const KEY_HEX_RE = /^[0-9a-f]{64}$/i

export function generateKey(): Buffer {
  return randomBytes(KEY_BYTES)
}

export interface WriteKeyFileOptions {
  /** Replace an existing file (atomically, through a temporary file and rename). */
  force?: boolean
}

/** Writes `key` to `path` as hex with mode 0600; refuses with 'file-exists' unless `force`. */
export function writeKeyFile(path: string, key: Uint8Array, options: WriteKeyFileOptions = {}): void {
  if (key.length !== KEY_BYTES)
    throw new VrioError('invalid-argument', `a vrio key is ${KEY_BYTES} bytes, not ${key.length}`)
  const text = Buffer.from(`${Buffer.from(key).toString('hex')}\n`, 'ascii')
  if (!options.force) {
    writeNew(path, text, path)
    return
  }
  // Writing through the existing file would keep its old mode and follow a symlink planted at the
  // path; a fresh file renamed over it has neither problem.
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
  writeNew(temp, text, path)
  try {
    renameSync(temp, path)
  } catch (error) {
    rmSync(temp, { force: true })
    throw writeError(error, path)
  }
}

function writeNew(target: string, text: Buffer, shownPath: string): void {
  let fd: number
  try {
    fd = openSync(
      target,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    )
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST')
      throw new VrioError('file-exists', `refusing to overwrite ${shownPath}: it already exists`, {
        path: shownPath,
        hint: 'pass --force to replace it',
      })
    throw writeError(error, shownPath)
  }
  try {
    // The umask may have taken bits away from 0600 at creation; the owner must be able to read it.
    fchmodSync(fd, 0o600)
    writeSync(fd, text)
    fsyncSync(fd)
  } catch (error) {
    closeSync(fd)
    rmSync(target, { force: true })
    throw writeError(error, shownPath)
  }
  closeSync(fd)
}

/** Reads and checks a key file; the result is the 32-byte key. */
export function readKeyFile(path: string): Buffer {
  const raw = readOwnerOnly(path, 'key file', MAX_KEY_FILE_BYTES, 'create one with vrio keygen --out FILE')
  try {
    const text = raw.toString('latin1').trim()
    if (raw.length > MAX_KEY_FILE_BYTES || !KEY_HEX_RE.test(text))
      throw new VrioError(
        'key-file-invalid',
        `key file ${path} does not hold a vrio key (exactly 64 hex characters); create one with vrio keygen`,
        { path },
      )
    return Buffer.from(text, 'hex')
  } finally {
    raw.fill(0)
  }
}

/** Secret files are small; anything larger is a mistake (cryptsetup's key file limit is 8 MiB). */
export const MAX_SECRET_FILE_BYTES = 8 * 1024 * 1024

/**
 * Reads a secret file (a disk encryption key file or passphrase file: raw bytes, at most
 * MAX_SECRET_FILE_BYTES) that only its owner may access; `what` names it in errors ('key file',
 * 'passphrase file'). The caller wipes the result once used.
 */
export function readSecretFile(path: string, what = 'key file'): Buffer {
  const raw = readOwnerOnly(path, what, MAX_SECRET_FILE_BYTES)
  if (raw.length > MAX_SECRET_FILE_BYTES) {
    raw.fill(0)
    throw new VrioError('key-file-invalid', `${what} ${path} is too large`, { path })
  }
  return raw
}

/**
 * Opens `path`, checks it is a regular file that group and others cannot access, and reads it:
 * at most `maxBytes` + 1 bytes (more means too large; the caller says so). Nothing is read from
 * a file that fails the checks.
 */
function readOwnerOnly(path: string, what: string, maxBytes: number, missingHint?: string): Buffer {
  let fd: number
  try {
    // O_NONBLOCK: a FIFO planted at the path does not hang the open.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  } catch (error) {
    throw readError(error, path, what, missingHint)
  }
  let buf: Buffer | undefined
  try {
    const stat = fstatSync(fd)
    if (!stat.isFile())
      throw new VrioError('key-file-invalid', `${what} ${path} is not a regular file`, { path })
    // Checked before the content is used: a key others could read is already compromised.
    if ((stat.mode & 0o077) !== 0) {
      const mode = (stat.mode & 0o777).toString(8).padStart(4, '0')
      throw new VrioError(
        'key-file-permissions',
        `${what} ${path} is accessible by group or others (mode ${mode}); run: chmod 600 ${path}`,
        { path, mode },
      )
    }
    // One byte more than the file holds (or than allowed): a file that grew while read shows.
    buf = Buffer.alloc(Math.min(stat.size, maxBytes) + 1)
    let length = 0
    while (length < buf.length) {
      const n = readSync(fd, buf, length, buf.length - length, null)
      if (n === 0) break
      length += n
    }
    if (length === buf.length && length <= maxBytes)
      throw new VrioError('key-file-unreadable', `${what} ${path} changed while it was read`, { path })
    return Buffer.from(buf.subarray(0, length))
  } catch (error) {
    if (error instanceof VrioError) throw error
    throw readError(error, path, what, missingHint)
  } finally {
    buf?.fill(0)
    closeSync(fd)
  }
}

function readError(error: unknown, path: string, what: string, missingHint?: string): VrioError {
  switch ((error as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return new VrioError('key-file-missing', `${what} ${path} does not exist`, {
        path,
        ...(missingHint !== undefined && { hint: missingHint }),
      })
    case 'EACCES':
    case 'EPERM':
      return new VrioError('permission-denied', `cannot read ${what} ${path}: permission denied`, { path })
    case 'EISDIR':
      return new VrioError('key-file-invalid', `${what} ${path} is a directory`, { path })
    default:
      return new VrioError(
        'key-file-unreadable',
        `cannot read ${what} ${path}: ${(error as Error).message}`,
        {
          path,
        },
      )
  }
}

function writeError(error: unknown, path: string): VrioError {
  switch ((error as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return new VrioError('file-write-failed', `cannot write ${path}: its directory does not exist`, {
        path,
      })
    case 'EACCES':
    case 'EPERM':
      return new VrioError('permission-denied', `cannot write ${path}: permission denied`, { path })
    case 'ELOOP':
      return new VrioError('file-exists', `refusing to overwrite ${path}: it is a symbolic link`, { path })
    default:
      return new VrioError('file-write-failed', `cannot write ${path}: ${(error as Error).message}`, { path })
  }
}
