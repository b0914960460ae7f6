import assert from 'node:assert/strict'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { existsSync, lstatSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, afterEach, before, describe, it } from 'node:test'
import { ControlClient } from '../../src/control/control-client.ts'
import { ControlServer, httpStatusForCode, RawBody } from '../../src/control/control-server.ts'
import { ERROR_CATALOGUE, type ErrorCode, isErrorCode, isVrioError, VrioError } from '../../src/errors.ts'
import { makeStaleSocket, rawRequest, type TempDir, tempDir } from './fixtures.ts'
import { settlesWithin } from '../support/wait.ts'

const mode = (path: string) => statSync(path).mode & 0o777

async function rejectsWithCode(promise: Promise<unknown>, code: string): Promise<VrioError> {
  try {
    await promise
  } catch (error) {
    assert.ok(isVrioError(error), `expected a VrioError, got ${String(error)}`)
    assert.equal(error.code, code, error.message)
    return error
  }
  assert.fail(`expected a rejection with code ${code}`)
}

describe('control server and client', () => {
  let tmp: TempDir
  let server: ControlServer
  let client: ControlClient
  const reported: unknown[] = []

  before(async () => {
    tmp = tempDir()
    server = new ControlServer({
      path: tmp.path('run/ctl.sock'),
      maxBodyBytes: 64 * 1024,
      onError: (error) => reported.push(error),
    })
    server
      .route('POST', '/v1/echo', (req) => ({ body: req.body, query: req.query }))
      .route('GET', '/v1/echo', (req) => ({ body: req.body ?? null, query: req.query }))
      .route('GET', '/v1/guests/:mac', (req) => ({ mac: req.params.mac }))
      .route('DELETE', '/v1/guests/:mac', async () => {
        await sleep(1)
        return undefined
      })
      .route('GET', '/v1/things/:a/sub/:b', (req) => req.params)
      .route('GET', '/v1/fail/:code', (req) => {
        const code = req.params.code
        if (!isErrorCode(code)) throw new Error(`test route: ${code} is not catalogued`)
        throw new VrioError(code, `failed with ${code}`, { extra: 42 })
      })
      .route('GET', '/v1/crash', () => {
        throw new Error('secret internal detail /etc/shadow')
      })
      .route('GET', '/v1/crash-async', async () => Promise.reject(new TypeError('async secret')))
      .route('GET', '/v1/bigint', () => ({ n: 1n }))
      .route('GET', '/v1/slow', () => sleep(400).then(() => ({ late: true })))
      .route(
        'GET',
        '/metrics',
        async () => new RawBody('text/plain; version=0.0.4; charset=utf-8', 'a_total 1\n'),
      )
    await server.listen()
    client = new ControlClient({ path: server.path, timeoutMs: 5000 })
  })

  after(async () => {
    await server.close()
    tmp.remove()
  })

  afterEach(() => {
    reported.length = 0
  })

  it('creates the missing socket directory with mode 0700 and the socket with mode 0600', () => {
    assert.equal(mode(tmp.path('run')), 0o700)
    assert.ok(lstatSync(server.path).isSocket())
    assert.equal(mode(server.path), 0o600)
  })

  it('round-trips JSON bodies and query strings', async () => {
    const body = {
      mac: '52:54:00:12:34:56',
      nested: { list: [1, 2, 3], flag: true, none: null },
      text: 'é ✓',
    }
    assert.deepEqual(await client.post('/v1/echo?verbose=1&x=a%20b', body), {
      body,
      query: { verbose: '1', x: 'a b' },
    })
    assert.deepEqual(await client.get('/v1/echo'), { body: null, query: {} })
  })

  it('passes percent-decoded :param segments to the handler', async () => {
    assert.deepEqual(await client.get(`/v1/guests/${encodeURIComponent('52:54:00:12:34:56')}`), {
      mac: '52:54:00:12:34:56',
    })
    assert.deepEqual(await client.get('/v1/guests/aa:bb'), { mac: 'aa:bb' })
    assert.deepEqual(await client.get('/v1/things/one/sub/two'), { a: 'one', b: 'two' })
    const r = await rawRequest(server.path, { path: '/v1/guests/%E0%A4%A' })
    assert.equal(r.status, 400)
    assert.equal((r.json as { error: { code: string } }).error.code, 'invalid-argument')
  })

  it('answers 204 with no body when a handler returns undefined, and the client gives undefined', async () => {
    const r = await rawRequest(server.path, { method: 'DELETE', path: '/v1/guests/aa' })
    assert.equal(r.status, 204)
    assert.equal(r.text, '')
    assert.equal(await client.delete('/v1/guests/aa'), undefined)
  })

  it('sends a RawBody as it is, with its content type (the metrics route)', async () => {
    const r = await rawRequest(server.path, { path: '/metrics' })
    assert.equal(r.status, 200)
    assert.equal(r.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
    assert.equal(r.headers['content-length'], '10')
    assert.equal(r.text, 'a_total 1\n')
    assert.equal(await client.get<string>('/metrics'), 'a_total 1\n', 'the client gives the text')
  })

  it('maps VrioError codes to HTTP statuses and sends {error: {code, message, ...details}}', async () => {
    // Every catalogued code, with the status the catalogue gives it; the spot checks guard the
    // catalogue itself against a wholesale change of meaning.
    const spot: [ErrorCode, number][] = [
      ['invalid-argument', 400],
      ['not-found', 404],
      ['conflict', 409],
      ['unavailable', 503],
      ['not-connected', 503],
      ['timeout', 504],
      ['symlink', 400],
      ['key-file-permissions', 400],
      ['key-file-missing', 400],
      ['internal', 500],
    ]
    for (const [code, status] of spot) assert.equal(ERROR_CATALOGUE[code].http, status, code)
    // `request-aborted` is never answered: it means the client has gone.
    const cases = Object.entries(ERROR_CATALOGUE)
      .filter(([code]) => code !== 'request-aborted')
      .map(([code, e]) => [code as ErrorCode, e.http] as const)
    assert.ok(cases.length > 40)
    for (const [code, status] of cases)
      assert.ok(status !== 500 || code === 'internal', `${code}: 500 is for bugs`)
    for (const [code, status] of cases) {
      assert.equal(httpStatusForCode(code), status, code)
      const r = await rawRequest(server.path, { path: `/v1/fail/${code}` })
      assert.equal(r.status, status, code)
      assert.match(String(r.headers['content-type']), /^application\/json/)
      assert.deepEqual(r.json, { error: { code, message: `failed with ${code}`, extra: 42 } })
      const error = await rejectsWithCode(client.get(`/v1/fail/${code}`), code)
      assert.equal(error.message, `failed with ${code}`)
      assert.equal(error.details.extra, 42)
    }
    assert.equal(httpStatusForCode('some-new-code'), 500)
    assert.equal(httpStatusForCode('constructor'), 500, 'no prototype keys in the table')
    // An uncatalogued code is a type error (tsc fails the build if this line compiles), and a
    // TypeError at run time for a code built from outside data.
    // @ts-expect-error 'some-new-code' is not an ErrorCode
    assert.throws(() => new VrioError('some-new-code', 'x'), TypeError)
  })

  it('answers any other exception with 500 "internal", a generic message and no stack, and reports it', async () => {
    const seen: unknown[] = []
    const onMessage = (message: unknown) => seen.push(message)
    subscribe('vrio:control:error', onMessage)
    try {
      for (const path of ['/v1/crash', '/v1/crash-async', '/v1/bigint']) {
        const r = await rawRequest(server.path, { path })
        assert.equal(r.status, 500, path)
        const error = (r.json as { error: { code: string; message: string } }).error
        assert.equal(error.code, 'internal')
        assert.doesNotMatch(r.text, /secret|shadow|at |\.js:/)
      }
    } finally {
      unsubscribe('vrio:control:error', onMessage)
    }
    assert.equal(reported.length, 3)
    assert.match(String(reported[0]), /secret internal detail/)
    assert.equal(seen.length, 3)
    await rejectsWithCode(client.get('/v1/crash'), 'internal')
  })

  it('answers 404 "unknown-route" for an unknown path and 405 with Allow for a wrong method', async () => {
    const missing = await rawRequest(server.path, { path: '/v1/nothing' })
    assert.equal(missing.status, 404)
    assert.equal((missing.json as { error: { code: string } }).error.code, 'unknown-route')
    await rejectsWithCode(client.get('/v1/guests'), 'unknown-route')
    await rejectsWithCode(client.get('/v1/guests/'), 'unknown-route')

    const wrong = await rawRequest(server.path, { method: 'PUT', path: '/v1/guests/aa' })
    assert.equal(wrong.status, 405)
    assert.equal((wrong.json as { error: { code: string } }).error.code, 'method-not-allowed')
    assert.equal(wrong.headers.allow, 'GET, DELETE')
    await rejectsWithCode(client.post('/v1/guests/aa', {}), 'method-not-allowed')
  })

  it('answers 413 "request-too-large" for a body over the limit, declared or streamed, and keeps serving', async () => {
    const big = Buffer.alloc(200 * 1024, 'a')
    const declared = await rawRequest(server.path, { method: 'POST', path: '/v1/echo', body: big })
    assert.equal(declared.status, 413)
    assert.equal((declared.json as { error: { code: string } }).error.code, 'request-too-large')

    const streamed = await rawRequest(server.path, {
      method: 'POST',
      path: '/v1/echo',
      body: big,
      chunkSize: 8 * 1024,
      headers: { 'content-type': 'application/json' },
    })
    assert.equal(streamed.status, 413)

    await rejectsWithCode(client.post('/v1/echo', { pad: 'x'.repeat(100 * 1024) }), 'request-too-large')
    const justUnder = { pad: 'x'.repeat(60 * 1024) }
    assert.deepEqual(await client.post('/v1/echo', justUnder), { body: justUnder, query: {} })
  })

  it('the default body limit is 1 MiB', async () => {
    const other = new ControlServer({ path: tmp.path('default-limit.sock') })
    other.route('POST', '/x', (req) => ({ length: (req.body as string).length }))
    await other.listen()
    try {
      const c = new ControlClient({ path: other.path })
      assert.deepEqual(await c.post('/x', 'y'.repeat(1024 * 1024 - 2)), { length: 1024 * 1024 - 2 })
      await rejectsWithCode(c.post('/x', 'y'.repeat(1024 * 1024)), 'request-too-large')
    } finally {
      await other.close()
    }
  })

  it('answers 400 "invalid-json" for a malformed body without echoing it', async () => {
    const r = await rawRequest(server.path, {
      method: 'POST',
      path: '/v1/echo',
      body: '{"key": "00112233deadbeef", oops',
      headers: { 'content-type': 'application/json' },
    })
    assert.equal(r.status, 400)
    assert.equal((r.json as { error: { code: string } }).error.code, 'invalid-json')
    assert.doesNotMatch(r.text, /deadbeef|oops/)

    const noType = await rawRequest(server.path, { method: 'POST', path: '/v1/echo', body: 'not json' })
    assert.equal(noType.status, 400)
  })

  it('answers 415 for a body that is declared as something other than JSON', async () => {
    const r = await rawRequest(server.path, {
      method: 'POST',
      path: '/v1/echo',
      body: 'a=1',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    })
    assert.equal(r.status, 415)
    assert.equal((r.json as { error: { code: string } }).error.code, 'unsupported-media-type')
    const ok = await rawRequest(server.path, {
      method: 'POST',
      path: '/v1/echo',
      body: '[1]',
      headers: { 'content-type': 'application/json; charset=utf-8' },
    })
    assert.equal(ok.status, 200)
    assert.deepEqual(ok.json, { body: [1], query: {} })
  })

  it("refuses with 'control-socket-in-use' while another server listens, leaving that server intact", async () => {
    const second = new ControlServer({ path: server.path })
    const error = await rejectsWithCode(second.listen(), 'control-socket-in-use')
    assert.match(error.message, /another process is listening on .*ctl\.sock/)
    assert.equal(second.listening, false)
    await second.close()
    assert.ok(existsSync(server.path))
    assert.deepEqual(await client.get('/v1/guests/still-here'), { mac: 'still-here' })
  })

  it('client: a slow daemon is a "timeout"', async () => {
    const impatient = new ControlClient({ path: server.path, timeoutMs: 100 })
    const error = await rejectsWithCode(impatient.get('/v1/slow'), 'timeout')
    assert.match(error.message, /did not answer within 100 ms/)
  })
})

describe('control socket lifecycle', () => {
  let tmp: TempDir
  before(() => {
    tmp = tempDir()
  })
  after(() => tmp.remove())

  it('replaces a stale socket left by a dead process', async () => {
    const path = tmp.path('stale.sock')
    await makeStaleSocket(path)
    assert.ok(lstatSync(path).isSocket(), 'the helper left a socket file behind')
    await rejectsWithCode(new ControlClient({ path }).get('/v1/status'), 'daemon-not-running')

    const server = new ControlServer({ path })
    server.route('GET', '/v1/status', () => ({ ok: true }))
    await server.listen()
    try {
      assert.equal(mode(path), 0o600)
      assert.deepEqual(await new ControlClient({ path }).get('/v1/status'), { ok: true })
    } finally {
      await server.close()
    }
  })

  it('removes the socket file on close', async () => {
    const path = tmp.path('closing.sock')
    const server = new ControlServer({ path })
    await server.listen()
    assert.ok(existsSync(path))
    await server.close()
    assert.equal(existsSync(path), false)
    await server.close() // idempotent
  })

  it('close() does not wait forever for an idle keep-alive connection', async () => {
    const path = tmp.path('keepalive.sock')
    const server = new ControlServer({ path, closeGraceMs: 200 })
    server.route('GET', '/x', () => ({}))
    await server.listen()
    const { request, Agent } = await import('node:http')
    const agent = new Agent({ keepAlive: true })
    await new Promise<void>((resolve, reject) => {
      request({ socketPath: path, path: '/x', agent }, (res) => res.resume().on('end', resolve))
        .on('error', reject)
        .end()
    })
    // With a grace of 200 ms, close() cuts the idle connection off instead of waiting for it.
    await settlesWithin(server.close(), 'close() with an idle keep-alive connection open', 30_000)
    agent.destroy()
  })

  it('refuses to replace a path that is not a socket', async () => {
    const path = tmp.path('regular-file')
    writeFileSync(path, 'precious')
    await rejectsWithCode(new ControlServer({ path }).listen(), 'control-socket-path-invalid')
    assert.equal(readFileSync(path, 'utf8'), 'precious')
  })

  it('client: a missing socket is "daemon-not-running", naming the path, with a hint', async () => {
    const path = tmp.path('nobody-home.sock')
    const error = await rejectsWithCode(new ControlClient({ path }).get('/v1/status'), 'daemon-not-running')
    assert.equal(error.message, `no vrio daemon is listening on ${path}`)
    assert.equal(typeof error.details.hint, 'string')
  })

  it('client: an answer that is not the control API\'s JSON is "bad-response"', async () => {
    const path = tmp.path('not-vrio.sock')
    const foreign = createServer((_req, res) => {
      res.writeHead(502, { 'content-type': 'text/html' }).end('<h1>bad gateway</h1>')
    })
    await new Promise<void>((resolve) => foreign.listen(path, resolve))
    try {
      const error = await rejectsWithCode(new ControlClient({ path }).get('/v1/status'), 'bad-response')
      assert.match(error.message, /HTTP 502/)
    } finally {
      await new Promise((resolve) => foreign.close(resolve))
    }
  })
})
