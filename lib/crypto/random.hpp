// A secure random source: OpenSSL's private DRBG (RAND_priv_bytes), which is
// seeded from the kernel and reseeds itself.
//
// Thread safety: all functions may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "crypto/secret.hpp"

namespace rbdgw::crypto {

// Fills `out` with random bytes; throws Error(EIO) if the DRBG fails.
void random_fill(std::span<std::uint8_t> out);

// n random bytes in a SecretBuffer (for keys and passphrases).
SecretBuffer random_secret(std::size_t n);

}  // namespace rbdgw::crypto
