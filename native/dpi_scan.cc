// dpiScan (vrio_io.node): the DPI prefilter's scan loop (src/services/dpi/aho-corasick.ts, scan()) in native
// code. The automaton is built and owned by JavaScript; this walks its tables over a buffer and
// records the reporting states it passes, which JavaScript turns into pattern hits. Same algorithm,
// same hits and end state as the JavaScript scan (a test compares them).
#include <algorithm>
#include <cstdint>

#include "io.h"

namespace vrio {

namespace {

template <typename T>
T* Elements(const Napi::Value& value, size_t* count) {
  Napi::TypedArray a = value.As<Napi::TypedArray>();
  *count = a.ElementLength();
  return reinterpret_cast<T*>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
}

// Scalars in and out, one Int32Array (fewer arguments to convert per call).
enum Io { kThreshold, kShallow, kWindow, kStart, kEnd, kState, kHits, kIoSize };

// scan(delta: Int32Array, classes: Uint8Array, pairs: Uint8Array, data: Uint8Array,
//      io: Int32Array, hits: Int32Array): void
// io in: threshold, shallow, window (0: no skipping), start, end, state. io out: state, end (where
// the scan stopped: `end` unless `hits` filled up first), hits (pairs of reporting state and the
// index just past the byte that reached it).
}  // namespace

void DpiScan(const Napi::CallbackInfo& info) {
  for (size_t a = 0; a < 6; a++) {
    if (!info[a].IsTypedArray()) {
      Napi::TypeError::New(info.Env(), "scan: typed arrays expected").ThrowAsJavaScriptException();
      return;
    }
  }
  size_t deltaCount = 0, classCount = 0, pairCount = 0, dataCount = 0, ioCount = 0, hitCount = 0;
  const int32_t* delta = Elements<int32_t>(info[0], &deltaCount);
  const uint8_t* classes = Elements<uint8_t>(info[1], &classCount);
  const uint8_t* pairs = Elements<uint8_t>(info[2], &pairCount);
  const uint8_t* data = Elements<uint8_t>(info[3], &dataCount);
  int32_t* io = Elements<int32_t>(info[4], &ioCount);
  int32_t* hits = Elements<int32_t>(info[5], &hitCount);
  if (classCount < 256 || ioCount < kIoSize || hitCount < 2) {
    Napi::RangeError::New(info.Env(), "scan: tables too small").ThrowAsJavaScriptException();
    return;
  }
  const int32_t threshold = io[kThreshold];
  const int32_t shallow = io[kShallow];
  int64_t m = io[kWindow];
  if (pairCount < 65536) m = 0;
  const int64_t end = std::min<int64_t>(io[kEnd], static_cast<int64_t>(dataCount));
  int64_t i = std::max<int64_t>(0, io[kStart]);
  int32_t s = io[kState];
  size_t n = 0;
  const size_t maxHits = hitCount / 2;
  // One step of the automaton; false when `hits` is full (the scan stops after this byte).
  auto step = [&]() -> bool {
    const int64_t at = s + static_cast<int64_t>(classes[data[i]]);
    s = (at >= 0 && static_cast<size_t>(at) < deltaCount) ? delta[at] : 0;
    i++;
    if (s >= threshold) {
      hits[2 * n] = s;
      hits[2 * n + 1] = static_cast<int32_t>(i);
      if (++n == maxHits) return false;
    }
    return true;
  };
  bool room = true;
  if (m < 2) {
    while (i < end && room) room = step();
  } else {
    int64_t until = s == 0 ? i : i + 1;
    int64_t backoff = 0;
    while (room) {
      const int64_t stop = std::min(until, end);
      while (i < stop && room) room = step();
      if (!room) break;
      const int64_t deep = std::min(i + m, end);
      while (i < deep && s >= shallow && room) room = step();
      if (!room || i >= end) break;
      if (s >= shallow) {
        backoff = backoff == 0 ? 16 : std::min<int64_t>(2 * backoff, 4096);
        until = i + backoff;
        continue;
      }
      const int64_t from = s == 0 ? i : i - 1;
      int64_t j = from;
      for (int64_t k = j + m - 2; k + 1 < end && pairs[data[k] | (data[k + 1] << 8)] == 0; k += m - 1) j += m - 1;
      backoff = j - from >= 4 * (m - 1) ? 0 : backoff == 0 ? 16 : std::min<int64_t>(2 * backoff, 4096);
      s = 0;
      i = j;
      until = j + m + backoff;
    }
  }
  io[kState] = s;
  io[kEnd] = static_cast<int32_t>(i);
  io[kHits] = static_cast<int32_t>(n);
}

}  // namespace vrio
