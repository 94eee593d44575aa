#include "crypto/aead.hpp"

#include <openssl/evp.h>

#include <cerrno>
#include <climits>
#include <memory>

#include "common/error.hpp"

namespace rbdgw::crypto {
namespace {

struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const noexcept { EVP_CIPHER_CTX_free(c); }
};
using Ctx = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

void check_sizes(const char* call, const SecretBuffer& key, std::span<const std::uint8_t> nonce,
                 std::size_t data_size) {
  if (key.size() != gcm_key_size)
    throw Error(EINVAL, cat(call, ": key is ", key.size(), " bytes, AES-256-GCM needs ", gcm_key_size));
  if (nonce.size() != gcm_nonce_size)
    throw Error(EINVAL, cat(call, ": nonce is ", nonce.size(), " bytes, AES-256-GCM needs ",
                            gcm_nonce_size));
  if (data_size > INT_MAX) throw Error(EINVAL, cat(call, ": ", data_size, " bytes is too long"));
}

[[noreturn]] void openssl_failed(const char* call, const char* step) {
  throw Error(EIO, cat(call, ": ", step, " failed"));
}

// A context keyed for encryption (enc) or decryption with `aad` absorbed.
Ctx keyed(const char* call, bool enc, const SecretBuffer& key,
          std::span<const std::uint8_t> nonce, std::span<const std::uint8_t> aad) {
  Ctx c(EVP_CIPHER_CTX_new());
  if (!c) throw Error(ENOMEM, cat(call, ": EVP_CIPHER_CTX_new failed"));
  if (EVP_CipherInit_ex2(c.get(), EVP_aes_256_gcm(), key.data(), nonce.data(), enc ? 1 : 0,
                         nullptr) != 1)
    openssl_failed(call, "EVP_CipherInit_ex2");
  int n = 0;
  if (!aad.empty() &&
      EVP_CipherUpdate(c.get(), nullptr, &n, aad.data(), static_cast<int>(aad.size())) != 1)
    openssl_failed(call, "EVP_CipherUpdate(aad)");
  return c;
}

}  // namespace

std::vector<std::uint8_t> gcm_seal(const SecretBuffer& key, std::span<const std::uint8_t> nonce,
                                   std::span<const std::uint8_t> plain,
                                   std::span<const std::uint8_t> aad) {
  const char* call = "AES-GCM seal";
  check_sizes(call, key, nonce, plain.size() > aad.size() ? plain.size() : aad.size());
  Ctx c = keyed(call, true, key, nonce, aad);
  std::vector<std::uint8_t> out(plain.size() + gcm_tag_size);
  int n = 0;
  if (!plain.empty() &&
      EVP_EncryptUpdate(c.get(), out.data(), &n, plain.data(), static_cast<int>(plain.size())) != 1)
    openssl_failed(call, "EVP_EncryptUpdate");
  int fin = 0;
  if (EVP_EncryptFinal_ex(c.get(), out.data() + n, &fin) != 1)
    openssl_failed(call, "EVP_EncryptFinal_ex");
  if (EVP_CIPHER_CTX_ctrl(c.get(), EVP_CTRL_GCM_GET_TAG, gcm_tag_size,
                          out.data() + plain.size()) != 1)
    openssl_failed(call, "EVP_CTRL_GCM_GET_TAG");
  return out;
}

SecretBuffer gcm_open(const SecretBuffer& key, std::span<const std::uint8_t> nonce,
                      std::span<const std::uint8_t> sealed, std::span<const std::uint8_t> aad) {
  const char* call = "AES-GCM open";
  check_sizes(call, key, nonce, sealed.size() > aad.size() ? sealed.size() : aad.size());
  if (sealed.size() < gcm_tag_size)
    throw Error(EINVAL, cat(call, ": ", sealed.size(), " bytes is shorter than the ", gcm_tag_size,
                            "-byte tag"));
  std::size_t len = sealed.size() - gcm_tag_size;
  Ctx c = keyed(call, false, key, nonce, aad);
  SecretBuffer plain(len);
  int n = 0;
  if (len && EVP_DecryptUpdate(c.get(), plain.data(), &n, sealed.data(), static_cast<int>(len)) != 1)
    openssl_failed(call, "EVP_DecryptUpdate");
  // OpenSSL takes a non-const tag pointer but does not write through it.
  auto* tag = const_cast<std::uint8_t*>(sealed.data() + len);
  if (EVP_CIPHER_CTX_ctrl(c.get(), EVP_CTRL_GCM_SET_TAG, gcm_tag_size, tag) != 1)
    openssl_failed(call, "EVP_CTRL_GCM_SET_TAG");
  int fin = 0;
  if (EVP_DecryptFinal_ex(c.get(), plain.data() + n, &fin) != 1)
    throw Error(EBADMSG, cat(call, ": authentication failed (wrong key or altered data)"));
  return plain;
}

}  // namespace rbdgw::crypto
