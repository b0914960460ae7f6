// The IOhyp's native fast path (issue 15, docs/architecture.md "Fast path and slow path"): the
// steady state of a sealed channel handled in C++ inside the Channel's drain, without entering
// JavaScript. TypeScript (src/transport/connection.ts) stays the owner of every connection and
// the reference: it *lends* an established, quiet connection (nothing unacknowledged, nothing held
// out of order, steady keys) to a slot here, and takes it back — scalars, replay window, and the
// replies sent meanwhile as records it can retransmit — before any frame this code does not take,
// and whenever it needs the connection (its own send, its timer).
//
// Taken here, per received frame of a lent connection:
//   - a pure ACK (flags ACK only, options SEAL + 2 NOPs) in order and within what was sent;
//   - an in-order, single-segment, sealed, reliable data segment (ACK|PSH, options SEGMENT +
//     SEAL) carrying one whole BlockRequest READ for a disk lent with the connection, in range,
//     whose reply fits the send buffer: answered with pread into the reply record, queued behind
//     the replies not sent yet, and sent as the peer's and the congestion windows allow (more on
//     each ACK taken) in sealed frames of at most maxPayload bytes each (GSO super-frames), built
//     exactly as Connection.pump/emitPrepared build them; or a WRITE whose data is in the segment
//     or follows in the next ones (written piece by piece, acknowledged as Connection.oweAck
//     would, answered after its last piece; a hand back in between gives TS what was taken).
// Anything else hands the connection back (its state written to the slot's shared arrays) and
// the frame, still as it arrived, goes on to JavaScript in the same batch, in order.
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "io.h"

namespace vrio {

namespace {

// Offsets of the lend parameters (Float64Array) — kept in step with src/io/fast-path.ts.
enum LendParam {
  kPLocalMac = 0,
  kPRemoteMac,
  kPLocalIp,
  kPRemoteIp,
  kPLocalPort,
  kPRemotePort,
  kPRcvNxt,
  kPSndNxt,
  kPIpId,
  kPWindowField,
  kPSndWnd,
  kPSendScale,
  kPMss,
  kPSendLimit,
  kPCipher,
  kPTxEpoch,
  kPTxCounter,
  kPTxBytes,
  kPRekeyFrames,
  kPRekeyBytes,
  kPRxEpoch,
  kPRxHighest,
  kPMaxPayload,
  kPChecksumOffload,
  kPDiskCount,
  kPSndUna,
  kPCwnd,
  kPSsthresh,
  kPSendBuffer,
  kPSrtt,    // the connection's smoothed RTT (ms), -1 before its first sample
  kPRttvar,  // and its variation (ms)
  // A WRITE over several frames the connection is receiving (partLength 0: none): the sequence
  // number of its first byte, its length, and how many bytes of it were received (given to lend).
  kPPartStart = 31,
  kPPartLength,
  kPPartFilled,
  kPAckOwed,  // 1: a delayed ACK is owed, sent as the lend is taken
  kPDisks = 36,  // then per disk: high, low, fd, size, maxRead, writable
};
constexpr int kDiskStride = 6;

// Offsets in a slot's shared state (Float64Array, kSlotStride per slot).
enum SlotField {
  kSState = 0,  // 0 free, 1 lent, 2 handed back (TS adopts, then frees)
  kSRcvNxt,
  kSSndUna,
  kSSndNxt,
  kSIpId,
  kSTxCounter,
  kSTxBytes,
  kSRxHighest,
  kSSndWnd,
  kSWl1,
  kSWl2,
  kSRecords,
  kSFramesTaken,  // frames taken since the lend: TS's sign of life
  kSAckProgress,  // ACKs that moved snd_una since the lend
  kSInFlight,     // snd_max - snd_una (sent or queued, unacknowledged), kept current
  kSCwnd,
  kCFramesIn = 16,
  kCBytesIn,
  kCRequests,
  kCFramesOut,
  kCBytesOut,
  kCReadBytes,
  kCHandbacks,
  kCLends,
  kCPureAcks,
  kCReadErrors,
  kCRttSamples,
  kCWrites,
  kCWriteBytes,
  kCWriteErrors,
  kCPartialHandbacks,  // handbacks in the middle of a WRITE over several frames
  kCSentThrough,       // messages the Connection sent through the lease (SendThrough)
  kSSrtt = 32,  // the connection's srtt and rttvar (ms), current after every sample taken here
  kSRttvar,
  kSRttSamples,  // RTT samples taken since the lend
  // At a hand back in the middle of a WRITE over several frames (its head in the slot's store at
  // 0, kReqHead bytes): sequence number of its first byte, its length, the bytes received and
  // written so far, the disk's descriptor and the write's offset (partLength 0: none).
  kSPartStart,
  kSPartLength,
  kSPartFilled,
  kSPartFd,
  kSPartOffset,
  // How far rcv_nxt and snd_una moved since the lend, in bytes (exact in a double): a lend may
  // last while more than 2^31 bytes go either way, past what the 32-bit numbers above can tell.
  kSRcvAdvance,
  kSUnaAdvance,
  kSSndMax,  // the end of the replies queued: those past snd_nxt wait for the windows (Pump)
  kCBatches,  // batches answered (a counter, as kCFramesIn on; their requests count in kCRequests)
};
constexpr int kRecordStride = 3;  // seq, length, store offset

constexpr int kStateFree = 0, kStateLent = 1, kStateReturned = 2;

constexpr size_t kEth = 14, kIp = 20, kTcp = 20;
constexpr size_t kIpAt = kEth, kTcpAt = kEth + kIp;
constexpr size_t kDataOptions = 36, kAckOptions = 24;
constexpr size_t kVnetHdr = 10;
constexpr size_t kMsgHeader = 32, kReqHead = 56;
constexpr uint32_t kMaxBatch = 64;              // protocol.ts MAX_BATCH
constexpr size_t kMaxBatchBytes = 60 * 1024;  // protocol.ts MAX_BATCH_BYTES
constexpr uint8_t kAck = 0x10, kPsh = 0x08;
constexpr uint8_t kOptExp = 254;
constexpr uint16_t kExId = 0x7672;
constexpr uint8_t kSubSegment = 2, kSubSeal = 3;
constexpr size_t kSealTagAt = 10;
constexpr uint32_t kReplayWindow = 1024;
constexpr size_t kTxArena = 8u << 20;  // a reply of the largest message (4 MiB) fits twice
// Frames queued in a batch leave at once when they reach this many bytes (a 1 MiB reply each):
// flushing only at the batch's end kept the guest idle while a batch of large READs was read and
// sealed (bench/blkdev 1 MiB reads QD8: 1.9-2.4 -> 2.4-3.4 GB/s, 6-12 % less CPU per request).
constexpr size_t kFlushAfter = 64u << 10;
// The slot's store begins with the head of a WRITE handed back unfinished; reply records follow.
constexpr size_t kStoreBase = 64;
constexpr int kMaxBurst = 64;  // frames one Pump sends at most (the transport's maxBurst)

// Milliseconds on a monotonic clock: only differences are used (RTT samples).
inline double NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
}

inline uint16_t Rd16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
inline uint32_t Rd32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
inline void Wr16(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
inline void Wr32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}
inline void WrMac(uint8_t* p, uint64_t mac) {
  for (int i = 0; i < 6; i++) p[i] = uint8_t(mac >> (40 - 8 * i));
}
inline uint64_t RdMac(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 6; i++) v = v << 8 | p[i];
  return v;
}

uint64_t SumWords(const uint8_t* p, size_t n, uint64_t sum) {
  size_t i = 0;
  for (; i + 1 < n; i += 2) sum += uint32_t(p[i] << 8 | p[i + 1]);
  if (i < n) sum += uint32_t(p[i] << 8);
  return sum;
}
uint16_t Fold(uint64_t sum) {
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(sum);
}
uint64_t Pseudo(uint32_t src, uint32_t dst, uint32_t length) {
  return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 6 + length;
}

// Serial-number comparisons on 32-bit sequence numbers.
inline int32_t SeqDiff(uint32_t a, uint32_t b) { return int32_t(a - b); }

// protocol.md "Receiving": the 64-bit counter nearest the highest verified one.
uint64_t Reconstruct(uint32_t low, int64_t highest) {
  if (highest < 0) return low;
  uint64_t h = uint64_t(highest);
  uint64_t c = (h & ~0xffffffffull) + low;
  if (c > h + 0x80000000ull && c >= 0x100000000ull) {
    c -= 0x100000000ull;
  } else if (c + 0x80000000ull < h) {
    c += 0x100000000ull;
  }
  return c;
}

}  // namespace

// A disk's own counters (devices/blk/op-stats.ts BlockOpStats: requests and bytes by operation,
// read 0 and write 1, the service-time histogram, answers by status), the arrays the metrics read at scrape time:
// requests answered here count where the TypeScript backend's do.
struct DiskStats {
  enum { kRequests, kBytes, kBuckets, kCount, kSum, kErrors, kArrays };
  Napi::Reference<Napi::Float64Array> refs[kArrays];
  double* a[kArrays] = {};

  void Count(int op, uint16_t status, uint64_t bytes, double seconds, const std::vector<double>& bounds) {
    a[kRequests][op] += 1;
    if (status != 0) a[kErrors][status] += 1;
    a[kBytes][op] += double(bytes);
    a[kCount][op] += 1;
    a[kSum][op] += seconds;
    size_t n = bounds.size();
    for (size_t i = 0; i < n; i++) {
      if (seconds <= bounds[i]) {
        a[kBuckets][size_t(op) * n + i] += 1;
        return;
      }
    }
  }
};

struct FastPath::Disk {
  uint32_t high = 0, low = 0;
  int fd = -1;
  uint64_t size = 0;
  uint32_t maxRead = 0;
  bool writable = false;
  DiskStats* stats = nullptr;
};

struct FastPath::Lease {
  uint64_t localMac = 0, remoteMac = 0;
  uint32_t localIp = 0, remoteIp = 0;
  uint16_t localPort = 0, remotePort = 0;
  // snd_max: the end of the replies queued; [snd_nxt, snd_max) waits for the windows (Pump).
  uint32_t rcvNxt = 0, sndUna = 0, sndNxt = 0, sndMax = 0;
  uint16_t ipId = 0, windowField = 0;
  uint64_t sndWnd = 0;
  int sendScale = 0;
  uint32_t wl1 = 0, wl2 = 0;
  uint32_t mss = 0;
  uint64_t sendLimit = 0;  // the send buffer's room
  uint64_t sendBufferSize = 0;
  uint64_t cwnd = 0;
  double ssthresh = -1;  // -1: infinite
  uint32_t maxPayload = 0;
  bool partialChecksum = false;
  int cipher = 0;
  uint64_t txEpoch = 0, txCounter = 0, txBytes = 0, rekeyFrames = 0, rekeyBytes = 0;
  uint64_t rxEpoch = 0;
  int64_t rxHighest = -1;
  FastAead tx, rx;
  uint8_t txKey[32] = {}, rxKey[32] = {};
  bool txKeyed = false, rxKeyed = false;
  std::vector<Disk> disks;
  DiskStats stats[8];  // per disk entry (the host lends at most 8), kept across lends while the arrays stay
  // Unacknowledged replies, oldest first, in the slot's records array; their plaintext in the
  // slot's store, a ring [storeHead, storeTail) that wraps only at a record boundary.
  uint32_t recHead = 0, recCount = 0;
  size_t storeHead = 0, storeTail = 0;
  // RTT (Connection.sampleRtt, RFC 6298): one reply timed at a time, from its send to the first
  // ACK that covers it. Only replies sent here are timed, and they are sent once while lent
  // (retransmissions happen after the hand back, and a lend starts untimed): Karn's rule.
  double srtt = -1, rttvar = 0;
  bool timing = false;
  uint32_t timingEnd = 0;
  double timingAt = 0;
  // A WRITE arriving over several frames (Connection.pump's pieces of one message), written piece
  // by piece as each frame opens; answered when its last byte is written.
  struct {
    bool active = false;
    uint32_t start = 0, length = 0, filled = 0;  // sequence number of byte 0, message bytes, received
    size_t disk = 0;                             // index in disks
    uint64_t offset = 0;
    uint32_t dataLength = 0;
    uint16_t status = 0;
    double started = 0;
    uint8_t head[kReqHead] = {};
  } part;
  // Delayed ACK of data taken without an answer (pieces of a WRITE), as Connection.oweAck: at once
  // after two full-sized segments' worth (a frame counts for at most one), else at the batch's end.
  uint32_t ackWeight = 0;
  bool ackOwed = false;
};

Napi::Function FastPath::Define(Napi::Env env) {
  return DefineClass(env, "FastPath",
                     {InstanceMethod<&FastPath::Lend>("lend"), InstanceMethod<&FastPath::Reclaim>("reclaim"),
                      InstanceMethod<&FastPath::SendThrough>("send"), InstanceMethod<&FastPath::BuildReply>("buildReply"),
                      InstanceMethod<&FastPath::BuildAckFrame>("buildAck")});
}

// new FastPath(slots, shared: Float64Array, records: Float64Array, bits: Uint32Array, store: Uint8Array,
//              maxRecords, storeBytes)
FastPath::FastPath(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FastPath>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsTypedArray() || !info[4].IsTypedArray() || !info[5].IsNumber() || !info[6].IsNumber()) {
    ThrowInvalid(env, "FastPath(slots, shared, records, bits, store, maxRecords, storeBytes)");
    return;
  }
  slots_ = info[0].As<Napi::Number>().Uint32Value();
  maxRecords_ = info[5].As<Napi::Number>().Uint32Value();
  storeBytes_ = info[6].As<Napi::Number>().Uint32Value();
  Napi::Float64Array shared = info[1].As<Napi::Float64Array>();
  Napi::Float64Array records = info[2].As<Napi::Float64Array>();
  Napi::Uint32Array bits = info[3].As<Napi::Uint32Array>();
  Napi::Uint8Array store = info[4].As<Napi::Uint8Array>();
  if (slots_ < 1 || slots_ > 1024 || shared.ElementLength() < size_t(slots_) * kSlotStride ||
      records.ElementLength() < size_t(slots_) * maxRecords_ * kRecordStride ||
      bits.ElementLength() < size_t(slots_) * (kReplayWindow / 32) || store.ByteLength() < size_t(slots_) * storeBytes_ ||
      storeBytes_ < 65536) {
    ThrowInvalid(env, "FastPath: arrays too small for the slots");
    return;
  }
  shared_ = shared.Data();
  records_ = records.Data();
  bits_ = bits.Data();
  store_ = store.Data();
  refs_[0] = Napi::Persistent(info[1].As<Napi::Object>());
  refs_[1] = Napi::Persistent(info[2].As<Napi::Object>());
  refs_[2] = Napi::Persistent(info[3].As<Napi::Object>());
  refs_[3] = Napi::Persistent(info[4].As<Napi::Object>());
  leases_.resize(slots_);
  txArena_.resize(kTxArena);
  txIov_.reserve(1024);
}

FastPath::~FastPath() {
  for (Lease& l : leases_) {
    l.tx.Free();
    l.rx.Free();
  }
}

// The lend parameters both Lend and BuildReply take: addresses, ports and sequence numbers.
void FastPath::ReadAddressing(Lease& l, const double* p) {
  l.localMac = uint64_t(p[kPLocalMac]);
  l.remoteMac = uint64_t(p[kPRemoteMac]);
  l.localIp = uint32_t(p[kPLocalIp]);
  l.remoteIp = uint32_t(p[kPRemoteIp]);
  l.localPort = uint16_t(p[kPLocalPort]);
  l.remotePort = uint16_t(p[kPRemotePort]);
  l.rcvNxt = uint32_t(p[kPRcvNxt]);
  l.sndNxt = uint32_t(p[kPSndNxt]);
  l.sndMax = l.sndNxt;
}

// BlockStatus of a failed pwrite (protocol.ts blockStatusOf, FileDevice's errors): no space, or
// an I/O error.
static uint16_t WriteStatus(int err) { return err == ENOSPC || err == EDQUOT ? 0x12 : 1; }

// pwrite of data[0, n) at `offset` whole: 0, or the BlockStatus of the error that stopped it.
static uint16_t WriteAll(int fd, const uint8_t* data, size_t n, uint64_t offset) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pwrite(fd, data + done, n - done, off_t(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return WriteStatus(r < 0 ? errno : EIO);
    done += size_t(r);
  }
  return 0;
}

// lend(slot, params: Float64Array, txKey, rxKey, stats?, partial?): the connection's state (the
// replay window is already in the slot's bits); stats: per disk, its requests, bytes, latency
// buckets, count and sum, and errors by status (Float64Arrays), then the latency bounds (seconds);
// partial: the bytes received so far of the message at kPPartStart (kPPartLength > 0). Returns
// false when the keys could not be set up or the partial message is not a WRITE the addon takes.
Napi::Value FastPath::Lend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsTypedArray())
    return ThrowInvalid(env, "lend(slot, params, txKey, rxKey)");
  uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
  Napi::Float64Array pa = info[1].As<Napi::Float64Array>();
  Napi::Uint8Array txKey = info[2].As<Napi::Uint8Array>();
  Napi::Uint8Array rxKey = info[3].As<Napi::Uint8Array>();
  if (slot >= slots_ || pa.ElementLength() < size_t(kPDisks) || txKey.ByteLength() != 32 || rxKey.ByteLength() != 32)
    return ThrowInvalid(env, "lend: bad slot, params or keys");
  const double* p = pa.Data();
  Lease& l = leases_[slot];
  ReadAddressing(l, p);
  l.sndUna = uint32_t(p[kPSndUna]);
  l.ipId = uint16_t(p[kPIpId]);
  l.windowField = uint16_t(p[kPWindowField]);
  l.sndWnd = uint64_t(p[kPSndWnd]);
  l.sendScale = int(p[kPSendScale]);
  l.wl1 = l.rcvNxt;
  l.wl2 = l.sndUna;
  l.mss = uint32_t(p[kPMss]);
  l.sendLimit = uint64_t(p[kPSendLimit]);
  l.cwnd = uint64_t(p[kPCwnd]);
  l.ssthresh = p[kPSsthresh];
  l.sendBufferSize = uint64_t(p[kPSendBuffer]);
  l.maxPayload = uint32_t(p[kPMaxPayload]);
  l.partialChecksum = p[kPChecksumOffload] != 0;
  int cipher = int(p[kPCipher]);
  l.txEpoch = uint64_t(p[kPTxEpoch]);
  l.txCounter = uint64_t(p[kPTxCounter]);
  l.txBytes = uint64_t(p[kPTxBytes]);
  l.rekeyFrames = uint64_t(p[kPRekeyFrames]);
  l.rekeyBytes = uint64_t(p[kPRekeyBytes]);
  l.rxEpoch = uint64_t(p[kPRxEpoch]);
  l.rxHighest = int64_t(p[kPRxHighest]);
  l.srtt = p[kPSrtt];
  l.rttvar = p[kPRttvar];
  l.timing = false;
  // Key schedules are set up again only when a key changed (a rekey, another connection).
  if (!l.txKeyed || l.cipher != cipher || std::memcmp(l.txKey, txKey.Data(), 32) != 0) {
    l.txKeyed = l.tx.Init(cipher, txKey.Data());
    std::memcpy(l.txKey, txKey.Data(), 32);
  }
  if (!l.rxKeyed || l.cipher != cipher || std::memcmp(l.rxKey, rxKey.Data(), 32) != 0) {
    l.rxKeyed = l.rx.Init(cipher, rxKey.Data());
    std::memcpy(l.rxKey, rxKey.Data(), 32);
  }
  l.cipher = cipher;
  if (!l.txKeyed || !l.rxKeyed) return Napi::Boolean::New(env, false);
  uint32_t nd = uint32_t(p[kPDiskCount]);
  if (pa.ElementLength() < size_t(kPDisks) + size_t(nd) * kDiskStride) return ThrowInvalid(env, "lend: disks missing");
  l.disks.resize(nd);
  for (uint32_t i = 0; i < nd; i++) {
    const double* d = p + kPDisks + i * kDiskStride;
    l.disks[i].high = uint32_t(d[0]);
    l.disks[i].low = uint32_t(d[1]);
    l.disks[i].fd = int(d[2]);
    l.disks[i].size = uint64_t(d[3]);
    l.disks[i].maxRead = uint32_t(d[4]);
    l.disks[i].writable = d[5] != 0;
    l.disks[i].stats = nullptr;
  }
  if (info.Length() >= 5 && info[4].IsArray()) {
    Napi::Array st = info[4].As<Napi::Array>();
    uint32_t ns = st.Length();
    if (ns == nd * DiskStats::kArrays + 1 && nd <= 8) {
      Napi::Value bv = st.Get(ns - 1);
      if (bv.IsTypedArray() && bv.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
        Napi::Float64Array b = bv.As<Napi::Float64Array>();
        if (latencyBounds_.size() != b.ElementLength())
          latencyBounds_.assign(b.Data(), b.Data() + b.ElementLength());
      }
      for (uint32_t i = 0; i < nd; i++) {
        DiskStats& ds = l.stats[i];
        size_t nb = latencyBounds_.size();
        bool ok = nb > 0;
        for (int k = 0; k < DiskStats::kArrays && ok; k++) {
          Napi::Value v = st.Get(i * DiskStats::kArrays + k);
          ok = v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array;
          if (!ok) break;
          Napi::Float64Array arr = v.As<Napi::Float64Array>();
          ok = arr.ElementLength() >= (k == DiskStats::kBuckets ? 2 * nb : k == DiskStats::kErrors ? 32 : 2);
          // A reference only when the array changed: the same disk lent again costs no new one.
          if (ok && arr.Data() != ds.a[k]) {
            ds.refs[k] = Napi::Persistent(arr);
            ds.a[k] = arr.Data();
          }
        }
        if (ok) l.disks[i].stats = &ds;
      }
    }
  }
  l.recHead = l.recCount = 0;
  l.storeHead = l.storeTail = kStoreBase;
  l.part.active = false;
  l.ackWeight = 0;
  l.ackOwed = false;
  // A WRITE the connection was receiving over several frames (its bytes so far in info[5]): taken
  // over when the addon would have taken its first piece, those bytes written now, the rest as it
  // comes. Anything else refuses the lend (the connection keeps receiving it).
  if (p[kPPartLength] > 0) {
    uint64_t length = uint64_t(p[kPPartLength]);
    uint32_t filled = uint32_t(p[kPPartFilled]);
    if (info.Length() < 6 || !info[5].IsTypedArray()) return ThrowInvalid(env, "lend: the partial message's bytes missing");
    Napi::Uint8Array part = info[5].As<Napi::Uint8Array>();
    bool write = false;
    uint32_t rlen = 0;
    uint64_t roff = 0;
    const Disk* disk = filled >= kReqHead && filled < length && part.ByteLength() == filled
                           ? Request(l, part.Data(), length, false, write, rlen, roff)
                           : nullptr;
    if (disk == nullptr || !write) return Napi::Boolean::New(env, false);
    OpenPart(l, uint32_t(p[kPPartStart]), length, disk, part.Data(), roff, rlen);
    l.part.filled = filled;
    l.part.status = WriteAll(disk->fd, part.Data() + kReqHead, filled - kReqHead, roff);
  }
  double* s = shared_ + size_t(slot) * kSlotStride;
  s[kSFramesTaken] = 0;
  s[kSAckProgress] = 0;
  s[kSRecords] = 0;
  s[kSInFlight] = double(uint32_t(l.sndMax - l.sndUna));
  s[kSSrtt] = l.srtt;
  s[kSRttvar] = l.rttvar;
  s[kSRttSamples] = 0;
  s[kSRcvAdvance] = 0;
  s[kSUnaAdvance] = 0;
  s[kCLends]++;
  s[kSState] = kStateLent;
  lent_++;
  // The delayed ACK the connection owed leaves now, under the lend's keys (no timer here for it).
  if (p[kPAckOwed] != 0) {
    l.ackOwed = true;
    if (channel_ != nullptr && !channel_->closed_) {
      SendAck(channel_, slot);
      Flush(channel_);
    }
  }
  return Napi::Boolean::New(env, true);
}

// reclaim(slot): hands a lent connection back now (TS needs it); no-op unless lent.
Napi::Value FastPath::Reclaim(const Napi::CallbackInfo& info) {
  uint32_t slot = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : slots_;
  if (slot < slots_) HandBack(slot);
  return info.Env().Undefined();
}

// Writes the lease's state where TS reads it, and marks the slot handed back.
void FastPath::HandBack(uint32_t slot) {
  double* s = shared_ + size_t(slot) * kSlotStride;
  if (s[kSState] != kStateLent) return;
  Lease& l = leases_[slot];
  s[kSRcvNxt] = l.rcvNxt;
  s[kSSndUna] = l.sndUna;
  s[kSSndNxt] = l.sndNxt;
  s[kSSndMax] = l.sndMax;
  s[kSIpId] = l.ipId;
  s[kSTxCounter] = double(l.txCounter);
  s[kSTxBytes] = double(l.txBytes);
  s[kSRxHighest] = double(l.rxHighest);
  s[kSSndWnd] = double(l.sndWnd);
  s[kSCwnd] = double(l.cwnd);
  s[kSWl1] = l.wl1;
  s[kSWl2] = l.wl2;
  // Records oldest first from index 0 (the ring is unrolled for TS).
  if (l.recHead != 0 && l.recCount > 0) {
    double* r = records_ + size_t(slot) * maxRecords_ * kRecordStride;
    std::vector<double>& tmp = scratch_;
    tmp.assign(r, r + size_t(maxRecords_) * kRecordStride);
    for (uint32_t i = 0; i < l.recCount; i++) {
      uint32_t from = (l.recHead + i) % maxRecords_;
      std::memcpy(r + size_t(i) * kRecordStride, tmp.data() + size_t(from) * kRecordStride, sizeof(double) * kRecordStride);
    }
  }
  l.recHead = 0;
  s[kSRecords] = l.recCount;
  s[kSPartLength] = 0;
  if (l.part.active) {
    std::memcpy(store_ + size_t(slot) * storeBytes_, l.part.head, kReqHead);
    s[kSPartStart] = l.part.start;
    s[kSPartLength] = l.part.length;
    s[kSPartFilled] = l.part.filled;
    // A piece whose pwrite failed cannot be read back as it came: -1 (TS resets the connection,
    // and the peer sends the whole write again).
    s[kSPartFd] = l.part.status == 0 ? l.disks[l.part.disk].fd : -1;
    s[kSPartOffset] = double(l.part.offset);
    s[kCPartialHandbacks]++;
    l.part.active = false;
  }
  s[kCHandbacks]++;
  s[kSState] = kStateReturned;
  lent_--;
}

FastPath::Lease* FastPath::Find(uint32_t remoteIp, uint16_t remotePort, uint16_t localPort, uint32_t* slot) {
  for (uint32_t i = 0; i < slots_; i++) {
    if (shared_[size_t(i) * kSlotStride + kSState] != kStateLent) continue;
    Lease& l = leases_[i];
    if (l.remoteIp == remoteIp && l.remotePort == remotePort && l.localPort == localPort) {
      *slot = i;
      return &l;
    }
  }
  return nullptr;
}

// The TCP checksum of a received segment, when the kernel did not vouch for it.
static bool TcpChecksumOk(const uint8_t* f, size_t tcpLen, uint32_t src, uint32_t dst) {
  return Fold(SumWords(f + kTcpAt, tcpLen, Pseudo(src, dst, uint32_t(tcpLen)))) == 0xffff;
}

// Processes the batch in the slab in place: frames taken are removed from offsets/lengths; returns
// how many are left for JS. Replies go out through the channel before JS sees the rest.
uint32_t FastPath::Process(Channel* ch, uint8_t* slab, uint32_t* offsets, uint32_t* lengths, uint32_t n, bool vnet) {
  if (lent_ == 0) return n;
  txUsed_ = 0;
  txIov_.clear();
  uint32_t kept = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint8_t* base = slab + offsets[i];
    size_t len = lengths[i];
    bool taken = false;
    if (!vnet || len >= kVnetHdr) {
      bool verified = vnet && (base[0] & 3) != 0;
      size_t hdr = vnet ? kVnetHdr : 0;
      taken = Take(ch, base + hdr, len - hdr, verified);
    }
    if (!taken) {
      offsets[kept] = offsets[i];
      lengths[kept] = lengths[i];
      kept++;
    }
  }
  // ACKs still owed for pieces of a WRITE (Connection.oweAck would wait ackDelay; this has no
  // timer, so it acknowledges at the batch's end).
  for (uint32_t slot = 0; slot < slots_; slot++)
    if (leases_[slot].ackOwed && shared_[size_t(slot) * kSlotStride + kSState] == kStateLent) SendAck(ch, slot);
  Flush(ch);
  return kept;
}

void FastPath::Flush(Channel* ch) {
  if (!txIov_.empty()) {
    int64_t sent = ch->SendFrames(txIov_.data(), uint32_t(txIov_.size()));
    (void)sent;  // a refused reply is a lost frame: the records stay until acknowledged
  }
  txIov_.clear();
  txUsed_ = 0;
}

// One frame: true when taken (the connection stays lent), false when it goes to JS (the
// connection, if it was lent, is then handed back first).
bool FastPath::Take(Channel* ch, uint8_t* f, size_t len, bool verified) {
  if (len < kTcpAt + kTcp || f[12] != 0x08 || f[13] != 0x00 || f[kIpAt] != 0x45 || f[kIpAt + 9] != 6) return false;
  uint32_t ipTotal = Rd16(f + kIpAt + 2);
  if (ipTotal < kIp + kTcp || kIpAt + ipTotal > len || (Rd16(f + kIpAt + 6) & 0x3fff) != 0) return false;
  uint32_t src = Rd32(f + kIpAt + 12), dst = Rd32(f + kIpAt + 16);
  const uint8_t* t = f + kTcpAt;
  uint32_t slot = 0;
  if (Find(src, Rd16(t), Rd16(t + 2), &slot) == nullptr) return false;
  if (!Eligible(ch, slot, f, len, verified, dst)) {
    HandBack(slot);
    return false;
  }
  return true;
}

// The disk of the BlockRequest whose head is `m` (kReqHead bytes) in a message of `msgLength`
// bytes, in one frame (`whole`) or the first of several, when the addon answers it: a READ (op 0:
// no data, replyLength = length; in one frame) or a WRITE (op 1, flags 0 (no FUA): the data in
// this message, replyLength 0), as protocol.ts decodeBlockRequest checks them, in range of a disk
// lent with the connection. Null otherwise. Its kind, length and offset in `write`, `rlen`, `roff`.
const FastPath::Disk* FastPath::Request(const Lease& l, const uint8_t* m, uint64_t msgLength, bool whole, bool& write,
                                        uint32_t& rlen, uint64_t& roff) {
  const uint8_t* d = m + kMsgHeader;
  rlen = Rd32(d + 4);
  uint32_t offHigh = Rd32(d + 8);
  roff = uint64_t(offHigh) << 32 | Rd32(d + 12);
  uint32_t id = Rd32(m + 20), floor = Rd32(d + 16);
  write = d[0] == 1;
  bool ok = (write || (d[0] == 0 && whole)) && msgLength == kReqHead + (write ? rlen : 0) && m[0] == 1 &&
            m[1] == 0x20 && Rd16(m + 2) == 0 && Rd32(m + 4) == msgLength - kMsgHeader && Rd16(m + 28) == 0 &&
            d[1] == 0 && d[2] == 0 && d[3] == 0 && Rd32(d + 20) == 0 && Rd32(m + 24) == (write ? 0 : rlen) &&
            rlen > 0 && offHigh <= 0x1fffff && floor <= id;
  if (!ok) return nullptr;
  const Disk* disk = nullptr;
  uint32_t high = Rd32(m + 8), low = Rd32(m + 12);
  for (const Disk& k : l.disks)
    if (k.high == high && k.low == low) disk = &k;
  ok = disk != nullptr && (write ? disk->writable : rlen <= disk->maxRead) && roff + rlen <= disk->size &&
       (whole || msgLength <= uint64_t(disk->maxRead) + kMsgHeader);
  return ok ? disk : nullptr;
}

// The number of requests in the batch `m` (`msgLength` bytes, in one frame) when the addon answers
// it: the header as protocol.ts batchCount checks it, and every request one the addon answers alone
// (Request: a READ, or a WRITE without FUA, of a disk lent with the connection, the batch's
// device). 0 otherwise. Where each starts in batchAt_ (then the end), the bytes of all their
// answers as AnswerBatch sends them in `replyBytes`, the messages in `records`.
uint32_t FastPath::Batch(const Lease& l, const uint8_t* m, uint64_t msgLength, size_t& replyBytes,
                         uint32_t& records) {
  if (m[0] != 1 || m[1] != 0x20 || Rd16(m + 2) != 1 || Rd32(m + 4) != msgLength - kMsgHeader ||
      Rd32(m + 16) != 0 || Rd32(m + 20) != 0 || Rd32(m + 24) != 0 || Rd16(m + 28) != 0)
    return 0;
  replyBytes = 0;
  records = 0;
  size_t chunk = 0;  // the batch response being filled: its bytes so far (0: none)
  uint32_t count = 0;
  for (uint64_t at = kMsgHeader; at < msgLength; count++) {
    if (count == kMaxBatch || msgLength - at < kReqHead) return 0;
    const uint8_t* e = m + at;
    uint64_t len = kMsgHeader + uint64_t(Rd32(e + 4));
    if (len > msgLength - at || Rd32(e + 8) != Rd32(m + 8) || Rd32(e + 12) != Rd32(m + 12)) return 0;
    bool write = false;
    uint32_t rlen = 0;
    uint64_t roff = 0;
    const Disk* disk = Request(l, e, len, true, write, rlen, roff);
    if (disk == nullptr) return 0;
    batchAt_[count] = uint32_t(at);
    size_t answer = kMsgHeader + (write ? 0 : rlen);
    size_t limit = std::min(kMaxBatchBytes, size_t(disk->maxRead) + kMsgHeader);
    if (kMsgHeader + answer > limit) {
      replyBytes += answer;  // alone, after the batch response before it
      records++;
      chunk = 0;
    } else if (chunk > 0 && chunk + answer <= limit) {
      chunk += answer;
      replyBytes += answer;
    } else {
      chunk = kMsgHeader + answer;  // a new batch response
      replyBytes += chunk;
      records++;
    }
    at += len;
  }
  if (count < 2) return 0;
  batchAt_[count] = uint32_t(msgLength);
  return count;
}

// Opens the WRITE being received over several frames at `start` (`length` bytes, head in `m`) for
// disk `disk`: its next pieces are written as they come (WritePiece).
void FastPath::OpenPart(Lease& l, uint32_t start, uint64_t length, const Disk* disk, const uint8_t* m, uint64_t roff,
                        uint32_t rlen) {
  l.part.active = true;
  l.part.start = start;
  l.part.length = uint32_t(length);
  l.part.filled = 0;
  l.part.disk = size_t(disk - l.disks.data());
  l.part.offset = roff;
  l.part.dataLength = rlen;
  l.part.status = 0;
  l.part.started = disk->stats ? NowMs() : 0;
  std::memcpy(l.part.head, m, kReqHead);
}

// Header prediction, verification and the work for one frame of lent connection `slot`.
bool FastPath::Eligible(Channel* ch, uint32_t slot, uint8_t* f, size_t len, bool verified, uint32_t dst) {
  Lease& l = leases_[slot];
  double* s = shared_ + size_t(slot) * kSlotStride;
  uint8_t* t = f + kTcpAt;
  uint32_t ipTotal = Rd16(f + kIpAt + 2);
  size_t tcpLen = ipTotal - kIp;
  size_t th = size_t(t[12] >> 4) * 4;
  if (dst != l.localIp || RdMac(f) != l.localMac || RdMac(f + 6) != l.remoteMac) return false;
  if (Fold(SumWords(f + kIpAt, kIp, 0)) != 0xffff) return false;
  if (!verified && !TcpChecksumOk(f, tcpLen, l.remoteIp, l.localIp)) return false;
  if (th > tcpLen) return false;
  uint8_t flags = t[13];
  size_t payload = tcpLen - th;
  uint32_t seq = Rd32(t + 4), ack = Rd32(t + 8);
  bool data = flags == (kAck | kPsh) && th == kTcp + kDataOptions && payload > 0;
  bool pure = flags == kAck && th == kTcp + kAckOptions && payload == 0;
  if (!data && !pure) return false;
  const uint8_t* seg = t + kTcp;
  const uint8_t* seal = data ? t + kTcp + 14 : t + kTcp;
  if (seal[0] != kOptExp || seal[1] != 22 || Rd16(seal + 2) != kExId || seal[4] != kSubSeal) return false;
  if (pure && (seal[22] != 1 || seal[23] != 1)) return false;  // NOP NOP: no SACK blocks
  if (data && (seg[0] != kOptExp || seg[1] != 14 || Rd16(seg + 2) != kExId || seg[4] != kSubSegment || seg[5] != 1))
    return false;
  // Which data segment: a whole message (a request in one frame), the first piece of a longer
  // one (a WRITE over several frames), or the next piece of the WRITE being received.
  uint32_t msgStart = data ? Rd32(seg + 6) : 0, msgLength = data ? Rd32(seg + 10) : 0;
  bool whole = data && !l.part.active && msgStart == seq && msgLength == payload && payload >= kReqHead;
  bool first = data && !l.part.active && msgStart == seq && msgLength > payload && payload >= kReqHead;
  bool piece = data && l.part.active && msgStart == l.part.start && msgLength == l.part.length &&
               uint32_t(seq - msgStart) == l.part.filled && uint64_t(l.part.filled) + payload <= msgLength;
  if (data && !whole && !first && !piece) return false;
  if (seq != l.rcvNxt || seal[5] != (l.rxEpoch & 0xff)) return false;
  // The ACK: within [snd_una, snd_nxt]; one that acknowledges nothing while replies are out is a
  // duplicate ACK (loss recovery: TS's).
  if (SeqDiff(ack, l.sndUna) < 0 || SeqDiff(ack, l.sndNxt) > 0) return false;
  uint64_t peerWindow = uint64_t(Rd16(t + 14)) << l.sendScale;
  if (pure && ack == l.sndUna && l.sndUna != l.sndNxt && peerWindow == l.sndWnd) return false;
  uint64_t counter = Reconstruct(Rd32(seal + 6), l.rxHighest);
  uint32_t* bits = bits_ + size_t(slot) * (kReplayWindow / 32);
  if (l.rxHighest >= 0 && counter <= uint64_t(l.rxHighest)) {
    if (uint64_t(l.rxHighest) - counter >= kReplayWindow) return false;
    uint32_t b = uint32_t(counter % kReplayWindow);
    if (bits[b >> 5] & (1u << (b & 31))) return false;
  }
  size_t payloadAt = kTcpAt + th, end = kTcpAt + tcpLen;
  size_t tagAt = size_t(seal - f) + kSealTagAt;
  uint8_t tagCopy[12];
  std::memcpy(tagCopy, f + tagAt, 12);
  if (!l.rx.Open(f, kIpAt, kTcpAt, payloadAt, end, tagAt, counter)) {
    Restore(l, f, payloadAt, end, tagAt, counter, tagCopy);
    return false;
  }
  const Disk* disk = nullptr;
  uint32_t rlen = 0;
  uint64_t roff = 0;
  bool write = false;
  uint32_t batch = 0, records = 1;  // a batch's requests, and the messages of their answers
  uint8_t* m = f + payloadAt;
  if (data) {
    bool ok = true;
    // The answer sent with this frame, if any: a reply of `replyPayload` bytes (and, for a piece
    // that does not end its WRITE, at most a pure ACK).
    size_t replyPayload = 0;
    if (whole && Rd16(m + 2) != 0) {
      batch = Batch(l, m, msgLength, replyPayload, records);
      ok = batch > 0;
    } else if (whole || first) {
      disk = Request(l, m, msgLength, whole, write, rlen, roff);
      ok = disk != nullptr;
      replyPayload = whole ? kMsgHeader + (write ? 0 : rlen) : 0;
    } else if (l.part.filled + payload == msgLength) {
      replyPayload = kMsgHeader;  // the last piece: the WRITE's answer
    }
    if (ok && replyPayload > 0) {
      ok = Fits(l, ack, replyPayload, records);
    } else if (ok) {
      ok = l.txEpoch >= 1 && l.txCounter + 1 < l.rekeyFrames;  // room for a pure ACK
    }
    if (!ok) {
      Restore(l, f, payloadAt, end, tagAt, counter, tagCopy);
      return false;
    }
  }
  // Committed: the frame is ours.
  UpdateReplay(l, bits, counter);
  l.rcvNxt += uint32_t(payload);
  s[kSRcvAdvance] += double(payload);
  l.sndWnd = peerWindow;
  l.wl1 = seq;
  l.wl2 = ack;
  if (ack != l.sndUna) {
    if (l.timing && SeqDiff(ack, l.timingEnd) >= 0) SampleRtt(l, s, NowMs() - l.timingAt);
    // Congestion window growth as Connection.onAckAdvance (no loss recovery here).
    uint64_t acked = uint32_t(ack - l.sndUna);
    if (l.ssthresh < 0 || double(l.cwnd) < l.ssthresh) {
      l.cwnd += acked;
    } else {
      l.cwnd += std::max<uint64_t>(1, l.mss * acked / l.cwnd);
    }
    l.cwnd = std::min(l.cwnd, l.sendBufferSize);
    Acknowledge(slot, ack);
    s[kSAckProgress]++;
  }
  s[kSFramesTaken]++;
  s[kCFramesIn]++;
  s[kCBytesIn] += double(len);  // the Ethernet frame, as the transport counts it
  if (pure) {
    s[kCPureAcks]++;
    if (l.sndMax != l.sndNxt) Pump(ch, slot);
    return true;
  }
  if (batch > 0) {
    // Each request answered as if it had come alone, in order, in batch responses (AnswerBatch).
    s[kCBatches]++;
    AnswerBatch(ch, slot, m, batch);
    return true;
  }
  if (whole) {
    s[kCRequests]++;
    Answer(ch, slot, *disk, m, roff, rlen, write);
    // Replies leave as they are built once kFlushAfter bytes of frames wait, not at the batch's
    // end: the guest starts on the first while the next are read and sealed.
    if (txUsed_ >= kFlushAfter) Flush(ch);
    return true;
  }
  if (first) OpenPart(l, seq, msgLength, disk, m, roff, rlen);
  WritePiece(ch, slot, first ? m + kReqHead : m, first ? payload - kReqHead : payload, payload);
  if (l.sndMax != l.sndNxt) Pump(ch, slot);
  return true;
}

// A piece of the WRITE being received (its data `data[0, n)`, the frame's payload `payload`
// bytes): written at once; the last one sends the answer, the others owe an ACK.
void FastPath::WritePiece(Channel* ch, uint32_t slot, const uint8_t* data, size_t n, size_t payload) {
  Lease& l = leases_[slot];
  double* s = shared_ + size_t(slot) * kSlotStride;
  auto& p = l.part;
  const Disk& disk = l.disks[p.disk];
  // Where this piece's data goes: the bytes of the write before it precede it on the disk.
  uint64_t at = p.offset + (p.filled == 0 ? 0 : p.filled - kReqHead);
  p.filled += uint32_t(payload);
  if (p.status == 0) p.status = WriteAll(disk.fd, data, n, at);
  if (p.filled < p.length) {
    l.ackWeight += uint32_t(std::min<size_t>(payload, l.mss));
    if (l.ackWeight >= 2 * l.mss) {
      SendAck(ch, slot);
    } else {
      l.ackOwed = true;
    }
    return;
  }
  p.active = false;
  s[kCRequests]++;
  s[kCWrites]++;
  if (p.status == 0) {
    s[kCWriteBytes] += p.dataLength;
  } else {
    s[kCWriteErrors]++;
  }
  if (disk.stats)
    disk.stats->Count(1, p.status, p.status == 0 ? p.dataLength : 0, (NowMs() - p.started) / 1000, latencyBounds_);
  size_t at2 = Place(l, kMsgHeader);  // checked by Eligible
  ResponseHead(store_ + size_t(slot) * storeBytes_ + at2, p.head, p.status, 0);
  Send(ch, slot, at2, kMsgHeader);
}

// A pure ACK of everything received, as Connection.sendControl(ACK) builds it.
void FastPath::SendAck(Channel* ch, uint32_t slot) {
  Lease& l = leases_[slot];
  double* s = shared_ + size_t(slot) * kSlotStride;
  constexpr size_t kAckFrame = (kVnetHdr + kTcpAt + kTcp + kAckOptions + 7) & ~size_t(7);
  if (txUsed_ + kAckFrame > kTxArena || txIov_.size() + 1 > 1024) Flush(ch);
  uint8_t* frame = txArena_.data() + txUsed_;
  size_t flen = BuildAck(l, ch->vnetHdr_, frame);
  txIov_.push_back({frame, flen});
  txUsed_ += (flen + 7) & ~size_t(7);
  s[kCFramesOut]++;
  s[kCBytesOut] += double(flen - (ch->vnetHdr_ ? kVnetHdr : 0));  // without the virtio-net header
  l.ackWeight = 0;
  l.ackOwed = false;
}

// One RTT sample (ms), folded in as Connection.sampleRtt does; the result is in the slot at once
// (the Connection reads it at its lease check and at the hand back).
void FastPath::SampleRtt(Lease& l, double* s, double sample) {
  double r = std::max(sample, 0.0);
  if (l.srtt < 0) {
    l.srtt = r;
    l.rttvar = r / 2;
  } else {
    l.rttvar = 0.75 * l.rttvar + 0.25 * std::abs(l.srtt - r);
    l.srtt = 0.875 * l.srtt + 0.125 * r;
  }
  l.timing = false;
  s[kSSrtt] = l.srtt;
  s[kSRttvar] = l.rttvar;
  s[kSRttSamples]++;
  s[kCRttSamples]++;
}

// A frame that failed to open, or that opened and is not ours after all, gets its ciphertext and
// tag back (counter mode: sealing again under the same key and counter), for TS to verify.
void FastPath::Restore(Lease& l, uint8_t* f, size_t payloadAt, size_t end, size_t tagAt, uint64_t counter,
                       const uint8_t* tag) {
  if (end > payloadAt) l.rx.Seal(f, kIpAt, kTcpAt, payloadAt, end, tagAt, counter, nullptr, 0);
  std::memcpy(f + tagAt, tag, 12);
}

void FastPath::UpdateReplay(Lease& l, uint32_t* bits, uint64_t counter) {
  if (l.rxHighest < 0 || counter > uint64_t(l.rxHighest)) {
    uint64_t h = uint64_t(l.rxHighest < 0 ? -1 : l.rxHighest);
    if (l.rxHighest < 0 || counter - h >= kReplayWindow) {
      std::memset(bits, 0, kReplayWindow / 8);
    } else {
      for (uint64_t c = h + 1; c <= counter; c++) {
        uint32_t b = uint32_t(c % kReplayWindow);
        bits[b >> 5] &= ~(1u << (b & 31));
      }
    }
    l.rxHighest = int64_t(counter);
  }
  uint32_t b = uint32_t(counter % kReplayWindow);
  bits[b >> 5] |= 1u << (b & 31);
}

// Frees the records (and their store bytes) the ACK covers; TS never sees them.
void FastPath::Acknowledge(uint32_t slot, uint32_t ack) {
  Lease& l = leases_[slot];
  double* r = records_ + size_t(slot) * maxRecords_ * kRecordStride;
  while (l.recCount > 0) {
    double* rec = r + size_t(l.recHead) * kRecordStride;
    uint32_t end = uint32_t(rec[0]) + uint32_t(rec[1]);
    if (SeqDiff(end, ack) > 0) break;
    l.recHead = (l.recHead + 1) % maxRecords_;
    l.recCount--;
  }
  if (l.recCount == 0) {
    l.recHead = 0;
    l.storeHead = l.storeTail = kStoreBase;
  } else {
    l.storeHead = size_t(r[size_t(l.recHead) * kRecordStride + 2]);
  }
  shared_[size_t(slot) * kSlotStride + kSRecords] = l.recCount;
  shared_[size_t(slot) * kSlotStride + kSUnaAdvance] += double(uint32_t(ack - l.sndUna));
  l.sndUna = ack;
  shared_[size_t(slot) * kSlotStride + kSInFlight] = double(uint32_t(l.sndMax - l.sndUna));
}

// Where in the slot's store one more record of `bytes` goes, or SIZE_MAX when it does not fit
// (records or store full). Records lie in sending order, wrapping to kStoreBase only whole.
size_t FastPath::Place(const Lease& l, size_t bytes) const {
  if (l.recCount >= maxRecords_ || kStoreBase + bytes > storeBytes_) return SIZE_MAX;
  if (l.recCount == 0) return kStoreBase;
  if (l.storeTail > l.storeHead) {
    if (l.storeTail + bytes <= storeBytes_) return l.storeTail;
    return kStoreBase + bytes <= l.storeHead ? kStoreBase : SIZE_MAX;
  }
  return l.storeTail + bytes <= l.storeHead ? l.storeTail : SIZE_MAX;
}

// The response head (protocol.ts encodeBlockResponseHead) to request `req`: its device and
// request handles, `status`, `dataLength` bytes of read data to follow.
void FastPath::ResponseHead(uint8_t* msg, const uint8_t* req, uint16_t status, uint32_t dataLength) {
  msg[0] = 1;
  msg[1] = 0x21;
  Wr16(msg + 2, 0);
  Wr32(msg + 4, dataLength);
  std::memcpy(msg + 8, req + 8, 16);  // device and request handles
  Wr32(msg + 24, 0);
  Wr16(msg + 28, status);
  Wr16(msg + 30, 0);
}


// pread into a new record (a READ) or pwrite from the request (a WRITE, whose data is in `req`,
// opened in place), and send the answer as one sealed frame.
void FastPath::Answer(Channel* ch, uint32_t slot, const Disk& disk, const uint8_t* req, uint64_t offset, uint32_t length,
                      bool write) {
  Lease& l = leases_[slot];
  double* s = shared_ + size_t(slot) * kSlotStride;
  size_t bytes = kMsgHeader + (write ? 0 : length);
  size_t at = Place(l, bytes);  // checked by the caller
  uint8_t* msg = store_ + size_t(slot) * storeBytes_ + at;
  bytes = write ? FillWrite(s, disk, msg, req, offset, length) : Fill(s, disk, msg, req, offset, length);
  Send(ch, slot, at, bytes);
}

// The response to the READ `req` at `out`: its head, then the data read (none when the read
// failed: IoError). Counted in the slot's counters `s` and the disk's stats. Its length.
size_t FastPath::Fill(double* s, const Disk& disk, uint8_t* out, const uint8_t* req, uint64_t offset, uint32_t length) {
  double started = disk.stats ? NowMs() : 0;
  size_t done = 0;
  while (done < length) {
    ssize_t r = pread(disk.fd, out + kMsgHeader + done, length - done, off_t(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    done += size_t(r);
  }
  uint16_t status = 0;
  if (done < length) {
    status = 1;  // IoError, no data
    s[kCReadErrors]++;
  } else {
    s[kCReadBytes] += length;
  }
  if (disk.stats) disk.stats->Count(0, status, status == 0 ? length : 0, (NowMs() - started) / 1000, latencyBounds_);
  uint32_t data = status == 0 ? length : 0;
  ResponseHead(out, req, status, data);
  return kMsgHeader + data;
}

// The WRITE `req` (its data after its head) done, and its response at `out`: Ok, or IoError /
// NoSpace (WriteStatus). Counted in the slot's counters `s` and the disk's stats. Its length.
size_t FastPath::FillWrite(double* s, const Disk& disk, uint8_t* out, const uint8_t* req, uint64_t offset,
                           uint32_t length) {
  double started = disk.stats ? NowMs() : 0;
  uint16_t status = WriteAll(disk.fd, req + kReqHead, length, offset);
  s[kCWrites]++;
  if (status != 0) {
    s[kCWriteErrors]++;
  } else {
    s[kCWriteBytes] += length;
  }
  if (disk.stats) disk.stats->Count(1, status, status == 0 ? length : 0, (NowMs() - started) / 1000, latencyBounds_);
  ResponseHead(out, req, status, 0);
  return kMsgHeader;
}

// The answers to the batch of `count` requests `m` (checked by Batch, which left where each
// starts in batchAt_), in order (protocol.md §8.2b): each joins the batch response being filled
// while that stays within kMaxBatchBytes bytes (and a largest read's), else starts the next; a
// READ whose response with a batch header is longer goes alone. Each batch response is one
// record, its READs `pread` straight into it.
void FastPath::AnswerBatch(Channel* ch, uint32_t slot, const uint8_t* m, uint32_t count) {
  Lease& l = leases_[slot];
  double* s = shared_ + size_t(slot) * kSlotStride;
  uint8_t* msg = nullptr;  // the batch response being filled
  size_t at = 0, used = 0, planned = 0;
  auto close = [&]() {
    if (msg == nullptr) return;
    msg[0] = 1;
    msg[1] = 0x21;
    Wr16(msg + 2, 1);  // BATCH
    Wr32(msg + 4, uint32_t(used - kMsgHeader));
    std::memcpy(msg + 8, m + 8, 8);  // the device
    std::memset(msg + 16, 0, 16);    // request, replyLength, status, reserved
    Send(ch, slot, at, used);
    msg = nullptr;
    // As Eligible does after each answer: the guest starts on these while the next are read.
    if (txUsed_ >= kFlushAfter) Flush(ch);
  };
  // An answer's bytes, from its request's op and length.
  auto answerOf = [&](uint32_t i) {
    const uint8_t* e = m + batchAt_[i];
    return kMsgHeader + (e[kMsgHeader] == 1 ? 0 : size_t(Rd32(e + kMsgHeader + 4)));
  };
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t* e = m + batchAt_[i];
    bool write = false;
    uint32_t rlen = 0;
    uint64_t roff = 0;
    const Disk* disk = Request(l, e, batchAt_[i + 1] - batchAt_[i], true, write, rlen, roff);
    s[kCRequests]++;
    size_t answer = answerOf(i);
    size_t limit = std::min(kMaxBatchBytes, size_t(disk->maxRead) + kMsgHeader);
    if (kMsgHeader + answer > limit) {
      close();
      Answer(ch, slot, *disk, e, roff, rlen, false);  // a READ: a WRITE's answer is its header
      if (txUsed_ >= kFlushAfter) Flush(ch);
      continue;
    }
    if (msg != nullptr && planned + answer > limit) close();
    if (msg == nullptr) {
      // Room for as many of the next answers as may join it (checked by the caller as their sum).
      size_t room = kMsgHeader;
      for (uint32_t j = i; j < count && room + answerOf(j) <= limit; j++) room += answerOf(j);
      at = Place(l, room);
      msg = store_ + size_t(slot) * storeBytes_ + at;
      used = planned = kMsgHeader;
    }
    planned += answer;
    used += write ? FillWrite(s, *disk, msg + used, e, roff, rlen) : Fill(s, *disk, msg + used, e, roff, rlen);
  }
  close();
}

// Whether a message of `bytes` (or `records` messages of `bytes` in all) can be queued now, `ack`
// being (or about to be) snd_una: within the send buffer's room with the replies queued before
// it, within the keys' limits for all of them (each leaves in pieces of at least one MSS but for
// the last of each message and a runt with nothing in flight), and with room in the store. It
// leaves as the windows allow (Pump).
bool FastPath::Fits(const Lease& l, uint32_t ack, size_t bytes, uint32_t records) const {
  if (l.maxPayload == 0 || l.mss == 0 || l.txEpoch < 1) return false;
  uint64_t queued = uint64_t(uint32_t(l.sndMax - ack)) + bytes;
  uint64_t frames = queued / l.mss + 2 * (uint64_t(l.recCount) + records);
  // `records` messages of `bytes` in all (a batch's replies): where their sum fits as one record,
  // each fits in turn, placed after the one before it (wrapping as the sum would).
  return queued <= l.sendLimit && l.txCounter + frames < l.rekeyFrames && l.txBytes + queued < l.rekeyBytes &&
         l.recCount + records <= maxRecords_ && Place(l, bytes) != SIZE_MAX;
}

// send(slot, head[, body]): a reliable message of the Connection's own (a reply the transport
// answered, the request having come before the lend or been handed back) sent through its lease
// instead of taking the connection back: copied into the store as a record, sent as Send sends a
// reply, flushed at once. False, nothing sent, when the slot is not lent, the channel is closed or
// the message does not fit (Fits): the Connection then takes the connection back and sends it.
Napi::Value FastPath::SendThrough(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsTypedArray() ||
      (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsTypedArray()))
    return ThrowInvalid(env, "send(slot, head, body?)");
  uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
  Napi::Uint8Array head = info[1].As<Napi::Uint8Array>();
  Napi::Uint8Array body = info.Length() > 2 && info[2].IsTypedArray() ? info[2].As<Napi::Uint8Array>() : Napi::Uint8Array();
  size_t headBytes = head.ByteLength(), bodyBytes = body.IsEmpty() ? 0 : body.ByteLength();
  size_t bytes = headBytes + bodyBytes;
  Channel* ch = channel_;
  if (slot >= slots_ || shared_[size_t(slot) * kSlotStride + kSState] != kStateLent || ch == nullptr || ch->closed_ ||
      bytes == 0)
    return Napi::Boolean::New(env, false);
  Lease& l = leases_[slot];
  if (!Fits(l, l.sndUna, bytes)) return Napi::Boolean::New(env, false);
  size_t at = Place(l, bytes);
  uint8_t* msg = store_ + size_t(slot) * storeBytes_ + at;
  std::memcpy(msg, head.Data(), headBytes);
  if (bodyBytes > 0) std::memcpy(msg + headBytes, body.Data(), bodyBytes);
  shared_[size_t(slot) * kSlotStride + kCSentThrough]++;
  Send(ch, slot, at, bytes);
  Flush(ch);
  return Napi::Boolean::New(env, true);
}

// Queues the reply message in the slot's store at `at` (`bytes` long) as a record, kept until it
// is acknowledged, and sends what the windows allow of it.
void FastPath::Send(Channel* ch, uint32_t slot, size_t at, size_t bytes) {
  Lease& l = leases_[slot];
  double* s = shared_ + size_t(slot) * kSlotStride;
  double* rec = records_ + (size_t(slot) * maxRecords_ + (l.recHead + l.recCount) % maxRecords_) * kRecordStride;
  rec[0] = l.sndMax;
  rec[1] = double(bytes);
  rec[2] = double(at);
  if (l.recCount == 0) l.storeHead = at;
  l.recCount++;
  s[kSRecords] = l.recCount;
  l.storeTail = at + bytes;
  l.sndMax += uint32_t(bytes);
  uint32_t sent = l.sndNxt;
  Pump(ch, slot);
  // A frame of it carries the ACK of everything received; an answer that has to wait owes one.
  if (l.sndNxt == sent) l.ackOwed = true;
}

// Sends the queued replies [snd_nxt, snd_max) as Connection.pump sends a connection's messages: as
// far as the peer's window and the congestion window allow, in frames of up to maxPayload bytes
// (GSO super-frames) cut at message ends, no runt while data is in flight, at most kMaxBurst frames.
void FastPath::Pump(Channel* ch, uint32_t slot) {
  Lease& l = leases_[slot];
  double* s = shared_ + size_t(slot) * kSlotStride;
  const double* r = records_ + size_t(slot) * maxRecords_ * kRecordStride;
  const uint8_t* store = store_ + size_t(slot) * storeBytes_;
  constexpr size_t kHead = (kVnetHdr + kTcpAt + kTcp + kDataOptions + 7) & ~size_t(7);
  uint32_t i = 0;
  for (int burst = 0; SeqDiff(l.sndMax, l.sndNxt) > 0 && burst < kMaxBurst; burst++) {
    int64_t flight = int64_t(uint32_t(l.sndNxt - l.sndUna));
    int64_t room = int64_t(std::min<uint64_t>(l.sndWnd, l.cwnd)) - flight;
    if (room <= 0) break;
    // The record holding snd_nxt (records lie in sequence order, oldest first).
    const double* rec = nullptr;
    for (; i < l.recCount; i++) {
      rec = r + size_t((l.recHead + i) % maxRecords_) * kRecordStride;
      if (SeqDiff(uint32_t(rec[0]) + uint32_t(rec[1]), l.sndNxt) > 0) break;
    }
    if (i >= l.recCount) break;
    uint32_t start = uint32_t(rec[0]);
    size_t length = size_t(rec[1]), off = uint32_t(l.sndNxt - start), remaining = length - off;
    size_t n = std::min<size_t>(std::min<size_t>(l.maxPayload, remaining), size_t(room));
    if (n < std::min<size_t>(l.mss, remaining) && flight > 0) break;  // silly-window avoidance
    if (txUsed_ + kHead + n + 8 > kTxArena || txIov_.size() + 1 > 1024) Flush(ch);
    uint8_t* frame = txArena_.data() + txUsed_;
    size_t flen = BuildData(l, ch->vnetHdr_, frame, store + size_t(rec[2]) + off, n, start, length);
    // One segment timed at a time, as Connection.pump times the first it sends.
    if (!l.timing) {
      l.timing = true;
      l.timingEnd = l.sndNxt;
      l.timingAt = NowMs();
    }
    txIov_.push_back({frame, flen});
    txUsed_ += (flen + 7) & ~size_t(7);
    s[kCFramesOut]++;
    s[kCBytesOut] += double(flen - (ch->vnetHdr_ ? kVnetHdr : 0));  // without the virtio-net header
    // It carries the ACK of everything received.
    l.ackWeight = 0;
    l.ackOwed = false;
  }
}

// One sealed data segment at snd_nxt carrying payload[0, bytes), a piece of the message of
// `msgLength` bytes that starts at sequence number `msgStart`, exactly as
// Connection.sendData/emitPrepared and LinkDriver.enqueue build it. Returns the frame's length
// (virtio_net_hdr included when vnet).
size_t FastPath::BuildData(Lease& l, bool vnet, uint8_t* out, const uint8_t* payload, size_t bytes, uint32_t msgStart,
                           size_t msgLength) {
  return BuildFrame(l, vnet, out, payload, bytes, msgStart, msgLength, false);
}

// A pure ACK at snd_nxt (options SEAL, NOP, NOP), exactly as Connection.sendControl(ACK) builds it.
size_t FastPath::BuildAck(Lease& l, bool vnet, uint8_t* out) { return BuildFrame(l, vnet, out, nullptr, 0, 0, 0, true); }

// BuildData's and BuildAck's frame: a data segment (SEGMENT and SEAL options) or a pure ACK.
size_t FastPath::BuildFrame(Lease& l, bool vnet, uint8_t* out, const uint8_t* payload, size_t bytes, uint32_t msgStart,
                            size_t msgLength, bool ack) {
  size_t hdr = vnet ? kVnetHdr : 0;
  uint8_t* f = out + hdr;
  size_t th = kTcp + (ack ? kAckOptions : kDataOptions);
  size_t flen = kTcpAt + th + bytes;
  WrMac(f, l.remoteMac);
  WrMac(f + 6, l.localMac);
  f[12] = 0x08;
  f[13] = 0x00;
  uint8_t* ip = f + kIpAt;
  ip[0] = 0x45;
  ip[1] = 0;
  Wr16(ip + 2, uint32_t(kIp + th + bytes));
  Wr16(ip + 4, l.ipId);
  l.ipId = uint16_t(l.ipId + 1);
  ip[6] = 0x40;
  ip[7] = 0;
  ip[8] = 64;
  ip[9] = 6;
  Wr16(ip + 10, 0);
  Wr32(ip + 12, l.localIp);
  Wr32(ip + 16, l.remoteIp);
  Wr16(ip + 10, uint16_t(~Fold(SumWords(ip, kIp, 0))));
  uint8_t* t = f + kTcpAt;
  Wr16(t, l.localPort);
  Wr16(t + 2, l.remotePort);
  Wr32(t + 4, l.sndNxt);
  Wr32(t + 8, l.rcvNxt);
  t[12] = uint8_t((th / 4) << 4);
  t[13] = ack ? kAck : kAck | kPsh;
  Wr16(t + 14, l.windowField);
  Wr16(t + 16, 0);
  Wr16(t + 18, 0);
  uint8_t* o = t + kTcp;
  if (!ack) {
    o[0] = kOptExp;
    o[1] = 14;
    Wr16(o + 2, kExId);
    o[4] = kSubSegment;
    o[5] = 1;  // reliable
    Wr32(o + 6, msgStart);
    Wr32(o + 10, uint32_t(msgLength));
    o += 14;
  }
  uint64_t counter = l.txCounter++;
  l.txBytes += bytes;
  o[0] = kOptExp;
  o[1] = 22;
  Wr16(o + 2, kExId);
  o[4] = kSubSeal;
  o[5] = uint8_t(l.txEpoch & 0xff);
  Wr32(o + 6, uint32_t(counter));
  std::memset(o + kSealTagAt, 0, 12);
  if (ack) {
    o[22] = 1;  // NOP NOP
    o[23] = 1;
  }
  size_t payloadAt = kTcpAt + th;
  l.tx.Seal(f, kIpAt, kTcpAt, payloadAt, flen, size_t(o - f) + kSealTagAt, counter, payload, 0);
  uint32_t tcpLen = uint32_t(th + bytes);
  uint64_t pseudo = Pseudo(l.localIp, l.remoteIp, tcpLen);
  Wr16(t + 16, l.partialChecksum ? Fold(pseudo) : uint16_t(~Fold(SumWords(t, tcpLen, pseudo))));
  if (vnet) {
    uint32_t gso = bytes > l.mss ? l.mss : 0;
    size_t headerLength = kTcpAt + th;
    out[0] = 1;  // NEEDS_CSUM
    out[1] = gso > 0 ? 1 : 0;
    out[2] = uint8_t(headerLength);
    out[3] = uint8_t(headerLength >> 8);
    out[4] = uint8_t(gso);
    out[5] = uint8_t(gso >> 8);
    out[6] = uint8_t(kTcpAt);
    out[7] = 0;
    out[8] = 16;
    out[9] = 0;
  }
  l.sndNxt += uint32_t(bytes);
  return hdr + flen;
}

// The sending side of a lease from lend parameters `params`, for buildReply and buildAck.
void FastPath::ScratchLease(Lease& l, const double* p) {
  ReadAddressing(l, p);
  l.ipId = uint16_t(p[kPIpId]);
  l.windowField = uint16_t(p[kPWindowField]);
  l.mss = uint32_t(p[kPMss]);
  l.partialChecksum = p[kPChecksumOffload] != 0;
  l.txEpoch = uint64_t(p[kPTxEpoch]);
  l.txCounter = uint64_t(p[kPTxCounter]);
}

// buildReply(params, txKey, message, vnet[, request, status]): the frames this code sends for
// `message` with the lend parameters `params`, split at params' maxPayload when that is set (for
// the property test against Connection's frames; never on the data path). With `request` (a
// BlockRequest's first 32 bytes at least), the message sent is the response head Answer writes
// for it with `status`, then `message` (read data, or nothing for a write). Uses a scratch lease;
// returns an array of new Uint8Arrays.
Napi::Value FastPath::BuildReply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray())
    return ThrowInvalid(env, "buildReply(params, txKey, message, vnet)");
  const double* p = info[0].As<Napi::Float64Array>().Data();
  Napi::Uint8Array key = info[1].As<Napi::Uint8Array>();
  Napi::Uint8Array data = info[2].As<Napi::Uint8Array>();
  bool vnet = info[3].ToBoolean().Value();
  std::vector<uint8_t> message(data.Data(), data.Data() + data.ByteLength());
  if (info.Length() >= 5 && info[4].IsTypedArray()) {
    Napi::Uint8Array req = info[4].As<Napi::Uint8Array>();
    if (req.ByteLength() < kMsgHeader) return ThrowInvalid(env, "buildReply: request too short");
    uint16_t status = info.Length() >= 6 && info[5].IsNumber() ? uint16_t(info[5].As<Napi::Number>().Uint32Value()) : 0;
    message.insert(message.begin(), kMsgHeader, 0);
    ResponseHead(message.data(), req.Data(), status, uint32_t(data.ByteLength()));
  }
  Lease l;
  ScratchLease(l, p);
  l.maxPayload = p[kPMaxPayload] > 0 ? uint32_t(p[kPMaxPayload]) : uint32_t(std::max<size_t>(message.size(), 1));
  if (key.ByteLength() != 32 || !l.tx.Init(int(p[kPCipher]), key.Data())) return ThrowInvalid(env, "buildReply: key");
  // As Answer sends it: frames of maxPayload bytes, the last one shorter.
  Napi::Array frames = Napi::Array::New(env);
  uint32_t start = l.sndNxt;
  size_t off = 0;
  do {
    size_t n = std::min<size_t>(l.maxPayload, message.size() - off);
    Napi::Uint8Array out = Napi::Uint8Array::New(env, kVnetHdr + kTcpAt + kTcp + kDataOptions + n);
    size_t flen = BuildData(l, vnet, out.Data(), message.data() + off, n, start, message.size());
    frames.Set(frames.Length(), Napi::Uint8Array::New(env, flen, out.ArrayBuffer(), 0));
    off += n;
  } while (off < message.size());
  l.tx.Free();
  return frames;
}

// buildAck(params, txKey, vnet): the pure ACK this code sends under the lend parameters `params`
// (for the property test against Connection's; never on the data path).
Napi::Value FastPath::BuildAckFrame(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsTypedArray())
    return ThrowInvalid(env, "buildAck(params, txKey, vnet)");
  const double* p = info[0].As<Napi::Float64Array>().Data();
  Napi::Uint8Array key = info[1].As<Napi::Uint8Array>();
  Lease l;
  ScratchLease(l, p);
  if (key.ByteLength() != 32 || !l.tx.Init(int(p[kPCipher]), key.Data())) return ThrowInvalid(env, "buildAck: key");
  Napi::Uint8Array out = Napi::Uint8Array::New(env, kVnetHdr + kTcpAt + kTcp + kAckOptions);
  size_t n = BuildAck(l, info[2].ToBoolean().Value(), out.Data());
  l.tx.Free();
  return Napi::Uint8Array::New(env, n, out.ArrayBuffer(), 0);
}

}  // namespace vrio
