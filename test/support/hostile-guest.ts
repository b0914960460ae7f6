/**
 * A hostile enrolled guest, as a program run in its own namespace (floods.test.ts). To the IOhyp it
 * is a guest like any other: it listens on the vrio port with the guest's enrolled key, built from
 * the agent's own parts (DaemonLink: packet socket, kernel guard, link driver; Session; Rpc), so
 * everything it sends goes through the real transport (sealed, once the channel is). It answers
 * `blk.attach`, then attacks with the disk handle it got, by `--mode`:
 *
 *   over-long-read   block reads whose reply would be larger than the largest message
 *   zero-window      never gives delivered bytes back (manual release), so its window closes, and
 *                    keeps asking for the largest reads
 *   skips            100 000 Skip segments (test/support/skip-adapter.ts), each leaving a gap
 *   unread-replies   asks for large reads, then stops reading its link altogether (no ACKs)
 *   bad-batches      `count` rounds of a malformed batch (one read, a flush among reads, another
 *                    device's read, a response among them, a request handle, trailing bytes, 65
 *                    reads, in turn) and a well-formed one of 6 reads and 2 writes, each round
 *                    once the last one's requests are answered
 *
 * then leaves (closes its link: the IOhyp gets an RST) after `--seconds`. Events go to stdout as
 * JSON lines: `listening`, `attached` {disk, handle}, `flooding`, `done` {sent, replies by status},
 * `left`. Bounded throughout: a fixed number of requests or segments, a fixed time.
 *
 *   node hostile-guest.js --interface IF --key-file KEY --control SOCK --mode MODE
 *        [--seconds S] [--count N] [--rate PER_SECOND]
 */
import { randomInt } from 'node:crypto'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { readKeyFile } from '../../src/auth/key-file.ts'
import { DaemonLink, type DaemonLinkOptions } from '../../src/daemon/daemon-link.ts'
import { createLogger } from '../../src/daemon/log.ts'
import { VRIO_PORT } from '../../src/daemon/runtime.ts'
import {
  BLOCK_REQUEST_HEAD_LENGTH,
  BlockFlag,
  BlockMessageFlag,
  BlockOp,
  encodeBlockBatchHead,
  encodeBlockRequestHead,
  MAX_BATCH,
  nextBatchedResponse,
} from '../../src/devices/blk/protocol.ts'
import { Rpc } from '../../src/session/rpc.ts'
import { Session } from '../../src/session/session.ts'
import { DEFAULT_CONNECTION_OPTIONS, Delivery } from '../../src/transport/config.ts'
import { MESSAGE_HEADER_LENGTH, MessageType, newMessageHeader } from '../../src/wire/message-header.ts'
import { emitSkip } from './skip-adapter.ts'

const HOSTILE_MODES = ['over-long-read', 'zero-window', 'skips', 'unread-replies', 'bad-batches'] as const
type HostileMode = (typeof HOSTILE_MODES)[number]

/** Largest message the IOhyp's transport takes (its default options: the test gives it no others). */
const MAX_MESSAGE = DEFAULT_CONNECTION_OPTIONS.maxMessageSize
/** The largest valid read: its reply (header + data) is exactly one maximum message. */
const LARGEST_READ = MAX_MESSAGE - MESSAGE_HEADER_LENGTH
/** Over-long reads: one byte too many, twice the limit, eight times. */
const OVER_LONG_READS = [LARGEST_READ + 1, 2 * MAX_MESSAGE, 8 * MAX_MESSAGE] as const
const SKIP_COUNT = 100_000

function emit(event: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`)
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      interface: { type: 'string' },
      'key-file': { type: 'string' },
      control: { type: 'string' },
      mode: { type: 'string' },
      seconds: { type: 'string', default: '8' },
      count: { type: 'string' },
      rate: { type: 'string', default: '50' },
      'delay-ms': { type: 'string', default: '1000' },
    },
  })
  const mode = values.mode as HostileMode
  if (!values.interface || !values['key-file'] || !values.control || !HOSTILE_MODES.includes(mode))
    throw new Error(
      `usage: hostile-guest --interface IF --key-file KEY --control SOCK --mode ${HOSTILE_MODES.join('|')}`,
    )
  const key = readKeyFile(values['key-file'])
  const seconds = Number(values.seconds)
  const rate = Number(values.rate)
  const log = createLogger('hostile-guest', 'warn')

  let session: Session | undefined
  let disk: { name: string; handle: { high: number; low: number } } | undefined
  const replies: Record<number, number> = {}
  let repliesTotal = 0
  let batchResponses = 0
  const rpc = new Rpc()
    .handle('blk.attach', (p) => {
      const params = p as { name: string; handle: { high: number; low: number } }
      disk = { name: params.name, handle: params.handle }
      return { nbd: 'none', device: null }
    })
    .handle('blk.detach', () => null)
    .handle('net.attach', () => {
      throw new Error('no NICs here')
    })
    .handle('net.detach', () => null)

  // `key`: a sealing link verifies SYNs with the guest's key, as the agent's does (a link without
  // sealing has no such option and ignores it).
  const options: DaemonLinkOptions & { key: Buffer } = {
    key,
    role: 'guest',
    interface: values.interface,
    control: values.control,
    version: 'hostile',
    log,
    localPort: VRIO_PORT,
    listenPort: VRIO_PORT,
    // Zero window: delivered bytes are never released, so the window closes after one buffer.
    transport: mode === 'zero-window' ? { manualRelease: true } : {},
    accept: (_remote, c) => {
      const s: Session = new Session(c, 'listener', key, {
        authenticated: () => {
          session = s
          rpc.attach(s)
        },
        control: (m) => {
          if (s === session) rpc.onControl(m)
        },
        data: (h, m) => {
          if (h.type !== MessageType.BlockResponse) return
          if (h.flags !== BlockMessageFlag.Batch) {
            replies[h.status] = (replies[h.status] ?? 0) + 1
            repliesTotal++
            return
          }
          // A batch response: each of its responses counts.
          batchResponses++
          const e = newMessageHeader()
          for (let at = MESSAGE_HEADER_LENGTH; at < m.length; ) {
            const end = nextBatchedResponse(m, at, e)
            if (end < 0) break
            replies[e.status] = (replies[e.status] ?? 0) + 1
            repliesTotal++
            at = end
          }
        },
        closed: () => {
          if (s === session) {
            session = undefined
            rpc.attach(undefined)
          }
        },
      })
      return s.connectionHandlers
    },
  }
  const link = await DaemonLink.open(options, () => {})
  let leaving = false
  const leave = async (code: number) => {
    if (leaving) return
    leaving = true
    await link.close()
    emit('left')
    process.exit(code)
  }
  process.on('SIGTERM', () => void leave(0))
  process.on('SIGINT', () => void leave(0))
  emit('listening')

  for (let i = 0; i < 600 && !(session?.authenticated && disk); i++) await sleep(50)
  if (!session || !disk) {
    emit('error', { message: 'the IOhyp did not connect and attach a disk within 30 s' })
    await leave(1)
    return
  }
  emit('attached', { disk: disk.name, handle: disk.handle })
  // Long enough for the IOhyp to finish the disk's creation (and save it) before the attack.
  await sleep(Number(values['delay-ms']))

  const epoch = randomInt(1, 0x7fff_ffff)
  let nextId = 1
  let sent = 0
  let refused = 0
  const read = (length: number, offset = 0): void => {
    const s = session
    if (!s || !disk) return
    const head = Buffer.allocUnsafe(BLOCK_REQUEST_HEAD_LENGTH)
    encodeBlockRequestHead(head, 0, disk.handle, epoch, nextId++, {
      op: BlockOp.In,
      flags: 0,
      length,
      offset,
      floor: 0,
    })
    if (s.sendData(head, Delivery.Reliable)) sent++
    else refused++
  }
  /** A read's request head (id from nextId), not sent. */
  const readHead = (length: number, offset: number, handle = disk!.handle): Buffer => {
    const head = Buffer.allocUnsafe(BLOCK_REQUEST_HEAD_LENGTH)
    encodeBlockRequestHead(head, 0, handle, epoch, nextId++, {
      op: BlockOp.In,
      flags: 0,
      length,
      offset,
      floor: 0,
    })
    return head
  }
  /** A batch message of `entries` (its header's body length always that of the bytes after it). */
  const batch = (entries: Buffer[], edit?: (m: Buffer) => void): Buffer => {
    const m = Buffer.concat([Buffer.alloc(MESSAGE_HEADER_LENGTH), ...entries])
    encodeBlockBatchHead(m, 0, disk!.handle, m.length - MESSAGE_HEADER_LENGTH)
    edit?.(m)
    m.writeUInt32BE(m.length - MESSAGE_HEADER_LENGTH, 4)
    return m
  }
  const flush = () => link.driver.flush()
  const deadline = Date.now() + seconds * 1000

  emit('flooding', { mode })
  switch (mode) {
    case 'over-long-read': {
      for (const length of OVER_LONG_READS) for (let i = 0; i < 4; i++) read(length)
      flush()
      while (repliesTotal < sent && Date.now() < deadline) await sleep(20)
      break
    }
    case 'zero-window': {
      // `count` reads of the largest size, `rate` a second: count × 4 MiB asked for in all.
      const count = Number(values.count ?? 400)
      for (let i = 0; i < count && Date.now() < deadline; i++) {
        read(LARGEST_READ, (i % 8) * LARGEST_READ)
        flush()
        await sleep(1000 / rate)
      }
      break
    }
    case 'skips': {
      const c = session.connection
      const count = Number(values.count ?? SKIP_COUNT)
      // Message i: one byte at 2i + 1 past everything queued, so every Skip leaves a gap before it.
      for (let i = 0; i < count; i++) {
        emitSkip(c, 2 * i + 1, 1)
        if (i % 500 === 499) {
          flush()
          await sleep(1) // bounded rate: about 500 segments per event-loop turn
        }
      }
      flush()
      break
    }
    case 'unread-replies': {
      const count = Number(values.count ?? 128)
      for (let i = 0; i < count; i++) read(LARGEST_READ, (i % 8) * LARGEST_READ)
      flush()
      const c = session.connection
      for (let i = 0; i < 100 && c.unacknowledged > 0; i++) await sleep(10)
      // From now on nothing it receives is even looked at: no ACKs, no window updates.
      link.socket.onBatch(() => {})
      break
    }
    case 'bad-batches': {
      const count = Number(values.count ?? 2000)
      const other = { high: disk.handle.high ^ 1, low: disk.handle.low }
      /** A write of `length` bytes (FUA or not) at `offset`, its data after its head. */
      const write = (offset: number, length: number, flags = 0) => {
        const m = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH + length, 0x5a)
        encodeBlockRequestHead(m, 0, disk!.handle, epoch, nextId++, {
          op: BlockOp.Out,
          flags,
          length,
          offset,
          floor: 0,
        })
        return m
      }
      const flushHead = () => {
        const head = Buffer.alloc(BLOCK_REQUEST_HEAD_LENGTH)
        encodeBlockRequestHead(head, 0, disk!.handle, epoch, nextId++, {
          op: BlockOp.Flush,
          flags: 0,
          length: 0,
          offset: 0,
          floor: 0,
        })
        return head
      }
      const malformed: (() => Buffer)[] = [
        () => batch([readHead(4096, 0)]),
        () => batch([readHead(4096, 0), flushHead()]),
        () => batch([readHead(4096, 0), readHead(4096, 0, other)]),
        () =>
          batch([readHead(4096, 0), readHead(4096, 4096)], (m) => {
            m[MESSAGE_HEADER_LENGTH + BLOCK_REQUEST_HEAD_LENGTH + 1] = MessageType.BlockResponse
          }),
        () => batch([readHead(4096, 0), readHead(4096, 4096)], (m) => m.writeUInt32BE(nextId, 20)),
        () => batch([readHead(4096, 0), readHead(4096, 4096), Buffer.alloc(9)]),
        () => batch(Array.from({ length: MAX_BATCH + 1 }, (_, i) => readHead(512, i * 512))),
      ]
      // As a front-end would: the next round once the last one's requests are answered (8 in flight).
      let bad = 0
      for (let i = 0; i < count && Date.now() < deadline; i++) {
        const s = session
        if (!s) break
        if (s.sendData(malformed[i % malformed.length](), Delivery.Reliable)) bad++
        else refused++
        // Six reads and two writes (one of them FUA, which the fast path hands back).
        const at = (k: number) => ((i * 8 + k) % 4096) * 4096
        const good = batch([
          ...Array.from({ length: 6 }, (_, k) => readHead(4096, at(k))),
          write(at(6), 4096),
          write(at(7), 512, i % 2 === 0 ? BlockFlag.Fua : 0),
        ])
        if (s.sendData(good, Delivery.Reliable)) sent += 8
        else refused++
        flush()
        while (repliesTotal < sent && Date.now() < deadline) await sleep(1)
      }
      emit('batches', { malformed: bad })
      break
    }
  }
  emit('done', { sent, refused, replies, repliesTotal, batchResponses })
  while (Date.now() < deadline) await sleep(50)
  await leave(0)
}

main().catch((error) => {
  emit('error', { message: error instanceof Error ? error.message : String(error) })
  process.exit(1)
})
