#include "crypto/random.hpp"

#include <openssl/rand.h>

#include <cerrno>
#include <climits>

#include "common/error.hpp"

namespace rbdgw::crypto {

void random_fill(std::span<std::uint8_t> out) {
  while (!out.empty()) {
    std::size_t n = out.size() < INT_MAX ? out.size() : INT_MAX;
    if (RAND_priv_bytes(out.data(), static_cast<int>(n)) != 1)
      throw Error(EIO, cat("RAND_priv_bytes: ", n, " bytes: the random generator failed"));
    out = out.subspan(n);
  }
}

SecretBuffer random_secret(std::size_t n) {
  SecretBuffer b(n);
  random_fill(b.bytes());
  return b;
}

}  // namespace rbdgw::crypto
