// Uring: see fuse_uring.h.
#include "fuse_uring.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace vrio {

namespace {

template <typename T>
T* At(void* base, unsigned off) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + off);
}

}  // namespace

Uring::~Uring() {
  if (sqes_) munmap(sqes_, sqesLen_);
  if (cqMap_ && cqMap_ != sqMap_) munmap(cqMap_, cqMapLen_);
  if (sqMap_) munmap(sqMap_, sqMapLen_);
  if (fd_ >= 0) close(fd_);  // cancels what is still queued
}

int Uring::Setup(unsigned entries) {
  struct io_uring_params p;
  const unsigned tries[] = {IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                            IORING_SETUP_SQE128};
  for (unsigned flags : tries) {
    memset(&p, 0, sizeof p);
    p.flags = flags;
    fd_ = int(syscall(__NR_io_uring_setup, entries, &p));
    if (fd_ >= 0 || errno != EINVAL) break;
  }
  if (fd_ < 0) return errno;
  sqMapLen_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cqMapLen_ = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  bool single = p.features & IORING_FEAT_SINGLE_MMAP;
  if (single && cqMapLen_ > sqMapLen_) sqMapLen_ = cqMapLen_;
  sqMap_ = mmap(nullptr, sqMapLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
  if (sqMap_ == MAP_FAILED) {
    sqMap_ = nullptr;
    return errno;
  }
  if (single) {
    cqMap_ = sqMap_;
  } else {
    cqMap_ = mmap(nullptr, cqMapLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
    if (cqMap_ == MAP_FAILED) {
      cqMap_ = nullptr;
      return errno;
    }
  }
  sqesLen_ = p.sq_entries * 2 * sizeof(struct io_uring_sqe);  // SQE128: twice the size
  void* s = mmap(nullptr, sqesLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES);
  if (s == MAP_FAILED) return errno;
  sqes_ = static_cast<struct io_uring_sqe*>(s);
  sqHead_ = At<std::atomic<unsigned>>(sqMap_, p.sq_off.head);
  sqTail_ = At<std::atomic<unsigned>>(sqMap_, p.sq_off.tail);
  sqMask_ = *At<unsigned>(sqMap_, p.sq_off.ring_mask);
  sqEntries_ = p.sq_entries;
  sqArray_ = At<unsigned>(sqMap_, p.sq_off.array);
  cqHead_ = At<std::atomic<unsigned>>(cqMap_, p.cq_off.head);
  cqTail_ = At<std::atomic<unsigned>>(cqMap_, p.cq_off.tail);
  cqMask_ = *At<unsigned>(cqMap_, p.cq_off.ring_mask);
  cqes_ = At<struct io_uring_cqe>(cqMap_, p.cq_off.cqes);
  localTail_ = sqTail_->load(std::memory_order_relaxed);
  return 0;
}

struct io_uring_sqe* Uring::Sqe() {
  if (localTail_ - sqHead_->load(std::memory_order_acquire) >= sqEntries_) return nullptr;
  unsigned i = localTail_ & sqMask_;
  auto* sqe = reinterpret_cast<struct io_uring_sqe*>(reinterpret_cast<uint8_t*>(sqes_) + size_t(i) * 128);
  memset(sqe, 0, 128);
  sqArray_[i] = i;
  localTail_++;
  toSubmit_++;
  return sqe;
}

int Uring::Enter(unsigned wait) {
  sqTail_->store(localTail_, std::memory_order_release);
  unsigned n = toSubmit_;
  unsigned flags = wait > 0 ? IORING_ENTER_GETEVENTS : 0;
  long r = syscall(__NR_io_uring_enter, fd_, n, wait, flags, nullptr, 0);
  if (r < 0) return errno;
  toSubmit_ -= unsigned(r) < n ? unsigned(r) : n;
  return 0;
}

const struct io_uring_cqe* Uring::Peek() {
  unsigned head = cqHead_->load(std::memory_order_relaxed);
  if (head == cqTail_->load(std::memory_order_acquire)) return nullptr;
  return &cqes_[head & cqMask_];
}

void Uring::Pop() { cqHead_->store(cqHead_->load(std::memory_order_relaxed) + 1, std::memory_order_release); }

}  // namespace vrio
