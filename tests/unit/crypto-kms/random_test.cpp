#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "crypto/random.hpp"

namespace rbdgw::crypto {
namespace {

TEST(Random, SecretsHaveTheSizeAskedAndDiffer) {
  std::set<std::string> seen;
  for (int i = 0; i < 64; ++i) {
    SecretBuffer s = random_secret(20);
    ASSERT_EQ(s.size(), 20u);
    seen.insert(std::string(s.view()));
  }
  // 64 draws of 160 bits: a repeat means the source is broken.
  EXPECT_EQ(seen.size(), 64u);
}

TEST(Random, FillsTheWholeBuffer) {
  // Every byte position of 64 KiB takes more than one value across draws.
  std::vector<std::uint8_t> a(1 << 16), b(1 << 16);
  random_fill(a);
  random_fill(b);
  std::size_t same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  // Expected ~256 equal bytes by chance; a half-filled buffer gives >= 32768.
  EXPECT_LT(same, 2048u);
}

}  // namespace
}  // namespace rbdgw::crypto
