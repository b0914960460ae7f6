// UnixListener: a listening unix stream socket whose connections reach JS as file descriptors,
// one call per connection. JS wraps each in a net.Socket({fd, onread}) — an option Node's own
// accept path (net.Server) does not take — so that the socket reads into a buffer of its owner's
// instead of allocating a new 64 KiB one per read (at GB/s those allocations kept V8's
// mark-compact collector busy: docs/architecture.md, "Data path habits").
//
//   new UnixListener(path, backlog, sendBuffer, onConnection(fd))
//                        binds and listens at once (the caller sets the umask around it); each
//                        connection gets SO_SNDBUF(FORCE) = sendBuffer bytes first (0: the
//                        kernel's default, about 208 KiB). When accept fails for want of
//                        something (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...), onConnection gets
//                        -errno once and the listener stops watching for kBackoffMs, then tries
//                        again: the connection stays queued in the kernel, and the socket, still
//                        readable, would otherwise wake the loop at once, over and over.
//   close()             stops accepting, closes the socket
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <cstring>

#include "io.h"

namespace vrio {

namespace {

constexpr uint64_t kBackoffMs = 200;

class UnixListener : public Napi::ObjectWrap<UnixListener> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UnixListener",
                       {InstanceMethod("close", &UnixListener::Close)});
  }

  explicit UnixListener(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UnixListener>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber() ||
        !info[3].IsFunction()) {
      ThrowInvalid(env, "new UnixListener(path, backlog, sendBuffer, onConnection)");
      return;
    }
    sendBuffer_ = info[2].As<Napi::Number>().Int32Value();
    std::string path = info[0].As<Napi::String>().Utf8Value();
    struct sockaddr_un addr;
    std::memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path) {
      ThrowSysErr(env, {ENAMETOOLONG, "bind", path});
      return;
    }
    std::memcpy(addr.sun_path, path.data(), path.size());
    int backlog = info[1].As<Napi::Number>().Int32Value();
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      ThrowSysErr(env, {errno, "socket", path});
      return;
    }
    if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) < 0 || listen(fd, backlog) < 0) {
      int e = errno;
      close(fd);
      ThrowSysErr(env, {e, "listen", path});
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      close(fd);
      ThrowInvalid(env, "no event loop");
      return;
    }
    poll_ = new uv_poll_t;
    int r = uv_poll_init(loop, poll_, fd);
    if (r == 0) {
      poll_->data = this;
      r = uv_poll_start(poll_, UV_READABLE, OnReadable);
    }
    if (r != 0) {
      close(fd);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
      ThrowSysErr(env, {-r, "uv_poll_start", path});
      return;
    }
    fd_ = fd;
    env_ = env;
    callback_ = Napi::Persistent(info[3].As<Napi::Function>());
    asyncContext_ = new Napi::AsyncContext(env, "vrio-unix-listener");
    Ref();  // kept while the watcher may call into it; Close undoes it
  }

  ~UnixListener() override { Stop(); }

 private:
  static void OnReadable(uv_poll_t* handle, int status, int /*events*/) {
    auto* self = static_cast<UnixListener*>(handle->data);
    if (status < 0) return;  // the next readiness retries
    self->Accept();
  }

  // Takes every pending connection. A failure other than "none left" stops this round and backs
  // off; the listener stays (EMFILE and the like pass, and the kernel keeps the connection queued).
  void Accept() {
    Napi::Env env(env_);
    Napi::HandleScope scope(env);
    while (fd_ >= 0) {
      int c = accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) {
        int e = errno;
        if (e == EINTR || e == ECONNABORTED) continue;
        if (e != EAGAIN && e != EWOULDBLOCK) Backoff(env, e);
        return;
      }
      // A unix stream socket's unread bytes count against its sender's buffer: with the default,
      // a 1 MiB reply goes out in five writes, each waiting for the reader to make room.
      if (sendBuffer_ > 0 && setsockopt(c, SOL_SOCKET, SO_SNDBUFFORCE, &sendBuffer_, sizeof sendBuffer_) < 0)
        setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sendBuffer_, sizeof sendBuffer_);
      if (!Call(env, c)) return;
    }
  }

  // onConnection(arg) as an I/O callback; false if it threw or could not be called.
  bool Call(Napi::Env env, int arg) {
    napi_value argv[1] = {Napi::Number::New(env, arg)};
    return CallIo(env, *asyncContext_, callback_.Value(), 1, argv) == CallResult::Ok;
  }

  // Stops watching for kBackoffMs and reports -errno to JS (once per back-off).
  void Backoff(Napi::Env env, int e) {
    if (timer_ == nullptr) {
      uv_loop_t* loop = nullptr;
      if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) return;
      timer_ = new uv_timer_t;
      uv_timer_init(loop, timer_);
      uv_unref(reinterpret_cast<uv_handle_t*>(timer_));
      timer_->data = this;
    }
    uv_poll_stop(poll_);
    uv_timer_start(timer_, OnBackoffOver, kBackoffMs, 0);
    Call(env, -e);
  }

  static void OnBackoffOver(uv_timer_t* t) {
    auto* self = static_cast<UnixListener*>(t->data);
    if (self->poll_ != nullptr) uv_poll_start(self->poll_, UV_READABLE, OnReadable);
  }

  void Stop() {
    if (timer_ != nullptr) {
      uv_timer_stop(timer_);
      uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      timer_ = nullptr;
    }
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    bool wasOpen = fd_ >= 0;
    Stop();
    if (wasOpen) {
      callback_.Reset();
      delete asyncContext_;
      asyncContext_ = nullptr;
      Unref();
    }
    return info.Env().Undefined();
  }

  int fd_ = -1;
  int sendBuffer_ = 0;
  uv_poll_t* poll_ = nullptr;
  uv_timer_t* timer_ = nullptr;  // the back-off after a failed accept, made on first use
  napi_env env_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* asyncContext_ = nullptr;
};

}  // namespace

Napi::Function DefineUnixListener(Napi::Env env) { return UnixListener::Define(env); }

}  // namespace vrio
