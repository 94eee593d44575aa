#include "crypto/kdf.hpp"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cerrno>
#include <memory>

#include "common/error.hpp"

namespace rbdgw::crypto {
namespace {

struct KdfDeleter {
  void operator()(EVP_KDF* k) const noexcept { EVP_KDF_free(k); }
};
struct KdfCtxDeleter {
  void operator()(EVP_KDF_CTX* c) const noexcept { EVP_KDF_CTX_free(c); }
};

}  // namespace

SecretBuffer scrypt(std::string_view password, std::span<const std::uint8_t> salt,
                    const ScryptParams& p, std::size_t key_len) {
  if (p.n < 2 || (p.n & (p.n - 1)) != 0 || p.r == 0 || p.p == 0 || key_len == 0)
    throw Error(EINVAL, cat("scrypt: invalid parameters N=", p.n, " r=", p.r, " p=", p.p,
                            " length=", key_len, " (N must be a power of two > 1)"));
  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_SCRYPT, nullptr));
  if (!kdf) throw Error(ENOSYS, "EVP_KDF_fetch: SCRYPT: not available in this OpenSSL");
  std::unique_ptr<EVP_KDF_CTX, KdfCtxDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) throw Error(ENOMEM, "EVP_KDF_CTX_new: SCRYPT: out of memory");

  std::uint64_t n = p.n;
  std::uint32_t r = p.r, par = p.p;
  // OpenSSL refuses work areas above maxmem (32 MiB by default, which
  // ceph-csi's N=32768, r=8 just exceeds): allow what the parameters need.
  std::uint64_t maxmem = 128ull * r * (n + par + 2) + (1u << 20);
  // OpenSSL rejects a null pointer even for an empty string.
  static char empty[1];
  void* pass_ptr = password.empty() ? empty : const_cast<char*>(password.data());
  void* salt_ptr = salt.empty() ? static_cast<void*>(empty) : const_cast<std::uint8_t*>(salt.data());
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, pass_ptr, password.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt_ptr, salt.size()),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
      OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r),
      OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &par),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem),
      OSSL_PARAM_construct_end(),
  };
  SecretBuffer key(key_len);
  if (EVP_KDF_derive(ctx.get(), key.data(), key.size(), params) != 1)
    throw Error(ENOMEM, cat("EVP_KDF_derive: scrypt N=", n, " r=", r, " p=", par,
                            ": failed (out of memory or parameters too large)"));
  return key;
}

}  // namespace rbdgw::crypto
