/**
 * The control API contract: routes, request and response bodies, shared by the daemons (which
 * serve them) and the CLI (which calls them). Every body is JSON. Field names are stable: a field
 * is never renamed or retyped, only added, because scripts read `vrio ... --json` output, which is
 * these documents verbatim.
 *
 * Routes (all served on a unix socket by `ControlServer`):
 *
 *   GET    /v1/status          -> 200 StatusInfo                   (IOhyp and guest daemons)
 *   GET    /v1/guests          -> 200 ListGuestsResponse           (IOhyp)
 *   POST   /v1/guests          AddGuestRequest -> 200 AddGuestResponse
 *                               400 invalid-argument, 409 conflict (MAC or address already in use)
 *   DELETE /v1/guests/:mac     -> 200 RemoveGuestResponse, 404 not-found
 *   POST   /v1/guests/:mac/move  {iocore: K} -> 200 {guest}       (IOhyp with --iocores N ≥ 2)
 *   GET    /v1/blk             -> 200 ListDisksResponse            (IOhyp: DiskInfo; guest: GuestDiskInfo)
 *   POST   /v1/blk             CreateDiskRequest -> 200 DiskInfo    (IOhyp)
 *   DELETE /v1/blk/:name       -> 200 DiskInfo                     (IOhyp)
 *   GET    /v1/nic             -> 200 ListNicsResponse             (IOhyp: NicInfo; guest: GuestNicInfo)
 *   POST   /v1/nic             CreateNicRequest -> 200 NicInfo      (IOhyp)
 *   DELETE /v1/nic/:name       -> 200 NicInfo                      (IOhyp)
 *   POST   /v1/nic/:name/services  {firewall?, dpi?: path | null} -> 200 NicInfo (IOhyp)
 *   GET    /v1/nic/:name/alerts    -> 200 { alerts: EVE records }  (IOhyp; the latest 1000)
 *   GET    /metrics            -> 200 Prometheus text exposition (IOhyp and guest daemons;
 *                               text/plain; version=0.0.4, not JSON: docs/operations.md, "Metrics")
 *   GET    /v1/config          -> 200 ExportableState (src/config/export.ts; IOhyp). It holds the
 *                               guests' keys: `vrio config export` writes them to key files only.
 *
 * A failure is any status >= 400 with body `{ "error": ErrorBody }`.
 */

import type * as z from 'zod'
import type { diskRequestSchema } from '../devices/blk/spec.ts'
import type { guestSpecSchema } from './guest-spec.ts'
import type { nicRequestSchema } from '../devices/net/spec.ts'
import type { ChainCounters } from '../services/net/chain.ts'

export const DEFAULT_IOHYP_SOCKET = '/run/vrio/iohyp.sock'
export const DEFAULT_GUEST_SOCKET = '/run/vrio/guest.sock'

export const ROUTES = {
  status: '/v1/status',
  guests: '/v1/guests',
  guest: '/v1/guests/:mac',
  guestMove: '/v1/guests/:mac/move',
  disks: '/v1/blk',
  disk: '/v1/blk/:name',
  nics: '/v1/nic',
  nic: '/v1/nic/:name',
  nicServices: '/v1/nic/:name/services',
  nicAlerts: '/v1/nic/:name/alerts',
  config: '/v1/config',
  metrics: '/metrics',
} as const

/** A route with its `:name`-style segments filled in (percent-encoded): `routePath(ROUTES.disk, { name })`. */
export function routePath(route: string, params: Readonly<Record<string, string>>): string {
  return route.replace(/:([A-Za-z]+)/g, (_, key: string) => encodeURIComponent(params[key] ?? ''))
}

/** Body of every error answer, under the `error` key. Extra fields belong to the code. */
export interface ErrorBody {
  code: string
  message: string
  [detail: string]: unknown
}

/**
 * Where a guest stands, as the IOhyp sees it:
 * - `waiting`: configured, no connection attempt seen yet
 * - `connecting`: handshake in progress
 * - `connected`: channel established, I/O flows
 * - `closing`: orderly shutdown in progress
 * - `disconnected`: had a channel, lost or closed it; the IOhyp accepts a new one
 */
export type GuestState = 'waiting' | 'connecting' | 'connected' | 'closing' | 'disconnected'

export const GUEST_STATES: readonly GuestState[] = [
  'waiting',
  'connecting',
  'connected',
  'closing',
  'disconnected',
]

export interface GuestInfo {
  /** The iocore that holds the guest (an IOhyp with --iocores N ≥ 2). */
  iocore?: number
  /** Lowercase, colon-separated: `52:54:00:12:34:56`. */
  mac: string
  /** Dotted quad. */
  address: string
  state: GuestState
  /** Smoothed round-trip time of the channel; null until the first sample. */
  rttMs: number | null
  framesIn: number
  framesOut: number
  bytesIn: number
  bytesOut: number
  /** Segments sent again, retransmission timeouts that fired, and fast recoveries (loss seen from SACKs). */
  retransmits: number
  rtoFirings: number
  fastRecoveries: number
  /** Times a message found the channel's send buffer full and had to wait (see ConnectionStats). */
  windowStalls?: number
  /**
   * The IOhyp's native fast path on this guest's channel (absent while it is off): block requests
   * it answered (they count in the disk's figures too), times the channel was lent to it, and times
   * it handed the channel back to the TypeScript transport (loss, a request it does not answer).
   */
  fastPath?: { requests: number; lends: number; handbacks: number }
  /**
   * Dropped frames by reason (a `DropReason` from wire/, or a transport/daemon reason); only non-zero
   * ones. Sealed channels add `auth-failed`, `replayed`, `unsealed`, `bad-epoch` (see docs/protocol.md).
   */
  drops: Record<string, number>
  /** Channels that ended because authentication or integrity failed, by reason (e.g. `auth-failed`). */
  sessionFailures: Record<string, number>
  /** `sealed (aes-256-gcm)`, `sealed (chacha20-poly1305)` or `plaintext (insecure)`; absent before the first connection. */
  channel?: string
  /** Key epochs the sealed channel moved to by rekeying (sending side). */
  rekeys?: number
  /** The guest's memory budgets on the IOhyp, in bytes (defaults filled in). */
  budgets: GuestBudgets
  /**
   * Bytes the IOhyp holds for the guest now: read replies (running reads and replies waiting for
   * its window) and reassembly (its partly received and out-of-order messages). Both return to 0
   * when the guest leaves.
   */
  held: GuestBudgets
}

/** Per-guest byte budgets (docs/operations.md, "Budgets"). */
export interface GuestBudgets {
  pendingReplyBytes: number
  reassemblyBytes: number
}

/** `POST /v1/guests` on the IOhyp: enrol a guest (fields: src/control/guest-spec.ts). */
export type AddGuestRequest = z.input<typeof guestSpecSchema>

export interface AddGuestResponse {
  guest: GuestInfo
}

export interface RemoveGuestResponse {
  /** The guest as it was when removed (final counters). */
  guest: GuestInfo
}

export interface ListGuestsResponse {
  /** Sorted by MAC. */
  guests: GuestInfo[]
}

export type DaemonRole = 'iohyp' | 'guest'

/** One iocore of an IOhyp run with --iocores N ≥ 2 (status `iocores`). */
export interface IocoreInfo {
  index: number
  /** Guests it holds. */
  guests: number
  /** Its event loop's busy and idle time since it started (ms), and busy share over the last sprinkler window. */
  busyMs: number
  idleMs: number
  utilization: number
  /** Times it was started again after it died. */
  restarts: number
  /** Guests moved to it and away from it. */
  movesIn: number
  movesOut: number
  /** Frames its packet socket received and sent. */
  frames: { rx: number; tx: number }
  /** With `--poll`: receive rounds instead of sleeping, those that found frames, and their time (part of busyMs). */
  polls?: number
  pollHits?: number
  pollMs?: number
}

export interface StatusInfo {
  role: DaemonRole
  /** vrio package version of the daemon. */
  version: string
  pid: number
  /** ISO 8601, UTC. */
  startedAt: string
  uptimeMs: number
  /** Network interface the daemon sends and receives on. */
  interface: string
  /**
   * `sealed (<cipher>)` (protocol version 2: every segment authenticated and encrypted; the cipher
   * this side picks as opener, or `sealed` for a listener, which follows the opener) or
   * `plaintext (insecure)` (--insecure-plaintext).
   */
  channel?: string
  /** MAC and IPv4 address of this end of the channel(s). */
  mac: string
  address: string
  /** IOhyp only: configured guests and how many are connected. */
  guests?: { total: number; connected: number }
  /** IOhyp with --iocores N ≥ 2 only: each iocore (the socket and drops above are their sums). */
  iocores?: IocoreInfo[]
  /** Frames the daemon's endpoint dropped before any connection saw them, by reason. */
  drops?: Record<string, number>
  /**
   * Guest only: each attached block device (by disk name) and how its requests reach the agent,
   * e.g. `/dev/loop3: FUSE over io_uring, 2 queues` or `... FUSE read/writev on /dev/fuse on the event loop (the default; VRIO_FUSE_URING=1 for io_uring)`.
   */
  blockDevices?: Record<string, string>
  /**
   * The packet socket: frames and bytes received and sent, frames the kernel dropped because the
   * socket's receive buffer was full (the daemon fell behind), and sends the kernel pushed back.
   */
  socket?: {
    rxFrames: number
    rxBytes: number
    txFrames: number
    txBytes: number
    kernelDrops: number
    txEagain: number
    /**
     * With polling on only (`--poll`; the guest agent's default): when it polls ('frames': after
     * every frame; 'disks': while disk calls are outstanding), receive rounds the thread made
     * instead of sleeping, those that found frames, and the time it spent in them (µs; part of
     * its busy time).
     */
    poll?: 'frames' | 'disks'
    polls?: number
    pollHits?: number
    pollUs?: number
  }
  /**
   * Guest only: what the agent accepts before an IOhyp authenticates. `iohypAddress` is the only
   * address SYNs are accepted from (null: any, until the first IOhyp authenticates); `halfOpen`
   * and `unauthenticated` are the connections now waiting; the rest count since start: evictions
   * to make room, connections that did not authenticate in time, SYNs from other addresses.
   */
  preAuth?: {
    iohypAddress: string | null
    iohypAddressSource: 'configured' | 'learned' | 'none'
    halfOpen: number
    unauthenticated: number
    evictedHalfOpen: number
    evictedUnauthenticated: number
    authTimeouts: number
    foreignAddress: number
  }
  /**
   * IOhyp only: the native fast path (VRIO_FASTPATH; docs/architecture.md): whether it is on,
   * and per channel (guest address) since start: frames it took and bytes, block requests it
   * answered, frames and bytes it sent, bytes read, handbacks to and lends from the TypeScript
   * transport, pure ACKs taken, reads that failed, RTT samples taken (on ACKs of its replies),
   * writes it did, their bytes, writes that failed, handbacks in the middle of a write it was
   * receiving over several frames (the transport took the rest), and messages the transport sent
   * through the lent channel (answers to requests it took) instead of taking it back.
   */
  fastPath?: {
    enabled: boolean
    channels: {
      guest: string
      framesIn: number
      bytesIn: number
      requests: number
      framesOut: number
      bytesOut: number
      readBytes: number
      handbacks: number
      lends: number
      pureAcks: number
      readErrors: number
      rttSamples: number
      writes: number
      writeBytes: number
      writeErrors: number
      partialHandbacks: number
      sentThrough: number
      /** Batches the addon answered (their requests count in `requests`). */
      batches: number
    }[]
  }
  /** Guest only: connections refused because authentication or integrity failed, by reason. */
  sessionFailures?: Record<string, number>
  /** Guest only: the IOhyp this guest talks to. */
  iohyp?: {
    mac: string
    address: string
    state: GuestState
    rttMs: number | null
    /** Of the current channel; see GuestInfo. */
    retransmits: number
    rtoFirings: number
    fastRecoveries: number
    /** Of the current channel: the cipher in use, dropped frames by reason, rekeys; see GuestInfo. */
    channel?: string
    drops?: Record<string, number>
    rekeys?: number
  }
}

/** `POST /v1/blk` on the IOhyp: give a guest a remote disk (fields: src/devices/blk/spec.ts). */
export type CreateDiskRequest = z.input<typeof diskRequestSchema>

/** A remote disk as the IOhyp sees it (`GET /v1/blk`, and the answer to create and remove). */
export interface DiskInfo {
  name: string
  /** The guest's MAC. */
  guest: string
  backing: string
  size: number
  blockSize: number
  readOnly: boolean
  /** `attached`: the guest has it; `waiting`: the guest is not connected (it gets it when it is). */
  state: 'attached' | 'waiting'
  /** Where the guest serves it (from the guest's last answer), or null. */
  nbd: string | null
  device: string | null
  requests: number
  errors: number
  /** The encryption service (format, cipher, sector size, counters; never keys), or null. */
  encryption: ({ kind: 'plain' | 'luks'; counters: object } & Record<string, unknown>) | null
}

/** A disk as the guest sees it (`GET /v1/blk` on the guest daemon). */
export interface GuestDiskInfo {
  name: string
  size: number
  readOnly: boolean
  /** The NBD export, e.g. `nbd+unix:///disk0?socket=/run/vrio/nbd.sock`. */
  nbd: string
  /** The attached block device (`/dev/loopN`), or null. */
  device: string | null
}

export interface ListDisksResponse<T = DiskInfo> {
  disks: T[]
}

/**
 * `POST /v1/nic` on the IOhyp: give a guest a remote NIC, exactly one of `tap` and `macvtap`
 * (fields: src/devices/net/spec.ts).
 */
export type CreateNicRequest = z.input<typeof nicRequestSchema>

export interface NetTrafficInfo {
  frames: number
  bytes: number
}

/** A remote NIC as the IOhyp sees it (`GET /v1/nic`, and the answer to create and remove). */
export interface NicInfo {
  name: string
  /** The guest's MAC (the channel's), not the NIC's. */
  guest: string
  mac: string
  mtu: number
  /** Source enforcement: the IPv4 range (null: any), and whether it is off altogether. */
  ip: string | null
  allowSpoofing: boolean
  backend:
    | { kind: 'tap'; tap: string; bridge: string | null }
    | { kind: 'macvtap'; uplink: string; device: string }
  /** `attached`: the guest has the interface; `waiting`: the guest is not connected (it gets it when it is). */
  state: 'attached' | 'waiting'
  /** Frames from the guest (sent on to the back-end) and to the guest. */
  fromGuest: NetTrafficInfo
  toGuest: NetTrafficInfo
  /** Dropped frames by reason (a NetDropReason); only non-zero ones. */
  drops: Record<string, number>
  /** The NIC's services: each one's rules file and counters; `malformed`: frames they could not parse. */
  services: ChainCounters
}

/** A NIC as the guest sees it (`GET /v1/nic` on the guest daemon). */
export interface GuestNicInfo {
  /** The interface name in the guest. */
  name: string
  mac: string
  mtu: number
  fromGuest: NetTrafficInfo
  toGuest: NetTrafficInfo
  drops: Record<string, number>
}

export interface ListNicsResponse<T = NicInfo> {
  nics: T[]
}
