import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { changeNicServices, loadNicServices } from '../../../src/iohyp/nic-services.ts'
import { DpiService } from '../../../src/services/dpi/index.ts'
import { NetServiceChain } from '../../../src/services/net/chain.ts'
import { DpiThread } from '../../../src/services/net/dpi-thread.ts'
import { buildNetService, compileInWorker } from '../../../src/services/net/load.ts'
import type { NetDirection } from '../../../src/services/net/service.ts'
import { tcpConversation } from '../../support/packets.ts'

const dir = mkdtempSync(join(tmpdir(), 'vrio-dpi-thread-'))
after(() => rmSync(dir, { recursive: true, force: true }))
const file = (name: string, text: string) => {
  const path = join(dir, name)
  writeFileSync(path, `${text}\n`)
  return path
}

/** Alert-only rules that need stream, application-layer and flow state (flowbits across frames). */
const RULES = [
  'alert http any any -> any any (msg:"agent"; http.user_agent; content:"evil-agent"; nocase; sid:1;)',
  'alert http any any -> any any (msg:"uri"; http.uri; content:"/admin"; sid:2;)',
  'alert tcp any any -> any 80 (msg:"login"; content:"LOGIN"; flowbits:set,auth; flowbits:noalert; sid:3;)',
  'alert tcp any any -> any 80 (msg:"data after login"; content:"DATA"; flowbits:isset,auth; sid:4;)',
  'alert http any any -> any any (msg:"body"; file_data; content:"secret page"; sid:5;)',
].join('\n')
/** The same flowbit, read by other rules: a swap that keeps flow state still knows it was set. */
const SWAPPED = [
  'alert tcp any any -> any 80 (msg:"more data after login"; content:"MORE"; flowbits:isset,auth; sid:14;)',
  'alert http any any -> any any (msg:"uri"; http.uri; content:"/admin"; sid:12;)',
].join('\n')
const DROPS = 'drop tcp any any -> any 80 (msg:"drop"; content:"DROP-ME"; sid:21;)'

/** Frames of one TCP connection to port 80 (client port `port`), as a NIC sees them both ways. */
function connection(port: number) {
  const send = tcpConversation({
    clientMac: '02:00:00:00:00:02',
    serverMac: '02:00:00:00:00:01',
    clientIp: '10.0.0.2',
    serverIp: '93.184.216.34',
    clientPort: port,
    serverPort: 80,
  })
  return (text: string, toServer = true): { frame: Buffer; direction: NetDirection } => ({
    frame: send(Buffer.from(text), toServer),
    direction: toServer ? 'from-guest' : 'to-guest',
  })
}

/** HTTP exchanges on several connections, requests split across segments, and a login flow. */
function traffic(): { frame: Buffer; direction: NetDirection }[] {
  const out: { frame: Buffer; direction: NetDirection }[] = []
  for (let c = 0; c < 6; c++) {
    const send = connection(40000 + c)
    const agent = c % 2 === 0 ? 'Evil-Agent/1.0' : 'curl/8'
    out.push(send(`GET /${c % 3 === 0 ? 'admin' : 'index'}.html HTTP/1.1\r\nHost: x\r\nUser-`))
    out.push(send(`Agent: ${agent}\r\n\r\n`))
    const body = c === 4 ? 'the secret page' : 'hello'
    out.push(send(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`, false))
  }
  const login = connection(41000)
  out.push(login('LOGIN user'))
  out.push(login('DATA 1'))
  return out
}

const sids = (events: Record<string, unknown>[]) =>
  events.map((e) => (e.alert as { signature_id: number }).signature_id).sort((a, b) => a - b)

/** Runs frames through the chain as the NIC's port does: inspect on the path, observe after. */
function run(chain: NetServiceChain, frames: { frame: Buffer; direction: NetDirection }[]): void {
  for (const { frame, direction } of frames) {
    assert.equal(
      chain.inspect(frame, direction, () => {}),
      true,
    )
    if (chain.observing) chain.observe(frame, direction)
  }
}

const COMPARED = [
  'packets',
  'bytes',
  'alerts',
  'alertsBySid',
  'appFlows',
  'appTransactions',
  'regexSteps',
] as const

describe('DpiThread: an alert-only DPI on a thread of its own', () => {
  it('sees the same frames in the same order as on the NIC thread: same alerts, same counters', async () => {
    const path = file('rules.rules', RULES)
    const compiled = await compileInWorker({ kind: 'dpi', files: [path] })
    assert.equal(compiled.drops, false)
    const onThread = await buildNetService('dpi', compiled, 'nic0', { thread: true })
    assert.ok(onThread instanceof DpiThread)
    const here = await buildNetService('dpi', await compileInWorker({ kind: 'dpi', files: [path] }), 'nic0', {
      thread: false,
    })
    assert.ok(here instanceof DpiService)
    const threadEvents: Record<string, unknown>[] = []
    const hereEvents: Record<string, unknown>[] = []
    const a = new NetServiceChain((e) => threadEvents.push(e))
    const b = new NetServiceChain((e) => hereEvents.push(e))
    a.set('dpi', { service: onThread, file: path })
    b.set('dpi', { service: here, file: path })
    assert.equal(a.observing, true)
    const frames = traffic()
    run(a, frames)
    run(b, frames)
    assert.deepEqual(sids(hereEvents), [1, 1, 1, 2, 2, 4, 5])
    await onThread.settled()
    assert.deepEqual(sids(threadEvents), sids(hereEvents))
    const got = onThread.counters()
    const want = here.counters()
    for (const k of COMPARED) assert.deepEqual(got[k], want[k], k)
    assert.equal(got.inline, false)
    assert.deepEqual(got.thread, { inFlightBytes: 0, waits: 0, unwatched: 0 })
    a.close()
    assert.equal((onThread.counters().thread as { failed?: string }).failed, 'closed')
  })

  it('big batches (a fast stream) go in buffers lent to the thread and handed back: same alerts', async () => {
    const compiled = await compileInWorker({ kind: 'dpi', files: [file('big.rules', RULES)] })
    const thread = await buildNetService('dpi', compiled, 'nic0', { thread: true })
    assert.ok(thread instanceof DpiThread)
    const events: Record<string, unknown>[] = []
    const chain = new NetServiceChain((e) => events.push(e))
    chain.set('dpi', { service: thread, file: 'big.rules' })
    const send = connection(43000)
    let frames = 0
    // Three turns of ~200 KiB each (lent buffers, reused from the second on); the signature is
    // split between the last frame of one turn and the first of the next.
    for (let turn = 0; turn < 3; turn++) {
      const batch = Array.from({ length: 140 }, (_, k) =>
        send(k === 139 ? `${'x'.repeat(1390)}LOG` : `${k === 0 && turn > 0 ? 'IN ' : ''}${'y'.repeat(1400)}`),
      )
      run(chain, batch)
      frames += batch.length
      await new Promise((resolve) => setImmediate(resolve))
    }
    run(chain, [send('DATA')])
    await thread.settled()
    assert.equal(thread.counters().packets, frames + 1)
    assert.deepEqual(sids(events), [4])
    chain.close()
  })

  it('a swap prepared while other requests come and go is the one put in force', async () => {
    const thread = await buildNetService(
      'dpi',
      await compileInWorker({ kind: 'dpi', files: [file('p.rules', RULES)] }),
      'nic0',
      { thread: true },
    )
    assert.ok(thread instanceof DpiThread)
    const next = await compileInWorker({ kind: 'dpi', files: [file('q.rules', SWAPPED)] })
    const preparing = thread.prepareReplace(next)
    const syncs = Array.from({ length: 3 }, () => thread.settled())
    const swap = await preparing
    await Promise.all(syncs)
    swap()
    await thread.settled()
    assert.equal(thread.counters().rules, 2)
    thread.close()
  })

  it('bounded: beyond its room the NIC thread waits for it, and every frame is still inspected', async () => {
    const compiled = await compileInWorker({ kind: 'dpi', files: [file('bounded.rules', RULES)] })
    // Room for less than one batch: every batch after the first waits for the one before.
    const thread = await buildNetService('dpi', compiled, 'nic0', { thread: true, maxInFlight: 1 })
    assert.ok(thread instanceof DpiThread)
    const events: Record<string, unknown>[] = []
    const chain = new NetServiceChain((e) => events.push(e))
    chain.set('dpi', { service: thread, file: 'bounded.rules' })
    let sent = 0
    for (let round = 0; round < 20; round++) {
      const frames = traffic()
      run(chain, frames)
      sent += frames.length
      await new Promise((resolve) => setImmediate(resolve)) // the batch goes
    }
    await thread.settled()
    const c = thread.counters()
    assert.equal(c.packets, sent)
    const t = c.thread as { waits: number; unwatched: number; inFlightBytes: number }
    assert.ok(t.waits > 0, 'the NIC thread waited')
    assert.equal(t.unwatched, 0)
    assert.equal(t.inFlightBytes, 0)
    // The same flows again each round (same ports): later rounds alert again on new transactions.
    assert.ok(events.length >= 7)
    chain.close()
  })

  it('swaps alert-only rules on its thread keeping flow state; rules that drop bring it onto the NIC thread', async () => {
    const events: Record<string, unknown>[] = []
    const placement = { thread: true }
    const { chain } = await loadNicServices(
      'nic0',
      { dpi: file('a.rules', RULES) },
      (e) => events.push(e),
      placement,
    )
    const first = chain.get('dpi')?.service
    assert.ok(first instanceof DpiThread)
    const login = connection(42000)
    run(chain, [login('LOGIN user')])
    await changeNicServices('nic0', chain, { dpi: file('b.rules', SWAPPED) }, placement)
    assert.equal(chain.get('dpi')?.service, first, 'the same thread, its flows kept')
    run(chain, [login('MORE data'), connection(42001)('GET /admin HTTP/1.1\r\nHost: x\r\n\r\n')])
    await first.settled()
    assert.deepEqual(sids(events), [12, 14])
    assert.equal(first.counters().rules, 2)

    await changeNicServices('nic0', chain, { dpi: file('c.rules', DROPS) }, placement)
    const inline = chain.get('dpi')?.service
    assert.ok(inline instanceof DpiService)
    assert.equal(inline.canDrop, true)
    assert.equal(chain.observing, false)
    assert.equal((first.counters().thread as { failed?: string }).failed, 'closed')
    const drop = connection(42002)('DROP-ME now')
    assert.equal(
      chain.inspect(drop.frame, drop.direction, () => {}),
      false,
    )
    // Frames a closed thread is handed are counted, not lost silently.
    first.inspect(drop.frame, undefined as never, drop.direction, {
      now: 0,
      reply: () => {},
      event: () => {},
    })
    assert.equal((first.counters().thread as { unwatched: number }).unwatched, 1)
    chain.close()
  })
})
