/**
 * One enrolled guest as the IOhyp keeps it: its key, budgets, the session over which its devices
 * are served, control calls to it, redial back-off and the counters of its past channels.
 */
import type { GuestBudgets, GuestInfo, GuestState } from '../control/api.ts'
import type { ReplyBudget } from '../devices/blk/backend.ts'
import { Rpc } from '../session/rpc.ts'
import type { Session } from '../session/session.ts'
import { type ChannelTotals, channelTotals, withConnection } from '../daemon/channel-totals.ts'
import { formatIPv4, formatMac } from '../wire/address.ts'

/** Redial back-off after a lost channel. */
export const REDIAL_MIN_MS = 100
export const REDIAL_MAX_MS = 300

/** One enrolled guest and the channel the IOhyp keeps open to it. */
export class GuestRecord {
  readonly mac: number
  readonly ip: number
  readonly key: Buffer
  /** Budgets as enrolled (those not given follow the daemon's defaults). */
  readonly budgets: Partial<GuestBudgets>
  /** The read-reply budget its disks' back-ends share (kept per MAC: see IohypDaemon.replyBudget). */
  readonly replyBudget: ReplyBudget
  /** Channels closed because the guest kept sending while over its reply budget. */
  overloads = 0
  /** Data messages of unknown types from closed sessions (the live one's are added when reporting). */
  unknownMessages = 0
  state: GuestState = 'waiting'
  session: Session | undefined
  /** Control calls to this guest over whichever session is current. */
  readonly rpc = new Rpc()
  /** Counters of closed connections; the live one is added when reporting. */
  readonly totals: ChannelTotals = channelTotals()
  /** What status shows of the newest channel (cipher or plaintext). */
  channel: string | undefined
  readonly sessionFailures: Record<string, number> = {}
  retry: NodeJS.Timeout | undefined
  backoff = REDIAL_MIN_MS
  removed = false

  constructor(
    mac: number,
    ip: number,
    key: Buffer,
    budgets: Partial<GuestBudgets>,
    replyBudget: ReplyBudget,
  ) {
    this.mac = mac
    this.ip = ip
    this.key = key
    this.budgets = budgets
    this.replyBudget = replyBudget
  }

  /** The guest as the state file and `vrio config export` keep it. */
  entry(): { mac: string; address: string; key: string; budgets?: Partial<GuestBudgets> } {
    return {
      mac: formatMac(this.mac),
      address: formatIPv4(this.ip),
      key: this.key.toString('hex'),
      ...(Object.keys(this.budgets).length > 0 && { budgets: this.budgets }),
    }
  }

  info(budgets: GuestBudgets): GuestInfo {
    const c = this.session?.connection
    const t = withConnection(this.totals, c)
    return {
      mac: formatMac(this.mac),
      address: formatIPv4(this.ip),
      state: this.state,
      rttMs: c && !c.closed ? c.rttMs : null,
      ...t,
      sessionFailures: { ...this.sessionFailures },
      ...(this.channel !== undefined && { channel: this.channel }),
      budgets,
      held: {
        pendingReplyBytes: this.replyBudget.held,
        reassemblyBytes: c && !c.closed ? c.reassemblyMemory : 0,
      },
    }
  }
}
