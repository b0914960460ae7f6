// Garbage collections timed by V8's own GC callbacks, straight into a histogram that JavaScript
// reads at scrape time (nodejs_gc_duration_seconds). A PerformanceObserver does the same with a
// performance entry and a JavaScript call after every collection (~50 µs each, hundreds of
// scavenges a second under load); these callbacks take two clock reads and a few additions.
//
// gcWatch(buckets, count, sum, bounds): Float64Arrays laid out as devices/blk/op-stats.ts's
// FixedHistogram (rows minor, major, incremental, weakcb; `bounds` in seconds, ascending). The
// arrays are held by references for as long as the watch runs; a second call on the same thread
// replaces the first. Per isolate (each worker thread has its own), removed at the environment's
// teardown.
#include <napi.h>
#include <time.h>
#include <v8.h>

#include <vector>

#include "io.h"

namespace vrio {
namespace {

constexpr int kRows = 4;

struct GcWatch {
  v8::Isolate* isolate = nullptr;
  Napi::Reference<Napi::Float64Array> bucketsRef, countRef, sumRef;
  double* buckets = nullptr;
  double* count = nullptr;
  double* sum = nullptr;
  std::vector<double> bounds;
  double start[kRows] = {0, 0, 0, 0};
};

thread_local GcWatch* watch = nullptr;

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

int Row(v8::GCType type) {
  switch (type) {
    case v8::kGCTypeScavenge:
    case v8::kGCTypeMinorMarkCompact:
      return 0;
    case v8::kGCTypeMarkSweepCompact:
      return 1;
    case v8::kGCTypeIncrementalMarking:
      return 2;
    case v8::kGCTypeProcessWeakCallbacks:
      return 3;
    default:
      return -1;
  }
}

void Prologue(v8::Isolate*, v8::GCType type, v8::GCCallbackFlags, void* data) {
  auto* w = static_cast<GcWatch*>(data);
  int r = Row(type);
  if (r >= 0) w->start[r] = Now();
}

void Epilogue(v8::Isolate*, v8::GCType type, v8::GCCallbackFlags, void* data) {
  auto* w = static_cast<GcWatch*>(data);
  int r = Row(type);
  if (r < 0 || w->start[r] == 0) return;
  double d = Now() - w->start[r];
  w->start[r] = 0;
  size_t n = w->bounds.size();
  w->count[r] += 1;
  w->sum[r] += d;
  for (size_t i = 0; i < n; i++) {
    if (d <= w->bounds[i]) {
      w->buckets[r * n + i] += 1;
      return;
    }
  }
}

void Stop(GcWatch* w) {
  w->isolate->RemoveGCPrologueCallback(Prologue, w);
  w->isolate->RemoveGCEpilogueCallback(Epilogue, w);
  delete w;
}

void Cleanup(void*) {
  if (watch == nullptr) return;
  Stop(watch);
  watch = nullptr;
}

Napi::Float64Array Arg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) return {};
  return info[i].As<Napi::Float64Array>();
}

}  // namespace

Napi::Value GcWatchStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Float64Array buckets = Arg(info, 0), count = Arg(info, 1), sum = Arg(info, 2), bounds = Arg(info, 3);
  if (buckets.IsEmpty() || count.IsEmpty() || sum.IsEmpty() || bounds.IsEmpty() || bounds.ElementLength() == 0 ||
      count.ElementLength() < kRows || sum.ElementLength() < kRows ||
      buckets.ElementLength() < kRows * bounds.ElementLength()) {
    Napi::TypeError::New(env, "gcWatch(buckets, count, sum, bounds): Float64Arrays, 4 rows of bounds.length buckets")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (watch != nullptr) {
    Stop(watch);
  } else {
    napi_add_env_cleanup_hook(env, Cleanup, nullptr);
  }
  auto* w = new GcWatch();
  w->isolate = v8::Isolate::GetCurrent();
  w->bucketsRef = Napi::Persistent(buckets);
  w->countRef = Napi::Persistent(count);
  w->sumRef = Napi::Persistent(sum);
  w->buckets = buckets.Data();
  w->count = count.Data();
  w->sum = sum.Data();
  w->bounds.assign(bounds.Data(), bounds.Data() + bounds.ElementLength());
  w->isolate->AddGCPrologueCallback(Prologue, w);
  w->isolate->AddGCEpilogueCallback(Epilogue, w);
  watch = w;
  return env.Undefined();
}

}  // namespace vrio
