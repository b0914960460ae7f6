// Channel: an fd (AF_PACKET socket or TAP queue), its batched send path, and the reader thread
// that fills slabs and hands them to JS through a thread-safe function.
#include <errno.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

#include "io.h"

namespace vrio {

namespace {

// Results of one receive round (RecvPacket/RecvTap).
constexpr int kAgain = 0;   // read something (or hit a transient error): try again right away
constexpr int kEmpty = -1;  // nothing (more) to read: poll() before trying again
constexpr int kFatal = -2;  // the reader must stop; readerErrno_/readerSyscall_ say why

// sendmmsg() silently caps vlen at UIO_MAXIOV.
constexpr uint32_t kMaxSendChunk = 1024;

bool IsBackpressure(int err) {
  // ENOBUFS: the device queue (or the veth peer's backlog) was full and the frame was dropped
  // before leaving; the caller may retry it exactly like an EAGAIN.
  return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS;
}

}  // namespace

Napi::Function Channel::Define(Napi::Env env) {
  return DefineClass(env, "Channel",
                     {
                         InstanceMethod<&Channel::Start>("start"),
                         InstanceMethod<&Channel::Send>("send"),
                         InstanceMethod<&Channel::SendSlab>("sendSlab"),
                         InstanceMethod<&Channel::Stats>("stats"),
                         InstanceMethod<&Channel::Close>("close"),
                         InstanceMethod<&Channel::SetRef>("setRef"),
                     });
}

Napi::Object Channel::Create(Napi::Env env, Kind kind, int fd, bool vnetHdr, bool filterOutgoing) {
  Napi::Object obj = env.GetInstanceData<AddonData>()->channelCtor.New({});
  Channel* ch = Channel::Unwrap(obj);
  ch->kind_ = kind;
  ch->fd_ = fd;
  ch->vnetHdr_ = vnetHdr;
  ch->filterOutgoing_ = filterOutgoing;
  // Stops the reader before the env frees the slabs it may be writing into (worker exit,
  // process teardown with an unref'd channel still open).
  if (napi_add_env_cleanup_hook(env, EnvCleanup, ch) == napi_ok) ch->cleanupHookAdded_ = true;
  return obj;
}

Channel::Channel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Channel>(info) {}

Channel::~Channel() {
  // Reached only when the wrapper is collected. While the reader runs, the wrapper is pinned by
  // Ref() until the TSFN is finalized, so there is no thread left here; just the fd, if the
  // owner dropped the object without close().
  if (cleanupHookAdded_) napi_remove_env_cleanup_hook(Env(), EnvCleanup, this);
  StopReader();
  CloseFd();
}

void Channel::EnvCleanup(void* arg) {
  Channel* ch = static_cast<Channel*>(arg);
  ch->cleanupHookAdded_ = false;
  ch->StopReader();
  ch->CloseFd();
}

// ---------------------------------------------------------------------------------------------
// Receive

Napi::Value Channel::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || fd_ < 0) return ThrowSysErr(env, {EBADF, "start", "channel is closed"});
  if (started_) return ThrowInvalid(env, "reader already started");
  if (info.Length() < 4 || !info[0].IsFunction() || !info[1].IsNumber() || !info[2].IsNumber() ||
      !info[3].IsNumber()) {
    return ThrowInvalid(env, "start(callback, batch, slabs, frameSize)");
  }
  uint32_t batch = info[1].As<Napi::Number>().Uint32Value();
  uint32_t nslabs = info[2].As<Napi::Number>().Uint32Value();
  uint32_t frameSize = info[3].As<Napi::Number>().Uint32Value();
  if (batch < 1 || batch > 1024 || nslabs < 2 || nslabs > 64 || frameSize < 64 || frameSize > (1u << 20) ||
      uint64_t(batch) * frameSize > (1ull << 31)) {
    return ThrowInvalid(env, "batch must be 1..1024, slabs 2..64, frameSize 64..1048576");
  }

  wakeFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wakeFd_ < 0) return ThrowSysErr(env, {errno, "eventfd", ""});

  batch_ = batch;
  frameSize_ = frameSize;
  slabs_ = std::vector<Slab>(nslabs);  // never resized again: the reader holds Slab pointers
  Napi::Array out = Napi::Array::New(env, nslabs);
  for (uint32_t i = 0; i < nslabs; i++) {
    Slab& s = slabs_[i];
    Napi::ArrayBuffer data = Napi::ArrayBuffer::New(env, size_t(batch) * frameSize);
    Napi::ArrayBuffer meta = Napi::ArrayBuffer::New(env, size_t(batch) * 2 * sizeof(uint32_t));
    s.index = i;
    s.data = static_cast<uint8_t*>(data.Data());
    s.offsets = static_cast<uint32_t*>(meta.Data());
    s.lengths = s.offsets + batch;
    s.dataRef = Napi::Persistent(data);
    s.metaRef = Napi::Persistent(meta);
    Napi::Object pair = Napi::Object::New(env);
    pair.Set("data", data);
    pair.Set("meta", meta);
    out.Set(i, pair);
    free_.push_back(&s);
  }

  tsfn_ = Tsfn::New(env, info[0].As<Napi::Function>(), "vrio-io-reader", 0 /* unbounded: the slabs bound it */,
                    1, this, FinalizeTsfn, static_cast<void*>(nullptr));
  if (!refed_) tsfn_.Unref(env);
  // Pin the wrapper (and so this object) until the TSFN has delivered or dropped every queued
  // batch; FinalizeTsfn undoes it.
  Ref();
  started_ = true;
  reader_ = std::thread(&Channel::ReaderLoop, this);
  return out;
}

Slab* Channel::AcquireSlab() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [this] { return stopping_ || !free_.empty(); });
  if (stopping_) return nullptr;
  Slab* s = free_.back();  // LIFO: the most recently used slab is the warmest in cache
  free_.pop_back();
  return s;
}

void Channel::ReleaseSlab(Slab* s) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    free_.push_back(s);
  }
  cv_.notify_one();
}

void Channel::ReturnSlab(Slab* s) {
  ReleaseSlab(s);
  inFlight_.fetch_sub(1);
  // The reader may be sitting on a partial batch, waiting for JS to go idle (see ReaderLoop).
  // seq_cst on both sides: either it sees inFlight_ drop, or we see holding_ and wake it.
  if (holding_.load() && wakeFd_ >= 0) {
    uint64_t one = 1;
    ssize_t w = write(wakeFd_, &one, sizeof(one));
    (void)w;
  }
}

bool Channel::WaitReadable() {
  struct pollfd p[2] = {{fd_, POLLIN, 0}, {wakeFd_, POLLIN, 0}};
  for (;;) {
    int r = poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return true;  // let the read report whatever is wrong
    if (p[1].revents) {
      // Woken by close() or by JS returning a slab; the eventfd serves both.
      uint64_t v;
      ssize_t rd = read(wakeFd_, &v, sizeof(v));
      (void)rd;
      std::lock_guard<std::mutex> lk(mu_);
      return !stopping_;
    }
    return true;
  }
}

bool Channel::Stopping() {
  std::lock_guard<std::mutex> lk(mu_);
  return stopping_;
}

// Batching policy: a batch goes to JS as soon as JS is idle (no batch in flight), so a lone frame
// is never delayed. While JS is busy with earlier batches, the reader keeps filling the current
// slab instead of queueing many small batches: fewer, fuller callbacks exactly when the main
// thread is the bottleneck.
void Channel::ReaderLoop() {
  for (;;) {
    Slab* s = AcquireSlab();
    if (s == nullptr) return;
    uint32_t slots = 0;  // slots consumed (filtered frames use one too)
    uint32_t n = 0;      // frames kept
    int st;
    for (;;) {
      st = kind_ == Kind::Packet ? RecvPacket(s, slots, n) : RecvTap(s, slots, n);
      if (st == kFatal || slots == batch_) break;
      bool wait = st == kEmpty;
      if (n > 0) {
        holding_.store(true);
        if (inFlight_.load() == 0) break;
      }
      if (wait ? !WaitReadable() : Stopping()) {
        holding_.store(false);
        ReleaseSlab(s);  // a partial batch is dropped on close, like queued ones
        return;
      }
    }
    holding_.store(false);
    if (n > 0) {
      s->count = n;
      rxBatches_.fetch_add(1, std::memory_order_relaxed);
      inFlight_.fetch_add(1);
      // From here until CallJs returns it, the slab belongs to the main thread. The queue is
      // unbounded, so this never blocks; the slab pool is what limits batches in flight.
      if (tsfn_.BlockingCall(s) != napi_ok) return;  // TSFN closing: env teardown
    } else {
      ReleaseSlab(s);
    }
    if (st == kFatal) {
      tsfn_.BlockingCall(static_cast<Slab*>(nullptr));  // tells JS the reader stopped, and why
      return;
    }
  }
}

int Channel::RecvPacket(Slab* s, uint32_t& slots, uint32_t& n) {
  // Reader-thread scratch for up to 1024 (the batch limit) messages.
  struct mmsghdr msgs[1024];
  struct iovec iov[1024];
  struct sockaddr_ll addr[1024];
  const uint32_t room = batch_ - slots;
  for (uint32_t i = 0; i < room; i++) {
    iov[i].iov_base = s->data + size_t(slots + i) * frameSize_;
    iov[i].iov_len = frameSize_;
    std::memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
    msgs[i].msg_hdr.msg_name = &addr[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(addr[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int r = recvmmsg(fd_, msgs, room, MSG_DONTWAIT, nullptr);
  if (r < 0) {
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) return kEmpty;
    if (e == EINTR) return kAgain;
    // Interface went down or was reconfigured; the socket reports it once and keeps working.
    if (e == ENETDOWN || e == ENXIO || e == ENODEV || e == ENOMEM || e == ENOBUFS) {
      rxErrors_.fetch_add(1, std::memory_order_relaxed);
      return kAgain;
    }
    readerSyscall_ = "recvmmsg";
    readerErrno_.store(e);
    return kFatal;
  }
  uint32_t kept = 0;
  uint64_t bytes = 0;
  for (int j = 0; j < r; j++) {
    if (filterOutgoing_ && addr[j].sll_pkttype == PACKET_OUTGOING) continue;
    if (msgs[j].msg_hdr.msg_flags & MSG_TRUNC) rxTruncated_.fetch_add(1, std::memory_order_relaxed);
    s->offsets[n + kept] = (slots + uint32_t(j)) * frameSize_;
    s->lengths[n + kept] = msgs[j].msg_len;
    bytes += msgs[j].msg_len;
    kept++;
  }
  slots += uint32_t(r);
  n += kept;
  rxFrames_.fetch_add(kept, std::memory_order_relaxed);
  rxBytes_.fetch_add(bytes, std::memory_order_relaxed);
  // A short read means the queue is (momentarily) empty: no point asking again before poll().
  return uint32_t(r) < room ? kEmpty : kAgain;
}

int Channel::RecvTap(Slab* s, uint32_t& slots, uint32_t& n) {
  uint64_t bytes = 0;
  uint32_t got = 0;
  int st = kAgain;
  while (slots < batch_) {
    ssize_t r = read(fd_, s->data + size_t(slots) * frameSize_, frameSize_);
    if (r < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) {
        st = kEmpty;
        break;
      }
      if (e == EINTR) continue;
      // tun drops a frame that does not fit the buffer and fails the read with EFAULT/EINVAL.
      if (e == EFAULT || e == EINVAL || e == EMSGSIZE) {
        rxTruncated_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      readerSyscall_ = "read";
      readerErrno_.store(e);
      st = kFatal;  // frames read so far are still delivered, then the error
      break;
    }
    s->offsets[n] = slots * frameSize_;
    s->lengths[n] = uint32_t(r);
    bytes += uint64_t(r);
    slots++;
    n++;
    got++;
  }
  rxFrames_.fetch_add(got, std::memory_order_relaxed);
  rxBytes_.fetch_add(bytes, std::memory_order_relaxed);
  return st;
}

void CallJs(Napi::Env env, Napi::Function cb, Channel* ch, Slab* s) {
  if (env == nullptr || ch == nullptr) return;  // env teardown: nobody to deliver to
  if (ch->closed_) return;                       // batches still queued at close() are dropped
  if (s == nullptr) {
    int e = ch->readerErrno_.load();
    cb.Call({Napi::Number::New(env, -1), Napi::Number::New(env, e), Napi::String::New(env, ch->readerSyscall_),
             Napi::String::New(env, std::strerror(e))});
    return;
  }
  // The JS dispatcher never throws (it defers handler exceptions), so the slab always returns.
  cb.Call({Napi::Number::New(env, s->index), Napi::Number::New(env, s->count)});
  // Views JS kept past this point alias memory the reader is about to overwrite; documented.
  if (!ch->closed_) ch->ReturnSlab(s);
}

void FinalizeTsfn(Napi::Env /*env*/, void* /*unused*/, Channel* ch) {
  // The reader was joined before Release(), and every queued call has run: no thread touches
  // the slabs any more, so V8 may free them once JS drops its views.
  for (Slab& s : ch->slabs_) {
    s.dataRef.Reset();
    s.metaRef.Reset();
  }
  ch->Unref();
}

void Channel::StopReader() {
  if (!reader_.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  uint64_t one = 1;
  ssize_t w = write(wakeFd_, &one, sizeof(one));
  (void)w;  // an eventfd write only fails when the counter would overflow; it is readable then
  reader_.join();
}

void Channel::CloseFd() {
  if (fd_ >= 0) close(fd_);
  if (wakeFd_ >= 0) close(wakeFd_);
  fd_ = -1;
  wakeFd_ = -1;
}

// ---------------------------------------------------------------------------------------------
// Send

int64_t Channel::SendFrames(const struct iovec* frames, uint32_t n) {
  uint32_t sent = 0;
  if (kind_ == Kind::Tap) {
    while (sent < n) {
      ssize_t r = write(fd_, frames[sent].iov_base, frames[sent].iov_len);
      if (r < 0) {
        int e = errno;
        if (e == EINTR) continue;
        if (IsBackpressure(e)) {
          txEagain_++;
          break;
        }
        if (sent > 0) break;  // report what went; the error repeats on the next call
        errno = e;
        return -1;
      }
      txBytes_ += frames[sent].iov_len;
      sent++;
    }
    txFrames_ += sent;
    return sent;
  }

  if (txMsgs_.size() < kMaxSendChunk) {
    txMsgs_.resize(kMaxSendChunk);
    txIov_.resize(kMaxSendChunk);
  }
  while (sent < n) {
    uint32_t chunk = std::min(n - sent, kMaxSendChunk);
    for (uint32_t i = 0; i < chunk; i++) {
      txIov_[i] = frames[sent + i];
      std::memset(&txMsgs_[i], 0, sizeof(txMsgs_[i]));
      txMsgs_[i].msg_hdr.msg_iov = &txIov_[i];
      txMsgs_[i].msg_hdr.msg_iovlen = 1;
    }
    int r = sendmmsg(fd_, txMsgs_.data(), chunk, MSG_DONTWAIT);
    if (r < 0) {
      int e = errno;
      if (e == EINTR) continue;
      if (IsBackpressure(e)) {
        txEagain_++;
        break;
      }
      if (sent > 0) break;
      errno = e;
      return -1;
    }
    for (int i = 0; i < r; i++) txBytes_ += txIov_[i].iov_len;
    sent += uint32_t(r);
    // A short count means the kernel stopped at an error it did not report; the next round
    // of the loop asks again and gets it (EAGAIN -> stop, anything else -> stop or throw).
  }
  txFrames_ += sent;
  return sent;
}

Napi::Value Channel::Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || fd_ < 0) return ThrowSysErr(env, {EBADF, "send", "channel is closed"});
  if (info.Length() < 1 || !info[0].IsArray()) return ThrowInvalid(env, "send(frames: Uint8Array[])");
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n == 0) return Napi::Number::New(env, 0);
  std::vector<struct iovec>& iov = sendIov_;
  if (iov.size() < n) iov.resize(n);
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    if (napi_get_element(env, arr, i, &el) != napi_ok) return env.Undefined();
    napi_typedarray_type type;
    size_t length;
    void* data;
    if (napi_get_typedarray_info(env, el, &type, &length, &data, nullptr, nullptr) != napi_ok ||
        (type != napi_uint8_array && type != napi_uint8_clamped_array)) {
      return ThrowInvalid(env, "send: frame " + std::to_string(i) + " is not a Uint8Array");
    }
    iov[i].iov_base = data;
    iov[i].iov_len = length;
  }
  int64_t r = SendFrames(iov.data(), n);
  if (r < 0) return ThrowSysErr(env, {errno, kind_ == Kind::Tap ? "write" : "sendmmsg", ""});
  return Napi::Number::New(env, double(r));
}

// sendSlab(slab: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, start, count)
Napi::Value Channel::SendSlab(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || fd_ < 0) return ThrowSysErr(env, {EBADF, "send", "channel is closed"});
  if (info.Length() < 5 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsNumber() || !info[4].IsNumber()) {
    return ThrowInvalid(env, "sendSlab(slab, offsets, lengths, start, count)");
  }
  Napi::TypedArray slabTa = info[0].As<Napi::TypedArray>();
  Napi::TypedArray offTa = info[1].As<Napi::TypedArray>();
  Napi::TypedArray lenTa = info[2].As<Napi::TypedArray>();
  if (slabTa.TypedArrayType() != napi_uint8_array || offTa.TypedArrayType() != napi_uint32_array ||
      lenTa.TypedArrayType() != napi_uint32_array) {
    return ThrowInvalid(env, "sendSlab: slab must be a Uint8Array, offsets and lengths Uint32Arrays");
  }
  uint8_t* base = static_cast<uint8_t*>(slabTa.ArrayBuffer().Data()) + slabTa.ByteOffset();
  size_t slabLen = slabTa.ByteLength();
  const uint32_t* offs = reinterpret_cast<const uint32_t*>(
      static_cast<uint8_t*>(offTa.ArrayBuffer().Data()) + offTa.ByteOffset());
  const uint32_t* lens = reinterpret_cast<const uint32_t*>(
      static_cast<uint8_t*>(lenTa.ArrayBuffer().Data()) + lenTa.ByteOffset());
  double startD = info[3].As<Napi::Number>().DoubleValue();
  double countD = info[4].As<Napi::Number>().DoubleValue();
  if (!(startD >= 0) || !(countD >= 0) || startD + countD > double(offTa.ElementLength()) ||
      startD + countD > double(lenTa.ElementLength())) {
    return ThrowInvalid(env, "sendSlab: start/count outside the offsets/lengths arrays");
  }
  uint32_t start = uint32_t(startD), count = uint32_t(countD);
  std::vector<struct iovec>& iov = sendIov_;
  if (iov.size() < count) iov.resize(count);
  for (uint32_t i = 0; i < count; i++) {
    uint64_t off = offs[start + i], len = lens[start + i];
    if (off + len > slabLen) return ThrowInvalid(env, "sendSlab: frame " + std::to_string(start + i) + " lies outside the slab");
    iov[i].iov_base = base + off;
    iov[i].iov_len = size_t(len);
  }
  int64_t r = SendFrames(iov.data(), count);
  if (r < 0) return ThrowSysErr(env, {errno, kind_ == Kind::Tap ? "write" : "sendmmsg", ""});
  return Napi::Number::New(env, double(r));
}

// ---------------------------------------------------------------------------------------------
// Stats, ref, close

Napi::Value Channel::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (kind_ == Kind::Packet && fd_ >= 0) {
    // PACKET_STATISTICS resets the kernel's counters on every read, so accumulate here.
    struct tpacket_stats st;
    socklen_t len = sizeof(st);
    if (getsockopt(fd_, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0) {
      kernelPackets_ += st.tp_packets;  // includes the dropped ones
      kernelDrops_ += st.tp_drops;
    }
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("rxFrames", double(rxFrames_.load()));
  o.Set("rxBytes", double(rxBytes_.load()));
  o.Set("rxBatches", double(rxBatches_.load()));
  o.Set("rxTruncated", double(rxTruncated_.load()));
  o.Set("rxErrors", double(rxErrors_.load()));
  o.Set("txFrames", double(txFrames_));
  o.Set("txBytes", double(txBytes_));
  o.Set("txEagain", double(txEagain_));
  o.Set("kernelPackets", double(kernelPackets_));
  o.Set("kernelDrops", double(kernelDrops_));
  return o;
}

Napi::Value Channel::SetRef(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  refed_ = info.Length() > 0 && info[0].ToBoolean().Value();
  if (started_ && !closed_) {
    if (refed_) {
      tsfn_.Ref(env);
    } else {
      tsfn_.Unref(env);
    }
  }
  return env.Undefined();
}

Napi::Value Channel::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) return env.Undefined();
  closed_ = true;
  // Order matters: the reader must be gone before the TSFN is released (it may still post) and
  // before the fd is closed (its number could be reused under a running recvmmsg).
  StopReader();
  if (started_) tsfn_.Release();
  CloseFd();
  if (cleanupHookAdded_) {
    napi_remove_env_cleanup_hook(env, EnvCleanup, this);
    cleanupHookAdded_ = false;
  }
  return env.Undefined();
}

}  // namespace vrio
