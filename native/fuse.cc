// FuseDisk: one regular file on a FUSE mount of our own, served by this process over the raw
// /dev/fuse protocol (no libfuse). Requests are read into slot buffers — on the event loop (the
// default: a uv_poll watcher on /dev/fuse drains the queue when it is readable, as the packet
// sockets are drained) or on a reader thread of their own (reader: "thread") — and the metadata of
// the single-file tree is answered there (INIT, LOOKUP, GETATTR, OPEN, STATFS, READDIR, ...); the
// data requests (READ, WRITE, FLUSH, FSYNC, FALLOCATE) go to JS in batches, as slot numbers (from
// the event loop: in the same event; from the reader or ring thread: through a thread-safe
// function): JS parses each request from its slot buffer (a view of the same memory), runs it on a
// block device and replies with reply()/replyWrite(), which write the answer to /dev/fuse from the
// event loop thread (writev: header plus the reply data, not copied).
//
// Read on the event loop, nothing in this process may wait on the mount itself (a stat or open of
// the file from the event loop thread would wait for an answer only that thread can give): the
// agent attaches the loop device from a child process (losetup) and never touches the file.
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fuse_uring.h"
#include "io.h"

namespace vrio {

namespace {

constexpr uint64_t kRootIno = FUSE_ROOT_ID;  // 1
constexpr uint64_t kFileIno = 2;
// Attributes and names never change behind the kernel's back: let it cache them for a day.
constexpr uint64_t kValidSeconds = 86400;
constexpr uint32_t kMaxSlots = 1024;
// FUSE_NOTIFY_RESEND (protocol 7.40, Linux 6.9; newer than our <linux/fuse.h>): the kernel puts
// every request a previous server read and never answered back on the queue for us to read.
constexpr int32_t kNotifyResend = 7;
// A ring entry's memory: the request headers (struct fuse_uring_req_header) in the first page,
// the payload (a WRITE's data, a READ's answer) from here on.
constexpr size_t kRingPayload = 4096;
constexpr uint64_t kWakeTag = ~uint64_t(0);
// The ring thread: its own answers are committed without waking it.
thread_local bool tInRing = false;

// The number of possible CPUs (the kernel makes one FUSE ring queue per possible CPU).
uint32_t PossibleCpus() {
  int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char b[64] = {0};
  ssize_t n = read(fd, b, sizeof b - 1);
  close(fd);
  if (n <= 0) return 0;
  // "0-1", "0", "0-3,5": the highest number plus one.
  uint32_t hi = 0, cur = 0;
  for (ssize_t i = 0; i < n; i++) {
    if (b[i] >= '0' && b[i] <= '9') {
      cur = cur * 10 + uint32_t(b[i] - '0');
      if (cur > hi) hi = cur;
    } else {
      cur = 0;
    }
  }
  return hi + 1;
}

struct RingRegion {
  void* base;
  size_t len;
  uint32_t refs;  // ArrayBuffers over it (finalized on the main thread)
};

struct Slot {
  uint8_t* buf = nullptr;
  bool busy = false;  // read into and not yet answered (JS owns it)
};

}  // namespace

class FuseDisk : public Napi::ObjectWrap<FuseDisk> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit FuseDisk(const Napi::CallbackInfo& info);
  ~FuseDisk() override;

 private:
  Napi::Value Slots(const Napi::CallbackInfo& info);
  Napi::Value Reply(const Napi::CallbackInfo& info);
  Napi::Value ReplyWrite(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Ring(const Napi::CallbackInfo& info);

  void ReaderLoop();
  bool AnsweredOnRead(uint32_t slot, size_t n);
  // Reading on the event loop: drains /dev/fuse into free slots, answers the metadata, hands the
  // data requests to JS (MakeCallback) in the same event. Stops watching while no slot is free.
  static void OnLoopReadable(uv_poll_t* handle, int status, int events);
  void DrainOnLoop();
  void DeliverOnLoop(uint32_t count, int endErrno);
  void StopLoopPoll();
  // Answers a metadata request on the reader or ring thread; false: it goes to JS. `arg`: the
  // op's header; `extra`: what follows it (a LOOKUP's name).
  bool AnswerHere(uint32_t slot, const struct fuse_in_header* in, const uint8_t* arg, const uint8_t* extra,
                  size_t extraLen);
  void WriteReply(uint64_t unique, int32_t error, const void* data, size_t len);
  // Answers the request in a slot: writev on /dev/fuse, or into a ring entry and committed.
  void Respond(uint32_t slot, uint64_t unique, int32_t error, const void* data, size_t len);
  void Deliver(uint32_t slot);

  // FUSE over io_uring: after INIT, a thread registers ringDepth_ entries on each of nQueues_
  // queues and commits answers (COMMIT_AND_FETCH, which also waits for the entry's next request).
  void RingLoop();
  void RingRequest(uint32_t ent);
  void QueueCommit(uint32_t ent);
  void StartRing();
  void KickQueues();
  void Release(uint32_t slot);
  void Answer(uint32_t slot, int32_t error, const void* data, size_t len);
  void FillAttr(uint64_t ino, struct fuse_attr* a) const;
  void Stop();
  static void CallJs(Napi::Env env, Napi::Function cb, FuseDisk* self, void*);

  int fd_ = -1;
  int wake_ = -1;  // eventfd: the reader thread stops
  std::string dir_, name_;
  uint64_t size_ = 0;
  bool readOnly_ = false;
  uint32_t maxWrite_ = 1 << 20;
  size_t slotSize_ = 0;
  std::vector<Slot> slots_;
  std::vector<Napi::Reference<Napi::ArrayBuffer>> slotRefs_;
  Napi::Reference<Napi::Uint32Array> batchRef_;
  uint32_t* batch_ = nullptr;

  std::mutex mu_;
  std::condition_variable freed_;
  std::vector<uint32_t> free_;     // slots the reader may fill
  std::vector<uint32_t> pending_;  // slots for JS, not yet delivered
  int endErrno_ = 0;               // the connection ended (reader stopped) with this errno
  bool endReported_ = false;
  std::atomic<bool> notified_{false};
  std::atomic<bool> stopping_{false};
  bool closed_ = false;
  std::thread reader_;
  bool loopReader_ = true;  // read /dev/fuse on the event loop (else on reader_)
  uv_poll_t* loopPoll_ = nullptr;
  bool loopPollActive_ = false;
  bool loopDraining_ = false;
  napi_env env_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* asyncContext_ = nullptr;
  std::vector<uint32_t> loopTake_;  // data requests read in this drain, for JS
  Napi::TypedThreadSafeFunction<FuseDisk, void, CallJs> tsfn_;
  bool tsfnLive_ = false;

  std::atomic<uint64_t> requests_{0}, toJs_{0}, batches_{0}, replyErrors_{0}, interrupts_{0};
  uint32_t kernelMinor_ = 0, negotiatedFlags_ = 0;

  struct RingEnt {
    uint16_t qid = 0;
    uint64_t unique = 0;
    struct iovec iov[2];
  };
  bool uringWanted_ = false;
  uint32_t nQueues_ = 0, ringDepth_ = 0;
  uint32_t ringFirst_ = 0;  // slot number of ring entry 0 (the /dev/fuse slots come first)
  std::vector<RingEnt> ents_;
  std::thread ring_;
  int ringWake_ = -1;  // eventfd: answers to commit, or stop
  std::atomic<bool> ringWakePending_{false};
  std::vector<uint32_t> commits_;  // ring entries answered, to commit (under mu_)
  // 0: not asked for; 1: starting; 2: serving; 3: failed (uringErrno_), /dev/fuse serves.
  std::atomic<int> uringState_{0};
  std::atomic<int> uringErrno_{0};
  std::atomic<uint64_t> ringRequests_{0};
  int ringMem_ = -1;        // the entries' memory file
  bool recovered_ = false;  // mapped where a previous agent had it
  std::atomic<uint32_t> resumed_{0};  // its requests served again
  bool adopted_ = false;
  int resendErrno_ = -1;  // adopted: 0 if the kernel re-queued unanswered requests, else errno
};

Napi::Function FuseDisk::Define(Napi::Env env) {
  return DefineClass(env, "FuseDisk",
                     {
                         InstanceMethod<&FuseDisk::Slots>("slots"),
                         InstanceMethod<&FuseDisk::Reply>("reply"),
                         InstanceMethod<&FuseDisk::ReplyWrite>("replyWrite"),
                         InstanceMethod<&FuseDisk::Stats>("stats"),
                         InstanceMethod<&FuseDisk::Close>("close"),
                         InstanceMethod<&FuseDisk::Fd>("fd"),
                         InstanceMethod<&FuseDisk::Ring>("ring"),
                     });
}

// new FuseDisk({dir, name, size, readOnly, slots, maxWrite, fd?}, callback(count | -errno))
// With fd (an open /dev/fuse of a live connection, e.g. from pidfdGetfd; owned from now on) it
// mounts nothing: it serves that connection, first asking the kernel to resend what is unanswered.
FuseDisk::FuseDisk(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FuseDisk>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
    ThrowInvalid(env, "new FuseDisk(options, callback)");
    return;
  }
  Napi::Object o = info[0].As<Napi::Object>();
  if (!o.Get("dir").IsString() || !o.Get("name").IsString() || !o.Get("size").IsNumber() ||
      !o.Get("slots").IsNumber()) {
    ThrowInvalid(env, "FuseDisk: options need dir, name, size, slots");
    return;
  }
  dir_ = o.Get("dir").As<Napi::String>().Utf8Value();
  name_ = o.Get("name").As<Napi::String>().Utf8Value();
  size_ = uint64_t(o.Get("size").As<Napi::Number>().Int64Value());
  readOnly_ = o.Get("readOnly").ToBoolean().Value();
  uint32_t nslots = o.Get("slots").As<Napi::Number>().Uint32Value();
  if (o.Get("maxWrite").IsNumber()) maxWrite_ = o.Get("maxWrite").As<Napi::Number>().Uint32Value();
  uringWanted_ = o.Get("uring").ToBoolean().Value();
  if (o.Get("reader").IsString()) {
    std::string reader = o.Get("reader").As<Napi::String>().Utf8Value();
    if (reader != "loop" && reader != "thread") {
      ThrowInvalid(env, "FuseDisk: reader must be \"loop\" or \"thread\"");
      return;
    }
    loopReader_ = reader == "loop";
  }
  ringDepth_ = o.Get("uringDepth").IsNumber() ? o.Get("uringDepth").As<Napi::Number>().Uint32Value() : 32;
  if (uringWanted_) {
    nQueues_ = PossibleCpus();
    if (nQueues_ == 0 || ringDepth_ == 0 || uint64_t(nQueues_) * ringDepth_ > kMaxSlots) {
      uringWanted_ = false;
      uringState_ = 3;
      uringErrno_ = EINVAL;
    }
  }
  if (name_.empty() || name_.size() > 255 || name_.find('/') != std::string::npos || nslots == 0 ||
      nslots > kMaxSlots || maxWrite_ < 4096 || maxWrite_ > (1u << 20) || (maxWrite_ & 4095) != 0) {
    ThrowInvalid(env, "FuseDisk: bad name, slots or maxWrite");
    return;
  }
  // Room for the largest WRITE (headers, then max_write bytes); the kernel refuses smaller reads.
  slotSize_ = size_t(maxWrite_) + 8192;

  if (o.Get("fd").IsNumber()) {
    fd_ = o.Get("fd").As<Napi::Number>().Int32Value();
    adopted_ = true;
    int fl = fcntl(fd_, F_GETFL);
    if (fl < 0 || fcntl(fd_, F_SETFL, fl | O_NONBLOCK) < 0) {
      int e = errno;
      fd_ = -1;
      ThrowSysErr(env, {e, "fcntl", "adopted /dev/fuse fd"});
      return;
    }
  } else {
    fd_ = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  }
  if (fd_ < 0) {
    ThrowSysErr(env, {errno, "open", "/dev/fuse"});
    return;
  }
  wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (uringWanted_) ringWake_ = eventfd(0, EFD_CLOEXEC);
  if (wake_ < 0 || (uringWanted_ && ringWake_ < 0)) {
    int e = errno;
    Stop();
    ThrowSysErr(env, {e, "eventfd", ""});
    return;
  }
  slots_.resize(nslots);
  for (uint32_t i = 0; i < nslots; i++) {
    // Anonymous mappings: pages are only touched when a request fills them.
    void* p = mmap(nullptr, slotSize_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      Stop();
      ThrowSysErr(env, {e, "mmap", "slot buffer"});
      return;
    }
    slots_[i].buf = static_cast<uint8_t*>(p);
    // The mapping goes with its ArrayBuffer (this object holds a reference to it, and so may JS).
    slotRefs_.push_back(Napi::Persistent(Napi::ArrayBuffer::New(
        env, p, slotSize_, [](Napi::Env, void* data, size_t* len) { munmap(data, *len); delete len; },
        new size_t(slotSize_))));
    free_.push_back(nslots - 1 - i);
  }
  ringFirst_ = nslots;
  if (uringWanted_) {
    // Ring entries, in one shared memory file (the holder keeps it, so that the next agent finds
    // the requests a killed one had taken: see RecoverOrRegister): each one's headers in its
    // first page, the payload (max_write bytes) after it; touched only when used.
    size_t len = kRingPayload + maxWrite_;
    ents_.resize(size_t(nQueues_) * ringDepth_);
    size_t total = len * ents_.size();
    void* want = nullptr;
    if (o.Get("ringFd").IsNumber()) {
      ringMem_ = o.Get("ringFd").As<Napi::Number>().Int32Value();
      want = reinterpret_cast<void*>(uintptr_t(o.Get("ringAddr").ToNumber().Int64Value()));
      struct stat st;
      if (fstat(ringMem_, &st) != 0 || size_t(st.st_size) != total) want = nullptr;
    }
    void* base = MAP_FAILED;
    if (want != nullptr) {
      // Where the previous agent had it: the kernel's entries point at these addresses.
      base = mmap(want, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, ringMem_, 0);
      if (base != MAP_FAILED && base != want) {
        munmap(base, total);
        base = MAP_FAILED;
      }
      recovered_ = base != MAP_FAILED;
    }
    if (base == MAP_FAILED) {
      if (ringMem_ >= 0) close(ringMem_);
      ringMem_ = int(syscall(SYS_memfd_create, "vrio-fuse-ring", MFD_CLOEXEC));
      if (ringMem_ < 0 || ftruncate(ringMem_, off_t(total)) != 0) {
        int e = errno;
        Stop();
        ThrowSysErr(env, {e, "memfd_create", "ring entries"});
        return;
      }
      base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, ringMem_, 0);
    }
    if (base == MAP_FAILED) {
      int e = errno;
      Stop();
      ThrowSysErr(env, {e, "mmap", "ring entries"});
      return;
    }
    // Unmapped when the last ArrayBuffer over it goes.
    auto* region = new RingRegion{base, total, uint32_t(ents_.size())};
    for (uint32_t i = 0; i < ents_.size(); i++) {
      uint8_t* p = static_cast<uint8_t*>(base) + size_t(i) * len;
      Slot sl;
      sl.buf = p;
      slots_.push_back(sl);
      ents_[i].qid = uint16_t(i / ringDepth_);
      ents_[i].iov[0] = {p, kRingHeaderLen};
      ents_[i].iov[1] = {p + kRingPayload, maxWrite_};
      slotRefs_.push_back(Napi::Persistent(Napi::ArrayBuffer::New(
          env, p, len,
          [](Napi::Env, void*, RingRegion* r) {
            if (--r->refs == 0) {
              munmap(r->base, r->len);
              delete r;
            }
          },
          region)));
    }
  }
  Napi::Uint32Array batch = Napi::Uint32Array::New(env, uint32_t(slots_.size()));
  batch_ = batch.Data();
  batchRef_ = Napi::Persistent(batch);

  std::string opts = "fd=" + std::to_string(fd_) +
                     ",rootmode=40000,user_id=0,group_id=0,allow_other,max_read=" + std::to_string(maxWrite_);
  if (!adopted_ && mount("vrio", dir_.c_str(), "fuse.vrio", MS_NOSUID | MS_NODEV | MS_NOATIME, opts.c_str()) != 0) {
    int e = errno;
    Stop();
    ThrowSysErr(env, {e, "mount", dir_});
    return;
  }
  // The wrapper stays pinned until the thread-safe function is finalized (after close(), once
  // no call to CallJs can be queued any more).
  tsfn_ = Napi::TypedThreadSafeFunction<FuseDisk, void, CallJs>::New(
      env, info[1].As<Napi::Function>(), "vrio-fuse", 0, 1, this,
      [](Napi::Env, void*, FuseDisk* self) { self->Unref(); }, static_cast<void*>(nullptr));
  tsfnLive_ = true;
  Ref();
  uv_loop_t* loop = nullptr;
  if (loopReader_ && (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr)) loopReader_ = false;
  if (loopReader_) {
    loopPoll_ = new uv_poll_t;
    int r = uv_poll_init(loop, loopPoll_, fd_);
    const bool inited = r == 0;
    if (inited) {
      loopPoll_->data = this;
      env_ = env;
      callback_ = Napi::Persistent(info[1].As<Napi::Function>());
      asyncContext_ = new Napi::AsyncContext(env, "vrio-fuse-reader");
      loopTake_.reserve(nslots);
      r = uv_poll_start(loopPoll_, UV_READABLE, OnLoopReadable);
      loopPollActive_ = r == 0;
    }
    if (r != 0) {
      if (inited) {
        uv_close(reinterpret_cast<uv_handle_t*>(loopPoll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      } else {
        delete loopPoll_;
      }
      loopPoll_ = nullptr;
      loopReader_ = false;  // the reader thread serves instead
    }
  }
  if (!loopReader_) reader_ = std::thread([this] { ReaderLoop(); });
  // An adopted connection that was served over io_uring: nothing comes over /dev/fuse any more
  // but forgets, interrupts and resent requests; register our entries at once.
  if (adopted_ && uringWanted_) StartRing();
  if (adopted_) {
    struct fuse_out_header h = {sizeof h, kNotifyResend, 0};
    resendErrno_ = write(fd_, &h, sizeof h) == ssize_t(sizeof h) ? 0 : errno;
  }
}

FuseDisk::~FuseDisk() {
  Stop();
  delete asyncContext_;  // not in close(): that may run inside the callback made with it
}

void FuseDisk::Stop() {
  stopping_ = true;
  StopLoopPoll();
  if (wake_ >= 0) {
    uint64_t one = 1;
    ssize_t ignored = write(wake_, &one, sizeof one);
    (void)ignored;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    freed_.notify_all();
  }
  if (reader_.joinable()) reader_.join();
  if (ringWake_ >= 0) {
    uint64_t one = 1;
    ssize_t ignored = write(ringWake_, &one, sizeof one);
    (void)ignored;
  }
  if (ring_.joinable()) ring_.join();
  if (ringWake_ >= 0) close(ringWake_);
  ringWake_ = -1;
  if (ringMem_ >= 0) close(ringMem_);
  ringMem_ = -1;
  if (!dir_.empty() && fd_ >= 0 && !adopted_) umount2(dir_.c_str(), MNT_DETACH);
  if (fd_ >= 0) close(fd_);  // aborts the connection: whatever still uses the file gets errors
  fd_ = -1;
  if (wake_ >= 0) close(wake_);
  wake_ = -1;
}

void FuseDisk::FillAttr(uint64_t ino, struct fuse_attr* a) const {
  memset(a, 0, sizeof *a);
  a->ino = ino;
  a->blksize = 4096;
  a->uid = 0;
  a->gid = 0;
  if (ino == kRootIno) {
    a->mode = S_IFDIR | 0755;
    a->nlink = 2;
  } else {
    a->mode = S_IFREG | (readOnly_ ? 0400 : 0600);
    a->nlink = 1;
    a->size = size_;
    a->blocks = (size_ + 511) / 512;
  }
}

void FuseDisk::WriteReply(uint64_t unique, int32_t error, const void* data, size_t len) {
  struct fuse_out_header h;
  h.len = uint32_t(sizeof h + len);
  h.error = error;
  h.unique = unique;
  struct iovec iov[2] = {{&h, sizeof h}, {const_cast<void*>(data), len}};
  ssize_t r;
  do r = writev(fd_, iov, len > 0 ? 2 : 1);
  while (r < 0 && errno == EINTR);
  // ENOENT: the request was interrupted or the connection aborted meanwhile; nothing to do.
  if (r < 0) replyErrors_++;
}

void FuseDisk::Release(uint32_t slot) {
  std::lock_guard<std::mutex> lk(mu_);
  slots_[slot].busy = false;
  if (slot >= ringFirst_) return;  // a ring entry goes back with its commit
  free_.push_back(slot);
  if (free_.size() == 1) freed_.notify_one();
  // On the event loop thread (JS's answer): a watcher stopped for want of slots reads again.
  if (loopPoll_ != nullptr && !loopPollActive_ && !stopping_ && !loopDraining_) {
    loopPollActive_ = uv_poll_start(loopPoll_, UV_READABLE, OnLoopReadable) == 0;
  }
}

// A request just read into a /dev/fuse slot (`n` bytes): counted, and answered here when it is
// metadata (or too short to be a request), the slot free again; false: a data request for JS.
bool FuseDisk::AnsweredOnRead(uint32_t slot, size_t n) {
  requests_++;
  uint8_t* buf = slots_[slot].buf;
  const auto* in = reinterpret_cast<const struct fuse_in_header*>(buf);
  const uint8_t* arg = buf + sizeof *in;
  if (n >= sizeof *in && !AnswerHere(slot, in, arg, arg, n - sizeof *in)) return false;
  std::lock_guard<std::mutex> lk(mu_);
  free_.push_back(slot);
  return true;
}

void FuseDisk::StopLoopPoll() {
  if (loopPoll_ == nullptr) return;
  uv_poll_stop(loopPoll_);
  loopPollActive_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(loopPoll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  loopPoll_ = nullptr;
}

void FuseDisk::OnLoopReadable(uv_poll_t* handle, int /*status*/, int /*events*/) {
  // An error on the fd (status < 0) shows as the read's error below.
  static_cast<FuseDisk*>(handle->data)->DrainOnLoop();
}

// Reads what is queued into free slots until the queue is empty (EAGAIN) or no slot is free (the
// watcher stops until Release frees one), answering metadata here; the data requests go to JS,
// at the latest once 256 KiB of them are read (a big write starts on its way while more are read).
void FuseDisk::DrainOnLoop() {
  if (loopPoll_ == nullptr || stopping_) return;
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  loopDraining_ = true;
  size_t bytes = 0;
  int end = 0;
  for (;;) {
    uint32_t slot;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (free_.empty()) {
        slot = UINT32_MAX;
      } else {
        slot = free_.back();
        free_.pop_back();
      }
    }
    if (slot == UINT32_MAX) {
      uv_poll_stop(loopPoll_);  // Release starts it again
      loopPollActive_ = false;
      break;
    }
    ssize_t n = read(fd_, slots_[slot].buf, slotSize_);
    if (n < 0) {
      int e = errno;
      {
        std::lock_guard<std::mutex> lk(mu_);
        free_.push_back(slot);
      }
      if (e == EINTR || e == ENOENT) continue;  // ENOENT: the request was interrupted before we read it
      if (e == EAGAIN) break;
      end = e;  // ENODEV: unmounted or aborted. Anything else is as final.
      break;
    }
    if (AnsweredOnRead(slot, size_t(n))) continue;
    slots_[slot].busy = true;
    loopTake_.push_back(slot);
    bytes += size_t(n);
    if (bytes >= (256u << 10)) {
      DeliverOnLoop(uint32_t(loopTake_.size()), 0);
      bytes = 0;
      if (loopPoll_ == nullptr || stopping_) break;  // closed by JS
    }
  }
  if (end != 0 && loopPoll_ != nullptr) {
    uv_poll_stop(loopPoll_);
    loopPollActive_ = false;
  }
  loopDraining_ = false;
  if (!loopTake_.empty() || end != 0) DeliverOnLoop(uint32_t(loopTake_.size()), end);
  // Slots JS answered during the drain: read again if the watcher had stopped for want of them.
  if (end == 0 && loopPoll_ != nullptr && !loopPollActive_ && !stopping_ && !free_.empty()) {
    loopPollActive_ = uv_poll_start(loopPoll_, UV_READABLE, OnLoopReadable) == 0;
  }
}

// Hands the slots in loopTake_ (and then the end of the connection, if `endErrno`) to JS, as
// CallJs does for the threads; MakeCallback, so that promises settle before the next event.
void FuseDisk::DeliverOnLoop(uint32_t count, int endErrno) {
  Napi::Env env(env_);
  auto call = [&](double arg) -> bool {
    napi_value argv[1] = {Napi::Number::New(env, arg)};
    return CallIo(env, *asyncContext_, callback_.Value(), 1, argv) == CallResult::Ok;
  };
  if (count > 0) {
    for (uint32_t i = 0; i < count; i++) batch_[i] = loopTake_[i];
    loopTake_.clear();
    toJs_ += count;
    batches_++;
    if (closed_ || !call(double(count))) {
      StopLoopPoll();
      return;
    }
  }
  if (endErrno != 0 && !closed_) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (endReported_) return;
      endErrno_ = endErrno;
      endReported_ = true;
    }
    call(-double(endErrno));
  }
}

void FuseDisk::Respond(uint32_t slot, uint64_t unique, int32_t error, const void* data, size_t len) {
  if (slot < ringFirst_) {
    WriteReply(unique, error, data, len);
    return;
  }
  uint8_t* buf = slots_[slot].buf;
  if (error != 0 || len > maxWrite_) len = 0;
  struct fuse_out_header h = {uint32_t(sizeof h + len), error, unique};
  memcpy(buf, &h, sizeof h);
  if (len > 0 && data != buf + kRingPayload) memcpy(buf + kRingPayload, data, len);
  uint32_t sz = uint32_t(len);
  memcpy(buf + kRingPayloadSzAt, &sz, sizeof sz);
}

void FuseDisk::QueueCommit(uint32_t ent) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    commits_.push_back(ent);
  }
  if (!tInRing && !ringWakePending_.exchange(true)) {
    uint64_t one = 1;
    ssize_t ignored = write(ringWake_, &one, sizeof one);
    (void)ignored;
  }
}

// A data request for JS: queued, and the event loop woken unless it is already.
void FuseDisk::Deliver(uint32_t slot) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    slots_[slot].busy = true;
    pending_.push_back(slot);
  }
  if (!notified_.exchange(true)) tsfn_.NonBlockingCall();
}

bool FuseDisk::AnswerHere(uint32_t slot, const struct fuse_in_header* in, const uint8_t* arg,
                          const uint8_t* extra, size_t extraLen) {
  uint64_t u = in->unique;
  auto WriteReply = [this, slot](uint64_t unique, int32_t error, const void* data, size_t len) {
    Respond(slot, unique, error, data, len);
    if (slot >= ringFirst_) QueueCommit(slot - ringFirst_);
  };
  switch (in->opcode) {
    case FUSE_INIT: {
      auto* ii = reinterpret_cast<const struct fuse_init_in*>(arg);
      struct fuse_init_out o;
      memset(&o, 0, sizeof o);
      o.major = FUSE_KERNEL_VERSION;
      if (ii->major != FUSE_KERNEL_VERSION) {
        WriteReply(u, 0, &o, 8);  // the kernel sends INIT again with our major, or gives up
        return true;
      }
      kernelMinor_ = ii->minor;
      o.minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ? ii->minor : FUSE_KERNEL_MINOR_VERSION;
      uint32_t want = FUSE_ASYNC_READ | FUSE_ASYNC_DIO | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS;
      o.flags = ii->flags & want;
      // FUSE over io_uring: offered by the kernel only while fuse's enable_uring is on.
      bool uring = false;
      if (uringWanted_) {
        uring = (ii->flags & FUSE_INIT_EXT) && (ii->flags2 & kFuseOverIoUringFlags2);
        if (uring) {
          o.flags |= FUSE_INIT_EXT;
          o.flags2 = kFuseOverIoUringFlags2;
        } else {
          uringErrno_ = EOPNOTSUPP;
          uringState_ = 3;
        }
      }
      negotiatedFlags_ = o.flags;
      o.max_readahead = ii->max_readahead;
      uint32_t bg = uint32_t(slots_.size()) > 0xffff ? 0xffff : uint32_t(slots_.size());
      o.max_background = uint16_t(bg);
      o.congestion_threshold = uint16_t(bg * 3 / 4 > 0 ? bg * 3 / 4 : 1);
      o.max_write = maxWrite_;
      o.time_gran = 1;
      o.max_pages = uint16_t(maxWrite_ / 4096);
      WriteReply(u, 0, &o, ii->minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof o);
      // The connection is initialized once the kernel took the answer: the ring may register.
      if (uring) StartRing();
      return true;
    }
    case FUSE_LOOKUP: {
      const char* nm = reinterpret_cast<const char*>(extra);
      if (in->nodeid != kRootIno || extraLen == 0 || strnlen(nm, extraLen) != name_.size() ||
          memcmp(nm, name_.data(), name_.size()) != 0) {
        WriteReply(u, -ENOENT, nullptr, 0);
        return true;
      }
      struct fuse_entry_out e;
      memset(&e, 0, sizeof e);
      e.nodeid = kFileIno;
      e.generation = 1;
      e.entry_valid = kValidSeconds;
      e.attr_valid = kValidSeconds;
      FillAttr(kFileIno, &e.attr);
      WriteReply(u, 0, &e, sizeof e);
      return true;
    }
    case FUSE_GETATTR:
    case FUSE_SETATTR: {
      // SETATTR (a truncate, chmod, utimes): the file is the disk, nothing of it changes.
      if (in->nodeid != kRootIno && in->nodeid != kFileIno) {
        WriteReply(u, -ENOENT, nullptr, 0);
        return true;
      }
      if (in->opcode == FUSE_SETATTR) {
        auto* sa = reinterpret_cast<const struct fuse_setattr_in*>(arg);
        if ((sa->valid & FATTR_SIZE) && sa->size != size_) {
          WriteReply(u, -EPERM, nullptr, 0);
          return true;
        }
      }
      struct fuse_attr_out a;
      memset(&a, 0, sizeof a);
      a.attr_valid = kValidSeconds;
      FillAttr(in->nodeid, &a.attr);
      WriteReply(u, 0, &a, sizeof a);
      return true;
    }
    case FUSE_OPEN:
    case FUSE_OPENDIR: {
      if (in->opcode == FUSE_OPEN && readOnly_) {
        auto* oi = reinterpret_cast<const struct fuse_open_in*>(arg);
        if ((oi->flags & O_ACCMODE) != O_RDONLY) {
          WriteReply(u, -EROFS, nullptr, 0);
          return true;
        }
      }
      struct fuse_open_out o;
      memset(&o, 0, sizeof o);
      // The file bypasses the page cache: every read and write reaches us (the loop device's
      // direct I/O would bypass it anyway; this holds for anyone else opening the file too).
      if (in->opcode == FUSE_OPEN) o.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
      WriteReply(u, 0, &o, sizeof o);
      return true;
    }
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_ACCESS:
    case FUSE_DESTROY:
      WriteReply(u, 0, nullptr, 0);
      return true;
    case FUSE_STATFS: {
      struct fuse_statfs_out s;
      memset(&s, 0, sizeof s);
      s.st.bsize = 4096;
      s.st.frsize = 4096;
      s.st.blocks = (size_ + 4095) / 4096;
      s.st.files = 2;
      s.st.namelen = 255;
      WriteReply(u, 0, &s, sizeof s);
      return true;
    }
    case FUSE_READDIR: {
      auto* ri = reinterpret_cast<const struct fuse_read_in*>(arg);
      uint8_t out[1024];
      size_t len = 0;
      const char* names[3] = {".", "..", name_.c_str()};
      uint64_t inos[3] = {kRootIno, kRootIno, kFileIno};
      uint32_t types[3] = {S_IFDIR >> 12, S_IFDIR >> 12, S_IFREG >> 12};
      for (uint64_t i = ri->offset; i < 3; i++) {
        size_t nl = strlen(names[i]);
        size_t rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + nl);
        if (len + rec > ri->size || len + rec > sizeof out) break;
        auto* d = reinterpret_cast<struct fuse_dirent*>(out + len);
        memset(d, 0, rec);
        d->ino = inos[i];
        d->off = i + 1;
        d->namelen = uint32_t(nl);
        d->type = types[i];
        memcpy(d->name, names[i], nl);
        len += rec;
      }
      WriteReply(u, 0, out, len);
      return true;
    }
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
      return true;  // no reply
    case FUSE_INTERRUPT:
      // Block requests are short and always answered: the interrupted one is answered when done.
      interrupts_++;
      return true;
    case FUSE_READ:
    case FUSE_WRITE:
    case FUSE_FLUSH:
    case FUSE_FSYNC:
    case FUSE_FALLOCATE:
      if (in->nodeid != kFileIno) {
        WriteReply(u, -EINVAL, nullptr, 0);
        return true;
      }
      return false;
    default:
      WriteReply(u, -ENOSYS, nullptr, 0);
      return true;
  }
}

void FuseDisk::ReaderLoop() {
  for (;;) {
    uint32_t slot;
    {
      std::unique_lock<std::mutex> lk(mu_);
      freed_.wait(lk, [this] { return stopping_ || !free_.empty(); });
      if (stopping_) return;
      slot = free_.back();
      free_.pop_back();
    }
    ssize_t n;
    for (;;) {
      n = read(fd_, slots_[slot].buf, slotSize_);
      if (n >= 0) break;
      int e = errno;
      if (e == EINTR || e == ENOENT) continue;  // ENOENT: the request was interrupted before we read it
      if (e == EAGAIN) {
        struct pollfd p[2] = {{fd_, POLLIN, 0}, {wake_, POLLIN, 0}};
        int r = poll(p, 2, -1);
        if (stopping_) break;
        if (r < 0 && errno != EINTR) break;
        continue;
      }
      // ENODEV: unmounted or aborted. Anything else is as final.
      std::lock_guard<std::mutex> lk(mu_);
      endErrno_ = e;
      break;
    }
    if (n < 0) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        free_.push_back(slot);
      }
      if (!stopping_ && !notified_.exchange(true)) tsfn_.NonBlockingCall();
      return;
    }
    if (AnsweredOnRead(slot, size_t(n))) continue;
    Deliver(slot);
  }
}

void FuseDisk::StartRing() {
  uringState_ = 1;
  ring_ = std::thread([this] { RingLoop(); });
}

static void PrepCmd(struct io_uring_sqe* sqe, int fd, uint32_t op, uint64_t tag, const struct iovec* iov,
                    uint16_t qid, uint64_t commitId) {
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = op;
  sqe->addr = reinterpret_cast<uint64_t>(iov);
  sqe->len = 2;
  sqe->user_data = tag;
  FuseUringCmdReq req;
  memset(&req, 0, sizeof req);
  req.qid = qid;
  req.commitId = commitId;
  memcpy(sqe->cmd, &req, sizeof req);
}

void FuseDisk::RingLoop() {
  tInRing = true;
  Uring ring;
  uint32_t n = uint32_t(ents_.size());
  unsigned entries = 1;
  while (entries < n + 2) entries <<= 1;
  int err = ring.Setup(entries);
  // Queue by queue: the kernel switches the connection to the ring once every queue has an
  // entry, so a failure on the first registration leaves /dev/fuse serving as before.
  // Entries mapped where a killed agent had them (recovered_) still hold what it left: a request
  // it took and never answered (the fuse_in_header's opcode is still there: served again), or an
  // answer perhaps never committed (an out header: committed now; ENOENT if it had been).
  std::vector<uint32_t> resume;
  std::vector<bool> retried(n, false);
  uint32_t registering = 0;
  if (err == 0) {
    for (uint32_t i = 0; i < n; i++) {
      const uint8_t* buf = slots_[ringFirst_ + i].buf;
      uint64_t unique = 0;
      int32_t word = 0;
      memcpy(&word, buf + 4, sizeof word);
      memcpy(&unique, buf + 8, sizeof unique);
      if (recovered_ && unique != 0 && word > 0) {
        resume.push_back(i);
      } else if (recovered_ && unique != 0) {
        ents_[i].unique = unique;
        PrepCmd(ring.Sqe(), fd_, kFuseUringCmdCommitAndFetch, i, ents_[i].iov, ents_[i].qid, unique);
      } else {
        registering++;
        PrepCmd(ring.Sqe(), fd_, kFuseUringCmdRegister, i, ents_[i].iov, ents_[i].qid, 0);
      }
    }
    err = ring.Enter(0);
  }
  // What fails completes at once; the rest completes with the entry's first request.
  std::vector<uint32_t> early;
  uint32_t failed = 0;
  bool again = false;
  // A commit of what the previous agent had committed already: the entry is registered anew.
  auto retry = [&](uint32_t e, int res) {
    if (res != -ENOENT || !recovered_ || retried[e]) return false;
    retried[e] = true;
    PrepCmd(ring.Sqe(), fd_, kFuseUringCmdRegister, e, ents_[e].iov, ents_[e].qid, 0);
    return true;
  };
  while (err == 0) {
    while (const struct io_uring_cqe* c = ring.Peek()) {
      uint32_t e = uint32_t(c->user_data);
      int res = c->res;
      ring.Pop();
      if (res >= 0) {
        early.push_back(e);
      } else if (retry(e, res)) {
        registering++;
        again = true;
      } else {
        failed++;
        err = -res;
      }
    }
    if (!again) break;
    again = false;
    err = ring.Enter(0);
  }
  if (err != 0 && failed == 0 && early.empty()) failed = registering;  // setup or submission failed
  if (registering > 0 && failed >= registering && resume.empty()) {
    uringErrno_ = err;
    uringState_ = 3;
    return;
  }
  uringErrno_ = failed > 0 ? err : 0;
  uringState_ = 2;
  resumed_ = uint32_t(resume.size());
  for (uint32_t e : early) RingRequest(e);
  for (uint32_t e : resume) RingRequest(e);
  if (adopted_) KickQueues();

  uint64_t wakeBuf = 0;
  bool wakeArmed = false;
  std::vector<uint32_t> commits;
  uint32_t dead = 0;
  for (;;) {
    ringWakePending_ = false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      commits.swap(commits_);
    }
    for (uint32_t e : commits)
      PrepCmd(ring.Sqe(), fd_, kFuseUringCmdCommitAndFetch, e, ents_[e].iov, ents_[e].qid, ents_[e].unique);
    commits.clear();
    if (stopping_) return;
    if (!wakeArmed) {
      struct io_uring_sqe* sqe = ring.Sqe();
      sqe->opcode = IORING_OP_READ;
      sqe->fd = ringWake_;
      sqe->addr = reinterpret_cast<uint64_t>(&wakeBuf);
      sqe->len = sizeof wakeBuf;
      sqe->user_data = kWakeTag;
      wakeArmed = true;
    }
    err = ring.Enter(1);
    if (err != 0 && err != EINTR && err != EAGAIN && err != EBUSY) {
      uringErrno_ = err;
      return;
    }
    while (const struct io_uring_cqe* c = ring.Peek()) {
      uint64_t tag = c->user_data;
      int res = c->res;
      ring.Pop();
      if (tag == kWakeTag) {
        wakeArmed = false;
      } else if (res < 0 && retry(uint32_t(tag), res)) {
        // registered again with the next Enter
      } else if (res < 0) {
        // ENOTCONN, ECANCELED: the connection ends (unmount, abort); the entry is gone.
        uringErrno_ = -res;
        if (++dead == n) return;
      } else {
        RingRequest(uint32_t(tag));
      }
    }
  }
}

// Requests that reached a queue while no agent had entries on it wait there until an entry of
// that queue is committed (a new registration does not fetch them). So after a takeover, each
// queue gets one request of our own making: a FUSE_NOTIFY_RETRIEVE (of nothing) written from a
// thread on that queue's CPU makes the kernel queue a NOTIFY_REPLY there; answering it commits an
// entry of that queue, which fetches what waits.
void FuseDisk::KickQueues() {
  for (uint32_t q = 0; q < nQueues_; q++) {
    std::thread t([this, q] {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(q, &set);
      if (sched_setaffinity(0, sizeof set, &set) != 0) return;  // offline: nothing queued there
      struct {
        struct fuse_out_header h;
        struct fuse_notify_retrieve_out r;
      } m;
      memset(&m, 0, sizeof m);
      m.h.len = sizeof m;
      m.h.error = FUSE_NOTIFY_RETRIEVE;
      m.r.notify_unique = (uint64_t(1) << 62) + 2 * uint64_t(q);
      m.r.nodeid = kFileIno;
      ssize_t ignored = write(fd_, &m, sizeof m);
      (void)ignored;
    });
    t.join();
  }
}

void FuseDisk::RingRequest(uint32_t ent) {
  uint32_t slot = ringFirst_ + ent;
  uint8_t* buf = slots_[slot].buf;
  const auto* in = reinterpret_cast<const struct fuse_in_header*>(buf);
  ents_[ent].unique = in->unique;
  requests_++;
  ringRequests_++;
  uint32_t payload = 0;
  memcpy(&payload, buf + kRingPayloadSzAt, sizeof payload);
  if (payload > maxWrite_) payload = maxWrite_;
  if (AnswerHere(slot, in, buf + kRingOpIn, buf + kRingPayload, payload)) return;
  Deliver(slot);
}

// On the event loop thread: hands what the reader queued to JS (slot numbers in the batch array).
void FuseDisk::CallJs(Napi::Env env, Napi::Function cb, FuseDisk* self, void*) {
  if (env == nullptr || self->closed_) return;
  self->notified_ = false;
  std::vector<uint32_t> take;
  int end = 0;
  {
    std::lock_guard<std::mutex> lk(self->mu_);
    take.swap(self->pending_);
    if (self->endErrno_ != 0 && !self->endReported_) {
      end = self->endErrno_;
      self->endReported_ = true;
    }
  }
  if (!take.empty()) {
    for (size_t i = 0; i < take.size(); i++) self->batch_[i] = take[i];
    self->toJs_ += take.size();
    self->batches_++;
    cb.Call({Napi::Number::New(env, double(take.size()))});
  }
  if (end != 0 && !self->closed_) cb.Call({Napi::Number::New(env, -double(end))});
}

Napi::Value FuseDisk::Slots(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env, slotRefs_.size());
  for (uint32_t i = 0; i < slotRefs_.size(); i++) out.Set(i, slotRefs_[i].Value());
  Napi::Object r = Napi::Object::New(env);
  r.Set("buffers", out);
  r.Set("batch", batchRef_.Value());
  r.Set("kernelMinor", Napi::Number::New(env, kernelMinor_));
  r.Set("ringFirst", Napi::Number::New(env, ringFirst_));
  return r;
}

// reply(slot, error, data?): answers the slot's request (error: 0 or a negative errno) and frees the slot.
Napi::Value FuseDisk::Reply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
  if (slot >= slots_.size() || !slots_[slot].busy) return ThrowInvalid(env, "FuseDisk.reply: slot not in use");
  int32_t error = info[1].As<Napi::Number>().Int32Value();
  const void* data = nullptr;
  size_t len = 0;
  if (info.Length() > 2 && info[2].IsTypedArray()) {
    Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
    data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    len = ta.ByteLength();
  }
  Answer(slot, error, error == 0 ? data : nullptr, error == 0 ? len : 0);
  return env.Undefined();
}

// replyWrite(slot, size): a WRITE's success answer.
Napi::Value FuseDisk::ReplyWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
  if (slot >= slots_.size() || !slots_[slot].busy) return ThrowInvalid(env, "FuseDisk.replyWrite: slot not in use");
  struct fuse_write_out w;
  memset(&w, 0, sizeof w);
  w.size = info[1].As<Napi::Number>().Uint32Value();
  Answer(slot, 0, &w, sizeof w);
  return env.Undefined();
}

// JS's answer to the data request in `slot`; the slot is free again (a ring entry: once committed).
void FuseDisk::Answer(uint32_t slot, int32_t error, const void* data, size_t len) {
  const auto* in = reinterpret_cast<const struct fuse_in_header*>(slots_[slot].buf);
  if (closed_) {
    Release(slot);
    return;
  }
  Respond(slot, in->unique, error, data, len);
  Release(slot);
  if (slot >= ringFirst_) QueueCommit(slot - ringFirst_);
}

Napi::Value FuseDisk::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("requests", Napi::Number::New(env, double(requests_)));
  o.Set("toJs", Napi::Number::New(env, double(toJs_)));
  o.Set("batches", Napi::Number::New(env, double(batches_)));
  o.Set("replyErrors", Napi::Number::New(env, double(replyErrors_)));
  o.Set("interrupts", Napi::Number::New(env, double(interrupts_)));
  o.Set("flags", Napi::Number::New(env, negotiatedFlags_));
  o.Set("adopted", Napi::Boolean::New(env, adopted_));
  o.Set("resendErrno", Napi::Number::New(env, resendErrno_));
  // "io_uring" (serving over the ring), "read/writev" (/dev/fuse only), and why not the ring.
  o.Set("transport", Napi::String::New(env, uringState_ == 2 ? "io_uring" : uringState_ == 1 ? "starting" : "read/writev"));
  o.Set("uringErrno", Napi::Number::New(env, uringErrno_));
  o.Set("reader", Napi::String::New(env, loopReader_ ? "loop" : "thread"));
  o.Set("ringRequests", Napi::Number::New(env, double(ringRequests_)));
  o.Set("queues", Napi::Number::New(env, uringState_ == 2 ? nQueues_ : 0));
  o.Set("ringRecovered", Napi::Boolean::New(env, recovered_));
  o.Set("ringResumed", Napi::Number::New(env, resumed_));
  return o;
}

Napi::Value FuseDisk::Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

// ring(): the ring entries' memory file and address (for the holder and the next agent), or null.
Napi::Value FuseDisk::Ring(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (ringMem_ < 0 || slots_.size() <= ringFirst_) return env.Null();
  Napi::Object r = Napi::Object::New(env);
  r.Set("fd", Napi::Number::New(env, ringMem_));
  r.Set("addr", Napi::Number::New(env, double(reinterpret_cast<uintptr_t>(slots_[ringFirst_].buf))));
  return r;
}

// pidfdGetfd(pid, fd): a duplicate of another process's fd (pidfd_getfd(2); root), close-on-exec.
Napi::Value PidfdGetfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) return ThrowInvalid(env, "pidfdGetfd(pid, fd)");
  int pid = info[0].As<Napi::Number>().Int32Value();
  int target = info[1].As<Napi::Number>().Int32Value();
  int pidfd = int(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return ThrowSysErr(env, {errno, "pidfd_open", std::to_string(pid)});
  int fd = int(syscall(SYS_pidfd_getfd, pidfd, target, 0));
  int e = errno;
  close(pidfd);
  if (fd < 0) return ThrowSysErr(env, {e, "pidfd_getfd", std::to_string(pid)});
  return Napi::Number::New(env, fd);
}

// close(): stops the reader, unmounts (lazily) and closes /dev/fuse. Idempotent.
Napi::Value FuseDisk::Close(const Napi::CallbackInfo& info) {
  if (closed_) return info.Env().Undefined();
  closed_ = true;
  Stop();
  if (tsfnLive_) {
    tsfn_.Release();
    tsfnLive_ = false;
  }
  return info.Env().Undefined();
}

Napi::Function DefineFuseDisk(Napi::Env env) { return FuseDisk::Define(env); }

}  // namespace vrio
