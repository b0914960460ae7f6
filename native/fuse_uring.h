// A minimal io_uring (raw syscalls, no liburing) for FUSE over io_uring: 128-byte SQEs (the FUSE
// command lives in the SQE's command area), one submitting thread.
#pragma once

#include <linux/io_uring.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace vrio {

// FUSE over io_uring (Linux 6.14, protocol 7.42; newer than our <linux/fuse.h>).
constexpr uint32_t kFuseOverIoUringFlags2 = 1u << 9;  // FUSE_OVER_IO_URING (1ULL << 41) in flags2
constexpr uint32_t kFuseUringCmdRegister = 1;          // FUSE_IO_URING_CMD_REGISTER
constexpr uint32_t kFuseUringCmdCommitAndFetch = 2;    // FUSE_IO_URING_CMD_COMMIT_AND_FETCH
// struct fuse_uring_req_header: the fuse_in_header / fuse_out_header, then the op's own header,
// then struct fuse_uring_ent_in_out (flags u64, commit_id u64, payload_sz u32, pad, reserved u64).
constexpr size_t kRingOpIn = 128;
constexpr size_t kRingEntInOut = 256;
constexpr size_t kRingPayloadSzAt = kRingEntInOut + 16;
constexpr size_t kRingHeaderLen = 288;
// struct fuse_uring_cmd_req, in the SQE's command area.
struct FuseUringCmdReq {
  uint64_t flags;
  uint64_t commitId;
  uint16_t qid;
  uint8_t padding[6];
};

class Uring {
 public:
  ~Uring();
  // io_uring_setup with SQE128 (and single-issuer, deferred task work where the kernel has
  // them); returns 0 or an errno.
  int Setup(unsigned entries);
  // The next free SQE (zeroed), or nullptr when the submission queue is full.
  struct io_uring_sqe* Sqe();
  // Submits what Sqe() handed out; waits for at least `wait` completions. Returns 0 or an errno
  // (EINTR: interrupted, nothing lost).
  int Enter(unsigned wait);
  // The next completion, or nullptr; Pop() after use.
  const struct io_uring_cqe* Peek();
  void Pop();
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  void* sqMap_ = nullptr;
  size_t sqMapLen_ = 0;
  void* cqMap_ = nullptr;
  size_t cqMapLen_ = 0;
  struct io_uring_sqe* sqes_ = nullptr;
  size_t sqesLen_ = 0;
  std::atomic<unsigned>* sqTail_ = nullptr;
  std::atomic<unsigned>* sqHead_ = nullptr;
  unsigned sqMask_ = 0, sqEntries_ = 0;
  unsigned* sqArray_ = nullptr;
  std::atomic<unsigned>* cqHead_ = nullptr;
  std::atomic<unsigned>* cqTail_ = nullptr;
  unsigned cqMask_ = 0;
  struct io_uring_cqe* cqes_ = nullptr;
  unsigned localTail_ = 0;  // SQEs handed out, not yet published
  unsigned toSubmit_ = 0;
};

}  // namespace vrio
