// preadv2/pwritev2 with RWF_NOWAIT, on the calling (event loop) thread: the kernel copies from or
// into the page cache when it can do so without waiting (data cached, no lock or writeback to wait
// for) and fails with EAGAIN otherwise, so a block back-end serves cached requests without a
// thread-pool round trip and sends everything else to the pool as before.
#include <errno.h>
#include <sys/uio.h>

#include "io.h"

namespace vrio {

// ioNowait(write: boolean, fd, buf: Uint8Array, offset): bytes moved (possibly short), or -errno
// (-EAGAIN: would block; -EOPNOTSUPP: the file system or device cannot do it without waiting).
Napi::Value IoNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[1].IsNumber() || !info[2].IsTypedArray() || !info[3].IsNumber()) {
    return ThrowInvalid(env, "ioNowait(write, fd, buf, offset)");
  }
  bool write = info[0].ToBoolean().Value();
  int fd = info[1].As<Napi::Number>().Int32Value();
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array) return ThrowInvalid(env, "ioNowait: buf must be a Uint8Array");
  int64_t offset = info[3].As<Napi::Number>().Int64Value();
  if (fd < 0 || offset < 0) return ThrowInvalid(env, "ioNowait: bad fd or offset");
  struct iovec iov;
  iov.iov_base = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  iov.iov_len = ta.ByteLength();
  ssize_t r;
  do {
    r = write ? pwritev2(fd, &iov, 1, offset, RWF_NOWAIT) : preadv2(fd, &iov, 1, offset, RWF_NOWAIT);
  } while (r < 0 && errno == EINTR);
  return Napi::Number::New(env, r < 0 ? -double(errno) : double(r));
}

}  // namespace vrio
