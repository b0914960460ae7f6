/** Shared by the control and CLI tests: temporary socket paths and raw HTTP over a unix socket. */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TempDir {
  readonly dir: string
  path(name: string): string
  remove(): void
}

/** A fresh directory per call (socket paths must stay under 108 bytes, so it lives in tmpdir). */
export function tempDir(prefix = 'vrio-ctl-'): TempDir {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  return {
    dir,
    path: (name) => join(dir, name),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  }
}

export interface RawAnswer {
  status: number
  headers: Record<string, string | string[] | undefined>
  text: string
  json: unknown
}

export interface RawRequest {
  method?: string
  path: string
  body?: string | Buffer
  headers?: Record<string, string | number>
  /** Send the body with chunked encoding (no content-length) in pieces of this size. */
  chunkSize?: number
}

/** One HTTP exchange with no client-side interpretation, to see exactly what the server sent. */
export function rawRequest(socketPath: string, r: RawRequest): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const body = typeof r.body === 'string' ? Buffer.from(r.body) : r.body
    const headers: Record<string, string | number> = { ...r.headers }
    if (body && !r.chunkSize) headers['content-length'] = body.length
    const req = request(
      { socketPath, method: r.method ?? 'GET', path: r.path, headers, agent: false },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let json: unknown
          try {
            json = text === '' ? undefined : JSON.parse(text)
          } catch {
            json = undefined
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json })
        })
        res.on('error', reject)
      },
    )
    // The server may answer (413) and stop reading before the whole body is out; that is fine.
    req.on('error', reject)
    if (body && r.chunkSize) {
      for (let i = 0; i < body.length; i += r.chunkSize) req.write(body.subarray(i, i + r.chunkSize))
      req.end()
    } else req.end(body)
  })
}

/** Binds a unix socket in a child process that is then SIGKILLed: the file stays, nobody listens. */
export function makeStaleSocket(path: string): Promise<void> {
  const script = `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: 'ignore' })
    child.on('error', reject)
    child.on('exit', (_code, signal) =>
      signal === 'SIGKILL' ? resolve() : reject(new Error(`stale-socket helper exited without SIGKILL`)),
    )
  })
}

export interface RunResult {
  status: number | null
  stdout: string
  stderr: string
}

/**
 * Runs a command asynchronously. Tests whose fake daemon lives in this process must not use
 * spawnSync: it blocks the event loop the daemon answers on.
 */
export function run(command: string, args: readonly string[], timeoutMs = 20_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s
    })
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr += s
    })
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, stdout, stderr }))
  })
}
