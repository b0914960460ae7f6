import assert from 'node:assert/strict'
import { chmodSync, linkSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import YAML from 'yaml'
import { readKeyFile, writeKeyFile } from '../../src/auth/key-file.ts'
import { cpusOption, pollOption } from '../../src/cli/daemons.ts'
import { loadGuestConfig, loadIohypConfig } from '../../src/config/load.ts'
import { DEFAULT_POLL_IDLE_US } from '../../src/config/schema.ts'
import { isVrioError } from '../../src/errors.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

type Doc = Record<string, unknown>

let tmp: TempDir
let n = 0

/** A config that loads: relative paths throughout, guests referred to by name, MAC and address. */
function validIohyp(): Doc {
  return {
    interface: 'eth1',
    address: '10.0.0.1',
    stateDir: 'state',
    control: 'run/iohyp.sock',
    guests: [
      { mac: '52:54:00:AA:00:01', address: '10.0.0.11', keyFile: 'keys/g1.key', name: 'db' },
      { mac: '52-54-00-aa-00-02', address: '10.0.0.12', keyFile: 'keys/g2.key' },
    ],
    disks: [
      { name: 'root', guest: 'db', backing: 'images/root.img' },
      {
        name: 'data',
        guest: '52:54:00:aa:00:02',
        backing: 'images/data.img',
        readOnly: true,
        encrypt: { kind: 'plain', cipher: 'aes-xts-plain64', keyFile: 'keys/disk.key', sectorSize: 4096 },
      },
      {
        name: 'logs',
        guest: '10.0.0.12',
        backing: 'images/logs.img',
        encrypt: { kind: 'luks', passphraseFile: 'keys/logs.pass' },
      },
    ],
    nics: [
      { name: 'lan0', guest: 'db', mac: '52:54:00:bb:00:01', tap: 'vt-db0', bridge: 'br0', mtu: 9000 },
      {
        name: 'wan0',
        guest: '10.0.0.12',
        mac: '52:54:00:bb:00:02',
        macvtap: 'eth2',
        firewall: 'rules/wan.fw',
        dpi: 'rules/wan.dpi',
      },
    ],
  }
}

function write(doc: Doc | string, ext = 'yaml'): string {
  const file = join(tmp.dir, `c${n++}.${ext}`)
  const text =
    typeof doc === 'string' ? doc : ext === 'json' ? JSON.stringify(doc, null, 2) : YAML.stringify(doc)
  writeFileSync(file, text)
  return file
}

/** Loading `doc` fails with invalid-config; returns the one-line message after `config FILE: `. */
function refused(load: (file: string) => unknown, doc: Doc | string, ext = 'yaml'): string {
  const file = write(doc, ext)
  try {
    load(file)
  } catch (error) {
    assert.ok(isVrioError(error, 'invalid-config'), `expected invalid-config, got ${String(error)}`)
    assert.ok(error.message.startsWith(`config ${file}: `), error.message)
    assert.doesNotMatch(error.message, /\n/)
    assert.equal(error.details.file, file)
    return error.message.slice(`config ${file}: `.length)
  }
  assert.fail(`${JSON.stringify(doc)} was accepted`)
}

const iohypRefused = (doc: Doc | string, ext?: string) => refused(loadIohypConfig, doc, ext)

describe('config files', () => {
  before(() => {
    tmp = tempDir('vrio-config-')
    for (const d of ['keys', 'images', 'rules']) mkdirSync(tmp.path(d))
    writeKeyFile(tmp.path('keys/g1.key'), Buffer.alloc(32, 1))
    writeKeyFile(tmp.path('keys/g2.key'), Buffer.alloc(32, 2))
    writeFileSync(tmp.path('keys/disk.key'), Buffer.alloc(64, 7), { mode: 0o600 })
    writeFileSync(tmp.path('keys/logs.pass'), 'correct horse\n', { mode: 0o600 })
    for (const f of [
      'images/root.img',
      'images/data.img',
      'images/logs.img',
      'rules/wan.fw',
      'rules/wan.dpi',
    ])
      writeFileSync(tmp.path(f), '')
    // Other paths to images/root.img, and a backing that is a symlink itself.
    linkSync(tmp.path('images/root.img'), tmp.path('images/root-hard.img'))
    symlinkSync(tmp.path('images'), tmp.path('images-link'))
    symlinkSync(tmp.path('images/root.img'), tmp.path('images/root-link.img'))
  })
  after(() => tmp.remove())

  it('a valid YAML config loads: canonical addresses, paths from the file, keys read, guests resolved', () => {
    const c = loadIohypConfig(write(validIohyp()))
    assert.equal(c.interface, 'eth1')
    assert.equal(c.address, '10.0.0.1')
    assert.equal(c.stateDir, tmp.path('state'))
    assert.equal(c.control, tmp.path('run/iohyp.sock'))
    assert.deepEqual(
      c.guests.map((g) => [g.mac, g.address, g.keyFile, g.name]),
      [
        ['52:54:00:aa:00:01', '10.0.0.11', tmp.path('keys/g1.key'), 'db'],
        ['52:54:00:aa:00:02', '10.0.0.12', tmp.path('keys/g2.key'), undefined],
      ],
    )
    assert.deepEqual(c.guests[0].key, Buffer.alloc(32, 1))
    assert.deepEqual(c.guests[1].key, readKeyFile(tmp.path('keys/g2.key')))
    assert.deepEqual(c.disks, [
      { name: 'root', guest: '52:54:00:aa:00:01', backing: tmp.path('images/root.img'), readOnly: false },
      {
        name: 'data',
        guest: '52:54:00:aa:00:02',
        backing: tmp.path('images/data.img'),
        readOnly: true,
        encrypt: {
          kind: 'plain',
          cipher: 'aes-xts-plain64',
          keyFile: tmp.path('keys/disk.key'),
          sectorSize: 4096,
        },
      },
      {
        name: 'logs',
        guest: '52:54:00:aa:00:02',
        backing: tmp.path('images/logs.img'),
        readOnly: false,
        encrypt: { kind: 'luks', passphraseFile: tmp.path('keys/logs.pass') },
      },
    ])
    assert.deepEqual(c.nics[0], {
      name: 'lan0',
      guest: '52:54:00:aa:00:01',
      mac: '52:54:00:bb:00:01',
      tap: 'vt-db0',
      bridge: 'br0',
      mtu: 9000,
    })
    assert.equal(c.nics[1].guest, '52:54:00:aa:00:02')
    assert.equal(c.nics[1].firewall, tmp.path('rules/wan.fw'))
    assert.equal(c.nics[1].dpi, tmp.path('rules/wan.dpi'))
  })

  it('the same config as JSON loads to the same result; .yml is YAML', () => {
    const { file: _a, ...fromYaml } = loadIohypConfig(write(validIohyp()))
    const { file: _b, ...fromJson } = loadIohypConfig(write(validIohyp(), 'json'))
    const { file: _c, ...fromYml } = loadIohypConfig(write(YAML.stringify(validIohyp()), 'yml'))
    assert.deepEqual(fromJson, fromYaml)
    assert.deepEqual(fromYml, fromYaml)
  })

  it('insecurePlaintext: a boolean on both daemons, absent by default (sealed)', () => {
    assert.equal(loadIohypConfig(write({ interface: 'eth0' })).insecurePlaintext, undefined)
    assert.equal(
      loadIohypConfig(write({ interface: 'eth0', insecurePlaintext: true })).insecurePlaintext,
      true,
    )
    assert.equal(
      loadGuestConfig(write({ interface: 'eth0', keyFile: 'keys/g1.key', insecurePlaintext: true }))
        .insecurePlaintext,
      true,
    )
    assert.match(
      refused(loadIohypConfig, { interface: 'eth0', insecurePlaintext: 'yes' }),
      /^insecurePlaintext: expected true or false/,
    )
  })

  it('metrics: ADDR:PORT on both daemons, absent by default; anything else refused naming the key', () => {
    assert.equal(loadIohypConfig(write({ interface: 'eth0' })).metrics, undefined)
    assert.equal(
      loadIohypConfig(write({ interface: 'eth0', metrics: '127.0.0.1:9860' })).metrics,
      '127.0.0.1:9860',
    )
    assert.equal(
      loadGuestConfig(write({ interface: 'eth0', keyFile: 'keys/g1.key', metrics: '[::1]:9861' })).metrics,
      '[::1]:9861',
    )
    assert.match(
      refused(loadIohypConfig, { interface: 'eth0', metrics: '9860' }),
      /^metrics: must be ADDR:PORT/,
    )
  })

  it('poll / pollIdleUs on both daemons, and --poll / --poll-idle-us over them; bad values refused naming the key', () => {
    const c = loadIohypConfig(write({ interface: 'eth0', poll: true, pollIdleUs: 200 }))
    assert.deepEqual([c.poll, c.pollIdleUs], [true, 200])
    const g = loadGuestConfig(write({ interface: 'eth0', keyFile: 'keys/g1.key', poll: true }))
    assert.deepEqual([g.poll, g.pollIdleUs], [true, undefined])
    assert.match(refused(loadIohypConfig, { interface: 'eth0', poll: 'on' }), /^poll: expected true or false/)
    assert.match(
      refused(loadIohypConfig, { interface: 'eth0', poll: true, pollIdleUs: 0 }),
      /^pollIdleUs: must be at least 1 µs/,
    )
    assert.match(
      refused(loadGuestConfig, { interface: 'eth0', keyFile: 'keys/g1.key', pollIdleUs: 2.5 }),
      /^pollIdleUs: must be a whole number of microseconds/,
    )
    // The command line over the file: off unless asked (the IOhyp), the default idle time, the file's or the option's.
    const frames = (idleUs: number) => ({ idleUs, disksOnly: false })
    assert.equal(pollOption({}, undefined), undefined)
    assert.deepEqual(pollOption({ poll: true }, undefined), frames(DEFAULT_POLL_IDLE_US))
    assert.deepEqual(pollOption({}, { poll: true, pollIdleUs: 200 }), frames(200))
    assert.deepEqual(pollOption({ poll: true, pollIdleUs: '80' }, { pollIdleUs: 200 }), frames(80))
    // The guest agent's default: polling for disk calls; --poll (poll: true) after every frame; --no-poll (poll: false) never.
    assert.deepEqual(pollOption({}, undefined, 'disks'), { idleUs: DEFAULT_POLL_IDLE_US, disksOnly: true })
    assert.deepEqual(pollOption({ pollIdleUs: '120' }, undefined, 'disks'), { idleUs: 120, disksOnly: true })
    assert.deepEqual(pollOption({ poll: true }, undefined, 'disks'), frames(DEFAULT_POLL_IDLE_US))
    assert.equal(pollOption({ poll: false }, undefined, 'disks'), undefined)
    assert.equal(pollOption({}, { poll: false }, 'disks'), undefined)
    assert.equal(pollOption({ poll: false }, { poll: true }, 'disks'), undefined)
    const bad = (
      o: { poll?: boolean; pollIdleUs?: string },
      c?: { poll?: boolean; pollIdleUs?: number },
      byDefault?: 'off' | 'disks',
      hint = /add --poll/,
    ) =>
      assert.throws(
        () => pollOption(o, c, byDefault),
        (e) =>
          isVrioError(e, 'invalid-argument') &&
          e.details.field === 'pollIdleUs' &&
          /poll/.test(e.message) &&
          (!/is set but polling is off/.test(e.message) || hint.test(e.message)),
      )
    bad({ poll: true, pollIdleUs: 'fast' })
    bad({ poll: true, pollIdleUs: '0' })
    bad({ poll: true, pollIdleUs: '2000000' })
    bad({ pollIdleUs: '50' })
    bad({}, { pollIdleUs: 50 })
    bad({ poll: false, pollIdleUs: '50' }, undefined, 'disks', /drop --no-poll/)
    bad({}, { poll: false, pollIdleUs: 70 }, 'disks', /drop --no-poll/)
    bad({}, { poll: false, pollIdleUs: 70 })
  })

  it('cpus on both daemons and --cpus over it: taskset lists, sorted and distinct; bad ones refused naming the key', () => {
    assert.deepEqual(loadIohypConfig(write({ interface: 'eth0', cpus: '3,0-1,1' })).cpus, [0, 1, 3])
    assert.deepEqual(
      loadGuestConfig(write({ interface: 'eth0', keyFile: 'keys/g1.key', cpus: '2' })).cpus,
      [2],
    )
    assert.equal(loadIohypConfig(write({ interface: 'eth0' })).cpus, undefined)
    assert.match(
      refused(loadIohypConfig, { interface: 'eth0', cpus: 'all' }),
      /^cpus: must be a CPU list such as 0, 0-3/,
    )
    assert.match(refused(loadIohypConfig, { interface: 'eth0', cpus: 3 }), /^cpus: /)
    assert.match(
      refused(loadGuestConfig, { interface: 'eth0', keyFile: 'keys/g1.key', cpus: '4-2' }),
      /^cpus: '4-2' is not a range of CPUs 0-1023/,
    )
    assert.equal(cpusOption(undefined), undefined)
    assert.deepEqual(cpusOption('0-2,5'), [0, 1, 2, 5])
    for (const bad of ['', '1,', '-1', '0-', 'x', '2000'])
      assert.throws(
        () => cpusOption(bad),
        (e) =>
          isVrioError(e, 'invalid-argument') &&
          e.details.field === 'cpus' &&
          e.message.startsWith(`--cpus '${bad}'`),
        bad,
      )
  })

  it('lists default to empty; only interface is required', () => {
    const c = loadIohypConfig(write({ interface: 'eth0' }))
    assert.deepEqual([c.guests, c.disks, c.nics, c.stateDir, c.address], [[], [], [], undefined, undefined])
  })

  /** [what, change to the valid config, the field path and reason expected in the message]. */
  const cases: [string, (d: Doc) => void, RegExp][] = [
    ['wrong type', (d) => (d.interface = 5), /^interface: expected a string, got a whole number$/],
    [
      'wrong type in a list',
      (d) => ((d.guests as Doc[])[1].address = 10),
      /^guests\[1\]\.address: expected a string/,
    ],
    ['a list that is not', (d) => (d.disks = { root: 1 }), /^disks: expected a list, got an object$/],
    ['missing field', (d) => delete (d.guests as Doc[])[0].keyFile, /^guests\[0\]\.keyFile: required$/],
    ['unknown key', (d) => (d.intrface = 'x'), /^intrface: unknown key$/],
    [
      'unknown nested key',
      (d) => ((d.disks as Doc[])[0].readonly = true),
      /^disks\[0\]\.readonly: unknown key$/,
    ],
    ['bad MAC', (d) => ((d.guests as Doc[])[0].mac = 'zz'), /^guests\[0\]\.mac: 'zz' is not a MAC address/],
    [
      'multicast MAC',
      (d) => ((d.guests as Doc[])[0].mac = '01:00:5e:00:00:01'),
      /^guests\[0\]\.mac: '01:00:5e:00:00:01' is not a unicast MAC/,
    ],
    ['bad IPv4', (d) => (d.address = '10.0.0.300'), /^address: '10\.0\.0\.300' is not an IPv4 address/],
    [
      'duplicate guest MAC in another spelling',
      (d) => ((d.guests as Doc[])[1].mac = '52-54-00-aa-00-01'),
      /^guests\[1\]\.mac: duplicate MAC '52:54:00:aa:00:01' \(also guests\[0\]\)/,
    ],
    [
      'duplicate guest address',
      (d) => ((d.guests as Doc[])[1].address = '10.0.0.11'),
      /^guests\[1\]\.address: duplicate address '10\.0\.0\.11'/,
    ],
    [
      'duplicate guest name',
      (d) => ((d.guests as Doc[])[1].name = 'db'),
      /^guests\[1\]\.name: duplicate name 'db'/,
    ],
    [
      'name that is an address',
      (d) => ((d.guests as Doc[])[1].name = '10.9.9.9'),
      /^guests\[1\]\.name: .*looks like an address/,
    ],
    [
      'duplicate disk name',
      (d) => ((d.disks as Doc[])[1].name = 'root'),
      /^disks\[1\]\.name: duplicate name 'root' \(also disks\[0\]\)$/,
    ],
    [
      'bad disk name',
      (d) => ((d.disks as Doc[])[0].name = 'a b'),
      /^disks\[0\]\.name: 'a b' is not a valid name/,
    ],
    [
      'shared writable backing',
      (d) => ((d.disks as Doc[])[2].backing = 'images/root.img'),
      /^disks\[2\]\.backing: .*root\.img' already backs disk 'root'/,
    ],
    [
      'shared writable backing through a hard link',
      (d) => ((d.disks as Doc[])[2].backing = 'images/root-hard.img'),
      /^disks\[2\]\.backing: .*root-hard\.img' \(the same file as .*root\.img'\) already backs disk 'root'/,
    ],
    [
      'shared writable backing through a symlinked directory',
      (d) => ((d.disks as Doc[])[2].backing = 'images-link/root.img'),
      /^disks\[2\]\.backing: .*images-link\/root\.img' \(the same file as .*images\/root\.img'\) already backs disk 'root'/,
    ],
    [
      'a backing that is a symlink',
      (d) => ((d.disks as Doc[])[0].backing = 'images/root-link.img'),
      /^disks\[0\]\.backing: backing '.*root-link\.img' is a symbolic link; name the file itself$/,
    ],
    [
      'missing backing',
      (d) => ((d.disks as Doc[])[0].backing = 'nope.img'),
      /^disks\[0\]\.backing: backing '.*nope\.img' does not exist$/,
    ],
    [
      'unknown guest',
      (d) => ((d.disks as Doc[])[0].guest = 'web'),
      /^disks\[0\]\.guest: no guest 'web' in guests/,
    ],
    [
      'unknown guest by MAC',
      (d) => ((d.nics as Doc[])[0].guest = '52:54:00:00:00:99'),
      /^nics\[0\]\.guest: no guest '52:54:00:00:00:99'/,
    ],
    [
      'duplicate NIC name',
      (d) => ((d.nics as Doc[])[1].name = 'lan0'),
      /^nics\[1\]\.name: duplicate name 'lan0'/,
    ],
    [
      'duplicate NIC MAC',
      (d) => ((d.nics as Doc[])[1].mac = '52:54:00:BB:00:01'),
      /^nics\[1\]\.mac: duplicate MAC '52:54:00:bb:00:01'/,
    ],
    [
      'tap and macvtap both',
      (d) => ((d.nics as Doc[])[0].macvtap = 'eth3'),
      /^nics\[0\]\.tap: exactly one of tap and macvtap is needed \(got both\)$/,
    ],
    [
      'neither tap nor macvtap',
      (d) => delete (d.nics as Doc[])[1].macvtap,
      /^nics\[1\]\.tap: exactly one of tap and macvtap is needed \(got neither\)$/,
    ],
    [
      'bridge without tap',
      (d) => ((d.nics as Doc[])[1].bridge = 'br0'),
      /^nics\[1\]\.bridge: a bridge is only for a tap NIC$/,
    ],
    ['MTU too large', (d) => ((d.nics as Doc[])[0].mtu = 65536), /^nics\[0\]\.mtu: must be at most 65535$/],
    ['MTU too small', (d) => ((d.nics as Doc[])[0].mtu = 67), /^nics\[0\]\.mtu: must be at least 68$/],
    [
      'MTU not whole',
      (d) => ((d.nics as Doc[])[0].mtu = 1500.5),
      /^nics\[0\]\.mtu: expected a whole number, got a number$/,
    ],
    [
      'missing rules file',
      (d) => ((d.nics as Doc[])[1].dpi = 'rules/none'),
      /^nics\[1\]\.dpi: rules file '.*rules\/none' does not exist$/,
    ],
    [
      'unknown encryption kind',
      (d) => ((d.disks as Doc[])[1].encrypt = { kind: 'rot13' }),
      /^disks\[1\]\.encrypt\.kind: expected 'plain' or 'luks', got 'rot13'$/,
    ],
    [
      'wrong cipher',
      (d) => (((d.disks as Doc[])[1].encrypt as Doc).cipher = 'aes-cbc-essiv'),
      /^disks\[1\]\.encrypt\.cipher: expected 'aes-xts-plain64', got 'aes-cbc-essiv'$/,
    ],
    [
      'bad sector size',
      (d) => (((d.disks as Doc[])[1].encrypt as Doc).sectorSize = 1024),
      /^disks\[1\]\.encrypt\.sectorSize: expected 512 or 4096, got 1024$/,
    ],
    [
      'luks with both secrets',
      (d) => (((d.disks as Doc[])[2].encrypt as Doc).keyFile = 'keys/disk.key'),
      /^disks\[2\]\.encrypt: luks needs exactly one of passphraseFile and keyFile$/,
    ],
    [
      'luks with no secret',
      (d) => ((d.disks as Doc[])[2].encrypt = { kind: 'luks' }),
      /^disks\[2\]\.encrypt: luks needs exactly one/,
    ],
    [
      'missing key file',
      (d) => ((d.guests as Doc[])[1].keyFile = 'keys/none.key'),
      /^guests\[1\]\.keyFile: key file .*none\.key does not exist$/,
    ],
    [
      'a reassembly budget below the largest message',
      (d) => ((d.guests as Doc[])[1].budgets = { reassemblyBytes: 1024 }),
      /^guests\[1\]\.budgets\.reassemblyBytes: must be at least 4194304/,
    ],
    [
      'an unknown budget',
      (d) => Object.assign(d, { budgets: { pendingReplies: 5 } }),
      /budgets.*pendingReplies/,
    ],
    [
      'not a config object',
      (d) => Object.assign(d, { guests: [1] }),
      /^guests\[0\]: expected an object \(key: value pairs\), got a whole number$/,
    ],
  ]
  for (const [what, change, expected] of cases) {
    it(`refuses ${what}, naming the field`, () => {
      const doc = validIohyp()
      change(doc)
      assert.match(iohypRefused(doc), expected)
    })
  }

  it('reports every problem at once, including duplicates next to broken entries', () => {
    const doc = validIohyp()
    ;(doc.guests as Doc[])[0].mac = 'zz'
    ;(doc.disks as Doc[])[1].name = 'root'
    ;(doc.nics as Doc[])[0].mtu = 1
    const message = iohypRefused(doc)
    assert.match(
      message,
      /^guests\[0\]\.mac: 'zz' is not a MAC address.*; disks\[1\]\.name: duplicate name 'root'/,
    )
    assert.match(message, /; nics\[0\]\.mtu: must be at least 68/)
    // The disk and NIC that name the broken guest are not reported a second time.
    assert.doesNotMatch(message, /no guest 'db'/)
  })

  it('a key file others can read is refused, naming the field', () => {
    const path = tmp.path('keys/open.key')
    writeKeyFile(path, Buffer.alloc(32, 3))
    chmodSync(path, 0o644)
    const doc = validIohyp()
    ;(doc.guests as Doc[])[0].keyFile = 'keys/open.key'
    assert.match(
      iohypRefused(doc),
      /^guests\[0\]\.keyFile: key file .*open\.key is accessible by group or others/,
    )
    chmodSync(tmp.path('keys/disk.key'), 0o640)
    try {
      assert.match(
        iohypRefused(validIohyp()),
        /^disks\[1\]\.encrypt\.keyFile: .*accessible by group or others/,
      )
    } finally {
      chmodSync(tmp.path('keys/disk.key'), 0o600)
    }
    chmodSync(tmp.path('keys/logs.pass'), 0o604)
    try {
      assert.match(
        iohypRefused(validIohyp()),
        /^disks\[2\]\.encrypt\.passphraseFile: passphrase file .*logs\.pass is accessible by group or others \(mode 0604\); run: chmod 600 /,
      )
    } finally {
      chmodSync(tmp.path('keys/logs.pass'), 0o600)
    }
  })

  it('a YAML syntax error names its line; so does a JSON one', () => {
    assert.match(
      iohypRefused('interface: eth1\nguests:\n  - mac: [52\n    address: x\n'),
      /^line \d+, column \d+: /,
    )
    assert.match(
      iohypRefused('interface: eth1\ninterface: eth2\n'),
      /^line 2, column 1: Map keys must be unique$/,
    )
    assert.match(iohypRefused('{\n  "interface": "eth1",\n}\n', 'json'), /^line 3, column 1: /)
    assert.match(iohypRefused('interface: eth1\n\tguests: []\n'), /^line 2, column 1: /)
  })

  it('refuses an empty file, an unknown extension and a missing file', () => {
    assert.match(iohypRefused(''), /^expected an object \(key: value pairs\), got null$/)
    assert.match(iohypRefused('interface = "eth1"\n', 'toml'), /^unknown file type '\.toml'/)
    assert.throws(
      () => loadIohypConfig(tmp.path('none.yaml')),
      (e) => isVrioError(e, 'invalid-config') && /^config .*none\.yaml: does not exist$/.test(e.message),
    )
  })

  it('a guest config loads, with paths from the file and the key read', () => {
    const c = loadGuestConfig(
      write({
        interface: 'eth0',
        keyFile: 'keys/g1.key',
        runDir: 'run',
        attach: true,
        ioTimeout: 2.5,
        iohyp: '10.0.0.001',
      }),
    )
    assert.deepEqual(
      { ...c, file: undefined },
      {
        file: undefined,
        interface: 'eth0',
        keyFile: tmp.path('keys/g1.key'),
        key: Buffer.alloc(32, 1),
        runDir: tmp.path('run'),
        attach: true,
        ioTimeout: 2.5,
        iohyp: '10.0.0.1',
      },
    )
  })

  it('a bad guest config is refused naming each field', () => {
    const guestRefused = (doc: Doc) => refused(loadGuestConfig, doc)
    assert.equal(guestRefused({ interface: 'eth0' }), 'keyFile: required')
    assert.match(
      guestRefused({ interface: 'eth0', keyFile: 'keys/none.key' }),
      /^keyFile: key file .*none\.key does not exist$/,
    )
    assert.equal(
      guestRefused({ interface: 'eth0', keyFile: 'keys/g1.key', ioTimeout: 0, attach: 'yes', disks: [] }),
      'attach: expected true or false, got a string; ioTimeout: must be more than 0; disks: unknown key',
    )
    assert.match(
      guestRefused({ interface: 'eth0', keyFile: 'keys/g1.key', iohyp: '224.0.0.1' }),
      /^iohyp: '224\.0\.0\.1' is not a unicast address/,
    )
  })
})
