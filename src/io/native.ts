import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { AddonFrameAeadConstructor } from '../transport/aead.ts'

/** Opaque fd handle owned by the addon (see native/io.h). */
export interface NativeChannel {
  /**
   * Starts watching the fd on the event loop; returns the slab's backing stores (one slab, index
   * 0: the callback runs synchronously for each batch read).
   */
  start(
    /** (slab index, frame count), or (-1, errno, syscall, strerror) when receiving stopped on an error. */
    callback: (slab: number, count: number, syscall?: string, message?: string) => void,
    batch: number,
    frameSize: number,
  ): { data: ArrayBuffer; meta: ArrayBuffer }[]
  send(frames: readonly Uint8Array[]): number
  sendSlab(slab: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, start: number, count: number): number
  stats(): NativeStats
  /** Reads and delivers (to the batch callback) what is queued now; a no-op inside a delivery. */
  drain(): void
  close(): void
  setRef(ref: boolean): void
  /** Replaces a packet socket's kernel filter (flat: code, jt, jf, k per instruction). */
  setFilter(program: Uint32Array): void
  /**
   * Polling: before the event loop sleeps, re-poll the fd non-blocking until `idleUs` pass without
   * a frame or anything else wants the loop (native/channel.cc); 0 turns it off. With `gate`, only
   * while gate[0] > 0, or was within idleUs. Absent from an older build.
   */
  setPoll?(idleUs: number, gate?: Int32Array): void
  /** Offers received frames to a fast path before JS (native/fastpath.cc); null detaches it. Absent from an older build. */
  attachFastPath?(fastPath: NativeFastPath | null): void
}

/** The IOhyp's native fast path (native/fastpath.cc); see src/io/fast-path.ts. */
export interface NativeFastPath {
  /**
   * stats: per disk its requests, bytes, latency buckets, count and sum, errors; then the latency
   * bounds. partial: the bytes received so far of a message the connection is receiving
   * (LEND.partLength > 0); false when that is not a WRITE it takes over.
   */
  lend(
    slot: number,
    params: Float64Array,
    txKey: Uint8Array,
    rxKey: Uint8Array,
    stats?: Float64Array[],
    partial?: Uint8Array,
  ): boolean
  reclaim(slot: number): void
  /** Sends a reliable message of the slot's connection as one of its replies; false when it cannot now. */
  send(slot: number, head: Uint8Array, body?: Uint8Array): boolean
  /** The frames it would send for `message` under `params`, split at its maxPayload (tests only). */
  buildReply(
    params: Float64Array,
    txKey: Uint8Array,
    message: Uint8Array,
    vnet: boolean,
    request?: Uint8Array,
    status?: number,
  ): Uint8Array[]
  /** The pure ACK it would send under `params` (tests only). */
  buildAck(params: Float64Array, txKey: Uint8Array, vnet: boolean): Uint8Array
}

export type NativeFastPathConstructor = new (
  slots: number,
  shared: Float64Array,
  records: Float64Array,
  bits: Uint32Array,
  store: Uint8Array,
  maxRecords: number,
  storeBytes: number,
) => NativeFastPath

export interface NativeStats {
  /** Frames handed to JS (after the outgoing filter) and their bytes. */
  rxFrames: number
  rxBytes: number
  rxBatches: number
  /** Frames longer than frameSize: delivered cut short (packet socket) or lost (TAP). */
  rxTruncated: number
  /** Transient receive errors (interface went down, ...); receiving carried on. */
  rxErrors: number
  txFrames: number
  txBytes: number
  /** Send calls that stopped early because the kernel pushed back (EAGAIN/ENOBUFS). */
  txEagain: number
  /** PACKET_STATISTICS, accumulated: frames the socket saw (including drops) and dropped because
   * the receive buffer was full. Always 0 for TAP devices. */
  kernelPackets: number
  kernelDrops: number
  /**
   * Polling (setPoll): receive rounds made before the loop would sleep, those that found frames,
   * and the time spent in them (µs). Absent from an older build.
   */
  polls?: number
  pollHits?: number
  pollUs?: number
}

export interface NativeIfInfo {
  ifindex: number
  mtu: number
  mac: string
}

export interface NativeAddon {
  openPacket(options: {
    ifname: string
    netns?: string
    protocol: number
    vnetHdr: boolean
    ignoreOutgoing: boolean
    qdiscBypass: boolean
    fanoutGroup: number
    fanoutMode: number
    rcvBuf: number
    sndBuf: number
    /** A classic BPF program to attach before bind: code, jt, jf, k per instruction. */
    filter?: Uint32Array
  }): NativeIfInfo & {
    handle: NativeChannel
    filterOutgoing: boolean
    /** The filter is attached (absent from a build that predates the option). */
    filtered?: boolean
  }
  openTap(options: {
    name: string
    netns?: string
    path?: string
    vnetHdr: boolean
    offloads: number
    multiQueue: boolean
    persist?: boolean
  }): NativeIfInfo & { handle: NativeChannel; name: string; created: boolean; offloads: number }
  interfaceInfo(name: string, netns?: string): NativeIfInfo
  /** fallocate(2) on the libuv thread pool; the callback gets null or an Error with errno/syscall. */
  fallocate(
    fd: number,
    mode: number,
    offset: number,
    length: number,
    callback: (error: Error | null) => void,
  ): void
  /**
   * The allocation map of [offset, offset + length) from lseek SEEK_DATA/SEEK_HOLE, on the libuv
   * thread pool: pairs (run length, 1 hole / 0 data), alternating, at most maxExtents runs,
   * covering a prefix of the range. Absent from an older build.
   */
  extents?(
    fd: number,
    offset: number,
    length: number,
    maxExtents: number,
    callback: (error: Error | null, runs?: Float64Array) => void,
  ): void
  /** posix_fadvise(2) on the libuv thread pool. Absent from an older build. */
  fadvise?(
    fd: number,
    offset: number,
    length: number,
    advice: number,
    callback: (error: Error | null) => void,
  ): void
  /** AES-XTS over whole sectors, many per call (native/xts.cc). */
  XtsCipher: new (
    key: Uint8Array,
  ) => NativeXtsCipher
  /**
   * One preadv2/pwritev2 with RWF_NOWAIT on this thread: bytes moved (possibly short), or -errno
   * (-EAGAIN: it would have to wait; -EOPNOTSUPP: not possible on this file).
   */
  ioNowait(write: boolean, fd: number, buf: Uint8Array, offset: number): number
  /**
   * The frame AEAD of a sealed channel (native/aead.cc): cipher 1 AES-256-GCM, 2 ChaCha20-Poly1305,
   * a 32-byte key. See FrameAead in src/transport/aead.ts. Absent from an older build.
   */
  FrameAead?: AddonFrameAeadConstructor
  /** The IOhyp's native fast path. Absent from an older build. */
  FastPath?: NativeFastPathConstructor
  /**
   * Which code a FrameAead of `cipher` runs: "ipsec-mb-avx512" (or -avx2, -avx, -sse: Intel's
   * multi-buffer library, built in when its header was found) or "openssl". Absent from an older build.
   */
  aeadImplementation?: (cipher: number) => string
  /** The DPI prefilter's scan loop (native/dpi_scan.cc; see services/dpi/native-scan.ts). Absent from an older build. */
  dpiScan?: DpiScanFunction
  /**
   * A one-file FUSE mount served from this process (native/fuse.cc); see FuseDiskServer in
   * src/guest/fuse-server.ts. Absent from an older build.
   */
  FuseDisk?: new (
    options: {
      dir: string
      name: string
      size: number
      readOnly: boolean
      slots: number
      maxWrite: number
      /** Serve this live connection's /dev/fuse fd (taken over) instead of mounting. */
      fd?: number
      /**
       * FUSE over io_uring: offer it at INIT (used when the kernel offers it too) or, with `fd`,
       * the adopted connection is served over it. Entries per queue: `uringDepth` (default 32).
       */
      uring?: boolean
      uringDepth?: number
      /** With `fd` and `uring`: the previous agent's ring memory (its memfd, from the holder) and address. */
      ringFd?: number
      ringAddr?: number
      /**
       * Where /dev/fuse is read: on the event loop (the default; nothing in the process may then
       * wait on the mount itself) or on a reader thread of its own.
       */
      reader?: 'loop' | 'thread'
    },
    callback: (count: number) => void,
  ) => NativeFuseDisk
  /**
   * A listening unix stream socket (bound at once, under the caller's umask) whose connections
   * come to `onConnection` as non-blocking, close-on-exec fds with SO_SNDBUF set to `sendBuffer`
   * bytes (0: the kernel's default); a failed accept comes as -errno, once per 200 ms pause
   * (native/unix_listener.cc). Absent from an older build.
   */
  UnixListener?: new (
    path: string,
    backlog: number,
    sendBuffer: number,
    onConnection: (fd: number) => void,
  ) => NativeUnixListener
  /** A duplicate (close-on-exec) of another process's fd: pidfd_open + pidfd_getfd (root). */
  pidfdGetfd?(pid: number, fd: number): number
  /**
   * Times every garbage collection of this thread's isolate into a FixedHistogram's arrays
   * (rows minor, major, incremental, weakcb; `bounds` in seconds), from V8's GC callbacks.
   */
  gcWatch(buckets: Float64Array, count: Float64Array, sum: Float64Array, bounds: Float64Array): void
  /**
   * glibc malloc: allocations below `mmapThreshold` bytes from the heap, up to `trimThreshold` free
   * bytes at its top kept mapped (mallopt). False where this is not glibc. Absent from an older build.
   */
  tuneMalloc?(mmapThreshold: number, trimThreshold: number): boolean
  /** sched_setaffinity(tid, cpus) for one thread (0: the caller); throws the errno. */
  setAffinity?(tid: number, cpus: readonly number[]): void
}

/** The addon's FUSE session (native/fuse.cc). */
export interface NativeUnixListener {
  /** Stops accepting and closes the socket (the path stays). Idempotent. */
  close(): void
}

export interface NativeFuseDisk {
  /** Slot buffers: /dev/fuse slots, then (from `ringFirst` on) the io_uring entries. */
  slots(): { buffers: ArrayBuffer[]; batch: Uint32Array; kernelMinor: number; ringFirst: number }
  /** Answers the slot's request (error 0 or -errno; data for READ) and frees the slot. */
  reply(slot: number, error: number, data?: Uint8Array): void
  /** Answers a WRITE: `size` bytes written. */
  replyWrite(slot: number, size: number): void
  stats(): FuseNativeStats
  /** Stops reading, unmounts (lazily) and closes /dev/fuse. */
  close(): void
  /** The /dev/fuse fd (to hand a duplicate to a process that keeps the connection alive). */
  fd(): number
  /** The ring entries' memory (a memfd, closed by close()) and where it is mapped; null without the ring. */
  ring(): { fd: number; addr: number } | null
}

export interface FuseNativeStats {
  /** Requests read from /dev/fuse, metadata included. */
  requests: number
  /** Data requests handed to JS, and the batches they came in. */
  toJs: number
  batches: number
  /** Replies the kernel refused (request interrupted or connection gone). */
  replyErrors: number
  interrupts: number
  /** INIT flags agreed with the kernel. */
  flags: number
  /** Serving a connection a previous agent left (see pidfdGetfd). */
  adopted: boolean
  /** Adopted: 0 when the kernel re-queued what the previous agent left unanswered, else errno; -1 otherwise. */
  resendErrno: number
  /** How requests arrive: over FUSE's io_uring queues, or read(2)/writev(2) on /dev/fuse (also while starting). */
  transport: 'io_uring' | 'read/writev' | 'starting'
  /** Why the ring is not used (or lost entries): an errno, else 0. */
  uringErrno: number
  /** Where /dev/fuse is read: on the event loop, or on a reader thread. */
  reader: 'loop' | 'thread'
  /** Requests that came over the ring, and its queues (one per possible CPU; 0 without it). */
  ringRequests: number
  queues: number
  /** Adopted: the ring memory is mapped where the previous agent had it, and the requests it left unanswered (served again). */
  ringRecovered: boolean
  ringResumed: number
}

/** An AES-XTS key held by OpenSSL; JS never sees the key schedule. */
export interface NativeXtsCipher {
  /**
   * `dst` (same length as `src`; `src` itself or not overlapping it) gets `src` en- or decrypted as whole sectors;
   * sector k uses the tweak `firstTweak + k * tweakStep` (little-endian 64-bit, zero-padded).
   */
  crypt(
    encrypt: boolean,
    src: Uint8Array,
    dst: Uint8Array,
    firstTweak: number,
    sectorSize: number,
    tweakStep: number,
  ): void
  /** Frees (and wipes) the key schedule now rather than at garbage collection. */
  destroy(): void
}

/**
 * io in: threshold, shallow, window, start, end, state; out: state at io[5], where it stopped at
 * io[4] (before `end` only when `hits` filled up), hits recorded at io[6] (pairs in `hits` of a
 * reporting scan state and the index just past its byte).
 */
export type DpiScanFunction = (
  delta: Int32Array,
  classes: Uint8Array,
  pairs: Uint8Array,
  data: Uint8Array,
  io: Int32Array,
  hits: Int32Array,
) => void

const ADDON = join('build', 'Release', 'vrio_io.node')

// Works from src/io (run as TS) and dist/src/io (compiled) alike: walk up to the package root,
// the first directory holding package.json, and take the addon node-gyp built there.
function findAddon(): string {
  if (process.env.VRIO_IO_ADDON) return process.env.VRIO_IO_ADDON
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) {
      const candidate = join(dir, ADDON)
      if (existsSync(candidate)) return candidate
    }
    const parent = dirname(dir)
    if (parent === dir) break
    dir = parent
  }
  throw new Error(
    `vrio: native addon ${ADDON} not found above ${fileURLToPath(import.meta.url)}; run npm install`,
  )
}

let addon: NativeAddon | undefined

/** The addon, loaded on first use so that importing this layer costs nothing when unused. */
export function native(): NativeAddon {
  addon ??= createRequire(import.meta.url)(findAddon()) as NativeAddon
  return addon
}
