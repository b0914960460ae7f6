/**
 * No rule file and no packet can stall or crash the IOhyp's NIC services (issue 13), on a live
 * IOhyp with a firewall and a DPI on a remote NIC, while a ping flood crosses the NIC (`ping -c 200
 * -i 0.01`, 0% loss: the daemon's event loop was never blocked for long) and the guest reads its
 * remote disk over and over (every read succeeds):
 *
 * - hostile rule files pushed with `vrio nic services`: a 70 MB file, 50 MB of valid rules, a rule
 *   whose content is 50 MB, 100 000 rules, binary garbage: each refused with a clear error naming
 *   the limit, the old rules still in force, the daemon up;
 * - a valid set of 20 000 rules loads (compiled in a worker, parsed again a slice at a time);
 * - unusable DPI rules are skipped and reported with FILE:LINE, sid and reason (`--strict`
 *   refuses the file instead); `--firewall A --dpi B` applies both or neither;
 * - pathological pcres against crafted payloads: the work is charged in steps, the budget runs
 *   out and is counted, and the flood still loses nothing.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, execFile } from 'node:child_process'
import { closeSync, openSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { GuestNicInfo, ListNicsResponse, NicInfo } from '../../src/control/api.ts'
import type { LoadReport } from '../../src/services/net/compile.ts'
import { sparseFile } from '../support/block-io.ts'
import { killDaemons, vrioAsync } from '../support/daemons.ts'
import { cleanupNetns, exec, execAsync, type Netns, requireRoot } from '../support/netns.ts'
import { onBridge, pairWithWorld, type VrioPair } from '../support/vrio-pair.ts'
import { worldWebServer } from '../support/topology.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const WORLD = '192.168.78.100'
const GUEST = '192.168.78.1'
const NIC_MAC = '02:78:00:00:00:01'
const children = new Set<ChildProcess>()
after(() => {
  for (const c of children) c.kill('SIGKILL')
})

const FIREWALL = ['policy from-guest accept', 'policy to-guest accept', 'from-guest tcp dport 9 drop', '']
const DPI = [
  'alert tcp any any -> any any (msg:"limits canary"; content:"LIMITS-CANARY"; nocase; sid:7100001; rev:1;)',
  'alert tcp any any -> any any (msg:"other"; content:"|de ad be ef|"; offset:2; depth:20; sid:7100002;)',
  '',
]

const rule = (i: number) =>
  `alert tcp $EXTERNAL_NET any -> $HOME_NET [80,8080] (msg:"bulk ${i}"; flow:established,to_server; content:"GET "; depth:4; content:"/p${i}/x.php?id="; fast_pattern; pcre:"/id=[0-9]{3,}&q${i}=/i"; classtype:trojan-activity; sid:${1_000_000 + i}; rev:2;)`

/** Writes `lines(i)` for i in [0, count) to `path` in chunks (no 50 MB string at once). */
function writeLines(path: string, count: number, lines: (i: number) => string): void {
  const fd = openSync(path, 'w')
  try {
    for (let i = 0; i < count; i += 1000) {
      const chunk: string[] = []
      for (let k = i; k < Math.min(count, i + 1000); k++) chunk.push(lines(k))
      writeSync(fd, `${chunk.join('\n')}\n`)
    }
  } finally {
    closeSync(fd)
  }
}

/** Packets sent and received by `ping -c 200 -i 0.01` from the guest to the world. */
async function pingFlood(guest: Netns): Promise<{ sent: number; received: number; output: string }> {
  const out = await execAsync(
    guest,
    'ping',
    ['-n', '-q', '-c', '200', '-i', '0.01', '-W', '5', WORLD],
    60_000,
  ).catch((e: Error) => e.message)
  const m = /(\d+) packets transmitted, (\d+) received/.exec(out)
  return { sent: Number(m?.[1] ?? 0), received: Number(m?.[2] ?? -1), output: out }
}

describe('NIC services: hostile rule files and packets cannot stall or crash the IOhyp', () => {
  let pair: VrioPair
  let guest: Netns
  let dir: string
  /** The guest's remote disk, as its NBD URI. */
  let disk: string
  const fwFile = () => join(dir, 'base.fw')
  const dpiFile = () => join(dir, 'base.rules')

  const nic = async (): Promise<NicInfo> => (await pair.list<ListNicsResponse>('nic')).nics[0]
  const services = (args: string[]) => pair.nicServices('vn1', args)

  /** Reads the whole remote disk until `done()`; resolves to the reads made, rejects on a failed one. */
  async function readDisk(done: () => boolean): Promise<number> {
    const out = join(pair.dir, 'disk-read.img')
    let reads = 0
    do {
      await new Promise<void>((resolve, reject) =>
        execFile(
          'qemu-img',
          ['convert', '-f', 'raw', '-O', 'raw', disk, out],
          { timeout: 60_000 },
          (error, _o, stderr) =>
            error ? reject(new Error(`a disk read failed: ${stderr || error.message}`)) : resolve(),
        ),
      )
      reads++
    } while (!done())
    return reads
  }

  /**
   * Runs `work` while a ping flood crosses the NIC and the guest reads its disk; asserts the flood
   * lost nothing and every disk read succeeded.
   */
  async function underFlood<T>(what: string, work: () => Promise<T>): Promise<T> {
    let finished = false
    const flood = pingFlood(guest)
    const reader = readDisk(() => finished)
    // Let the flood start before the work does.
    await new Promise((r) => setTimeout(r, 200))
    try {
      return await work()
    } finally {
      finished = true
      const { sent, received, output } = await flood
      assert.equal(sent, 200, `${what}: ${output}`)
      assert.equal(
        received,
        200,
        `${what}: the ping flood lost packets: ${output}${received < sent ? await dropsSeen() : ''}`,
      )
      assert.ok((await reader) >= 1, `${what}: the disk was read`)
    }
  }

  /** Where frames were dropped, both ends (for the message of a lost ping). */
  async function dropsSeen(): Promise<string> {
    const [n, g, guests] = await Promise.all([
      nic(),
      pair.list<ListNicsResponse<GuestNicInfo>>('nic', 'guest'),
      pair.list<{ guests: { drops: Record<string, number>; windowStalls?: number }[] }>('guests'),
    ])
    const channel = guests.guests[0]
    return `\nNIC drops on the IOhyp ${JSON.stringify(n.drops)}, in the guest ${JSON.stringify(g.nics[0]?.drops)}; channel drops on the IOhyp ${JSON.stringify(channel?.drops)}, window stalls ${channel?.windowStalls}`
  }

  async function assertBaseInForce(): Promise<void> {
    const s = (await nic()).services.services
    assert.equal(s.firewall?.file, fwFile())
    assert.equal(s.dpi?.file, dpiFile())
    assert.equal((s.dpi?.counters as { rules: number } | undefined)?.rules, 2)
    assert.ok(pair.iohyp.alive, 'the IOhyp is up')
  }

  before(async () => {
    requireRoot()
    const set = await pairWithWorld([`${WORLD}/24`])
    pair = set.pair
    guest = set.guest
    dir = join(pair.dir, 'rules')
    exec(set.world.ns, 'mkdir', ['-p', dir])
    const child = worldWebServer(set.world.ns, WORLD, join(pair.dir, 'www'))
    children.add(child)
    writeFileSync(fwFile(), FIREWALL.join('\n'))
    writeFileSync(dpiFile(), DPI.join('\n'))
    const backing = join(pair.dir, 'disk.img')
    sparseFile(backing, 16 * 1024 * 1024)
    disk = (await pair.createDisk(backing, 'd1')).nbd!
    await pair.createNic('vn1', NIC_MAC, onBridge('vt1'), {
      extra: ['--firewall', fwFile(), '--dpi', dpiFile()],
    })
    exec(guest, 'ip', ['addr', 'add', `${GUEST}/24`, 'dev', 'vn1'])
    await execAsync(guest, 'curl', [
      '-sSf',
      '--retry',
      '10',
      '--retry-connrefused',
      '--retry-delay',
      '1',
      `http://${WORLD}/index.html`,
    ])
  })
  after(async () => {
    await pair?.stop()
  })

  const hostile: { name: string; make: (path: string) => void; error: RegExp }[] = [
    {
      name: 'a 70 MB file',
      make: (path) => {
        writeFileSync(path, `${rule(1)}\n`)
        truncateSync(path, 70 * 1024 * 1024)
      },
      error: /is 70 MiB \(the limit is 64 MiB\)/,
    },
    {
      name: '50 MB of valid rules',
      make: (path) => writeLines(path, 50_000_000 / 200, rule),
      error: /250000 rule lines \(the limit is 50000 rules\)/,
    },
    {
      name: 'a rule whose content is 50 MB',
      make: (path) => {
        const fd = openSync(path, 'w')
        writeSync(fd, 'alert tcp any any -> any any (msg:"huge"; content:"')
        const mb = Buffer.alloc(1024 * 1024, 0x41)
        for (let i = 0; i < 50; i++) writeSync(fd, mb)
        writeSync(fd, '"; sid:1;)\n')
        closeSync(fd)
      },
      error: /no usable rule .*:1: the rule is \d+ bytes long, over the limit of 65536/,
    },
    {
      name: '100 000 rules',
      make: (path) => writeLines(path, 100_000, rule),
      error: /100000 rule lines \(the limit is 50000 rules\)/,
    },
    {
      name: 'binary garbage',
      make: (path) => {
        let x = 0x12345678
        const b = Buffer.alloc(4 * 1024 * 1024)
        for (let i = 0; i < b.length; i++) {
          x = (x * 1103515245 + 12345) >>> 0
          b[i] = x >>> 24
        }
        writeFileSync(path, b)
      },
      error: /no usable rule in .*garbage\.rules: \d+ skipped, the first at/,
    },
  ]

  for (const h of hostile) {
    it(`refuses ${h.name} with a clear error; old rules stay, the daemon stays up, pings all pass`, async () => {
      const path = join(
        dir,
        `${h.name.replace(/[^a-z0-9]+/gi, '-')}.rules`.replace('binary-garbage', 'garbage'),
      )
      h.make(path)
      try {
        const r = await underFlood(h.name, () => services(['--dpi', path]))
        assert.notEqual(r.status, 0, r.stdout)
        assert.match(r.stderr, h.error)
        assert.ok(r.stderr.length < 20_000, 'the error is short')
        await assertBaseInForce()
      } finally {
        rmSync(path, { force: true })
      }
    })
  }

  it('the same limits for a firewall file', async () => {
    const path = join(dir, 'many.fw')
    writeLines(path, 60_000, (i) => `from-guest tcp dport ${1 + (i % 60000)} counter accept`)
    const r = await underFlood('60k firewall rules', () => services(['--firewall', path]))
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, /firewall rules: .*60000 rule lines \(the limit is 50000 rules\)/)
    await assertBaseInForce()
  })

  it('loads 20 000 rules without stalling the NIC, then the old ones again', async () => {
    const path = join(dir, 'bulk.rules')
    writeLines(path, 20_000, rule)
    const r = await underFlood('20k rules', () => services(['--dpi', path]))
    assert.equal(r.status, 0, r.stderr)
    const s = JSON.parse(r.stdout).services.services
    assert.equal(s.dpi.counters.rules, 20_000)
    assert.equal(s.dpi.report.loaded, 20_000)
    assert.deepEqual(s.dpi.report.skipped, [])
    const back = await services(['--dpi', dpiFile()])
    assert.equal(back.status, 0, back.stderr)
    await assertBaseInForce()
  })

  it('skips unusable DPI rules and reports them (FILE:LINE, sid, reason); --strict refuses', async () => {
    const path = join(dir, 'mixed.rules')
    writeFileSync(
      path,
      [
        DPI[0],
        'alert tcp any any -> any any (msg:"x"; asn1:oversize_length 10; sid:7100010;)',
        'alert tcp any any -> any any (msg:"y"; pcre:"/(a)\\1/"; sid:7100011;)',
        'not a rule',
        DPI[1],
      ].join('\n'),
    )
    const strict = await services(['--dpi', path, '--strict'])
    assert.notEqual(strict.status, 0)
    assert.match(strict.stderr, /mixed\.rules:2: unsupported rule option 'asn1'/)
    await assertBaseInForce()

    const r = await pair.nicServices('vn1', ['--dpi', path]) // --json
    assert.equal(r.status, 0, r.stderr)
    const report = JSON.parse(r.stdout).services.services.dpi.report as LoadReport
    assert.equal(report.loaded, 2)
    assert.deepEqual(
      report.skipped.map((s) => [s.line, s.sid, s.reason]),
      [
        [2, 7100010, "unsupported rule option 'asn1'"],
        [3, 7100011, 'pcre uses backreferences, which the linear-time regex engine does not run'],
        [4, undefined, 'a rule is `action proto src sport -> dst dport (options;)`'],
      ],
    )
    // The text form lists them too.
    const text = await vrioAsync(['nic', 'services', 'vn1', '--control', pair.sock('iohyp')])
    assert.equal(text.status, 0, text.stderr)
    assert.match(text.stdout, /dpi .*mixed\.rules \(2 rules loaded, 3 skipped\)/)
    assert.match(text.stdout, /skipped .*mixed\.rules:2: sid 7100010: unsupported rule option 'asn1'/)
    const back = await services(['--dpi', dpiFile()])
    assert.equal(back.status, 0, back.stderr)
    await assertBaseInForce()
  })

  it('--firewall A --dpi B applies both or neither', async () => {
    const goodFw = join(dir, 'good.fw')
    writeFileSync(goodFw, [...FIREWALL.slice(0, 3), 'from-guest tcp dport 10 drop', ''].join('\n'))
    const badDpi = join(dir, 'bad.rules')
    writeFileSync(badDpi, 'nonsense\nmore nonsense\n')
    const goodDpi = join(dir, 'good.rules')
    writeFileSync(goodDpi, `${DPI[0]}\n`)
    const badFw = join(dir, 'bad.fw')
    writeFileSync(badFw, 'from-guest tcp dport 70000 accept\n')

    let r = await services(['--firewall', goodFw, '--dpi', badDpi])
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, /no usable rule in .*bad\.rules/)
    await assertBaseInForce() // the new firewall did not go in alone

    r = await services(['--firewall', badFw, '--dpi', goodDpi])
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, /bad\.fw:1:/)
    await assertBaseInForce()

    r = await services(['--firewall', goodFw, '--dpi', goodDpi])
    assert.equal(r.status, 0, r.stderr)
    const s = JSON.parse(r.stdout).services.services
    assert.equal(s.firewall.file, goodFw)
    assert.equal(s.dpi.file, goodDpi)
    r = await services(['--firewall', fwFile(), '--dpi', dpiFile()])
    assert.equal(r.status, 0, r.stderr)
    await assertBaseInForce()
  })

  it('pathological pcres against crafted payloads: work within budget, counted, traffic flows', async () => {
    const path = join(dir, 'patho.rules')
    writeFileSync(
      path,
      [
        'alert tcp any any -> any 80 (msg:"f20"; content:"X-Pad"; pcre:"/^(?:[^\\r\\n]*\\s){20}evil/"; sid:7100020;)',
        'alert tcp any any -> any 80 (msg:"f25"; content:"X-Pad"; pcre:"/^(?:[^\\r\\n]*\\s){25}evil/"; sid:7100021;)',
        'alert tcp any any -> any 80 (msg:"f30"; content:"X-Pad"; pcre:"/^(?:[^\\r\\n]*\\s){30}evil/"; sid:7100023;)',
        'alert tcp any any -> any 80 (msg:"nested"; content:"X-Pad"; pcre:"/(a+)+b$/"; sid:7100024;)',
        'alert tcp any any -> any 80 (msg:"small"; content:"X-Small"; pcre:"/^X-Small: (?:a+)+b/m"; sid:7100022;)',
        '',
      ].join('\n'),
    )
    const r = await services(['--dpi', path])
    assert.equal(r.status, 0, r.stderr)
    const before = (await nic()).services.services.dpi!.counters as Record<string, number>
    // A header of 40 KB of "a a a ...": once the stream window is full, the pcres' cost on a
    // frame (length × program size: 5.5k × 67 + 82 + 97) is over the per-frame budget of 1M
    // steps; a small one is within it and matches.
    const pad = 'a '.repeat(20_000)
    await underFlood('pathological payloads', async () => {
      for (let i = 0; i < 10; i++) {
        await execAsync(guest, 'curl', [
          '-s',
          '-o',
          '/dev/null',
          '--max-time',
          '10',
          '-H',
          `X-Pad: ${pad}`,
          `http://${WORLD}/`,
        ])
      }
      await execAsync(guest, 'curl', [
        '-s',
        '-o',
        '/dev/null',
        '--max-time',
        '10',
        '-H',
        'X-Small: aaab',
        `http://${WORLD}/`,
      ])
    })
    const after = (await nic()).services.services.dpi!.counters as Record<string, number> & {
      alertsBySid: Record<string, number>
    }
    assert.ok(after.budgetExceeded - before.budgetExceeded >= 10, JSON.stringify(after))
    assert.ok(after.regexSteps > before.regexSteps)
    assert.equal(after.alertsBySid['7100022'], 1, 'the pcre within budget matched')
    assert.ok(pair.iohyp.alive)
    const back = await services(['--dpi', dpiFile()])
    assert.equal(back.status, 0, back.stderr)
    await assertBaseInForce()
  })
})
