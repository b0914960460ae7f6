// fallocate(2) for block back-ends: punching holes (trim, write-zeroes with unmap) and zeroing
// ranges without writing zeros, which Node's fs does not offer. Runs on the libuv thread pool
// like Node's own fs calls, so a slow discard never blocks the event loop.
#include <errno.h>
#include <fcntl.h>

#include <cstring>

#include "io.h"

namespace vrio {

namespace {

class FallocateWorker : public Napi::AsyncWorker {
 public:
  FallocateWorker(Napi::Function cb, int fd, int mode, int64_t offset, int64_t length)
      : Napi::AsyncWorker(cb, "vrio.fallocate"), fd_(fd), mode_(mode), offset_(offset), length_(length) {}

  void Execute() override {
    int r;
    do {
      r = fallocate(fd_, mode_, offset_, length_);
    } while (r < 0 && errno == EINTR);
    if (r < 0) errno_ = errno;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (errno_ == 0) {
      Callback().Call({env.Null()});
      return;
    }
    Napi::Error err = Napi::Error::New(env, std::strerror(errno_));
    err.Set("errno", Napi::Number::New(env, errno_));
    err.Set("syscall", Napi::String::New(env, "fallocate"));
    err.Set("detail", Napi::String::New(env, ""));
    Callback().Call({err.Value()});
  }

 private:
  int fd_;
  int mode_;
  int64_t offset_;
  int64_t length_;
  int errno_ = 0;
};

}  // namespace

// fallocate(fd, mode, offset, length, callback(err | null))
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() ||
      !info[3].IsNumber() || !info[4].IsFunction()) {
    return ThrowInvalid(env, "fallocate(fd, mode, offset, length, callback)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int mode = info[1].As<Napi::Number>().Int32Value();
  int64_t offset = info[2].As<Napi::Number>().Int64Value();
  int64_t length = info[3].As<Napi::Number>().Int64Value();
  if (fd < 0 || offset < 0 || length <= 0) return ThrowInvalid(env, "fallocate: bad fd, offset or length");
  (new FallocateWorker(info[4].As<Napi::Function>(), fd, mode, offset, length))->Queue();
  return env.Undefined();
}

}  // namespace vrio
