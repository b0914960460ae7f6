import { chmod, lstat, mkdir, rm } from 'node:fs/promises'
import { connect, type Server } from 'node:net'
import { dirname } from 'node:path'
import { getSystemErrorName } from 'node:util'
import { VrioError } from '../errors.ts'
import { fromNative, IoError } from './errors.ts'
import { type NativeUnixListener, native } from './native.ts'

/**
 * Binds `server` to a unix socket at `path` that only root can use: creates the parent directory
 * (0700) if missing, replaces a stale socket left by a dead process, refuses when a live process
 * answers on the path or the path is not a socket, and makes the socket 0600 from birth. `kind`
 * names the socket in messages and error codes: `<kind>-socket-in-use`,
 * `<kind>-socket-path-invalid`, `<kind>-socket-error` (and `permission-denied`).
 */
export async function listenUnixSocket(
  server: Server,
  path: string,
  kind: 'control' | 'nbd',
  inUseHint = '',
): Promise<void> {
  await bindUnixSocket(
    path,
    kind,
    inUseHint,
    (inUse, fsError) =>
      new Promise<void>((resolve, reject) => {
        server.once('error', (error: NodeJS.ErrnoException) => {
          if (error.code === 'EADDRINUSE') reject(inUse())
          else reject(fsError(error, `cannot listen on ${kind} socket ${path}`))
        })
        server.listen(path, () => {
          server.removeAllListeners('error')
          resolve()
        })
      }),
    () => server.close(),
  )
}

/**
 * listenUnixSocket for a socket whose connections come as file descriptors (native
 * UnixListener): each is handed to `onConnection`, whose owner wraps it in a
 * `net.Socket({ fd, onread })`, an option Node's own accept path does not take; `sendBuffer`:
 * each connection's SO_SNDBUF in bytes (0 or unset: the kernel's default); `onAcceptError`: an
 * accept that failed for want of something (EMFILE, ENFILE, ENOBUFS, ...), after which the
 * listener waits 200 ms before it tries again. Same checks, same errors, same mode.
 */
export async function listenUnixConnections(
  path: string,
  kind: 'control' | 'nbd',
  onConnection: (fd: number) => void,
  options: { sendBuffer?: number; inUseHint?: string; onAcceptError?: (error: IoError) => void } = {},
): Promise<NativeUnixListener> {
  const Listener = native().UnixListener
  if (!Listener) throw new VrioError('unsupported', 'this build of the addon has no UnixListener; rebuild it')
  let listener: NativeUnixListener | undefined
  await bindUnixSocket(
    path,
    kind,
    options.inUseHint ?? '',
    async (inUse, fsError) => {
      try {
        listener = new Listener(path, LISTEN_BACKLOG, options.sendBuffer ?? 0, (fd) => {
          if (fd >= 0) return onConnection(fd)
          // -errno: accept failed for want of something (EMFILE...); the listener waits, then retries.
          const name = getSystemErrorName(fd)
          const message = `${name}: cannot accept a connection on ${kind} socket ${path}; trying again in ${ACCEPT_BACKOFF_MS} ms`
          options.onAcceptError?.(new IoError(name, fd, 'accept4', message))
        })
      } catch (error) {
        const e = fromNative(error)
        if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE') throw inUse()
        throw fsError(e, `cannot listen on ${kind} socket ${path}`)
      }
    },
    () => listener?.close(),
  )
  return listener!
}

/** As Node's net.Server listens (its default backlog). */
const LISTEN_BACKLOG = 511
/** How long the native listener waits after a failed accept (kBackoffMs in unix_listener.cc). */
const ACCEPT_BACKOFF_MS = 200

/**
 * The common part: creates the parent directory, replaces a stale socket, runs `bind` (whose
 * synchronous part binds) under umask 0177, then makes the socket 0600; `unbind` undoes the bind
 * if that fails.
 */
async function bindUnixSocket(
  path: string,
  kind: 'control' | 'nbd',
  inUseHint: string,
  bind: (inUse: () => VrioError, fsError: (error: unknown, what: string) => VrioError) => Promise<void>,
  unbind: () => void,
): Promise<void> {
  const fsError = (error: unknown, what: string): VrioError => {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EACCES' || code === 'EPERM') {
      return new VrioError('permission-denied', `${what}: permission denied`, {}, { cause: error })
    }
    return new VrioError(
      `${kind}-socket-error` as const,
      `${what}: ${(error as Error).message}`,
      {},
      { cause: error },
    )
  }
  const inUse = () =>
    new VrioError(
      `${kind}-socket-in-use` as const,
      `another process is listening on ${path}${inUseHint ? ` ${inUseHint}` : ''}`,
      { path },
    )
  try {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  } catch (error) {
    throw fsError(error, `cannot create the directory for ${kind} socket ${path}`)
  }

  let isSocket: boolean | undefined
  try {
    isSocket = (await lstat(path)).isSocket()
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT')
      throw fsError(error, `cannot inspect ${kind} socket ${path}`)
  }
  if (isSocket === false) {
    throw new VrioError(
      `${kind}-socket-path-invalid` as const,
      `${path} exists and is not a socket; refusing to replace it`,
      { path },
    )
  }
  if (isSocket) {
    if (await someoneAnswers(path, (e) => fsError(e, `cannot probe ${kind} socket ${path}`))) throw inUse()
    try {
      await rm(path, { force: true })
    } catch (error) {
      throw fsError(error, `cannot remove stale ${kind} socket ${path}`)
    }
  }

  // The bind happens synchronously inside bind() (server.listen() binds before it returns), so a
  // umask set around the call makes the socket 0600 from birth instead of leaving a window
  // before the chmod below.
  const restoreUmask = setUmask(0o177)
  let bound: Promise<void>
  try {
    bound = bind(inUse, fsError)
  } finally {
    restoreUmask()
  }
  await bound
  try {
    await chmod(path, 0o600)
  } catch (error) {
    unbind()
    await rm(path, { force: true }).catch(() => {})
    throw fsError(error, `cannot set the mode of ${kind} socket ${path}`)
  }
}

/** True when a live process accepts connections on the unix socket at `path`. */
function someoneAnswers(path: string, wrap: (error: unknown) => VrioError): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connect(path)
    const done = (answer: boolean | Error) => {
      clearTimeout(timer)
      socket.destroy()
      if (answer instanceof Error) reject(answer)
      else resolve(answer)
    }
    // A listener that neither accepts nor refuses is still alive; treating it as stale would
    // unlink a running daemon's socket.
    const timer = setTimeout(() => done(true), 1000)
    socket.once('connect', () => done(true))
    socket.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ECONNREFUSED' || error.code === 'ENOENT') done(false)
      else if (error.code === 'EAGAIN') done(true)
      else done(wrap(error))
    })
  })
}

function setUmask(mask: number): () => void {
  try {
    const previous = process.umask(mask)
    return () => process.umask(previous)
  } catch {
    // Worker threads may not change the umask; the chmod after listen still applies.
    return () => {}
  }
}
