/**
 * A link with loss, duplication, reordering and delay between two namespaces. This kernel has no
 * sch_netem (and modules cannot be loaded), so the impairment is a forwarder in a middle namespace:
 * packet sockets on its two veths pass every frame from one side to the other through seeded
 * faults. The endpoints still talk through real veths, kernels and packet sockets.
 */
import { PacketSocket } from '../../src/io/packet-socket.ts'
import type { VethEnd } from './harness.ts'
import { createNetns, createVethPair } from './netns.ts'
import { seededRandom } from './random.ts'

export interface Impairment {
  loss: number
  duplicate: number
  /** Probability that a frame is held back an extra `reorderDelayMs`, letting later ones pass it. */
  reorder: number
  reorderDelayMs: number
  delayMs: number
  seed: number
  /**
   * Open the forwarder's sockets with virtio-net headers and pass frames on with theirs, so GSO
   * super-frames from endpoints that use them cross whole (a lost super-frame loses all its segments).
   */
  vnetHdr?: boolean
}

export interface ImpairedLink {
  a: VethEnd
  b: VethEnd
  stats: { forwarded: number; lost: number; duplicated: number; reordered: number }
  stop(): void
}

export function impairedLink(spec: Impairment): ImpairedLink {
  const nsA = createNetns()
  const nsB = createNetns()
  const nsM = createNetns()
  const va = createVethPair(nsA, nsM)
  const vb = createVethPair(nsB, nsM)
  const open = (ifname: string) =>
    PacketSocket.open({
      ifname,
      netns: nsM.path,
      ignoreOutgoing: true,
      vnetHdr: spec.vnetHdr ?? false,
      rcvBuf: 32 << 20,
    })
  const toA = open(va.b.ifname)
  const toB = open(vb.b.ifname)
  const random = seededRandom(spec.seed)
  const stats = { forwarded: 0, lost: 0, duplicated: 0, reordered: 0 }
  const timers = new Set<NodeJS.Timeout>()
  let stopped = false
  const forward = (out: PacketSocket) => (frame: Buffer) => {
    if (random() < spec.loss) {
      stats.lost++
      return
    }
    const copies = random() < spec.duplicate ? 2 : 1
    if (copies === 2) stats.duplicated++
    const data = Buffer.from(frame) // the batch's slab is reused after the callback
    for (let i = 0; i < copies; i++) {
      let delay = spec.delayMs
      if (random() < spec.reorder) {
        delay += spec.reorderDelayMs
        stats.reordered++
      }
      const t = setTimeout(() => {
        timers.delete(t)
        if (stopped) return
        out.send([data])
        stats.forwarded++
      }, delay)
      timers.add(t)
    }
  }
  const fromA = forward(toB)
  const fromB = forward(toA)
  toA.onBatch((b) => {
    for (let i = 0; i < b.count; i++) fromA(b.frame(i))
  })
  toB.onBatch((b) => {
    for (let i = 0; i < b.count; i++) fromB(b.frame(i))
  })
  return {
    a: { ns: nsA, ifname: va.a.ifname, ip: 0x0a63_0001 },
    b: { ns: nsB, ifname: vb.a.ifname, ip: 0x0a63_0002 },
    stats,
    stop() {
      stopped = true
      for (const t of timers) clearTimeout(t)
      toA.close()
      toB.close()
    },
  }
}
