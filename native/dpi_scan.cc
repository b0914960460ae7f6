// dpiScan (vrio_io.node): the DPI prefilter's scan loop (src/services/dpi/aho-corasick.ts, scan()) in native
// code. The automaton is built and owned by JavaScript; this walks its tables over a buffer and
// records the reporting states it passes, which JavaScript turns into pattern hits. Same hits, in the
// same order, and the same end state as the JavaScript scan (a property test compares them).
//
// A DFA scan is one table load per byte, each depending on the one before: the loop runs at the
// load's latency (about 5 cycles when the row is in L1), not at the core's throughput. So a long
// stretch of plain automaton is cut into four segments scanned side by side, segments 2–4 from the
// root (a guess), and their states kept. Then each guessed segment is run again from the true state
// that the segment before it ended in, until that run meets a kept state: from there on the two
// runs are the same automaton over the same bytes, so the kept states are the true ones (on text the
// runs meet within a few bytes; at worst the whole segment is run again). Hits are then read off the
// true states in order. Measured on ET Open's HTTP automata over HTTP text: 1.6–1.7 ns per byte
// byte-by-byte, 0.5–0.7 four ways (hits read off included).
#include <algorithm>
#include <cstdint>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "io.h"

namespace vrio {

namespace {

// Scalars in and out, one Int32Array (fewer arguments to convert per call).
enum Io { kThreshold, kShallow, kWindow, kStart, kEnd, kState, kHits, kIoSize };

// Stretches shorter than this run byte by byte (the fix-ups would cost more than they save).
constexpr int64_t kMinInterleaved = 128;
// Stretches are run in pieces of at most this many bytes (the kept states of one piece).
constexpr int64_t kPiece = 16384;
thread_local int32_t pieceStates[kPiece];

// Whether some state of states[0, n) reports (is at or above threshold, which is not negative).
bool AnyReporting(const int32_t* states, int64_t n, int32_t threshold) {
  int64_t k = 0;
  bool any = false;
#if defined(__SSE2__)
  const __m128i below = _mm_set1_epi32(threshold - 1);
  __m128i seen = _mm_setzero_si128();
  for (; k + 4 <= n; k += 4)
    seen = _mm_or_si128(seen, _mm_cmpgt_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(states + k)), below));
  any = _mm_movemask_epi8(seen) != 0;
#endif
  for (; k < n; k++) any |= states[k] >= threshold;
  return any;
}

template <typename T>
bool View(napi_env env, napi_value value, napi_typedarray_type want, T** out, size_t* count) {
  napi_typedarray_type type;
  void* data = nullptr;
  size_t length = 0;
  if (napi_get_typedarray_info(env, value, &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != want)
    return false;
  *out = static_cast<T*>(data);
  *count = length;
  return true;
}

class Scanner {
 public:
  Scanner(const int32_t* delta, size_t deltaCount, const uint8_t* classes, const uint8_t* data,
          int32_t threshold, int32_t* hits, size_t maxHits)
      : delta_(delta),
        deltaCount_(static_cast<int64_t>(deltaCount)),
        classes_(classes),
        data_(data),
        threshold_(threshold),
        hits_(hits),
        maxHits_(maxHits) {}

  // The state after byte b from state s (a table entry out of range, only from a malformed table,
  // goes to the root rather than out of bounds).
  int32_t Next(int32_t s, uint8_t b) const {
    const int64_t at = s + static_cast<int64_t>(classes_[b]);
    return (at >= 0 && at < deltaCount_) ? delta_[at] : 0;
  }

  // One byte at i from s; false when the hit records are full (the scan stops after this byte).
  bool Step(int64_t& i, int32_t& s) {
    s = Next(s, data_[i]);
    i++;
    return s < threshold_ || Record(s, i);
  }

  // Plain automaton over [i, stop); false when the hit records filled up (i and s: where it stopped).
  bool Run(int64_t& i, int32_t& s, int64_t stop) {
    while (i < stop) {
      const int64_t length = std::min(stop - i, kPiece);
      if (length < kMinInterleaved) {
        while (i < stop)
          if (!Step(i, s)) return false;
        return true;
      }
      Interleaved(i, length, s);
      const int32_t* const states = pieceStates;
      const int32_t threshold = threshold_;
      // In blocks: a block with no reporting state (most) is one vectorised test.
      for (int64_t block = 0; block < length; block += 32) {
        const int64_t blockEnd = std::min(block + 32, length);
        if (!AnyReporting(states + block, blockEnd - block, threshold)) continue;
        for (int64_t k = block; k < blockEnd; k++) {
          if (states[k] >= threshold && !Record(states[k], i + k + 1)) {
            s = states[k];
            i += k + 1;
            return false;
          }
        }
      }
      s = states[length - 1];
      i += length;
    }
    return true;
  }

  size_t hitCount() const { return n_; }

 private:
  bool Record(int32_t s, int64_t end) {
    hits_[2 * n_] = s;
    hits_[2 * n_ + 1] = static_cast<int32_t>(end);
    return ++n_ < maxHits_;
  }

  // pieceStates[k] = the state after byte from + k, for k < length (kMinInterleaved ≤ length ≤ kPiece).
  // Locals, not members, in the loops: a store through `out` could otherwise alias the members, and
  // they would be loaded again on every byte.
  void Interleaved(int64_t from, int64_t length, int32_t s) {
    const int32_t* const delta = delta_;
    const int64_t count = deltaCount_;
    const uint8_t* const classes = classes_;
    const uint8_t* const p = data_ + from;
    int32_t* __restrict out = pieceStates;
    auto next = [=](int32_t state, uint8_t byte) -> int32_t {
      const int64_t at = state + static_cast<int64_t>(classes[byte]);
      return (at >= 0 && at < count) ? delta[at] : 0;
    };
    const int64_t seg = length / 4;
    int32_t a = s, b = 0, c = 0, d = 0;
    for (int64_t k = 0; k < seg; k++) {
      a = next(a, p[k]);
      b = next(b, p[seg + k]);
      c = next(c, p[2 * seg + k]);
      d = next(d, p[3 * seg + k]);
      out[k] = a;
      out[seg + k] = b;
      out[2 * seg + k] = c;
      out[3 * seg + k] = d;
    }
    for (int64_t k = 4 * seg; k < length; k++) {
      d = next(d, p[k]);
      out[k] = d;
    }
    // Segments 2–4 began at the root: run each again from the true state before it, until it meets
    // a kept state.
    for (int64_t j = 1; j < 4; j++) {
      const int64_t first = j * seg;
      const int64_t last = j == 3 ? length : first + seg;
      int32_t t = out[first - 1];
      for (int64_t k = first; k < last; k++) {
        t = next(t, p[k]);
        if (t == out[k]) break;
        out[k] = t;
      }
    }
  }

  const int32_t* delta_;
  const int64_t deltaCount_;
  const uint8_t* classes_;
  const uint8_t* data_;
  const int32_t threshold_;
  int32_t* hits_;
  const size_t maxHits_;
  size_t n_ = 0;
};

// scan(delta: Int32Array, classes: Uint8Array, pairs: Uint8Array, data: Uint8Array,
//      io: Int32Array, hits: Int32Array): void
// io in: threshold, shallow, window (0: no skipping), start, end, state. io out: state, end (where
// the scan stopped: `end` unless `hits` filled up first), hits (pairs of reporting state and the
// index just past the byte that reached it).
}  // namespace

void DpiScan(const Napi::CallbackInfo& info) {
  napi_env env = info.Env();
  const int32_t* delta = nullptr;
  const uint8_t* classes = nullptr;
  const uint8_t* pairs = nullptr;
  const uint8_t* data = nullptr;
  int32_t* io = nullptr;
  int32_t* hits = nullptr;
  size_t deltaCount = 0, classCount = 0, pairCount = 0, dataCount = 0, ioCount = 0, hitCount = 0;
  if (info.Length() < 6 || !View(env, info[0], napi_int32_array, &delta, &deltaCount) ||
      !View(env, info[1], napi_uint8_array, &classes, &classCount) ||
      !View(env, info[2], napi_uint8_array, &pairs, &pairCount) ||
      !View(env, info[3], napi_uint8_array, &data, &dataCount) ||
      !View(env, info[4], napi_int32_array, &io, &ioCount) ||
      !View(env, info[5], napi_int32_array, &hits, &hitCount)) {
    Napi::TypeError::New(env, "scan: typed arrays expected").ThrowAsJavaScriptException();
    return;
  }
  if (classCount < 256 || ioCount < kIoSize || hitCount < 2) {
    Napi::RangeError::New(env, "scan: tables too small").ThrowAsJavaScriptException();
    return;
  }
  const int32_t shallow = io[kShallow];
  int64_t m = io[kWindow];
  if (pairCount < 65536) m = 0;
  const int64_t end = std::min<int64_t>(io[kEnd], static_cast<int64_t>(dataCount));
  int64_t i = std::max<int64_t>(0, io[kStart]);
  int32_t s = io[kState];
  Scanner scan(delta, deltaCount, classes, data, io[kThreshold], hits, hitCount / 2);
  if (m < 2) {
    scan.Run(i, s, end);
  } else {
    // As scan() in aho-corasick.ts: plain automaton up to `until`, then skipping while shallow. One
    // difference: after a second skip in a row that fails or skips little, the next stretch is long
    // enough to run four ways (the JavaScript scan doubles from 16 bytes); hits and states are the
    // same whatever the stretches.
    const auto longer = [](int64_t backoff) -> int64_t {
      return backoff == 0 ? 16 : std::min<int64_t>(std::max<int64_t>(2 * backoff, kMinInterleaved), 4096);
    };
    int64_t until = s == 0 ? i : i + 1;
    int64_t backoff = 0;
    for (;;) {
      if (!scan.Run(i, s, std::min(until, end))) break;
      const int64_t deep = std::min(i + m, end);
      bool room = true;
      while (i < deep && s >= shallow && room) room = scan.Step(i, s);
      if (!room || i >= end) break;
      if (s >= shallow) {
        backoff = longer(backoff);
        until = i + backoff;
        continue;
      }
      const int64_t from = s == 0 ? i : i - 1;
      int64_t j = from;
      for (int64_t k = j + m - 2; k + 1 < end && pairs[data[k] | (data[k + 1] << 8)] == 0; k += m - 1) j += m - 1;
      backoff = j - from >= 4 * (m - 1) ? 0 : longer(backoff);
      s = 0;
      i = j;
      until = j + m + backoff;
    }
  }
  io[kState] = s;
  io[kEnd] = static_cast<int32_t>(i);
  io[kHits] = static_cast<int32_t>(scan.hitCount());
}

}  // namespace vrio
