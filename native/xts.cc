// AES-XTS over many disk sectors in one call, for the crypt service (src/services/crypt/xts.ts).
//
// OpenSSL's XTS takes one tweak per call, and each call has a fixed cost (~80 ns measured on
// x86-64 with OpenSSL 3.0: the provider layers, then encrypting the tweak, whose AES rounds
// cannot overlap anything). At 512-byte sectors that halves the rate, so sectors under 4 KiB go
// another way, per request: all sector tweaks are encrypted with key 2 in one AES-ECB call; then,
// 16 KiB at a time (so the passes over a chunk stay in L1/L2), each tweak is expanded across its
// sector (multiplied by alpha in GF(2^128), four sectors interleaved so the multiplications
// overlap), stored and XORed into the data; the chunk goes through AES-ECB with key 1 in one call;
// the stored tweaks are XORed in again. Same result as XTS per sector (no ciphertext stealing:
// sectors are whole blocks), checked against per-sector node:crypto in the tests. Sectors of 4 KiB
// and up, where the fixed cost is small, use OpenSSL's XTS directly, one call per sector.
//
// The cipher is OpenSSL's, taken from the Node binary that loads this addon (it exports
// libcrypto's symbols). On x86-64 the tweak passes use AVX2 when the CPU has it (checked at run
// time), else SSE2 (every x86-64 CPU has it); elsewhere plain 64-bit code.
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstring>

#include "io.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace vrio {

namespace {

// Bytes per AES-ECB call: the data and its expanded tweaks (32 KiB together) stay in cache
// between the three passes.
constexpr size_t kChunk = 16384;

#if defined(__x86_64__)
using Block = __m128i;
inline Block Load(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline void Store(uint8_t* p, Block v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
inline Block Xor(Block a, Block b) { return _mm_xor_si128(a, b); }
// T * alpha in GF(2^128), little-endian (IEEE 1619): each 64-bit half shifted left by one, the
// low half's top bit carried into the high half, the high half's top bit folded in as 0x87.
inline Block MulAlpha(Block t) {
  const __m128i poly = _mm_set_epi32(0, 1, 0, 0x87);
  // Dword 0 <- sign of dword 3, dword 2 <- sign of dword 1 (all ones or zero), then masked.
  __m128i carry = _mm_and_si128(_mm_shuffle_epi32(_mm_srai_epi32(t, 31), 0x13), poly);
  return _mm_xor_si128(_mm_add_epi64(t, t), carry);
}
#else
struct Block {
  uint64_t lo, hi;
};
inline Block Load(const uint8_t* p) {
  Block b;
  std::memcpy(&b.lo, p, 8);  // x86-64 and aarch64 Linux are little-endian, as XTS is
  std::memcpy(&b.hi, p + 8, 8);
  return b;
}
inline void Store(uint8_t* p, Block v) {
  std::memcpy(p, &v.lo, 8);
  std::memcpy(p + 8, &v.hi, 8);
}
inline Block Xor(Block a, Block b) { return Block{a.lo ^ b.lo, a.hi ^ b.hi}; }
inline Block MulAlpha(Block t) {
  uint64_t carry = static_cast<uint64_t>(static_cast<int64_t>(t.hi) >> 63) & 0x87;
  return Block{(t.lo << 1) ^ carry, (t.hi << 1) | (t.lo >> 63)};
}
#endif

#if defined(__x86_64__)
// The same two passes with AVX2, two blocks per register, for CPUs that have it (checked once at
// run time; the rest of the addon is built for baseline x86-64).
#define VRIO_AVX2 __attribute__((target("avx2")))

// Both 128-bit lanes times alpha, as MulAlpha.
VRIO_AVX2 inline __m256i MulAlpha2x(__m256i t) {
  const __m256i poly = _mm256_set_epi32(0, 1, 0, 0x87, 0, 1, 0, 0x87);
  __m256i carry = _mm256_and_si256(_mm256_shuffle_epi32(_mm256_srai_epi32(t, 31), 0x13), poly);
  return _mm256_xor_si256(_mm256_add_epi64(t, t), carry);
}

// As Whiten below; a register holds blocks j and j+1 of a sector and steps by alpha^2. `blocks` is even.
template <int G>
VRIO_AVX2 void Whiten2x(uint8_t* out, const uint8_t* in, uint8_t* tw, const uint8_t* tweaks, size_t sectorSize,
                        size_t blocks) {
  __m256i t[G];
  for (int g = 0; g < G; g++) {
    __m128i t0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tweaks + 16 * g));
    t[g] = _mm256_set_m128i(MulAlpha(t0), t0);
  }
  for (size_t off = 0; off < blocks * 16; off += 32) {
    for (int g = 0; g < G; g++) {
      size_t at = g * sectorSize + off;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tw + at), t[g]);
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + at));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + at), _mm256_xor_si256(v, t[g]));
      t[g] = MulAlpha2x(MulAlpha2x(t[g]));
    }
  }
}

// out ^= tw over `bytes` (a multiple of 32).
VRIO_AVX2 void XorIn2x(uint8_t* out, const uint8_t* tw, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 32) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out + i));
    __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tw + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_xor_si256(v, t));
  }
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

inline void Store64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

// For G sectors of `blocks` blocks each, starting at in/out/tw: tw <- T_j (the sector's tweak
// times alpha^j for block j), out <- in ^ T_j. The G chains are independent, so the CPU overlaps them.
template <int G>
void Whiten(uint8_t* out, const uint8_t* in, uint8_t* tw, const uint8_t* tweaks, size_t sectorSize,
            size_t blocks) {
  Block t[G];
  for (int g = 0; g < G; g++) t[g] = Load(tweaks + 16 * g);
  for (size_t off = 0; off < blocks * 16; off += 16) {
    for (int g = 0; g < G; g++) {
      size_t at = g * sectorSize + off;
      Store(tw + at, t[g]);
      Store(out + at, Xor(Load(in + at), t[g]));
      t[g] = MulAlpha(t[g]);
    }
  }
}

// Whiten over n sectors, four at a time.
template <template <int> class W>
void WhitenAll(uint8_t* out, const uint8_t* in, uint8_t* tw, const uint8_t* tweaks, size_t n, size_t sectorSize) {
  size_t blocks = sectorSize / 16;
  size_t s = 0;
  for (; s + 4 <= n; s += 4)
    W<4>::Run(out + s * sectorSize, in + s * sectorSize, tw + s * sectorSize, tweaks + s * 16, sectorSize, blocks);
  uint8_t* o = out + s * sectorSize;
  const uint8_t* i = in + s * sectorSize;
  uint8_t* t = tw + s * sectorSize;
  const uint8_t* k = tweaks + s * 16;
  switch (n - s) {
    case 3:
      W<3>::Run(o, i, t, k, sectorSize, blocks);
      break;
    case 2:
      W<2>::Run(o, i, t, k, sectorSize, blocks);
      break;
    case 1:
      W<1>::Run(o, i, t, k, sectorSize, blocks);
      break;
    default:
      break;
  }
}

// out ^= tw over `bytes` (a multiple of 16).
void XorIn(uint8_t* out, const uint8_t* tw, size_t bytes) {
  size_t i = 0;
  for (; i + 64 <= bytes; i += 64) {
    Store(out + i, Xor(Load(out + i), Load(tw + i)));
    Store(out + i + 16, Xor(Load(out + i + 16), Load(tw + i + 16)));
    Store(out + i + 32, Xor(Load(out + i + 32), Load(tw + i + 32)));
    Store(out + i + 48, Xor(Load(out + i + 48), Load(tw + i + 48)));
  }
  for (; i < bytes; i += 16) Store(out + i, Xor(Load(out + i), Load(tw + i)));
}

template <int G>
struct WhitenSse {
  static void Run(uint8_t* out, const uint8_t* in, uint8_t* tw, const uint8_t* tweaks, size_t sectorSize,
                  size_t blocks) {
    Whiten<G>(out, in, tw, tweaks, sectorSize, blocks);
  }
};

#if defined(__x86_64__)
template <int G>
struct WhitenAvx2 {
  VRIO_AVX2 static void Run(uint8_t* out, const uint8_t* in, uint8_t* tw, const uint8_t* tweaks, size_t sectorSize,
                            size_t blocks) {
    Whiten2x<G>(out, in, tw, tweaks, sectorSize, blocks);
  }
};
#endif

EVP_CIPHER_CTX* NewCtx(const EVP_CIPHER* cipher, const uint8_t* key, int encrypt) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == nullptr) return nullptr;
  if (EVP_CipherInit_ex(ctx, cipher, nullptr, key, nullptr, encrypt) != 1 ||
      EVP_CIPHER_CTX_set_padding(ctx, 0) != 1) {
    EVP_CIPHER_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

}  // namespace

Napi::Function XtsCipher::Define(Napi::Env env) {
  return DefineClass(env, "XtsCipher",
                     {InstanceMethod<&XtsCipher::Crypt>("crypt"), InstanceMethod<&XtsCipher::Destroy>("destroy")});
}

// new XtsCipher(key): key is 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS), data key first.
XtsCipher::XtsCipher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<XtsCipher>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) {
    ThrowInvalid(env, "XtsCipher(key: Uint8Array)");
    return;
  }
  Napi::Uint8Array key = info[0].As<Napi::Uint8Array>();
  const EVP_CIPHER* ecb;
  const EVP_CIPHER* xts;
  if (key.ByteLength() == 32) {
    ecb = EVP_aes_128_ecb();
    xts = EVP_aes_128_xts();
  } else if (key.ByteLength() == 64) {
    ecb = EVP_aes_256_ecb();
    xts = EVP_aes_256_xts();
  } else {
    ThrowInvalid(env, "XTS key must be 32 or 64 bytes");
    return;
  }
  size_t half = key.ByteLength() / 2;
  enc_ = NewCtx(ecb, key.Data(), 1);
  dec_ = NewCtx(ecb, key.Data(), 0);
  tweak_ = NewCtx(ecb, key.Data() + half, 1);
  xtsEnc_ = NewCtx(xts, key.Data(), 1);
  xtsDec_ = NewCtx(xts, key.Data(), 0);
  if (enc_ == nullptr || dec_ == nullptr || tweak_ == nullptr || xtsEnc_ == nullptr || xtsDec_ == nullptr) {
    Free();
    ThrowInvalid(env, "OpenSSL refused the AES key");
  }
}

XtsCipher::~XtsCipher() { Free(); }

void XtsCipher::Free() {
  // EVP_CIPHER_CTX_free cleanses the key schedule.
  EVP_CIPHER_CTX_free(enc_);
  EVP_CIPHER_CTX_free(dec_);
  EVP_CIPHER_CTX_free(tweak_);
  EVP_CIPHER_CTX_free(xtsEnc_);
  EVP_CIPHER_CTX_free(xtsDec_);
  enc_ = dec_ = tweak_ = xtsEnc_ = xtsDec_ = nullptr;
  if (!scratch_.empty()) OPENSSL_cleanse(scratch_.data(), scratch_.size());
  std::vector<uint8_t>().swap(scratch_);
}

Napi::Value XtsCipher::Destroy(const Napi::CallbackInfo& info) {
  Free();
  return info.Env().Undefined();
}

// crypt(encrypt, src, dst, firstTweak, sectorSize, tweakStep): dst (same length as src; src
// itself or not overlapping it) gets src en- or decrypted as whole sectors; sector k of the request
// uses the tweak firstTweak + k * tweakStep as a little-endian 64-bit number (plain64).
Napi::Value XtsCipher::Crypt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (enc_ == nullptr) return ThrowInvalid(env, "the XTS cipher was destroyed");
  if (info.Length() < 6 || !info[0].IsBoolean() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsNumber() || !info[4].IsNumber() || !info[5].IsNumber()) {
    return ThrowInvalid(env, "crypt(encrypt, src, dst, firstTweak, sectorSize, tweakStep)");
  }
  bool encrypt = info[0].As<Napi::Boolean>().Value();
  Napi::Uint8Array src = info[1].As<Napi::Uint8Array>();
  Napi::Uint8Array dst = info[2].As<Napi::Uint8Array>();
  int64_t first = info[3].As<Napi::Number>().Int64Value();
  int64_t sectorSize = info[4].As<Napi::Number>().Int64Value();
  int64_t step = info[5].As<Napi::Number>().Int64Value();
  size_t length = src.ByteLength();
  if (dst.ByteLength() != length || sectorSize < 16 || sectorSize > 65536 || (sectorSize & 15) != 0 ||
      length % static_cast<size_t>(sectorSize) != 0 || length > 0x7fffffff || first < 0 || step < 0) {
    return ThrowInvalid(env, "crypt: lengths must be whole sectors of 16..65536 bytes, tweaks non-negative");
  }
  if (length == 0) return env.Undefined();
  const uint8_t* in = src.Data();
  uint8_t* out = dst.Data();
  if (in != out && in < out + length && out < in + length) {
    return ThrowInvalid(env, "crypt: dst must be src itself or not overlap it");
  }
  size_t sectors = length / sectorSize;
  // Measured (x86-64, OpenSSL 3.0): the per-call cost of OpenSSL's XTS is ~80 ns; from 4 KiB
  // sectors on it costs less than the passes of the ECB path, at 2 KiB they are even.
  bool ok = sectorSize >= 4096 ? XtsPath(encrypt, in, out, sectors, first, sectorSize, step)
                : EcbPath(encrypt, in, out, sectors, first, sectorSize, step);
  if (!ok) return ThrowInvalid(env, "OpenSSL failed to run AES");
  return env.Undefined();
}

// One OpenSSL XTS call per sector, the IV (tweak) set before each.
bool XtsCipher::XtsPath(bool encrypt, const uint8_t* in, uint8_t* out, size_t sectors, int64_t first,
                        size_t sectorSize, int64_t step) {
  EVP_CIPHER_CTX* ctx = encrypt ? xtsEnc_ : xtsDec_;
  uint8_t iv[16] = {0};
  int outl = 0;
  for (size_t s = 0; s < sectors; s++) {
    Store64(iv, static_cast<uint64_t>(first + static_cast<int64_t>(s) * step));
    if (EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, iv, -1) != 1 ||
        EVP_CipherUpdate(ctx, out + s * sectorSize, &outl, in + s * sectorSize, static_cast<int>(sectorSize)) !=
            1) {
      return false;
    }
  }
  return true;
}

// The tweaks by hand around AES-ECB, a chunk at a time (see the top of this file).
bool XtsCipher::EcbPath(bool encrypt, const uint8_t* in, uint8_t* out, size_t sectors, int64_t first,
                        size_t sectorSize, int64_t step) {
  size_t perChunk = sectorSize >= kChunk ? 1 : kChunk / sectorSize;
  size_t chunkBytes = perChunk * sectorSize;
  // Scratch: the request's plain tweaks, then (in place) the encrypted ones; after them, one
  // chunk's expanded tweaks.
  size_t need = sectors * 16 + chunkBytes;
  if (scratch_.size() < need) scratch_.resize(need);
  uint8_t* tweaks = scratch_.data();
  uint8_t* tw = tweaks + sectors * 16;
  std::memset(tweaks, 0, sectors * 16);
  for (size_t s = 0; s < sectors; s++) Store64(tweaks + s * 16, static_cast<uint64_t>(first + s * step));
  int outl = 0;
  if (EVP_EncryptUpdate(tweak_, tweaks, &outl, tweaks, static_cast<int>(sectors * 16)) != 1) return false;

  EVP_CIPHER_CTX* aes = encrypt ? enc_ : dec_;
#if defined(__x86_64__)
  bool wide = sectorSize % 32 == 0 && HasAvx2();
#endif
  for (size_t s0 = 0; s0 < sectors; s0 += perChunk) {
    size_t n = sectors - s0 < perChunk ? sectors - s0 : perChunk;
    const uint8_t* i0 = in + s0 * sectorSize;
    uint8_t* o0 = out + s0 * sectorSize;
    const uint8_t* t0 = tweaks + s0 * 16;
#if defined(__x86_64__)
    if (wide) {
      WhitenAll<WhitenAvx2>(o0, i0, tw, t0, n, sectorSize);
      if (EVP_CipherUpdate(aes, o0, &outl, o0, static_cast<int>(n * sectorSize)) != 1) return false;
      XorIn2x(o0, tw, n * sectorSize);
      continue;
    }
#endif
    WhitenAll<WhitenSse>(o0, i0, tw, t0, n, sectorSize);
    if (EVP_CipherUpdate(aes, o0, &outl, o0, static_cast<int>(n * sectorSize)) != 1) return false;
    XorIn(o0, tw, n * sectorSize);
  }
  return true;
}

}  // namespace vrio
