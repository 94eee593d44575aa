#include "crypto/xts.hpp"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "common/error.hpp"

namespace rbdgw::crypto {
namespace {

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const noexcept { EVP_CIPHER_CTX_free(c); }  // cleanses
};
using CtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

struct CipherFree {
  void operator()(EVP_CIPHER* c) const noexcept { EVP_CIPHER_free(c); }
};
using CipherPtr = std::unique_ptr<EVP_CIPHER, CipherFree>;

}  // namespace

// Keyed contexts are expensive to set up (key schedule) and cheap to re-IV,
// so each direction keeps a free list; a call takes one, walks all its
// sectors re-initialising only the IV, and puts it back.
struct XtsSectorCipher::State {
  SecretBuffer key;
  CipherPtr cipher;
  std::uint32_t sector_size = 0;
  std::uint64_t iv_tweak = 0;
  std::mutex mu;
  std::vector<CtxPtr> free_ctx[2];  // [0] decrypt, [1] encrypt

  CtxPtr take(bool enc) {
    {
      std::lock_guard g(mu);
      auto& v = free_ctx[enc];
      if (!v.empty()) {
        CtxPtr c = std::move(v.back());
        v.pop_back();
        return c;
      }
    }
    CtxPtr c(EVP_CIPHER_CTX_new());
    if (!c || EVP_CipherInit_ex2(c.get(), cipher.get(), key.data(), nullptr, enc ? 1 : 0,
                                 nullptr) != 1)
      throw Error(EIO, "XtsSectorCipher: EVP_CipherInit_ex2 failed (keying the context)");
    return c;
  }

  void give(bool enc, CtxPtr c) noexcept {
    std::lock_guard g(mu);
    try {
      free_ctx[enc].push_back(std::move(c));
    } catch (...) {
      // Out of memory: the context is freed (and wiped) by c's destructor.
    }
  }
};

XtsSectorCipher::XtsSectorCipher(std::unique_ptr<State> s) noexcept : s_(std::move(s)) {}
XtsSectorCipher::XtsSectorCipher(XtsSectorCipher&&) noexcept = default;
XtsSectorCipher& XtsSectorCipher::operator=(XtsSectorCipher&&) noexcept = default;
XtsSectorCipher::~XtsSectorCipher() = default;

XtsSectorCipher XtsSectorCipher::create(const SecretBuffer& key, std::uint32_t sector_size,
                                        std::uint64_t iv_tweak) {
  if (key.size() != 32 && key.size() != 64)
    throw Error(EINVAL, cat("XtsSectorCipher: key of ", key.size() * 8,
                            " bits; aes-xts-plain64 takes 256 or 512 bits"));
  if (sector_size < 512 || sector_size > 4096 || (sector_size & (sector_size - 1)) != 0)
    throw Error(EINVAL, cat("XtsSectorCipher: sector size ", sector_size,
                            " is not a power of two in 512..4096"));
  const std::size_t half = key.size() / 2;
  if (std::memcmp(key.data(), key.data() + half, half) == 0)
    throw Error(EINVAL, "XtsSectorCipher: the two halves of the XTS key are equal");
  auto s = std::make_unique<State>();
  s->cipher.reset(EVP_CIPHER_fetch(nullptr, key.size() == 32 ? "AES-128-XTS" : "AES-256-XTS",
                                   nullptr));
  if (!s->cipher) throw Error(ENOTSUP, "XtsSectorCipher: OpenSSL has no AES-XTS cipher");
  s->key = key.clone();
  s->sector_size = sector_size;
  s->iv_tweak = iv_tweak;
  s->give(true, s->take(true));  // fail now, not on the first I/O
  return XtsSectorCipher(std::move(s));
}

std::uint32_t XtsSectorCipher::sector_size() const noexcept { return s_->sector_size; }
std::size_t XtsSectorCipher::key_bytes() const noexcept { return s_->key.size(); }

void XtsSectorCipher::encrypt(std::uint64_t offset, std::span<const std::uint8_t> in,
                              std::span<std::uint8_t> out) const {
  crypt(true, offset, in, out);
}

void XtsSectorCipher::decrypt(std::uint64_t offset, std::span<const std::uint8_t> in,
                              std::span<std::uint8_t> out) const {
  crypt(false, offset, in, out);
}

void XtsSectorCipher::crypt(bool enc, std::uint64_t offset, std::span<const std::uint8_t> in,
                            std::span<std::uint8_t> out) const {
  const std::uint32_t ss = s_->sector_size;
  if (offset % ss != 0 || in.size() % ss != 0 || out.size() != in.size())
    throw Error(EINVAL, cat("XtsSectorCipher: offset ", offset, " length ", in.size(),
                            " (output ", out.size(), ") not whole ", ss, "-byte sectors"));
  if (in.empty()) return;
  CtxPtr ctx = s_->take(enc);
  EVP_CIPHER_CTX* c = ctx.get();
  std::uint64_t tweak = s_->iv_tweak + offset / 512;
  const std::uint64_t step = ss / 512;
  unsigned char iv[16] = {};
  for (std::size_t pos = 0; pos < in.size(); pos += ss, tweak += step) {
    for (int i = 0; i < 8; ++i) iv[i] = static_cast<unsigned char>(tweak >> (8 * i));
    int outl = 0;
    if (EVP_CipherInit_ex2(c, nullptr, nullptr, iv, -1, nullptr) != 1 ||
        EVP_CipherUpdate(c, out.data() + pos, &outl, in.data() + pos, static_cast<int>(ss)) !=
            1 ||
        outl != static_cast<int>(ss))
      throw Error(EIO, cat("XtsSectorCipher: AES-XTS ", enc ? "encrypt" : "decrypt",
                           " failed at segment offset ", offset + pos));
  }
  s_->give(enc, std::move(ctx));
}

}  // namespace rbdgw::crypto
