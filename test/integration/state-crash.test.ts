import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { type ListGuestsResponse, ROUTES } from '../../src/control/api.ts'
import { ControlClient } from '../../src/control/control-client.ts'
import { formatMac } from '../../src/wire/address.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'
import { DaemonProcess, killDaemons } from '../support/daemons.ts'
import { cleanupNetns, requireRoot } from '../support/netns.ts'
import { seededRandom } from '../support/random.ts'
import { directLink, type Topology } from '../support/topology.ts'
import { settlesWithin } from '../support/wait.ts'

after(async () => {
  await killDaemons()
  cleanupNetns()
})

const KILLS = 60
const POOL = 12
const pool = Array.from({ length: POOL }, (_, i) => ({
  mac: formatMac(0x5254_0000_0100 + i),
  address: `10.98.0.${10 + i}`,
  key: randomBytes(32).toString('hex'),
}))

/** Guests as a comparable string (keys are checked against the pool separately). */
const show = (guests: readonly { mac: string; address: string }[]) =>
  guests
    .map((g) => `${g.mac}=${g.address}`)
    .sort()
    .join(' ')

/**
 * The IOhyp killed with SIGKILL at random points while a tight loop of guest add/remove requests
 * makes it rewrite its state file, then restarted on the same state directory, over and over. Each
 * time it must start, and its state must be the last acknowledged one or that plus the request in
 * flight: never a torn or lost file, and the temp files of killed writes must not pile up.
 */
describe('state file crash safety', () => {
  let link: Topology
  let tmp: TempDir

  before(() => {
    requireRoot()
    link = directLink()
    tmp = tempDir('vrio-state-crash-')
  })
  after(() => tmp.remove())

  it(`survives ${KILLS} SIGKILLs in the middle of state writes`, async (t) => {
    const seed = Number(process.env.VRIO_SEED ?? Date.now() % 1_000_000)
    t.diagnostic(`seed ${seed} (VRIO_SEED=${seed} to replay the delays and operations)`)
    const random = seededRandom(seed)
    const stateDir = tmp.path('state')
    const statePath = tmp.path('state/iohyp-state.json')
    const control = new ControlClient({ path: tmp.path('iohyp.sock'), timeoutMs: 5000 })
    /** What the IOhyp acknowledged; `pending` is the one request sent but not answered. */
    let acked = new Map<string, (typeof pool)[number]>()
    let pending: { add: boolean; guest: (typeof pool)[number] } | undefined
    let operations = 0
    let killsWithTempFile = 0
    let maxTempFiles = 0

    /** The acknowledged state, and that plus the request in flight. */
    const allowed = () => {
      const old = [...acked.values()]
      if (!pending) return [show(old)]
      const after = pending.add ? [...old, pending.guest] : old.filter((g) => g.mac !== pending?.guest.mac)
      return [show(old), show(after)]
    }
    /** Takes whichever of the allowed states the IOhyp holds as the new truth. */
    const settle = (guests: readonly { mac: string; address: string }[], where: string) => {
      const found = show(guests)
      assert.ok(allowed().includes(found), `${where}: ${found}\nnot one of:\n${allowed().join('\n')}`)
      acked = new Map(guests.map((g) => [g.mac, pool.find((p) => p.mac === g.mac)!]))
      pending = undefined
    }

    for (let round = 0; round < KILLS; round++) {
      const iohyp = new DaemonProcess(`iohyp ${round}`, link.a.ns, [
        'iohyp',
        '--interface',
        link.a.ifname,
        '--address',
        '10.98.0.1',
        '--state-dir',
        stateDir,
        '--control',
        control.path,
      ])
      await iohyp.waitForLog('iohyp started', 20_000)
      const listed = await control.get<ListGuestsResponse>(ROUTES.guests)
      settle(listed.guests, `round ${round}, after restart`)

      let killed = false
      let firstOp: () => void = () => {}
      const oneDone = new Promise<void>((resolve) => (firstOp = resolve))
      const work = (async () => {
        while (!killed) {
          const guest = pool[Math.floor(random() * POOL)]
          pending = { add: !acked.has(guest.mac), guest }
          try {
            if (pending.add) await control.post(ROUTES.guests, guest)
            else await control.delete(ROUTES.guest.replace(':mac', encodeURIComponent(guest.mac)))
          } catch (error) {
            if (killed) return
            throw error
          }
          if (pending.add) acked.set(guest.mac, guest)
          else acked.delete(guest.mac)
          pending = undefined
          operations++
          firstOp()
        }
      })()
      // After the round's first acknowledged write (a loaded machine may take a while to get
      // there), many more happen in the random delay: the kill lands in or between them.
      await settlesWithin(Promise.race([oneDone, work]), `round ${round}: the first operation`, 60_000)
      await sleep(5 + random() * 120)
      killed = true
      iohyp.child.kill('SIGKILL')
      await work
      await iohyp.stop('SIGKILL')

      // The file as the crash left it: whole JSON, a consistent guest list.
      const temps = readdirSync(stateDir).filter((f) => f.startsWith('iohyp-state.json.tmp-'))
      if (temps.length > 0) killsWithTempFile++
      maxTempFiles = Math.max(maxTempFiles, temps.length)
      assert.ok(temps.length <= 1, `round ${round}: temp files pile up: ${temps.join(' ')}`)
      // No file yet is a valid crash point too: the kill came before the first write finished
      // (a loaded machine can get there), and the daemon then starts with no guests.
      const state = existsSync(statePath)
        ? JSON.parse(readFileSync(statePath, 'utf8'))
        : { version: 1, guests: [] }
      assert.equal(state.version, 1)
      assert.equal(new Set(state.guests.map((g: { mac: string }) => g.mac)).size, state.guests.length)
      for (const g of state.guests) {
        const known = pool.find((p) => p.mac === g.mac)
        assert.ok(known && known.address === g.address && known.key === g.key, `round ${round}: ${g.mac}`)
      }
      settle(state.guests, `round ${round}, state file after SIGKILL`)
    }
    t.diagnostic(
      `${operations} acknowledged operations, ${KILLS} kills, ${killsWithTempFile} of them left a temp file (at most ${maxTempFiles})`,
    )
    assert.ok(operations >= KILLS, `only ${operations} operations ran`)
  })
})
