// The allocation map of a range of a file (lseek SEEK_DATA / SEEK_HOLE) and posix_fadvise, for
// block back-ends: Node's fs has neither. Both run on the libuv thread pool like Node's own fs
// calls (a file system may have to read metadata to answer), one hop per request.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "io.h"

namespace vrio {

namespace {

Napi::Value ErrnoError(Napi::Env env, int code, const char* syscall) {
  Napi::Error err = Napi::Error::New(env, std::strerror(code));
  err.Set("errno", Napi::Number::New(env, code));
  err.Set("syscall", Napi::String::New(env, syscall));
  err.Set("detail", Napi::String::New(env, ""));
  return err.Value();
}

// Walks [offset, offset + length) with SEEK_DATA / SEEK_HOLE and records alternating runs as
// (length, hole) pairs, at most maxExtents of them; the runs cover a prefix of the range (all of
// it unless the count ran out). A file system without SEEK_DATA (EINVAL, EOPNOTSUPP) reports the
// whole range as data, as the kernel's generic implementation does.
class ExtentsWorker : public Napi::AsyncWorker {
 public:
  ExtentsWorker(Napi::Function cb, int fd, int64_t offset, int64_t length, int maxExtents)
      : Napi::AsyncWorker(cb, "vrio.extents"), fd_(fd), offset_(offset), length_(length), max_(maxExtents) {}

  void Execute() override {
    int64_t pos = offset_;
    const int64_t end = offset_ + length_;
    while (pos < end && static_cast<int>(runs_.size()) < max_) {
      off_t data = lseek(fd_, pos, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) {
          add(end - pos, true);  // no data from pos on: a hole (or past the end of the file)
          pos = end;
          break;
        }
        if (errno == EINVAL || errno == EOPNOTSUPP) {
          add(end - pos, false);
          pos = end;
          break;
        }
        errno_ = errno;
        syscall_ = "lseek(SEEK_DATA)";
        return;
      }
      if (data > pos) {
        int64_t stop = data < end ? data : end;
        add(stop - pos, true);
        pos = stop;
        continue;
      }
      off_t hole = lseek(fd_, pos, SEEK_HOLE);
      if (hole < 0) {
        errno_ = errno;
        syscall_ = "lseek(SEEK_HOLE)";
        return;
      }
      // SEEK_HOLE never returns less than pos for data at pos; guard against a file changing
      // under us anyway, so the loop always advances.
      int64_t stop = hole > pos ? (hole < end ? hole : end) : end;
      add(stop - pos, false);
      pos = stop;
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (errno_ != 0) {
      Callback().Call({ErrnoError(env, errno_, syscall_)});
      return;
    }
    Napi::Float64Array out = Napi::Float64Array::New(env, runs_.size() * 2);
    for (size_t i = 0; i < runs_.size(); i++) {
      out[2 * i] = static_cast<double>(runs_[i].length);
      out[2 * i + 1] = runs_[i].hole ? 1 : 0;
    }
    Callback().Call({env.Null(), out});
  }

 private:
  struct Run {
    int64_t length;
    bool hole;
  };

  void add(int64_t length, bool hole) {
    if (length <= 0) return;
    if (!runs_.empty() && runs_.back().hole == hole) {
      runs_.back().length += length;
      return;
    }
    runs_.push_back({length, hole});
  }

  int fd_;
  int64_t offset_;
  int64_t length_;
  int max_;
  std::vector<Run> runs_;
  int errno_ = 0;
  const char* syscall_ = "";
};

class FadviseWorker : public Napi::AsyncWorker {
 public:
  FadviseWorker(Napi::Function cb, int fd, int64_t offset, int64_t length, int advice)
      : Napi::AsyncWorker(cb, "vrio.fadvise"), fd_(fd), offset_(offset), length_(length), advice_(advice) {}

  // posix_fadvise returns the error number instead of setting errno.
  void Execute() override { errno_ = posix_fadvise(fd_, offset_, length_, advice_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (errno_ == 0) Callback().Call({env.Null()});
    else Callback().Call({ErrnoError(env, errno_, "posix_fadvise")});
  }

 private:
  int fd_;
  int64_t offset_;
  int64_t length_;
  int advice_;
  int errno_ = 0;
};

}  // namespace

// extents(fd, offset, length, maxExtents, callback(err | null, Float64Array [length, hole, ...]))
Napi::Value Extents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() ||
      !info[3].IsNumber() || !info[4].IsFunction()) {
    return ThrowInvalid(env, "extents(fd, offset, length, maxExtents, callback)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t offset = info[1].As<Napi::Number>().Int64Value();
  int64_t length = info[2].As<Napi::Number>().Int64Value();
  int maxExtents = info[3].As<Napi::Number>().Int32Value();
  if (fd < 0 || offset < 0 || length <= 0 || maxExtents < 1 || offset > INT64_MAX - length)
    return ThrowInvalid(env, "extents: bad fd, offset, length or maxExtents");
  (new ExtentsWorker(info[4].As<Napi::Function>(), fd, offset, length, maxExtents))->Queue();
  return env.Undefined();
}

// fadvise(fd, offset, length, advice, callback(err | null)): posix_fadvise(2).
Napi::Value Fadvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() ||
      !info[3].IsNumber() || !info[4].IsFunction()) {
    return ThrowInvalid(env, "fadvise(fd, offset, length, advice, callback)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t offset = info[1].As<Napi::Number>().Int64Value();
  int64_t length = info[2].As<Napi::Number>().Int64Value();
  int advice = info[3].As<Napi::Number>().Int32Value();
  if (fd < 0 || offset < 0 || length < 0) return ThrowInvalid(env, "fadvise: bad fd, offset or length");
  (new FadviseWorker(info[4].As<Napi::Function>(), fd, offset, length, advice))->Queue();
  return env.Undefined();
}

}  // namespace vrio
