// Channel: an fd (AF_PACKET socket or TAP queue), its batched send path, and the uv_poll watcher
// that drains it on the event loop thread and hands each batch to JS synchronously.
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "io.h"

namespace vrio {

namespace {

// Results of one receive round (RecvPacket/RecvTap).
constexpr int kAgain = 0;   // read a full batch (or hit a transient error): try again right away
constexpr int kEmpty = -1;  // nothing (more) to read: wait for the next readable event
constexpr int kFatal = -2;  // receiving must stop; rxErrno_/rxSyscall_ say why
constexpr int kStopped = -3;  // (Round) the channel was stopped or closed: touch nothing more

// Batches delivered per readable event at most, so other handles get their turn under a flood
// (the watcher is level-triggered: it fires again on the next loop iteration).
constexpr int kMaxBatchesPerWake = 8;

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
                         InstanceMethod<&Channel::DrainNow>("drain"),
                         InstanceMethod<&Channel::Close>("close"),
                         InstanceMethod<&Channel::SetRef>("setRef"),
                         InstanceMethod<&Channel::SetFilter>("setFilter"),
                         InstanceMethod<&Channel::AttachFastPath>("attachFastPath"),
                         InstanceMethod<&Channel::SetPoll>("setPoll"),
                     });
}

Napi::Object Channel::Create(Napi::Env env, Kind kind, int fd, bool vnetHdr, bool filterOutgoing) {
  Napi::Object obj = env.GetInstanceData<AddonData>()->channelCtor.New({});
  Channel* ch = Channel::Unwrap(obj);
  ch->kind_ = kind;
  ch->fd_ = fd;
  ch->vnetHdr_ = vnetHdr;
  ch->filterOutgoing_ = filterOutgoing;
  // Stops the watcher and closes the fd at env teardown (worker exit, process teardown with an
  // unref'd channel still open).
  if (napi_add_env_cleanup_hook(env, EnvCleanup, ch) == napi_ok) ch->cleanupHookAdded_ = true;
  return obj;
}

Channel::Channel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Channel>(info) {}

Channel::~Channel() {
  // Reached only when the wrapper is collected. While the watcher runs, the wrapper is pinned by
  // Ref() until close(), so only the fd may be left, if the owner dropped the object unclosed.
  if (cleanupHookAdded_) napi_remove_env_cleanup_hook(Env(), EnvCleanup, this);
  if (fast_ != nullptr) fast_->channel_ = nullptr;
  StopPoll();
  CloseFd();
}

void Channel::EnvCleanup(void* arg) {
  Channel* ch = static_cast<Channel*>(arg);
  ch->cleanupHookAdded_ = false;
  ch->StopPoll();
  ch->CloseFd();
}

// ---------------------------------------------------------------------------------------------
// Receive

// start(callback, batch, frameSize): one slab, since batches are delivered synchronously.
Napi::Value Channel::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || fd_ < 0) return ThrowSysErr(env, {EBADF, "start", "channel is closed"});
  if (started_) return ThrowInvalid(env, "receiving already started");
  if (info.Length() < 3 || !info[0].IsFunction() || !info[1].IsNumber() || !info[2].IsNumber()) {
    return ThrowInvalid(env, "start(callback, batch, frameSize)");
  }
  uint32_t batch = info[1].As<Napi::Number>().Uint32Value();
  uint32_t frameSize = info[2].As<Napi::Number>().Uint32Value();
  if (batch < 1 || batch > 1024 || frameSize < 64 || frameSize > (1u << 20) ||
      uint64_t(batch) * frameSize > (1ull << 31)) {
    return ThrowInvalid(env, "batch must be 1..1024, frameSize 64..1048576");
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) return ThrowInvalid(env, "no event loop");

  batch_ = batch;
  frameSize_ = frameSize;
  Napi::ArrayBuffer data = Napi::ArrayBuffer::New(env, size_t(batch) * frameSize);
  Napi::ArrayBuffer meta = Napi::ArrayBuffer::New(env, size_t(batch) * 2 * sizeof(uint32_t));
  slab_.data = static_cast<uint8_t*>(data.Data());
  slab_.offsets = static_cast<uint32_t*>(meta.Data());
  slab_.lengths = slab_.offsets + batch;
  slab_.dataRef = Napi::Persistent(data);
  slab_.metaRef = Napi::Persistent(meta);
  rxMsgs_.resize(batch);
  rxIov_.resize(batch);
  rxAddr_.resize(batch);

  poll_ = new uv_poll_t;
  int r = uv_poll_init(loop, poll_, fd_);
  if (r != 0) {
    delete poll_;
    poll_ = nullptr;
    return ThrowSysErr(env, {-r, "uv_poll_init", ""});
  }
  poll_->data = this;
  loop_ = loop;
  started_ = true;
  env_ = env;
  callback_ = Napi::Persistent(info[0].As<Napi::Function>());
  asyncContext_ = new Napi::AsyncContext(env, "vrio-io-reader");
  Ref();  // the wrapper stays while the watcher may call into it; StopPoll undoes it
  r = uv_poll_start(poll_, UV_READABLE, OnReadable);
  if (r != 0) {
    StopPoll();
    return ThrowSysErr(env, {-r, "uv_poll_start", ""});
  }
  if (!refed_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  if (pollIdleNs_ > 0) StartPrepare();

  Napi::Array out = Napi::Array::New(env, 1);
  Napi::Object pair = Napi::Object::New(env);
  pair.Set("data", data);
  pair.Set("meta", meta);
  out.Set(uint32_t(0), pair);
  return out;
}

void Channel::OnReadable(uv_poll_t* handle, int status, int /*events*/) {
  Channel* ch = static_cast<Channel*>(handle->data);
  if (status < 0) {
    // epoll reported an error on the fd; the read below reports the real one (or finds data).
    ch->rxErrors_++;
  }
  ch->Drain();
}

void Channel::Deliver(Napi::Env env, const std::initializer_list<napi_value>& args) {
  delivering_ = true;
  napi_value argv[4];
  size_t argc = 0;
  for (napi_value a : args) argv[argc++] = a;  // at most 4 (the error delivery)
  CallResult r = CallIo(env, *asyncContext_, callback_.Value(), argc, argv);
  delivering_ = false;
  if (r == CallResult::Failed) {
    StopPoll();  // the environment is going away: receive nothing more
    return;
  }
  if (poll_ == nullptr) ReleaseCallback();  // stopped (closed) by the handler
}

// Reads what is queued, one batch per JS call. The JS dispatcher never throws (it defers handler
// exceptions), and the handler may close the channel: checked after every call.
void Channel::Drain() {
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  bool got = false;
  for (int round = 0; round < kMaxBatchesPerWake && !closed_; round++) {
    if (Round(env, got) != kAgain) return;
  }
}

// One receive round: reads a batch; the fast path takes what it can first (and sends its
// answers); JS gets the rest, in order. `got`: frames were read. kStopped: stopped or closed.
int Channel::Round(Napi::Env env, bool& got) {
  uint32_t slots = 0, n = 0;
  int st = kind_ == Kind::Packet ? RecvPacket(slots, n) : RecvTap(slots, n);
  got = slots > 0;
  if (n > 0 && fast_ != nullptr) n = fast_->Process(this, slab_.data, slab_.offsets, slab_.lengths, n, vnetHdr_);
  if (n > 0) {
    rxBatches_++;
    Deliver(env, {Napi::Number::New(env, 0), Napi::Number::New(env, n)});
    if (closed_ || poll_ == nullptr) return kStopped;
  }
  if (st == kFatal) {
    Deliver(env, {Napi::Number::New(env, -1), Napi::Number::New(env, rxErrno_), Napi::String::New(env, rxSyscall_),
                  Napi::String::New(env, std::strerror(rxErrno_))});
    StopPoll();  // nothing more will be received
    return kStopped;
  }
  return st;
}

// ---------------------------------------------------------------------------------------------
// Polling: a prepare handle runs just before the loop would sleep in epoll. Instead it keeps
// re-polling the fd (non-blocking) and delivers what comes, until pollIdleNs_ pass without a
// frame, or anything else wants the loop: another fd ready (the loop's epoll fd is readable: a
// disk completion, a control connection, another channel, the NBD or TAP fds of a guest), a timer
// due, an immediate or a closing handle pending. Then the loop goes on and sleeps as without
// polling. The spin time is counted (pollNs_) and shows as busy time in the event-loop utilization.
void Channel::OnPrepare(uv_prepare_t* handle) { static_cast<Channel*>(handle->data)->Spin(); }

void Channel::Spin() {
  if (closed_ || poll_ == nullptr || delivering_ || pollIdleNs_ == 0) return;
  const uint64_t start = uv_hrtime();
  // Gated: nothing awaited, and nothing for pollIdleNs_ either (the next request of a stream
  // comes soon after the last answer: the thread stays awake for it): sleep.
  if (pollGate_ != nullptr) {
    if (*pollGate_ > 0)
      gateBusyAt_ = start;
    else if (start - gateBusyAt_ >= pollIdleNs_)
      return;
  }
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  const int backend = uv_backend_fd(loop_);
  uint64_t last = start;
  // When the next timer is due (ms precision, as libuv's timers), with the loop's clock brought
  // up to now; recomputed after each delivery, which may have set one.
  auto timerDeadline = [this](uint64_t now) -> uint64_t {
    uv_update_time(loop_);
    int t = uv_backend_timeout(loop_);
    return t < 0 ? UINT64_MAX : now + uint64_t(t) * 1000000ull;
  };
  if (uv_backend_timeout(loop_) == 0) return;
  uint64_t deadline = timerDeadline(start);
  int batches = 0;
  for (;;) {
    bool got = false;
    polls_++;
    int st = Round(env, got);
    if (st == kStopped) break;
    uint64_t now = uv_hrtime();
    if (got) {
      pollHits_++;
      last = now;
      if (++batches >= kMaxBatchesPerWake) break;  // the fd stays readable: epoll returns at once
      deadline = timerDeadline(now);
      if (deadline <= now) break;  // a timer is due, or an immediate or closing handle pending
      if (st == kAgain) continue;
    }
    if (now - last >= pollIdleNs_ || now >= deadline) break;
    if (pollGate_ != nullptr) {
      if (*pollGate_ > 0)
        gateBusyAt_ = now;
      else if (now - gateBusyAt_ >= pollIdleNs_)
        break;  // frames that are not answers (a NIC's) do not keep it spinning
    }
    struct pollfd p = {backend, POLLIN, 0};
    if (poll(&p, 1, 0) > 0) break;
  }
  pollNs_ += uv_hrtime() - start;
}

void Channel::StartPrepare() {
  if (prepare_ != nullptr) return;
  prepare_ = new uv_prepare_t;
  uv_prepare_init(loop_, prepare_);
  prepare_->data = this;
  uv_prepare_start(prepare_, OnPrepare);
  uv_unref(reinterpret_cast<uv_handle_t*>(prepare_));  // never keeps the loop alive by itself
}

void Channel::StopPrepare() {
  if (prepare_ == nullptr) return;
  uv_prepare_stop(prepare_);
  uv_close(reinterpret_cast<uv_handle_t*>(prepare_), [](uv_handle_t* h) { delete reinterpret_cast<uv_prepare_t*>(h); });
  prepare_ = nullptr;
}

// setPoll(idleUs, gate?): polling on (idleUs > 0, at most 1 s) or off (0). Takes effect at once if
// started. gate: an Int32Array whose element 0 the caller keeps at the number of answers it awaits
// from the peer; the spin then runs only while that is above 0, or was within idleUs.
Napi::Value Channel::SetPoll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return ThrowInvalid(env, "setPoll(idleUs, gate?)");
  double us = info[0].As<Napi::Number>().DoubleValue();
  if (!(us >= 0) || us > 1e6) return ThrowInvalid(env, "setPoll: idleUs must be 0..1000000");
  const bool gated = info.Length() > 1 && !info[1].IsUndefined();
  if (gated && (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
                info[1].As<Napi::Int32Array>().ElementLength() < 1))
    return ThrowInvalid(env, "setPoll: gate must be an Int32Array of at least one element");
  pollGate_ = nullptr;
  pollGateRef_.Reset();
  if (gated) {
    Napi::Int32Array gate = info[1].As<Napi::Int32Array>();
    pollGate_ = gate.Data();  // off the V8 heap from here on (napi_get_typedarray_info), kept by the reference
    pollGateRef_ = Napi::Persistent(gate);
  }
  pollIdleNs_ = uint64_t(us * 1000);
  if (pollIdleNs_ == 0) {
    StopPrepare();
  } else if (poll_ != nullptr && !closed_) {
    StartPrepare();
  }
  return env.Undefined();
}

int Channel::RecvPacket(uint32_t& slots, uint32_t& n) {
  const uint32_t room = batch_ - slots;
  struct mmsghdr* msgs = rxMsgs_.data();
  for (uint32_t i = 0; i < room; i++) {
    rxIov_[i].iov_base = slab_.data + size_t(slots + i) * frameSize_;
    rxIov_[i].iov_len = frameSize_;
    std::memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
    msgs[i].msg_hdr.msg_name = &rxAddr_[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(rxAddr_[i]);
    msgs[i].msg_hdr.msg_iov = &rxIov_[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int r = recvmmsg(fd_, msgs, room, MSG_DONTWAIT, nullptr);
  if (r < 0) {
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) return kEmpty;
    if (e == EINTR) return kAgain;
    // Interface went down or was reconfigured; the socket reports it once and keeps working.
    if (e == ENETDOWN || e == ENXIO || e == ENODEV || e == ENOMEM || e == ENOBUFS) {
      rxErrors_++;
      return kAgain;
    }
    rxSyscall_ = "recvmmsg";
    rxErrno_ = e;
    return kFatal;
  }
  uint32_t kept = 0;
  uint64_t bytes = 0;
  for (int j = 0; j < r; j++) {
    if (filterOutgoing_ && rxAddr_[j].sll_pkttype == PACKET_OUTGOING) continue;
    if (msgs[j].msg_hdr.msg_flags & MSG_TRUNC) rxTruncated_++;
    slab_.offsets[n + kept] = (slots + uint32_t(j)) * frameSize_;
    slab_.lengths[n + kept] = msgs[j].msg_len;
    bytes += msgs[j].msg_len;
    kept++;
  }
  slots += uint32_t(r);
  n += kept;
  rxFrames_ += kept;
  rxBytes_ += bytes;
  // A short read means the queue is (momentarily) empty: wait for the next readable event.
  return uint32_t(r) < room ? kEmpty : kAgain;
}

int Channel::RecvTap(uint32_t& slots, uint32_t& n) {
  uint64_t bytes = 0;
  uint32_t got = 0;
  int st = kAgain;
  while (slots < batch_) {
    ssize_t r = read(fd_, slab_.data + size_t(slots) * frameSize_, frameSize_);
    if (r < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) {
        st = kEmpty;
        break;
      }
      if (e == EINTR) continue;
      // tun drops a frame that does not fit the buffer and fails the read with EFAULT/EINVAL.
      if (e == EFAULT || e == EINVAL || e == EMSGSIZE) {
        rxTruncated_++;
        continue;
      }
      rxSyscall_ = "read";
      rxErrno_ = e;
      st = kFatal;  // frames read so far are still delivered, then the error
      break;
    }
    slab_.offsets[n] = slots * frameSize_;
    slab_.lengths[n] = uint32_t(r);
    bytes += uint64_t(r);
    slots++;
    n++;
    got++;
  }
  rxFrames_ += got;
  rxBytes_ += bytes;
  return st;
}

// Stops watching the fd (it stays open). Safe to call more than once.
void Channel::StopPoll() {
  StopPrepare();
  if (poll_ == nullptr) return;
  uv_poll_stop(poll_);
  uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  poll_ = nullptr;
  if (!delivering_) ReleaseCallback();  // else Deliver does, once the callback has returned
}

void Channel::ReleaseCallback() {
  if (asyncContext_ == nullptr) return;
  callback_.Reset();
  delete asyncContext_;
  asyncContext_ = nullptr;
  Unref();
}

void Channel::CloseFd() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
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

// drain(): reads and delivers what is queued now, as if the socket had become readable. For a
// timer that fires after the event loop was held up: frames that arrived meanwhile (ACKs) are seen
// before the timer decides anything. Does nothing inside a delivery or before start().
Napi::Value Channel::DrainNow(const Napi::CallbackInfo& info) {
  if (!delivering_ && poll_ != nullptr && !closed_) Drain();
  return info.Env().Undefined();
}

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
  o.Set("rxFrames", double(rxFrames_));
  o.Set("rxBytes", double(rxBytes_));
  o.Set("rxBatches", double(rxBatches_));
  o.Set("rxTruncated", double(rxTruncated_));
  o.Set("rxErrors", double(rxErrors_));
  o.Set("txFrames", double(txFrames_));
  o.Set("txBytes", double(txBytes_));
  o.Set("txEagain", double(txEagain_));
  o.Set("kernelPackets", double(kernelPackets_));
  o.Set("kernelDrops", double(kernelDrops_));
  o.Set("polls", double(polls_));
  o.Set("pollHits", double(pollHits_));
  o.Set("pollUs", double(pollNs_ / 1000));
  return o;
}

Napi::Value Channel::SetRef(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  refed_ = info.Length() > 0 && info[0].ToBoolean().Value();
  if (poll_ != nullptr) {
    if (refed_) {
      uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    } else {
      uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    }
  }
  return env.Undefined();
}

// setFilter(program): replaces the socket's classic BPF filter (SO_ATTACH_FILTER swaps it
// atomically: a frame meets either the old program or the new one). A packet socket only.
Napi::Value Channel::SetFilter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (kind_ != Kind::Packet || closed_ || fd_ < 0) return ThrowInvalid(env, "setFilter: not an open packet socket");
  if (info.Length() < 1 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    return ThrowInvalid(env, "setFilter(Uint32Array)");
  }
  Napi::Uint32Array a = info[0].As<Napi::Uint32Array>();
  size_t n = a.ElementLength();
  if (n == 0 || n % 4 != 0 || n / 4 > BPF_MAXINSNS) return ThrowInvalid(env, "setFilter: 4*n numbers");
  std::vector<struct sock_filter> prog;
  for (size_t i = 0; i < n; i += 4) {
    if (a[i] > 0xffff || a[i + 1] > 0xff || a[i + 2] > 0xff) return ThrowInvalid(env, "setFilter: bad instruction");
    prog.push_back(sock_filter{uint16_t(a[i]), uint8_t(a[i + 1]), uint8_t(a[i + 2]), a[i + 3]});
  }
  struct sock_fprog fprog = {uint16_t(prog.size()), prog.data()};
  if (setsockopt(fd_, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog)) < 0) {
    return ThrowSysErr(env, {errno, "setsockopt", "SO_ATTACH_FILTER"});
  }
  return env.Undefined();
}

// attachFastPath(fastPath | null): frames are offered to the fast path before JS (fastpath.cc).
Napi::Value Channel::AttachFastPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fast_ != nullptr) fast_->channel_ = nullptr;
  fast_ = nullptr;
  fastRef_.Reset();
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    if (!o.InstanceOf(env.GetInstanceData<AddonData>()->fastPathCtor.Value())) return ThrowInvalid(env, "attachFastPath: not a FastPath");
    fast_ = FastPath::Unwrap(o);
    fast_->channel_ = this;
    fastRef_ = Napi::Persistent(o);
  }
  return env.Undefined();
}

Napi::Value Channel::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) return env.Undefined();
  closed_ = true;
  // The watcher goes before the fd: libuv must not poll a closed (or reused) fd number.
  StopPoll();
  CloseFd();
  if (cleanupHookAdded_) {
    napi_remove_env_cleanup_hook(env, EnvCleanup, this);
    cleanupHookAdded_ = false;
  }
  return env.Undefined();
}

}  // namespace vrio
