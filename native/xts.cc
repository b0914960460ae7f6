// AES-XTS over many disk sectors in one call, for the crypt service (src/services/crypt/xts.ts).
//
// OpenSSL's XTS takes one tweak per call, so a request of N sectors would need N cipher
// re-initialisations. Instead, per request: all sector tweaks are encrypted with key 2 in one
// AES-ECB call; each tweak is expanded across its sector (multiplied by alpha in GF(2^128)) and
// XORed into the data; the data goes through AES-ECB with key 1 (one call per 16 KiB, so the three
// passes over a chunk hit the cache); the tweaks are XORed in again. Same result as XTS per sector (no ciphertext stealing: sectors are whole blocks),
// checked against per-sector node:crypto in the tests. The cipher is OpenSSL's, taken from the
// Node binary that loads this addon (it exports libcrypto's symbols).
#include <openssl/evp.h>

#include <cstring>

#include "io.h"

namespace vrio {

namespace {

// T <- T * alpha in GF(2^128), little-endian (IEEE 1619): shift left by one, fold the carry with 0x87.
inline void Double(uint64_t& lo, uint64_t& hi) {
  uint64_t carry = static_cast<uint64_t>(static_cast<int64_t>(hi) >> 63) & 0x87;
  hi = (hi << 1) | (lo >> 63);
  lo = (lo << 1) ^ carry;
}

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;  // x86-64 and aarch64 Linux are little-endian, as XTS is
}

inline void Store64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

// dst[i] = src[i] ^ T_i for the `blocks` 16-byte blocks of one sector, T_0 = tweak.
void XorTweaks(uint8_t* dst, const uint8_t* src, const uint8_t* tweak, size_t blocks) {
  uint64_t lo = Load64(tweak), hi = Load64(tweak + 8);
  for (size_t j = 0; j < blocks; j++) {
    Store64(dst, Load64(src) ^ lo);
    Store64(dst + 8, Load64(src + 8) ^ hi);
    Double(lo, hi);
    dst += 16;
    src += 16;
  }
}

EVP_CIPHER_CTX* NewEcb(const EVP_CIPHER* cipher, const uint8_t* key, int encrypt) {
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
  if (key.ByteLength() == 32) {
    ecb = EVP_aes_128_ecb();
  } else if (key.ByteLength() == 64) {
    ecb = EVP_aes_256_ecb();
  } else {
    ThrowInvalid(env, "XTS key must be 32 or 64 bytes");
    return;
  }
  size_t half = key.ByteLength() / 2;
  enc_ = NewEcb(ecb, key.Data(), 1);
  dec_ = NewEcb(ecb, key.Data(), 0);
  tweak_ = NewEcb(ecb, key.Data() + half, 1);
  if (enc_ == nullptr || dec_ == nullptr || tweak_ == nullptr) {
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
  enc_ = dec_ = tweak_ = nullptr;
  if (!scratch_.empty()) OPENSSL_cleanse(scratch_.data(), scratch_.size());
  std::vector<uint8_t>().swap(scratch_);
}

Napi::Value XtsCipher::Destroy(const Napi::CallbackInfo& info) {
  Free();
  return info.Env().Undefined();
}

// crypt(encrypt, src, dst, firstTweak, sectorSize, tweakStep): dst (same length as src; may be
// src itself) gets src en- or decrypted as whole sectors; sector k of the request uses the tweak
// firstTweak + k * tweakStep as a little-endian 64-bit number (plain64).
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
  size_t sectors = length / sectorSize;
  size_t blocks = sectorSize / 16;

  // Scratch: the plain tweaks, then (in place) the encrypted ones.
  if (scratch_.size() < sectors * 16) scratch_.resize(sectors * 16);
  uint8_t* tweaks = scratch_.data();
  std::memset(tweaks, 0, sectors * 16);
  for (size_t s = 0; s < sectors; s++) Store64(tweaks + s * 16, static_cast<uint64_t>(first + s * step));
  int outl = 0;
  if (EVP_EncryptUpdate(tweak_, tweaks, &outl, tweaks, static_cast<int>(sectors * 16)) != 1) {
    return ThrowInvalid(env, "OpenSSL failed to encrypt the tweaks");
  }

  // XOR in, AES, XOR out, a few sectors at a time so the data stays in L1/L2 between passes.
  uint8_t* in = src.Data();
  uint8_t* out = dst.Data();
  size_t perChunk = sectorSize >= 16384 ? 1 : 16384 / sectorSize;
  for (size_t s0 = 0; s0 < sectors; s0 += perChunk) {
    size_t n = sectors - s0 < perChunk ? sectors - s0 : perChunk;
    uint8_t* o = out + s0 * sectorSize;
    for (size_t s = 0; s < n; s++)
      XorTweaks(o + s * sectorSize, in + (s0 + s) * sectorSize, tweaks + (s0 + s) * 16, blocks);
    if (EVP_CipherUpdate(encrypt ? enc_ : dec_, o, &outl, o, static_cast<int>(n * sectorSize)) != 1) {
      return ThrowInvalid(env, "OpenSSL failed to run AES");
    }
    for (size_t s = 0; s < n; s++) XorTweaks(o + s * sectorSize, o + s * sectorSize, tweaks + (s0 + s) * 16, blocks);
  }
  return env.Undefined();
}

}  // namespace vrio
