// Shared declarations of the vrio_io addon: AF_PACKET sockets and TAP devices with a native
// reader thread that hands batches of frames to JavaScript.
#pragma once

#include <napi.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
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

// Runs fn on a short-lived thread that first joins the network namespace at nsPath (setns is
// per thread for CLONE_NEWNET, so the rest of the process is untouched); runs fn inline when
// nsPath is empty. Sockets and TAP fds keep the namespace they were created in.
SysErr RunInNetns(const std::string& nsPath, const std::function<SysErr()>& fn);

enum class Kind { Packet, Tap };

// One receive slab: frameSize-sized slots for up to `batch` frames, plus the offsets/lengths
// table describing the frames of the current batch. Both live in ArrayBuffers allocated by V8
// and referenced from here, so JS views into them can never dangle: a stale view only sees
// recycled bytes.
//
// Ownership moves between threads; it is never shared:
//   free list (reader thread may take it) -> reader thread fills it -> queued on the TSFN ->
//   main thread, during the JS callback -> back onto the free list when the callback returns.
struct Slab {
  uint32_t index = 0;
  uint8_t* data = nullptr;
  uint32_t* offsets = nullptr;  // meta[0 .. batch)
  uint32_t* lengths = nullptr;  // meta[batch .. 2*batch)
  uint32_t count = 0;
  Napi::Reference<Napi::ArrayBuffer> dataRef;
  Napi::Reference<Napi::ArrayBuffer> metaRef;
};

class Channel;
void CallJs(Napi::Env env, Napi::Function cb, Channel* ch, Slab* slab);
void FinalizeTsfn(Napi::Env env, void* unused, Channel* ch);
using Tsfn = Napi::TypedThreadSafeFunction<Channel, Slab, CallJs>;

// An open fd (packet socket or TAP queue) with its optional reader thread. Created only by the
// openPacket/openTap factories; JS sees it as an opaque handle.
class Channel : public Napi::ObjectWrap<Channel> {
 public:
  static Napi::Function Define(Napi::Env env);
  // Wraps an already configured fd; takes ownership of it.
  static Napi::Object Create(Napi::Env env, Kind kind, int fd, bool vnetHdr, bool filterOutgoing);

  explicit Channel(const Napi::CallbackInfo& info);
  ~Channel() override;

 private:
  friend void CallJs(Napi::Env, Napi::Function, Channel*, Slab*);
  friend void FinalizeTsfn(Napi::Env, void*, Channel*);

  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value SendSlab(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value SetRef(const Napi::CallbackInfo& info);

  // Reader thread.
  void ReaderLoop();
  Slab* AcquireSlab();
  void ReleaseSlab(Slab* s);  // back to the free list (either thread)
  void ReturnSlab(Slab* s);   // main thread, after the JS callback: also ends its "in flight"
  // Append frames to slab s from slot `slots` on, advancing slots and n (frames kept).
  int RecvPacket(Slab* s, uint32_t& slots, uint32_t& n);
  int RecvTap(Slab* s, uint32_t& slots, uint32_t& n);
  bool WaitReadable();  // false when asked to stop
  bool Stopping();

  // Main thread.
  void StopReader();
  void CloseFd();
  // Sends n frames; returns how many the kernel took, or -1 with errno set for a hard error.
  int64_t SendFrames(const struct iovec* frames, uint32_t n);
  static void EnvCleanup(void* arg);

  Kind kind_ = Kind::Packet;
  int fd_ = -1;
  int wakeFd_ = -1;  // eventfd that interrupts the reader's poll() on close
  bool vnetHdr_ = false;
  bool filterOutgoing_ = false;  // PACKET_IGNORE_OUTGOING unavailable: drop PACKET_OUTGOING here
  bool closed_ = false;
  bool started_ = false;
  bool refed_ = true;
  bool cleanupHookAdded_ = false;

  uint32_t batch_ = 0;
  uint32_t frameSize_ = 0;
  std::vector<Slab> slabs_;
  Tsfn tsfn_;
  std::thread reader_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slab*> free_;  // guarded by mu_
  bool stopping_ = false;    // guarded by mu_
  std::atomic<uint32_t> inFlight_{0};  // batches posted to JS and not yet returned
  std::atomic<bool> holding_{false};   // reader holds a partial batch until JS goes idle
  std::atomic<int> readerErrno_{0};
  std::string readerSyscall_;  // written by the reader before it posts its fatal error

  // Written by the reader thread, read by stats().
  std::atomic<uint64_t> rxFrames_{0}, rxBytes_{0}, rxBatches_{0}, rxTruncated_{0}, rxErrors_{0};
  // Main thread only.
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

  struct evp_cipher_ctx_st* enc_ = nullptr;    // AES-ECB, key 1, encrypt
  struct evp_cipher_ctx_st* dec_ = nullptr;    // AES-ECB, key 1, decrypt
  struct evp_cipher_ctx_st* tweak_ = nullptr;  // AES-ECB, key 2, encrypt
  std::vector<uint8_t> scratch_;               // the request's tweaks
};

// Per-env state: the Channel constructor, needed by the factories.
struct AddonData {
  Napi::FunctionReference channelCtor;
};

}  // namespace vrio
