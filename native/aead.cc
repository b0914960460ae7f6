// The frame AEAD of a sealed vrio channel (docs/protocol.md, "Sealed segments"): AES-256-GCM or
// ChaCha20-Poly1305 from OpenSSL (the libcrypto of the Node binary, as xts.cc), one frame per call,
// in place. One EVP_CIPHER_CTX per key and direction, set up once; per frame only the IV changes.
//   nonce = 4 zero bytes | counter (64-bit big-endian)
//   AAD   = IPv4 source | IPv4 destination | TCP header with checksum and SEAL tag zeroed
//   tag   = the AEAD tag truncated to 12 bytes
// The same interface as NodeFrameAead (src/transport/aead.ts), which the tests compare it with.
//
// AES-256-GCM goes through Intel's Multi-Buffer Crypto for IPsec library (libipsec-mb, a Debian
// package) when the addon is built with it (binding.gyp: VRIO_IPSEC_MB, set when its header is
// there) and it finds AES-NI: its VAES/VPCLMULQDQ AVX-512 code seals 3-5x faster than the OpenSSL
// 3.0 inside Node 20 on this kind of machine (issue 12). Same cipher, same bytes on the wire; the
// environment variable VRIO_AEAD=openssl picks OpenSSL instead (for A/B runs).
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#ifdef VRIO_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

#include "io.h"

namespace vrio {

namespace {

constexpr size_t kTagBytes = 12;
constexpr size_t kMaxTcpHeader = 60;

EVP_CIPHER_CTX* NewAeadCtx(const EVP_CIPHER* cipher, const uint8_t* key, int encrypt) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == nullptr) return nullptr;
  if (EVP_CipherInit_ex(ctx, cipher, nullptr, nullptr, nullptr, encrypt) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) != 1 ||
      EVP_CipherInit_ex(ctx, nullptr, nullptr, key, nullptr, encrypt) != 1) {
    EVP_CIPHER_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

struct FrameArgs {
  uint8_t* frame;
  size_t ip, tcp, payload, end, tag;
  uint64_t counter;
};

// The frame (info[0]) and the six numbers the caller wrote into the instance's argument array
// (ipOffset, tcpOffset, payloadOffset, end, tagOffset, counter), checked. Numbers go through that
// array rather than as arguments: six napi_get_value_double calls, and past six arguments a heap
// allocation in Napi::CallbackInfo, cost more than sealing a small frame.
bool ParseArgs(const Napi::CallbackInfo& info, const double* v, FrameArgs* a) {
  if (info.Length() < 1 || v == nullptr) return false;
  napi_env env = info.Env();
  void* data = nullptr;
  size_t length = 0;
  napi_typedarray_type type;
  if (napi_get_typedarray_info(env, info[0], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array)
    return false;
  for (size_t i = 0; i < 6; i++) {
    if (!(v[i] >= 0) || v[i] > 9007199254740991.0 || v[i] != static_cast<double>(static_cast<uint64_t>(v[i])))
      return false;
  }
  a->frame = static_cast<uint8_t*>(data);
  a->ip = static_cast<size_t>(v[0]);
  a->tcp = static_cast<size_t>(v[1]);
  a->payload = static_cast<size_t>(v[2]);
  a->end = static_cast<size_t>(v[3]);
  a->tag = static_cast<size_t>(v[4]);
  a->counter = static_cast<uint64_t>(v[5]);
  return a->ip + 20 <= a->tcp && a->tcp + 20 <= a->payload && a->payload - a->tcp <= kMaxTcpHeader &&
         a->payload <= a->end && a->end <= length && a->end - a->payload <= 0x7fffffff &&
         a->tag >= a->tcp + 20 && a->tag + kTagBytes <= a->payload;
}

// The optional (buffer, offset) pair at info[at], info[at + 1]: `n` bytes there, not overlapping
// [p, p + n) unless exactly at p. Sets *out (left as is when the pair is absent); false when invalid.
bool ParseOther(const Napi::CallbackInfo& info, size_t at, size_t n, const uint8_t* p, uint8_t** out) {
  if (info.Length() <= at || info[at].IsUndefined()) return true;
  napi_env env = info.Env();
  void* data = nullptr;
  size_t length = 0;
  napi_typedarray_type type;
  double offset = -1;
  if (napi_get_typedarray_info(env, info[at], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array || info.Length() <= at + 1 ||
      napi_get_value_double(env, info[at + 1], &offset) != napi_ok)
    return false;
  if (!(offset >= 0) || offset != static_cast<double>(static_cast<size_t>(offset)) ||
      static_cast<size_t>(offset) + n > length)
    return false;
  uint8_t* q = static_cast<uint8_t*>(data) + static_cast<size_t>(offset);
  if (q != p && q < p + n && p < q + n) return false;
  *out = q;
  return true;
}

// The plaintext a seal reads from outside the frame, as pieces in order: at most kMaxPieces.
struct Piece {
  const uint8_t* data;
  size_t length;
};
constexpr size_t kMaxPieces = 16;

// The source pair at info[1], info[2] of sealFrame: a Uint8Array and an offset into it (one piece),
// or an array of Uint8Arrays (a message's chunks) and an offset into their concatenation (the
// pieces from there on). Takes `n` bytes, written to [p, p + n): no piece may overlap that range
// unless exactly in place. False when invalid (too short, overlapping, more than kMaxPieces pieces).
bool ParseSource(const Napi::CallbackInfo& info, size_t n, uint8_t* p, Piece* pieces, size_t* count) {
  *count = 0;
  if (info.Length() < 3) return false;
  napi_env env = info.Env();
  bool isArray = false;
  if (napi_is_array(env, info[1], &isArray) != napi_ok) return false;
  if (!isArray) {
    uint8_t* q = nullptr;
    if (!ParseOther(info, 1, n, p, &q) || q == nullptr) return false;
    if (n > 0) pieces[(*count)++] = {q, n};
    return true;
  }
  double offset = -1;
  uint32_t chunks = 0;
  if (napi_get_value_double(env, info[2], &offset) != napi_ok || !(offset >= 0) ||
      offset != static_cast<double>(static_cast<size_t>(offset)) ||
      napi_get_array_length(env, info[1], &chunks) != napi_ok)
    return false;
  size_t skip = static_cast<size_t>(offset);
  size_t done = 0;
  for (uint32_t i = 0; i < chunks && done < n; i++) {
    napi_value chunk;
    void* data = nullptr;
    size_t length = 0;
    napi_typedarray_type type;
    if (napi_get_element(env, info[1], i, &chunk) != napi_ok ||
        napi_get_typedarray_info(env, chunk, &type, &length, &data, nullptr, nullptr) != napi_ok ||
        type != napi_uint8_array)
      return false;
    if (skip >= length) {
      skip -= length;
      continue;
    }
    size_t take = length - skip < n - done ? length - skip : n - done;
    const uint8_t* q = static_cast<const uint8_t*>(data) + skip;
    const uint8_t* d = p + done;
    if (q != d && q < d + take && d < q + take) return false;
    if (*count == kMaxPieces) return false;
    pieces[(*count)++] = {q, take};
    done += take;
    skip = 0;
  }
  return done == n;
}

void MakeIv(uint8_t iv[12], uint64_t counter) {
  std::memset(iv, 0, 4);
  for (int i = 0; i < 8; i++) iv[4 + i] = static_cast<uint8_t>(counter >> (56 - 8 * i));
}

// The AAD into `aad` (8 + kMaxTcpHeader bytes): addresses, then the TCP header with checksum and
// tag zeroed. Returns its length.
size_t MakeAad(uint8_t* aad, const FrameArgs& a) {
  size_t header = a.payload - a.tcp;
  std::memcpy(aad, a.frame + a.ip + 12, 8);
  std::memcpy(aad + 8, a.frame + a.tcp, header);
  aad[8 + 16] = 0;
  aad[8 + 17] = 0;
  std::memset(aad + 8 + (a.tag - a.tcp), 0, kTagBytes);
  return 8 + header;
}

bool FeedAad(EVP_CIPHER_CTX* ctx, const FrameArgs& a) {
  uint8_t aad[8 + kMaxTcpHeader];
  size_t length = MakeAad(aad, a);
  int outl = 0;
  return EVP_CipherUpdate(ctx, nullptr, &outl, aad, static_cast<int>(length)) == 1;
}

#ifdef VRIO_IPSEC_MB
// One manager for the process: the GCM calls below only use its function table (chosen once for
// this CPU), never its job queue, so any thread may use it. Null when the library finds no AES-NI
// or VRIO_AEAD=openssl is set.
IMB_MGR* MbManager() {
  static IMB_MGR* const mgr = []() -> IMB_MGR* {
    const char* choice = std::getenv("VRIO_AEAD");
    if (choice != nullptr && std::strcmp(choice, "openssl") == 0) return nullptr;
    IMB_MGR* m = alloc_mb_mgr(0);
    if (m == nullptr) return nullptr;
    init_mb_mgr_auto(m, nullptr);
    if (imb_get_errno(m) != 0 || m->used_arch == IMB_ARCH_NOAESNI || m->used_arch == IMB_ARCH_NONE) {
      free_mb_mgr(m);
      return nullptr;
    }
    return m;
  }();
  return mgr;
}

// Starts one frame's GCM pass: the nonce and the frame's AAD.
void MbStart(IMB_MGR* m, const gcm_key_data* key, gcm_context_data* ctx, const uint8_t iv[12], const FrameArgs& a) {
  uint8_t aad[8 + kMaxTcpHeader];
  size_t length = MakeAad(aad, a);
  IMB_AES256_GCM_INIT(m, key, ctx, iv, aad, length);
}

const char* MbArchName(IMB_MGR* m) {
  switch (m->used_arch) {
    case IMB_ARCH_SSE: return "ipsec-mb-sse";
    case IMB_ARCH_AVX: return "ipsec-mb-avx";
    case IMB_ARCH_AVX2: return "ipsec-mb-avx2";
    case IMB_ARCH_AVX512: return "ipsec-mb-avx512";
    default: return "ipsec-mb";
  }
}
#endif

}  // namespace

Napi::Value AeadImplementation(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int cipher = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 1;
#ifdef VRIO_IPSEC_MB
  if (cipher == 1 && MbManager() != nullptr) return Napi::String::New(env, MbArchName(MbManager()));
#endif
  (void)cipher;
  return Napi::String::New(env, "openssl");
}

Napi::Function FrameAead::Define(Napi::Env env) {
  return DefineClass(env, "FrameAead",
                     {InstanceMethod<&FrameAead::Seal>("sealFrame"), InstanceMethod<&FrameAead::Open>("openFrame"),
                      InstanceMethod<&FrameAead::Destroy>("destroy")});
}

// new FrameAead(cipher, key, args): cipher 1 = AES-256-GCM, 2 = ChaCha20-Poly1305; key 32 bytes;
// args: a Float64Array of at least 6 elements, where the caller puts each call's numbers (held
// for the instance's life).
FrameAead::FrameAead(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FrameAead>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[2].As<Napi::Float64Array>().ElementLength() < 6) {
    ThrowInvalid(env, "FrameAead(cipher: number, key: Uint8Array, args: Float64Array(6))");
    return;
  }
  Napi::Float64Array args = info[2].As<Napi::Float64Array>();
  args_ = args.Data();
  argsRef_ = Napi::Persistent(args);
  int cipherId = info[0].As<Napi::Number>().Int32Value();
  Napi::Uint8Array key = info[1].As<Napi::Uint8Array>();
  const EVP_CIPHER* cipher = cipherId == 1 ? EVP_aes_256_gcm() : cipherId == 2 ? EVP_chacha20_poly1305() : nullptr;
  if (cipher == nullptr || key.ByteLength() != 32) {
    ThrowInvalid(env, "FrameAead: cipher 1 or 2 and a 32-byte key");
    return;
  }
#ifdef VRIO_IPSEC_MB
  if (cipherId == 1 && MbManager() != nullptr) {
    void* k = std::aligned_alloc(64, (sizeof(gcm_key_data) + 63) / 64 * 64);
    if (k == nullptr) {
      ThrowInvalid(env, "out of memory for the AEAD key");
      return;
    }
    mbKey_ = new (k) gcm_key_data;
    IMB_AES256_GCM_PRE(MbManager(), key.Data(), mbKey_);
    return;
  }
#endif
  enc_ = NewAeadCtx(cipher, key.Data(), 1);
  dec_ = NewAeadCtx(cipher, key.Data(), 0);
  if (enc_ == nullptr || dec_ == nullptr) {
    Free();
    ThrowInvalid(env, "OpenSSL refused the AEAD key");
  }
}

FrameAead::~FrameAead() { Free(); }

// Frees both directions' contexts and the multi-buffer key schedule, cleansing the keys.
static void FreeKeys(EVP_CIPHER_CTX*& enc, EVP_CIPHER_CTX*& dec, gcm_key_data*& mb) {
  EVP_CIPHER_CTX_free(enc);  // cleanses the key schedule
  EVP_CIPHER_CTX_free(dec);
  enc = dec = nullptr;
#ifdef VRIO_IPSEC_MB
  if (mb != nullptr) {
    OPENSSL_cleanse(mb, sizeof(gcm_key_data));
    std::free(mb);
    mb = nullptr;
  }
#endif
}

void FrameAead::Free() { FreeKeys(enc_, dec_, mbKey_); }

Napi::Value FrameAead::Destroy(const Napi::CallbackInfo& info) {
  Free();
  return info.Env().Undefined();
}

// sealFrame(frame[, src, srcOffset[, inFrame]]), the numbers in args (see ParseArgs): with `src`, the
// payload's first `inFrame` bytes (default 0) are already in the frame and encrypted in place, the
// rest is read from src[srcOffset, srcOffset + end - payloadOffset - inFrame) — or, when `src` is
// an array of Uint8Arrays (a message's chunks), from their concatenation at srcOffset — and written
// encrypted into the frame after them: the cipher pass is the copy (GCM and ChaCha20-Poly1305 take
// the pieces one after another, so a payload spanning chunks is sealed straight from them).
Napi::Value FrameAead::Seal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (enc_ == nullptr && mbKey_ == nullptr) return ThrowInvalid(env, "the frame AEAD was destroyed");
  FrameArgs a;
  if (!ParseArgs(info, args_, &a))
    return ThrowInvalid(env, "seal(frame): args must be ipOffset, tcpOffset, payloadOffset, end, tagOffset, counter");
  uint8_t iv[12];
  MakeIv(iv, a.counter);
  uint8_t tag[16];
  int outl = 0;
  uint8_t* p = a.frame + a.payload;
  int n = static_cast<int>(a.end - a.payload);
  int k = n;  // bytes encrypted in place
  Piece pieces[kMaxPieces];
  size_t count = 0;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    double inFrame = 0;
    if (info.Length() > 3 && napi_get_value_double(env, info[3], &inFrame) != napi_ok) inFrame = -1;
    if (!(inFrame >= 0) || inFrame > n || inFrame != static_cast<double>(static_cast<int>(inFrame)))
      return ThrowInvalid(env, "seal: inFrame must lie within the payload");
    k = static_cast<int>(inFrame);
    if (!ParseSource(info, static_cast<size_t>(n - k), p + k, pieces, &count))
      return ThrowInvalid(env,
                          "seal: the source range lies outside src, overlaps the frame's payload, or spans too many chunks");
  }
#ifdef VRIO_IPSEC_MB
  if (mbKey_ != nullptr) {
    IMB_MGR* m = MbManager();
    struct gcm_context_data ctx;
    MbStart(m, mbKey_, &ctx, iv, a);
    if (k > 0) IMB_AES256_GCM_ENC_UPDATE(m, mbKey_, &ctx, p, p, static_cast<uint64_t>(k));
    uint8_t* out = p + k;
    for (size_t i = 0; i < count; i++) {
      IMB_AES256_GCM_ENC_UPDATE(m, mbKey_, &ctx, out, pieces[i].data, static_cast<uint64_t>(pieces[i].length));
      out += pieces[i].length;
    }
    IMB_AES256_GCM_ENC_FINALIZE(m, mbKey_, &ctx, tag, 16);
    std::memcpy(a.frame + a.tag, tag, kTagBytes);
    OPENSSL_cleanse(tag, sizeof tag);
    return env.Undefined();
  }
#endif
  bool ok = EVP_CipherInit_ex(enc_, nullptr, nullptr, nullptr, iv, 1) == 1 && FeedAad(enc_, a) &&
            (k == 0 || EVP_CipherUpdate(enc_, p, &outl, p, k) == 1);
  uint8_t* out = p + k;
  for (size_t i = 0; ok && i < count; i++) {
    ok = EVP_CipherUpdate(enc_, out, &outl, pieces[i].data, static_cast<int>(pieces[i].length)) == 1;
    out += pieces[i].length;
  }
  if (!ok || EVP_CipherFinal_ex(enc_, tag, &outl) != 1 ||
      EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1) {
    return ThrowInvalid(env, "OpenSSL failed to seal a frame");
  }
  std::memcpy(a.frame + a.tag, tag, kTagBytes);
  OPENSSL_cleanse(tag, sizeof tag);
  return env.Undefined();
}

// openFrame(frame[, dst, dstOffset]), the numbers in args (see ParseArgs):
// verifies and decrypts in place, or with `dst` into dst[dstOffset, dstOffset + end - payloadOffset)
// (the frame is left as it was): the cipher pass is the copy out. OpenSSL compares the (truncated) tag in constant time
// (CRYPTO_memcmp) in EVP_CipherFinal_ex. False when it does not verify.
Napi::Value FrameAead::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (dec_ == nullptr && mbKey_ == nullptr) return ThrowInvalid(env, "the frame AEAD was destroyed");
  FrameArgs a;
  if (!ParseArgs(info, args_, &a))
    return ThrowInvalid(env, "open(frame): args must be ipOffset, tcpOffset, payloadOffset, end, tagOffset, counter");
  uint8_t iv[12];
  MakeIv(iv, a.counter);
  uint8_t tag[kTagBytes];
  std::memcpy(tag, a.frame + a.tag, kTagBytes);
  int outl = 0;
  uint8_t* p = a.frame + a.payload;
  int n = static_cast<int>(a.end - a.payload);
  uint8_t* out = p;
  if (!ParseOther(info, 1, static_cast<size_t>(n), p, &out))
    return ThrowInvalid(env, "open: the destination range lies outside dst, or overlaps the frame's payload");
#ifdef VRIO_IPSEC_MB
  if (mbKey_ != nullptr) {
    IMB_MGR* m = MbManager();
    struct gcm_context_data ctx;
    uint8_t computed[16];
    MbStart(m, mbKey_, &ctx, iv, a);
    if (n > 0) IMB_AES256_GCM_DEC_UPDATE(m, mbKey_, &ctx, out, p, static_cast<uint64_t>(n));
    IMB_AES256_GCM_DEC_FINALIZE(m, mbKey_, &ctx, computed, 16);
    bool ok = CRYPTO_memcmp(computed, tag, kTagBytes) == 0;
    OPENSSL_cleanse(computed, sizeof computed);
    return Napi::Boolean::New(env, ok);
  }
#endif
  uint8_t scratch[16];
  bool ok = EVP_CipherInit_ex(dec_, nullptr, nullptr, nullptr, iv, 0) == 1 &&
            EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_AEAD_SET_TAG, kTagBytes, tag) == 1 && FeedAad(dec_, a) &&
            (n == 0 || EVP_CipherUpdate(dec_, out, &outl, p, n) == 1) &&
            EVP_CipherFinal_ex(dec_, scratch, &outl) == 1;
  return Napi::Boolean::New(env, ok);
}

}  // namespace vrio

// ---------------------------------------------------------------------------------------------
// The same AEAD for C++ callers (fastpath.cc): no N-API, no argument array.

namespace vrio {

bool FastAead::Init(int cipherId, const uint8_t* key) {
  Free();
  const EVP_CIPHER* cipher = cipherId == 1 ? EVP_aes_256_gcm() : cipherId == 2 ? EVP_chacha20_poly1305() : nullptr;
  if (cipher == nullptr) return false;
#ifdef VRIO_IPSEC_MB
  if (cipherId == 1 && MbManager() != nullptr) {
    void* k = std::aligned_alloc(64, (sizeof(gcm_key_data) + 63) / 64 * 64);
    if (k == nullptr) return false;
    mb = new (k) gcm_key_data;
    IMB_AES256_GCM_PRE(MbManager(), key, mb);
    return true;
  }
#endif
  enc = NewAeadCtx(cipher, key, 1);
  dec = NewAeadCtx(cipher, key, 0);
  if (enc == nullptr || dec == nullptr) {
    Free();
    return false;
  }
  return true;
}

void FastAead::Free() { FreeKeys(enc, dec, mb); }

// The payload frame[payload, end): its first `inFrame` bytes encrypted in place, the rest encrypted
// from src into the frame after them; the tag at frame[tag].
bool FastAead::Seal(uint8_t* frame, size_t ip, size_t tcp, size_t payload, size_t end, size_t tag, uint64_t counter,
                    const uint8_t* src, size_t inFrame) {
  FrameArgs a{frame, ip, tcp, payload, end, tag, counter};
  uint8_t iv[12];
  MakeIv(iv, counter);
  uint8_t t[16];
  uint8_t* p = frame + payload;
  size_t n = end - payload;
  size_t k = src == nullptr ? n : inFrame;
  int outl = 0;
#ifdef VRIO_IPSEC_MB
  if (mb != nullptr) {
    IMB_MGR* m = MbManager();
    struct gcm_context_data ctx;
    MbStart(m, mb, &ctx, iv, a);
    if (k > 0) IMB_AES256_GCM_ENC_UPDATE(m, mb, &ctx, p, p, k);
    if (n > k) IMB_AES256_GCM_ENC_UPDATE(m, mb, &ctx, p + k, src, n - k);
    IMB_AES256_GCM_ENC_FINALIZE(m, mb, &ctx, t, 16);
    std::memcpy(frame + tag, t, kTagBytes);
    OPENSSL_cleanse(t, sizeof t);
    return true;
  }
#endif
  if (enc == nullptr || EVP_CipherInit_ex(enc, nullptr, nullptr, nullptr, iv, 1) != 1 || !FeedAad(enc, a) ||
      (k > 0 && EVP_CipherUpdate(enc, p, &outl, p, static_cast<int>(k)) != 1) ||
      (n > k && EVP_CipherUpdate(enc, p + k, &outl, src, static_cast<int>(n - k)) != 1) ||
      EVP_CipherFinal_ex(enc, t, &outl) != 1 || EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_AEAD_GET_TAG, 16, t) != 1)
    return false;
  std::memcpy(frame + tag, t, kTagBytes);
  OPENSSL_cleanse(t, sizeof t);
  return true;
}

bool FastAead::Open(uint8_t* frame, size_t ip, size_t tcp, size_t payload, size_t end, size_t tag, uint64_t counter) {
  FrameArgs a{frame, ip, tcp, payload, end, tag, counter};
  uint8_t iv[12];
  MakeIv(iv, counter);
  uint8_t t[kTagBytes];
  std::memcpy(t, frame + tag, kTagBytes);
  uint8_t* p = frame + payload;
  size_t n = end - payload;
  int outl = 0;
#ifdef VRIO_IPSEC_MB
  if (mb != nullptr) {
    IMB_MGR* m = MbManager();
    struct gcm_context_data ctx;
    uint8_t computed[16];
    MbStart(m, mb, &ctx, iv, a);
    if (n > 0) IMB_AES256_GCM_DEC_UPDATE(m, mb, &ctx, p, p, n);
    IMB_AES256_GCM_DEC_FINALIZE(m, mb, &ctx, computed, 16);
    bool ok = CRYPTO_memcmp(computed, t, kTagBytes) == 0;
    OPENSSL_cleanse(computed, sizeof computed);
    return ok;
  }
#endif
  uint8_t scratch[16];
  return dec != nullptr && EVP_CipherInit_ex(dec, nullptr, nullptr, nullptr, iv, 0) == 1 &&
         EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_AEAD_SET_TAG, kTagBytes, t) == 1 && FeedAad(dec, a) &&
         (n == 0 || EVP_CipherUpdate(dec, p, &outl, p, static_cast<int>(n)) == 1) &&
         EVP_CipherFinal_ex(dec, scratch, &outl) == 1;
}

}  // namespace vrio
