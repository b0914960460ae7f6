/**
 * A channel's counters as both daemons report them (GuestInfo's names), summed over the channel's
 * closed connections; the live connection's are added when reporting. The IOhyp keeps one per guest,
 * a guest agent one for its channel to the IOhyp.
 */
import type { GuestInfo } from '../control/api.ts'
import type { Connection } from '../transport/connection.ts'
import { addSealDrops } from '../transport/seal.ts'

export type ChannelTotals = Required<
  Pick<
    GuestInfo,
    | 'framesIn'
    | 'framesOut'
    | 'bytesIn'
    | 'bytesOut'
    | 'retransmits'
    | 'rtoFirings'
    | 'fastRecoveries'
    | 'windowStalls'
    | 'drops'
    | 'rekeys'
  >
>

export function channelTotals(): ChannelTotals {
  return {
    framesIn: 0,
    framesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    retransmits: 0,
    rtoFirings: 0,
    fastRecoveries: 0,
    windowStalls: 0,
    drops: {},
    rekeys: 0,
  }
}

/** `t` with the live connection `c`'s counters added, as a copy (`t` is left as it is). */
export function withConnection(t: ChannelTotals, c: Connection | undefined): ChannelTotals {
  const sum = { ...t, drops: { ...t.drops } }
  if (c && !c.closed) addStats(sum, c)
  return sum
}

/** Adds `c`'s counters into `t` (when `c` closes). */
export function addStats(t: ChannelTotals, c: Connection): void {
  t.framesIn += c.stats.framesReceived
  t.framesOut += c.stats.framesSent
  t.bytesIn += c.stats.bytesReceived
  t.bytesOut += c.stats.bytesSent
  t.retransmits += c.stats.retransmits
  t.rtoFirings += c.stats.rtoFirings
  t.fastRecoveries += c.stats.fastRecoveries
  t.windowStalls += c.stats.windowStalls
  for (const [k, v] of Object.entries(c.stats.drops)) t.drops[k] = (t.drops[k] ?? 0) + (v ?? 0)
  if (c.stats.duplicatesDropped > 0) t.drops.duplicate = (t.drops.duplicate ?? 0) + c.stats.duplicatesDropped
  addSealDrops(t.drops, c.stats)
  t.rekeys += c.stats.rekeys
}
