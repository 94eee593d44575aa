// scrypt (RFC 7914) on OpenSSL 3's EVP_KDF "SCRYPT".
//
// Thread safety: pure function.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "crypto/secret.hpp"

namespace rbdgw::crypto {

struct ScryptParams {
  std::uint64_t n;  // CPU/memory cost, a power of two > 1
  std::uint32_t r;  // block size
  std::uint32_t p;  // parallelism
};

// ceph-csi's KEK derivation (golang.org/x/crypto/scrypt.Key(pass, volumeID,
// 32768, 8, 1, 32)): needs 32 MiB of memory and 0.1-0.5 s of CPU.
inline constexpr ScryptParams ceph_csi_scrypt{32768, 8, 1};

// Derives key_len bytes from password and salt. The memory limit is set
// from the parameters (128 * r * (n + p + 2) bytes), so any valid set works.
// Throws Error(EINVAL) for invalid parameters, Error(ENOMEM) when OpenSSL
// cannot allocate the work area.
SecretBuffer scrypt(std::string_view password, std::span<const std::uint8_t> salt,
                    const ScryptParams& params, std::size_t key_len);

}  // namespace rbdgw::crypto
