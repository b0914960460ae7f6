// The daemons' process settings: malloc's thresholds and the threads' CPUs (setAffinity, below).
//
// tuneMalloc(mmapThreshold, trimThreshold): glibc's malloc keeps freed memory instead of handing
// it back to the kernel at once. A daemon moving GB/s through short-lived buffers (64 KiB socket
// reads, 1 MiB block payloads: Node allocates ArrayBuffers with malloc) otherwise maps and unmaps
// them over and over, and pays a page fault for every 4 KiB of each fresh one (an exit to the
// hypervisor on a VM). Allocations below `mmapThreshold` come from the heap; up to `trimThreshold`
// bytes free at its top stay mapped. Returns false where this is not glibc or mallopt refused.
#include <errno.h>
#include <napi.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <sched.h>

#include <string>

#include "io.h"

namespace vrio {

Napi::Value TuneMalloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    return ThrowInvalid(env, "tuneMalloc(mmapThreshold, trimThreshold): two byte counts");
  int64_t mmap = info[0].As<Napi::Number>().Int64Value();
  int64_t trim = info[1].As<Napi::Number>().Int64Value();
  // glibc caps the mmap threshold at 32 MiB on 64-bit (HEAP_MAX / 2); keep both in int range.
  if (mmap < 128 * 1024 || mmap > 32 * 1024 * 1024 || trim < 0 || trim > (int64_t(1) << 30))
    return ThrowInvalid(env, "tuneMalloc: mmapThreshold must be 128 KiB..32 MiB, trimThreshold 0..1 GiB");
#if defined(__GLIBC__)
  bool ok = mallopt(M_MMAP_THRESHOLD, static_cast<int>(mmap)) == 1 &&
            mallopt(M_TRIM_THRESHOLD, static_cast<int>(trim)) == 1;
  return Napi::Boolean::New(env, ok);
#else
  return Napi::Boolean::New(env, false);
#endif
}

// setAffinity(tid, cpus): the thread `tid` (0: the caller) runs on the CPUs listed only
// (sched_setaffinity). The daemons apply `--cpus` to each of their threads with it; threads they
// start later inherit it.
Napi::Value SetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsArray())
    return ThrowInvalid(env, "setAffinity(tid, cpus): a thread id and an array of CPU numbers");
  int64_t tid = info[0].As<Napi::Number>().Int64Value();
  Napi::Array cpus = info[1].As<Napi::Array>();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < cpus.Length(); i++) {
    Napi::Value v = cpus.Get(i);
    int64_t cpu = v.IsNumber() ? v.As<Napi::Number>().Int64Value() : -1;
    if (cpu < 0 || cpu >= CPU_SETSIZE) return ThrowInvalid(env, "setAffinity: a CPU number out of range");
    CPU_SET(static_cast<int>(cpu), &set);
  }
  if (tid < 0 || CPU_COUNT(&set) == 0) return ThrowInvalid(env, "setAffinity: a thread id and at least one CPU");
  if (sched_setaffinity(static_cast<pid_t>(tid), sizeof set, &set) != 0)
    return ThrowSysErr(env, SysErr{errno, "sched_setaffinity", std::to_string(tid)});
  return env.Undefined();
}

}  // namespace vrio
