/**
 * Per-guest channel keys on disk: 32 random bytes stored as 64 lowercase hex characters and a
 * newline, mode 0600. Neither a key nor any part of a key file's content ever goes into an error
 * message: messages name the path and the problem only.
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
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  } catch (error) {
    throw readError(error, path)
  }
  const raw = Buffer.alloc(MAX_KEY_FILE_BYTES + 1)
  try {
    const stat = fstatSync(fd)
    if (!stat.isFile())
      throw new VrioError('key-file-invalid', `key file ${path} is not a regular file`, { path })
    // Checked before the content is used: a key others could read is already compromised.
    if ((stat.mode & 0o077) !== 0) {
      const mode = (stat.mode & 0o777).toString(8).padStart(4, '0')
      throw new VrioError(
        'key-file-permissions',
        `key file ${path} is accessible by group or others (mode ${mode}); run: chmod 600 ${path}`,
        { path, mode },
      )
    }
    let length = 0
    for (;;) {
      const n = readSync(fd, raw, length, raw.length - length, null)
      if (n === 0) break
      length += n
      if (length > MAX_KEY_FILE_BYTES) break
    }
    const text = raw.toString('latin1', 0, Math.min(length, raw.length)).trim()
    if (length > MAX_KEY_FILE_BYTES || !KEY_HEX_RE.test(text))
      throw new VrioError(
        'key-file-invalid',
        `key file ${path} does not hold a vrio key (exactly 64 hex characters); create one with vrio keygen`,
        { path },
      )
    return Buffer.from(text, 'hex')
  } catch (error) {
    if (error instanceof VrioError) throw error
    throw readError(error, path)
  } finally {
    closeSync(fd)
    raw.fill(0)
  }
}

function readError(error: unknown, path: string): VrioError {
  switch ((error as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return new VrioError('key-file-missing', `key file ${path} does not exist`, {
        path,
        hint: 'create one with vrio keygen --out FILE',
      })
    case 'EACCES':
    case 'EPERM':
      return new VrioError('permission-denied', `cannot read key file ${path}: permission denied`, { path })
    case 'EISDIR':
      return new VrioError('key-file-invalid', `key file ${path} is a directory`, { path })
    default:
      return new VrioError(
        'key-file-unreadable',
        `cannot read key file ${path}: ${(error as Error).message}`,
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
