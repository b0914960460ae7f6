// Shared declarations of the vrio_io addon: AF_PACKET sockets and TAP devices whose received
// frames are handed to JavaScript in batches, from the event loop.
#pragma once

#include <napi.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include <sys/uio.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace vrio {

// A failed system call, reported to JS as an Error carrying errno/syscall/detail; the TS layer
// turns it into an IoError with Node's system-error shape.
struct SysErr {
  int code = 0;
  std::string syscall;
  std::string detail;
  bool failed() const { return code != 0; }
};

Napi::Value ThrowSysErr(Napi::Env env, const SysErr& e);
Napi::Value ThrowInvalid(Napi::Env env, const std::string& message);

// Calls `fn` as an I/O callback (napi_make_callback: the nextTick queue and microtasks run when it
// returns, so what the handler sends in response leaves before the next event is looked at). An
// exception it throws is reported as uncaught (Threw); a call that fails without one — the
// environment is being torn down, e.g. a worker thread stopping, whose loop still runs once — is
// Failed, and the caller stops calling. Raw N-API: node-addon-api's wrapper aborts the process on
// such a failure.
enum class CallResult { Ok, Threw, Failed };
CallResult CallIo(napi_env env, napi_async_context context, napi_value fn, size_t argc, const napi_value* argv);

// Runs fn on a short-lived thread that first joins the network namespace at nsPath (setns is
// per thread for CLONE_NEWNET, so the rest of the process is untouched); runs fn inline when
// nsPath is empty. Sockets and TAP fds keep the namespace they were created in.
SysErr RunInNetns(const std::string& nsPath, const std::function<SysErr()>& fn);

enum class Kind { Packet, Tap };

class FastPath;

// The receive slab: frameSize-sized slots for up to `batch` frames, plus the offsets/lengths table
// describing the frames of the current batch. Both live in ArrayBuffers allocated by V8 and
// referenced from here, so JS views into them can never dangle: a stale view only sees recycled
// bytes. Filled and handed to JS on the main thread, so it is never shared between threads.
struct Slab {
  uint8_t* data = nullptr;
  uint32_t* offsets = nullptr;  // meta[0 .. batch)
  uint32_t* lengths = nullptr;  // meta[batch .. 2*batch)
  Napi::Reference<Napi::ArrayBuffer> dataRef;
  Napi::Reference<Napi::ArrayBuffer> metaRef;
};

// An open fd (packet socket or TAP queue). Once started, a uv_poll watcher on the fd drains it on
// the event loop thread whenever it is readable and calls JS synchronously with each batch. Created
// only by the openPacket/openTap factories; JS sees it as an opaque handle.
class Channel : public Napi::ObjectWrap<Channel> {
 public:
  static Napi::Function Define(Napi::Env env);
  // Wraps an already configured fd; takes ownership of it.
  static Napi::Object Create(Napi::Env env, Kind kind, int fd, bool vnetHdr, bool filterOutgoing);

  explicit Channel(const Napi::CallbackInfo& info);
  ~Channel() override;

 private:
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value SendSlab(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value DrainNow(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value SetRef(const Napi::CallbackInfo& info);
  Napi::Value SetFilter(const Napi::CallbackInfo& info);
  Napi::Value AttachFastPath(const Napi::CallbackInfo& info);
  Napi::Value SetPoll(const Napi::CallbackInfo& info);

  friend class FastPath;

  // Receive (event loop thread).
  static void OnReadable(uv_poll_t* handle, int status, int events);
  void Drain();
  int Round(Napi::Env env, bool& got);
  // Polling (setPoll): before the loop sleeps, re-poll the fd for up to pollIdleNs_ without work.
  static void OnPrepare(uv_prepare_t* handle);
  void Spin();
  void StartPrepare();
  void StopPrepare();
  void Deliver(Napi::Env env, const std::initializer_list<napi_value>& args);
  // Append frames to the slab from slot `slots` on, advancing slots and n (frames kept).
  int RecvPacket(uint32_t& slots, uint32_t& n);
  int RecvTap(uint32_t& slots, uint32_t& n);
  void StopPoll();
  void ReleaseCallback();  // drops the callback and the pin on the wrapper that StopPoll left

  void CloseFd();
  // Sends n frames; returns how many the kernel took, or -1 with errno set for a hard error.
  int64_t SendFrames(const struct iovec* frames, uint32_t n);
  static void EnvCleanup(void* arg);

  Kind kind_ = Kind::Packet;
  int fd_ = -1;
  bool vnetHdr_ = false;
  bool filterOutgoing_ = false;  // PACKET_IGNORE_OUTGOING unavailable: drop PACKET_OUTGOING here
  bool closed_ = false;
  bool started_ = false;
  bool refed_ = true;
  bool cleanupHookAdded_ = false;

  uint32_t batch_ = 0;
  uint32_t frameSize_ = 0;
  Slab slab_;
  uv_poll_t* poll_ = nullptr;  // while started and open; freed by its close callback
  uv_loop_t* loop_ = nullptr;
  uv_prepare_t* prepare_ = nullptr;  // while started with polling on
  uint64_t pollIdleNs_ = 0;          // 0: polling off
  // setPoll's gate: spin only while *pollGate_ > 0 (answers the process awaits from the peer) or
  // within pollIdleNs_ of when it last was (gateBusyAt_); held by pollGateRef_; null: spin
  // whenever the loop would sleep.
  const int32_t* pollGate_ = nullptr;
  uint64_t gateBusyAt_ = 0;
  Napi::Reference<Napi::Int32Array> pollGateRef_;
  uint64_t polls_ = 0, pollHits_ = 0, pollNs_ = 0;
  napi_env env_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* asyncContext_ = nullptr;
  bool delivering_ = false;  // inside the JS callback
  FastPath* fast_ = nullptr;  // see fastpath.cc; pinned by fastRef_
  Napi::ObjectReference fastRef_;
  int rxErrno_ = 0;
  const char* rxSyscall_ = "";
  // Receive scratch for up to 1024 (the batch limit) messages.
  std::vector<struct mmsghdr> rxMsgs_;
  std::vector<struct iovec> rxIov_;
  std::vector<struct sockaddr_ll> rxAddr_;

  uint64_t rxFrames_ = 0, rxBytes_ = 0, rxBatches_ = 0, rxTruncated_ = 0, rxErrors_ = 0;
  uint64_t txFrames_ = 0, txBytes_ = 0, txEagain_ = 0;
  uint64_t kernelPackets_ = 0, kernelDrops_ = 0;
  std::vector<struct iovec> sendIov_;  // the frames of one send()/sendSlab() call
  std::vector<struct mmsghdr> txMsgs_;  // one sendmmsg() chunk
  std::vector<struct iovec> txIov_;
};

// Module functions (open.cc).
Napi::Value OpenPacket(const Napi::CallbackInfo& info);
Napi::Value OpenTap(const Napi::CallbackInfo& info);
Napi::Value InterfaceInfo(const Napi::CallbackInfo& info);
// fallocate.cc: fallocate(2) on the thread pool, for block back-ends (hole punching).
Napi::Value Fallocate(const Napi::CallbackInfo& info);
// extents.cc: a file's allocation map (SEEK_DATA/SEEK_HOLE) and posix_fadvise, on the thread pool.
Napi::Value Extents(const Napi::CallbackInfo& info);
Napi::Value Fadvise(const Napi::CallbackInfo& info);
// nowait.cc: preadv2/pwritev2(RWF_NOWAIT) on the calling thread, for block back-ends.
Napi::Value IoNowait(const Napi::CallbackInfo& info);
// fuse.cc: a one-file FUSE mount served over /dev/fuse (the guest's block device under a loop device).
Napi::Function DefineFuseDisk(Napi::Env env);
Napi::Function DefineUnixListener(Napi::Env env);
Napi::Value PidfdGetfd(const Napi::CallbackInfo& info);

// gcWatch(buckets, count, sum, bounds): garbage collections timed into a histogram (gc_stats.cc).
Napi::Value GcWatchStart(const Napi::CallbackInfo& info);
// tuneMalloc(mmapThreshold, trimThreshold): glibc malloc keeps freed memory mapped (malloc_tune.cc).
Napi::Value TuneMalloc(const Napi::CallbackInfo& info);
// setAffinity(tid, cpus): sched_setaffinity for one thread (malloc_tune.cc).
Napi::Value SetAffinity(const Napi::CallbackInfo& info);

// xts.cc: AES-XTS over whole sectors, many per call (the crypt service's data path).
class XtsCipher : public Napi::ObjectWrap<XtsCipher> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit XtsCipher(const Napi::CallbackInfo& info);
  ~XtsCipher() override;

 private:
  Napi::Value Crypt(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  void Free();
  bool EcbPath(bool encrypt, const uint8_t* in, uint8_t* out, size_t sectors, int64_t first, size_t sectorSize,
               int64_t step);
  bool XtsPath(bool encrypt, const uint8_t* in, uint8_t* out, size_t sectors, int64_t first, size_t sectorSize,
               int64_t step);

  struct evp_cipher_ctx_st* enc_ = nullptr;     // AES-ECB, key 1, encrypt
  struct evp_cipher_ctx_st* dec_ = nullptr;     // AES-ECB, key 1, decrypt
  struct evp_cipher_ctx_st* tweak_ = nullptr;   // AES-ECB, key 2, encrypt
  struct evp_cipher_ctx_st* xtsEnc_ = nullptr;  // AES-XTS, both keys, encrypt
  struct evp_cipher_ctx_st* xtsDec_ = nullptr;  // AES-XTS, both keys, decrypt
  std::vector<uint8_t> scratch_;                // the request's tweaks, then one chunk's expanded tweaks
};

// aead.cc: the frame AEAD of sealed channels (AES-256-GCM / ChaCha20-Poly1305, in place).
class FrameAead : public Napi::ObjectWrap<FrameAead> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit FrameAead(const Napi::CallbackInfo& info);
  ~FrameAead() override;

 private:
  Napi::Value Seal(const Napi::CallbackInfo& info);
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  void Free();

  struct evp_cipher_ctx_st* enc_ = nullptr;
  struct evp_cipher_ctx_st* dec_ = nullptr;
  // AES-256-GCM by Intel's multi-buffer library when built with it and the CPU has AES-NI (see
  // aead.cc): its key schedule and GHASH tables, one for both directions; then enc_/dec_ stay null.
  struct gcm_key_data* mbKey_ = nullptr;
  // The caller's argument array (see aead.cc, ParseArgs), kept alive by argsRef_.
  const double* args_ = nullptr;
  Napi::Reference<Napi::Float64Array> argsRef_;
};

// dpiScan(delta, classes, pairs, data, io, hits): the DPI prefilter's scan loop (dpi_scan.cc).
void DpiScan(const Napi::CallbackInfo& info);

// Which implementation a FrameAead of `cipher` (1 AES-256-GCM, 2 ChaCha20-Poly1305) uses:
// "ipsec-mb-avx512", "ipsec-mb-avx2", ..., or "openssl".
Napi::Value AeadImplementation(const Napi::CallbackInfo& info);

// The AEAD of FrameAead for C++ callers (aead.cc; the fast path): one key, both directions.
struct FastAead {
  struct evp_cipher_ctx_st* enc = nullptr;
  struct evp_cipher_ctx_st* dec = nullptr;
  struct gcm_key_data* mb = nullptr;
  bool Init(int cipher, const uint8_t* key);
  void Free();
  // As FrameAead's sealFrame/openFrame: with src, the payload's first inFrame bytes are in the frame
  // and the rest is encrypted from src into it.
  bool Seal(uint8_t* frame, size_t ip, size_t tcp, size_t payload, size_t end, size_t tag, uint64_t counter,
            const uint8_t* src, size_t inFrame);
  bool Open(uint8_t* frame, size_t ip, size_t tcp, size_t payload, size_t end, size_t tag, uint64_t counter);
};

// fastpath.cc: the IOhyp's native fast path over a packet Channel (lent connections, block reads).
class FastPath : public Napi::ObjectWrap<FastPath> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit FastPath(const Napi::CallbackInfo& info);
  ~FastPath() override;
  // Takes what it can of a received batch; returns how many frames are left (compacted) for JS.
  uint32_t Process(Channel* ch, uint8_t* slab, uint32_t* offsets, uint32_t* lengths, uint32_t n, bool vnet);

  static constexpr int kSlotStride = 48;

 private:
  struct Disk;
  struct Lease;
  static void ReadAddressing(Lease& l, const double* p);
  static void ScratchLease(Lease& l, const double* p);
  Napi::Value Lend(const Napi::CallbackInfo& info);
  Napi::Value Reclaim(const Napi::CallbackInfo& info);
  Napi::Value BuildReply(const Napi::CallbackInfo& info);
  Napi::Value SendThrough(const Napi::CallbackInfo& info);
  bool Fits(const Lease& l, uint32_t ack, size_t bytes, uint32_t records = 1) const;
  void HandBack(uint32_t slot);
  Lease* Find(uint32_t remoteIp, uint16_t remotePort, uint16_t localPort, uint32_t* slot);
  bool Take(Channel* ch, uint8_t* f, size_t len, bool verified);
  bool Eligible(Channel* ch, uint32_t slot, uint8_t* f, size_t len, bool verified, uint32_t dst);
  void SampleRtt(Lease& l, double* s, double sample);
  void Restore(Lease& l, uint8_t* f, size_t payloadAt, size_t end, size_t tagAt, uint64_t counter, const uint8_t* tag);
  void UpdateReplay(Lease& l, uint32_t* bits, uint64_t counter);
  void Acknowledge(uint32_t slot, uint32_t ack);
  size_t Place(const Lease& l, size_t bytes) const;
  void Answer(Channel* ch, uint32_t slot, const Disk& disk, const uint8_t* req, uint64_t offset, uint32_t length,
              bool write);
  static void ResponseHead(uint8_t* msg, const uint8_t* req, uint16_t status, uint32_t dataLength);
  static size_t BuildData(Lease& l, bool vnet, uint8_t* out, const uint8_t* payload, size_t bytes, uint32_t msgStart,
                          size_t msgLength);
  static size_t BuildAck(Lease& l, bool vnet, uint8_t* out);
  static size_t BuildFrame(Lease& l, bool vnet, uint8_t* out, const uint8_t* payload, size_t bytes, uint32_t msgStart,
                           size_t msgLength, bool ack);
  void Send(Channel* ch, uint32_t slot, size_t at, size_t bytes);
  void Pump(Channel* ch, uint32_t slot);
  uint32_t Batch(const Lease& l, const uint8_t* m, uint64_t msgLength, size_t& replyBytes, uint32_t& records);
  size_t Fill(double* s, const Disk& disk, uint8_t* out, const uint8_t* req, uint64_t offset, uint32_t length);
  size_t FillWrite(double* s, const Disk& disk, uint8_t* out, const uint8_t* req, uint64_t offset, uint32_t length);
  uint32_t batchAt_[65] = {};  // where each request of the batch Batch checked starts, then its end
  void AnswerBatch(Channel* ch, uint32_t slot, const uint8_t* m, uint32_t count);
  const Disk* Request(const Lease& l, const uint8_t* m, uint64_t msgLength, bool whole, bool& write, uint32_t& rlen,
                      uint64_t& roff);
  static void OpenPart(Lease& l, uint32_t start, uint64_t length, const Disk* disk, const uint8_t* m, uint64_t roff,
                       uint32_t rlen);
  void WritePiece(Channel* ch, uint32_t slot, const uint8_t* data, size_t n, size_t payload);
  void SendAck(Channel* ch, uint32_t slot);
  Napi::Value BuildAckFrame(const Napi::CallbackInfo& info);
  void Flush(Channel* ch);

  friend class Channel;
  Channel* channel_ = nullptr;  // the channel it is attached to (Channel::AttachFastPath), for SendThrough
  uint32_t slots_ = 0, maxRecords_ = 0, storeBytes_ = 0;
  uint32_t lent_ = 0;
  double* shared_ = nullptr;
  double* records_ = nullptr;
  uint32_t* bits_ = nullptr;
  uint8_t* store_ = nullptr;
  Napi::ObjectReference refs_[4];
  std::vector<Lease> leases_;
  std::vector<double> latencyBounds_;  // the disks' latency histogram bounds, seconds
  std::vector<uint8_t> txArena_;
  size_t txUsed_ = 0;
  std::vector<struct iovec> txIov_;
  std::vector<double> scratch_;
};

// Per-env state: the Channel constructor, needed by the factories.
struct AddonData {
  Napi::FunctionReference channelCtor;
  Napi::FunctionReference fastPathCtor;
};

}  // namespace vrio
