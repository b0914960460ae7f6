/**
 * The control commands, run as a user would (the built CLI in a child process) against a fake
 * daemon: a ControlServer in this process with canned answers that records what it was sent.
 */
import assert from 'node:assert/strict'
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { after, before, beforeEach, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import type {
  AddGuestRequest,
  DiskInfo,
  GuestInfo,
  GuestNicInfo,
  ListGuestsResponse,
  StatusInfo,
} from '../../src/control/api.ts'
import { DEFAULT_GUEST_SOCKET, DEFAULT_IOHYP_SOCKET } from '../../src/control/api.ts'
import { ControlServer } from '../../src/control/control-server.ts'
import { parseAddGuestRequest } from '../../src/control/guest-spec.ts'
import { statusLines } from '../../src/cli/status.ts'
import { VrioError } from '../../src/errors.ts'
import { type RunResult, run, type TempDir, tempDir } from '../control/fixtures.ts'

const bin = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))
const vrio = (...args: string[]) => run(process.execPath, [bin, ...args])

const GUEST_A: GuestInfo = {
  mac: '52:54:00:00:00:01',
  address: '10.0.0.2',
  state: 'connected',
  rttMs: 0.42,
  framesIn: 123456,
  framesOut: 789,
  bytesIn: 1_572_864,
  retransmits: 0,
  rtoFirings: 0,
  fastRecoveries: 0,
  bytesOut: 900,
  drops: { 'bad-tcp-checksum': 2, 'truncated-ipv4': 1 },
  sessionFailures: { 'auth-failed': 1 },
  budgets: { pendingReplyBytes: 64 * 1024 * 1024, reassemblyBytes: 12 * 1024 * 1024 },
  held: { pendingReplyBytes: 1_048_576, reassemblyBytes: 0 },
}
const GUEST_B: GuestInfo = {
  mac: '52:54:00:00:00:0a',
  address: '10.0.0.10',
  state: 'waiting',
  rttMs: null,
  framesIn: 0,
  framesOut: 0,
  bytesIn: 0,
  retransmits: 0,
  rtoFirings: 0,
  fastRecoveries: 0,
  bytesOut: 0,
  drops: {},
  sessionFailures: {},
  budgets: { pendingReplyBytes: 64 * 1024 * 1024, reassemblyBytes: 12 * 1024 * 1024 },
  held: { pendingReplyBytes: 0, reassemblyBytes: 0 },
}
const DISK: DiskInfo = {
  name: 'root',
  guest: '52:54:00:00:00:01',
  backing: '/var/lib/vrio/root.img',
  size: 256 * 1024 * 1024,
  blockSize: 512,
  readOnly: false,
  state: 'attached',
  nbd: 'nbd+unix:///root?socket=/run/vrio/nbd.sock',
  device: null,
  requests: 7,
  errors: 0,
  encryption: null,
}
const GUEST_NIC: GuestNicInfo = {
  name: 'vn1',
  mac: '02:77:00:00:00:01',
  mtu: 1500,
  fromGuest: { frames: 12, bytes: 3072 },
  toGuest: { frames: 3, bytes: 300 },
  drops: { 'queue-full': 2, filtered: 1 },
}
const STATUS: StatusInfo = {
  role: 'iohyp',
  version: '0.1.0',
  pid: 4242,
  startedAt: '2025-01-02T03:04:05.000Z',
  uptimeMs: 3_723_000,
  interface: 'veth-io',
  mac: '52:54:00:ff:00:01',
  address: '10.0.0.1',
  guests: { total: 2, connected: 1 },
}

/** A failure the way the brief wants it: non-zero, one `vrio: ...` line, no stack trace. */
/** A string a peer chose: ESC sequences (clear screen, window title, CSI as C1), CR, NUL, BS, a bidi override. */
const PEER = 'vn\x1b[2J\x1b]0;owned\x07x\r\x00\b\u009b31m\u202eend'
const PEER_SHOWN = 'vn\\x1b[2J\\x1b]0;owned\\x07x\\x0d\\x00\\x08\\x9b31m\\u202eend'

/** Nothing a terminal would act on but the newlines between lines. */
function assertNoControl(text: string): void {
  const bad = [...text].findIndex((ch) => {
    const c = ch.codePointAt(0)!
    return (c < 0x20 && c !== 0x0a) || (c >= 0x7f && c <= 0x9f) || (c >= 0x202a && c <= 0x202e)
  })
  assert.equal(bad, -1, `a control character at ${bad}: ${JSON.stringify(text)}`)
}

function assertOneLineFailure(r: RunResult, message: RegExp): void {
  assert.notEqual(r.status, 0, `expected failure, got success; stdout: ${r.stdout}`)
  assert.match(r.stderr, /^vrio: [^\n]+\n$/, `not exactly one line: ${JSON.stringify(r.stderr)}`)
  assert.match(r.stderr, message)
  assert.doesNotMatch(r.stderr, /\bat .*:\d+:\d+|Error:|VrioError/)
}

describe('vrio control commands against a fake daemon', () => {
  let tmp: TempDir
  let daemon: ControlServer
  let socket: string
  let guests: GuestInfo[]
  let disks: DiskInfo[]
  let received: { method: string; path: string; body: unknown }[]
  let key: string

  before(async () => {
    tmp = tempDir('vrio-cli-')
    socket = tmp.path('iohyp.sock')
    daemon = new ControlServer({ path: socket })
    const record = (req: { method: string; path: string; body: unknown }) =>
      received.push({ method: req.method, path: req.path, body: req.body })
    daemon
      .route('GET', '/v1/status', (req) => {
        record(req)
        return STATUS
      })
      .route('GET', '/v1/blk', () => ({ disks }))
      .route('GET', '/v1/nic', () => ({ nics: [GUEST_NIC] }))
      .route('POST', '/v1/nic', (req) => {
        record(req)
        const b = req.body as Record<string, unknown>
        return { ...GUEST_NIC, guest: b.guest, ip: b.ip ?? null, allowSpoofing: b.allowSpoofing === true }
      })
      .route('GET', '/v1/guests', (req): ListGuestsResponse => {
        record(req)
        return { guests }
      })
      .route('POST', '/v1/guests', (req) => {
        record(req)
        const add = parseAddGuestRequest(req.body)
        if (guests.some((g) => g.mac === add.mac))
          throw new VrioError('conflict', `guest ${add.mac} already exists`, { mac: add.mac })
        const guest: GuestInfo = { ...GUEST_B, mac: add.mac, address: add.address }
        guests.push(guest)
        return { guest }
      })
      .route('DELETE', '/v1/guests/:mac', (req) => {
        record(req)
        const guest = guests.find((g) => g.mac === req.params.mac)
        if (!guest) throw new VrioError('not-found', `no guest ${req.params.mac}`, { mac: req.params.mac })
        guests = guests.filter((g) => g !== guest)
        return { guest }
      })
      // A daemon error that quotes what a peer sent (here: the name asked for, as received).
      .route('DELETE', '/v1/blk/:name', (req) => {
        throw new VrioError('not-found', `the guest answered: ${PEER}`, { disk: req.params.name })
      })
    await daemon.listen()

    const keygen = await vrio('keygen', '--out', tmp.path('guest.key'))
    assert.equal(keygen.status, 0, keygen.stderr)
    key = readFileSync(tmp.path('guest.key'), 'utf8').trim()
  })

  after(async () => {
    await daemon.close()
    tmp.remove()
  })

  beforeEach(() => {
    guests = [GUEST_A, GUEST_B]
    disks = [DISK]
    received = []
  })

  describe('keygen', () => {
    it('writes a 0600 key file and never prints the key', async () => {
      const path = tmp.path('k1.key')
      const r = await vrio('keygen', '--out', path)
      assert.equal(r.status, 0, r.stderr)
      assert.equal(statSync(path).mode & 0o777, 0o600)
      const content = readFileSync(path, 'utf8')
      assert.match(content, /^[0-9a-f]{64}\n$/)
      assert.match(r.stdout, /wrote a new key to .*k1\.key \(mode 0600\)/)
      assert.ok(!r.stdout.includes(content.trim()) && !r.stderr.includes(content.trim()))
    })

    it('refuses to overwrite an existing file, leaving it alone; --force replaces it', async () => {
      const path = tmp.path('k2.key')
      assert.equal((await vrio('keygen', '--out', path)).status, 0)
      const before = readFileSync(path, 'utf8')
      const again = await vrio('keygen', '--out', path)
      assertOneLineFailure(again, /refusing to overwrite .*k2\.key: it already exists \(pass --force/)
      assert.equal(readFileSync(path, 'utf8'), before)

      chmodSync(path, 0o644)
      const forced = await vrio('keygen', '--out', path, '--force', '--json')
      assert.equal(forced.status, 0, forced.stderr)
      assert.deepEqual(JSON.parse(forced.stdout), { path })
      assert.notEqual(readFileSync(path, 'utf8'), before)
      assert.equal(statSync(path).mode & 0o777, 0o600)
    })
  })

  describe('guests add', () => {
    it('sends the canonical MAC, the address and the key as hex, and prints the answer', async () => {
      const r = await vrio(
        'guests',
        'add',
        '--mac',
        '52-54-00-AB-CD-EF',
        '--address',
        '10.0.0.7',
        '--key-file',
        tmp.path('guest.key'),
        '--control',
        socket,
      )
      assert.equal(r.status, 0, r.stderr)
      assert.equal(r.stdout, 'added guest 52:54:00:ab:cd:ef (10.0.0.7), waiting\n')
      assert.equal(r.stderr, '')
      assert.deepEqual(received, [
        {
          method: 'POST',
          path: '/v1/guests',
          body: { mac: '52:54:00:ab:cd:ef', address: '10.0.0.7', key } satisfies AddGuestRequest,
        },
      ])
      assert.ok(!r.stdout.includes(key))
    })

    it('--json prints the daemon answer as one document', async () => {
      const r = await vrio(
        ...['guests', 'add', '--mac', '52:54:00:ab:cd:ef', '--address', '10.0.0.7'],
        ...['--key-file', tmp.path('guest.key'), '--control', socket, '--json'],
      )
      assert.equal(r.status, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), {
        guest: { ...GUEST_B, mac: '52:54:00:ab:cd:ef', address: '10.0.0.7' },
      })
    })

    const addArgs = (overrides: Record<string, string>) => {
      const o = { mac: '52:54:00:ab:cd:ef', address: '10.0.0.7', key: tmp.path('guest.key'), ...overrides }
      return [
        'guests',
        'add',
        '--mac',
        o.mac,
        '--address',
        o.address,
        '--key-file',
        o.key,
        '--control',
        socket,
      ]
    }

    it('rejects a malformed MAC locally, naming it', async () => {
      const r = await vrio(...addArgs({ mac: '52:54:00:zz:00:01' }))
      assertOneLineFailure(r, /^vrio: --mac: '52:54:00:zz:00:01' is not a MAC address/)
      assert.deepEqual(received, [], 'nothing reached the daemon')
    })

    it('rejects a bad IPv4 address locally, naming it', async () => {
      const r = await vrio(...addArgs({ address: '10.0.0.256' }))
      assertOneLineFailure(r, /^vrio: --address: '10.0.0.256' is not an IPv4 address/)
      assert.deepEqual(received, [])
    })

    it('reports a missing key file by path', async () => {
      const path = tmp.path('no-such.key')
      const r = await vrio(...addArgs({ key: path }))
      assertOneLineFailure(r, new RegExp(`^vrio: key file ${path} does not exist`))
      assert.deepEqual(received, [])
    })

    it('refuses a key file others can read, saying how to fix it, without showing the key', async () => {
      const path = tmp.path('loose.key')
      writeFileSync(path, `${key}\n`)
      chmodSync(path, 0o644)
      const r = await vrio(...addArgs({ key: path }))
      assertOneLineFailure(r, /mode 0644\); run: chmod 600 /)
      assert.ok(!r.stderr.includes(key) && !r.stdout.includes(key))
      assert.deepEqual(received, [])
    })

    it('vrio guest --key-file refuses the same file before starting anything', async () => {
      const path = tmp.path('loose-guest.key')
      writeFileSync(path, `${key}\n`)
      chmodSync(path, 0o640)
      const r = await vrio('guest', '--interface', 'lo', '--key-file', path, '--run-dir', tmp.path('run'))
      assertOneLineFailure(
        r,
        new RegExp(`key file ${path} is accessible by group or others \\(mode 0640\\); run: chmod 600 `),
      )
      assert.ok(!r.stderr.includes(key))
    })

    it('refuses a key file that is not a key', async () => {
      const path = tmp.path('garbage.key')
      writeFileSync(path, 'hunter2\n', { mode: 0o600 })
      const r = await vrio(...addArgs({ key: path }))
      assertOneLineFailure(r, /does not hold a vrio key/)
      assert.doesNotMatch(r.stderr, /hunter2/)
    })

    it("passes the daemon's refusal through, with its code in --json", async () => {
      const r = await vrio(...addArgs({ mac: GUEST_A.mac }), '--json')
      assertOneLineFailure(r, /^vrio: guest 52:54:00:00:00:01 already exists$/m)
      assert.deepEqual(JSON.parse(r.stdout), {
        error: { code: 'conflict', message: 'guest 52:54:00:00:00:01 already exists', mac: GUEST_A.mac },
      })
    })

    it('says when no daemon is running, naming the socket', async () => {
      const path = tmp.path('nobody.sock')
      const r = await vrio(...addArgs({}).slice(0, -1), path)
      assertOneLineFailure(r, new RegExp(`^vrio: no vrio daemon is listening on ${path}`))
    })

    it('names a missing required option in one line', async () => {
      const r = await vrio('guests', 'add', '--mac', '52:54:00:ab:cd:ef', '--control', socket)
      assertOneLineFailure(r, /required option '--address <ipv4>' not specified/)
    })
  })

  describe('guests remove', () => {
    it('sends DELETE /v1/guests/:mac with the canonical MAC', async () => {
      const r = await vrio('guests', 'remove', '52:54:00:00:00:0A', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assert.equal(r.stdout, 'removed guest 52:54:00:00:00:0a (10.0.0.10)\n')
      assert.equal(received.length, 1)
      assert.equal(received[0].method, 'DELETE')
      assert.equal(decodeURIComponent(received[0].path), '/v1/guests/52:54:00:00:00:0a')
    })

    it('--json prints the removed guest', async () => {
      const r = await vrio('guests', 'remove', GUEST_A.mac, '--control', socket, '--json')
      assert.equal(r.status, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), { guest: GUEST_A })
    })

    it('reports an unknown guest and a malformed MAC', async () => {
      assertOneLineFailure(
        await vrio('guests', 'remove', '52:54:00:99:99:99', '--control', socket),
        /^vrio: no guest 52:54:00:99:99:99$/m,
      )
      assertOneLineFailure(
        await vrio('guests', 'remove', 'nope', '--control', socket),
        /mac: 'nope' is not a MAC address/,
      )
    })
  })

  describe('guests list', () => {
    it('--json prints {guests: [...]} exactly as the API defines it', async () => {
      const r = await vrio('guests', 'list', '--json', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), { guests: [GUEST_A, GUEST_B] })
    })

    it('prints an aligned table', async () => {
      const r = await vrio('guests', 'list', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      const lines = r.stdout.trimEnd().split('\n')
      assert.equal(lines.length, 3)
      assert.match(
        lines[0],
        /^MAC\s+ADDRESS\s+STATE\s+RTT\s+FRAMES IN\s+FRAMES OUT\s+BYTES IN\s+BYTES OUT\s+DROPS$/,
      )
      assert.match(
        lines[1],
        /^52:54:00:00:00:01\s+10\.0\.0\.2\s+connected\s+0\.42 ms\s+123456\s+789\s+1\.5 MiB\s+900 B\s+3$/,
      )
      assert.match(lines[2], /^52:54:00:00:00:0a\s+10\.0\.0\.10\s+waiting\s+-\s+0\s+0\s+0 B\s+0 B\s+0$/)
      // Columns line up: each starts at the same offset on every line.
      for (const column of ['ADDRESS', 'STATE']) {
        const at = lines[0].indexOf(column)
        assert.ok(
          lines.slice(1).every((l) => l[at - 1] === ' ' && l[at] !== ' '),
          column,
        )
      }
      // Right-aligned numbers end where their header ends.
      const end = lines[0].indexOf('DROPS') + 'DROPS'.length
      assert.ok(lines.every((l) => l.length === end))
    })

    it('says so when there are no guests', async () => {
      guests = []
      const r = await vrio('guests', 'list', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assert.equal(r.stdout, 'no guests\n')
    })
  })

  describe('blk list and nic list (one list command for every device kind)', () => {
    it('--json prints the answer as the API defines it', async () => {
      const r = await vrio('blk', 'list', '--json', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), { disks: [DISK] })
    })

    it('prints a table with the columns of the device kind', async () => {
      const blk = await vrio('blk', 'list', '--control', socket)
      assert.equal(blk.status, 0, blk.stderr)
      const [head, row, ...rest] = blk.stdout.trimEnd().split('\n')
      assert.match(head, /^NAME\s+SIZE\s+MODE\s+GUEST\s+STATE\s+NBD\s+DEVICE$/)
      assert.match(
        row,
        /^root\s+256\.0 MiB\s+rw\s+52:54:00:00:00:01\s+attached\s+nbd\+unix:\/\/\/root\S+\s+-$/,
      )
      assert.deepEqual(rest, [])
      const nic = await vrio('nic', 'list', '--guest', '--control', socket)
      assert.equal(nic.status, 0, nic.stderr)
      const lines = nic.stdout.trimEnd().split('\n')
      assert.match(lines[0], /^NAME\s+MAC\s+MTU\s+GUEST\s+STATE\s+BACKEND\s+FROM GUEST\s+TO GUEST\s+DROPS$/)
      // A guest's NIC has no guest, state or back-end: those cells are empty; DROPS sums the reasons.
      assert.match(lines[1], /^vn1\s+02:77:00:00:00:01\s+1500\s+12 \/ 3\.0 KiB\s+3 \/ 300 B\s+3$/)
    })

    it('says so when there are none', async () => {
      disks = []
      const r = await vrio('blk', 'list', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assert.equal(r.stdout, 'no disks\n')
    })
  })

  describe('strings a peer chose are printed with control characters escaped', () => {
    it('in tables (blk list, guests list), with columns still aligned', async () => {
      disks = [
        { ...DISK, nbd: PEER, device: `/dev/${PEER}` },
        { ...DISK, name: 'b', nbd: 'plain' },
      ]
      const blk = await vrio('blk', 'list', '--control', socket)
      assert.equal(blk.status, 0, blk.stderr)
      assertNoControl(blk.stdout)
      const [head, row, row2] = blk.stdout.trimEnd().split('\n')
      assert.ok(row.includes(`${PEER_SHOWN}  /dev/${PEER_SHOWN}`), row)
      assert.equal(row.indexOf(PEER_SHOWN), head.indexOf('NBD'))
      assert.equal(row2.indexOf('plain'), head.indexOf('NBD'))
      guests = [{ ...GUEST_B, state: PEER as GuestInfo['state'] }]
      const list = await vrio('guests', 'list', '--control', socket)
      assert.equal(list.status, 0, list.stderr)
      assertNoControl(list.stdout)
      assert.ok(list.stdout.includes(PEER_SHOWN), list.stdout)
    })

    it('in --json output, as JSON escapes that parse back to the same string', async () => {
      disks = [{ ...DISK, nbd: PEER }]
      const r = await vrio('blk', 'list', '--json', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assertNoControl(r.stdout)
      assert.equal(JSON.parse(r.stdout).disks[0].nbd, PEER)
    })

    it("in a daemon's error message", async () => {
      const r = await vrio('blk', 'remove', 'x', '--control', socket)
      assertOneLineFailure(r, /^vrio: the guest answered: /)
      assertNoControl(r.stderr)
      assert.ok(r.stderr.includes(PEER_SHOWN), r.stderr)
    })
  })

  describe('nic create: source enforcement options', () => {
    const create = (...extra: string[]) =>
      vrio(
        'nic',
        'create',
        '--guest',
        '10.0.0.2',
        '--mac',
        '02:77:00:00:00:01',
        '--tap',
        'vt1',
        ...extra,
        '--json',
        '--control',
        socket,
      )

    it('sends --ip (canonical prefix text as given) and --allow-spoofing in the request', async () => {
      const withIp = await create('--ip', '192.168.1.8/29')
      assert.equal(withIp.status, 0, withIp.stderr)
      const open = await create('--allow-spoofing')
      assert.equal(open.status, 0, open.stderr)
      const none = await create()
      assert.equal(none.status, 0, none.stderr)
      const bodies = received.map((r) => r.body as Record<string, unknown>)
      assert.deepEqual(
        bodies.map((b) => [b.ip, b.allowSpoofing]),
        [
          ['192.168.1.8/29', undefined],
          [undefined, true],
          [undefined, undefined],
        ],
      )
    })

    it('refuses a bad --ip, and --ip with --allow-spoofing, locally', async () => {
      assertOneLineFailure(
        await create('--ip', '192.168.1.9/29'),
        /--ip: '192\.168\.1\.9\/29' is not an IPv4/,
      )
      assertOneLineFailure(await create('--ip', '10.0.0.5', '--allow-spoofing'), /exclude each other/)
      assert.deepEqual(received, [])
    })
  })

  describe('blk create: the disk schema checks the flags, naming them', () => {
    const create = (...extra: string[]) =>
      vrio('blk', 'create', '--guest', '10.0.0.2', '--backing', 'x.img', ...extra, '--control', socket)

    it('refuses what the schema refuses, locally, naming the flag', async () => {
      assertOneLineFailure(await create('--key-file', 'k'), /^vrio: --encrypt: required/)
      assertOneLineFailure(await create('--encrypt', 'plain'), /^vrio: --key-file: required/)
      assertOneLineFailure(
        await create('--encrypt', 'plain', '--key-file', 'k', '--sector-size', '1024'),
        /^vrio: --sector-size: expected 512 or 4096, got 1024/,
      )
      assertOneLineFailure(
        await create('--encrypt', 'luks', '--key-file', 'k', '--passphrase-file', 'p'),
        /^vrio: --encrypt: luks needs exactly one of/,
      )
      assertOneLineFailure(
        await create('--encrypt', 'luks', '--key-file', 'k', '--sector-size', '512'),
        /^vrio: --sector-size: does not go with the other options/,
      )
      assertOneLineFailure(await create('--encrypt', 'foo'), /^vrio: --encrypt: expected 'plain' or 'luks'/)
      assert.deepEqual(received, [])
    })
  })

  describe('status', () => {
    it('--json prints the StatusInfo document', async () => {
      const r = await vrio('status', '--json', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), STATUS)
      assert.deepEqual(received, [{ method: 'GET', path: '/v1/status', body: undefined }])
    })

    it('prints aligned key: value lines', async () => {
      const r = await vrio('status', '--control', socket)
      assert.equal(r.status, 0, r.stderr)
      assert.equal(
        r.stdout,
        [
          'role:      iohyp',
          'version:   0.1.0',
          'pid:       4242',
          'started:   2025-01-02T03:04:05.000Z (up 1h 2m 3s)',
          'interface: veth-io',
          'mac:       52:54:00:ff:00:01',
          'address:   10.0.0.1',
          'guests:    2 configured, 1 connected',
          '',
        ].join('\n'),
      )
    })

    it("a guest's status says which IOhyp address it accepts and what it dropped before authentication", () => {
      const lines = statusLines({
        ...STATUS,
        role: 'guest',
        guests: undefined,
        preAuth: {
          iohypAddress: '10.0.0.1',
          iohypAddressSource: 'learned',
          halfOpen: 0,
          unauthenticated: 0,
          evictedHalfOpen: 5,
          evictedUnauthenticated: 1,
          authTimeouts: 0,
          foreignAddress: 7,
        },
      })
      assert.equal(
        lines.at(-1),
        'accepts:   10.0.0.1 (learned); 7 SYNs from other addresses dropped, 6 unauthenticated evicted',
      )
    })

    it("a guest's status says how each block device's requests reach the agent", () => {
      const lines = statusLines({
        ...STATUS,
        role: 'guest',
        guests: undefined,
        blockDevices: { bd: '/dev/loop3: FUSE over io_uring, 2 queues' },
      })
      assert.ok(
        lines.some((l) => /^disk bd: +\/dev\/loop3: FUSE over io_uring, 2 queues$/.test(l)),
        lines.join('\n'),
      )
    })

    it('--guest with --control asks the daemon at that path', async () => {
      const r = await vrio('status', '--guest', '--control', socket, '--json')
      assert.equal(r.status, 0, r.stderr)
      assert.equal(JSON.parse(r.stdout).role, 'iohyp')
    })

    it('defaults to the IOhyp socket, or the guest socket with --guest', async (t) => {
      if (existsSync(DEFAULT_IOHYP_SOCKET) || existsSync(DEFAULT_GUEST_SOCKET)) {
        t.skip('a real vrio daemon socket exists on this machine')
        return
      }
      assertOneLineFailure(
        await vrio('status'),
        /^vrio: no vrio daemon is listening on \/run\/vrio\/iohyp\.sock/,
      )
      assertOneLineFailure(
        await vrio('status', '--guest', '--json'),
        /^vrio: no vrio daemon is listening on \/run\/vrio\/guest\.sock/,
      )
      assertOneLineFailure(await vrio('guests', 'list'), /listening on \/run\/vrio\/iohyp\.sock/)
    })

    it('with --json, a failure still prints one JSON document with the stable code', async () => {
      const path = tmp.path('nobody.sock')
      const r = await vrio('status', '--json', '--control', path)
      assertOneLineFailure(r, /no vrio daemon is listening/)
      assert.equal(JSON.parse(r.stdout).error.code, 'daemon-not-running')
    })
  })
})
