// AES-256-GCM sealing as Go's crypto/cipher does it (cipher.NewGCM on an
// AES-256 block): a 12-byte nonce, a 16-byte tag appended to the ciphertext
// (sealed = ciphertext || tag), optional additional data. ceph-csi wraps
// DEKs this way, so these functions must stay byte-compatible with Go's
// AEAD.Seal and AEAD.Open.
//
// Thread safety: pure functions (one OpenSSL context per call).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "crypto/secret.hpp"

namespace rbdgw::crypto {

inline constexpr std::size_t gcm_key_size = 32;
inline constexpr std::size_t gcm_nonce_size = 12;
inline constexpr std::size_t gcm_tag_size = 16;

// Encrypts and authenticates `plain`; returns ciphertext || tag
// (plain.size() + 16 bytes). Throws Error(EINVAL) for a key that is not 32
// bytes or a nonce that is not 12 bytes. Never reuse a nonce with one key.
std::vector<std::uint8_t> gcm_seal(const SecretBuffer& key, std::span<const std::uint8_t> nonce,
                                   std::span<const std::uint8_t> plain,
                                   std::span<const std::uint8_t> aad = {});

// Checks and decrypts ciphertext || tag. Throws Error(EBADMSG) "AES-GCM
// open: authentication failed" when the key, nonce, aad or data do not match
// (a wrong key and altered data cannot be told apart), Error(EINVAL) for bad
// sizes. Nothing is returned unless the tag verified.
SecretBuffer gcm_open(const SecretBuffer& key, std::span<const std::uint8_t> nonce,
                      std::span<const std::uint8_t> sealed,
                      std::span<const std::uint8_t> aad = {});

}  // namespace rbdgw::crypto
