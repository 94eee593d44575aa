// XtsSectorCipher against Python's `cryptography` AES-XTS (an independent
// implementation), both directions, both key sizes, 512..4096-byte sectors,
// with iv_tweak and segment offsets; argument checks; concurrent use.
#include "crypto/xts.hpp"

#include <gtest/gtest.h>

#include "error_code.hpp"

#include <thread>
#include <tuple>

#include "common/error.hpp"
#include "test_util.hpp"

namespace rbdgw::crypto {
namespace {

using test::random_bytes;

SecretBuffer random_key(std::size_t n) {
  auto k = random_bytes(n);
  return SecretBuffer(k.data(), k.size());
}

class XtsKat : public ::testing::TestWithParam<std::tuple<std::size_t, std::uint32_t>> {};

TEST_P(XtsKat, MatchesPythonCryptographyBothWays) {
  const auto [key_bytes, sector] = GetParam();
  test::TempDir dir;
  const SecretBuffer key = random_key(key_bytes);
  test::write_file(dir / "key", key.data(), key.size());
  const std::uint64_t iv_tweak = 1000003;            // odd, to catch unit mix-ups
  const std::uint64_t offset = 7 * std::uint64_t{sector};  // not the segment start
  const auto plain = random_bytes(64 * 1024);
  test::write_file(dir / "plain", plain);
  const std::uint64_t first_tweak = iv_tweak + offset / 512;

  auto cipher = XtsSectorCipher::create(key, sector, iv_tweak);
  std::vector<std::uint8_t> ours(plain.size());
  cipher.encrypt(offset, plain, ours);
  ASSERT_EQ(0, test::python_xts(dir / "key", dir / "plain", dir / "theirs", sector, first_tweak,
                                true));
  EXPECT_EQ(test::read_file(dir / "theirs"), ours) << "encryption differs from the reference";

  // The reverse: their encryption of other data decrypts with ours, in place.
  const auto plain2 = random_bytes(32 * 1024);
  test::write_file(dir / "plain2", plain2);
  ASSERT_EQ(0, test::python_xts(dir / "key", dir / "plain2", dir / "cipher2", sector,
                                first_tweak, true));
  auto buf = test::read_file(dir / "cipher2");
  cipher.decrypt(offset, buf);
  EXPECT_EQ(plain2, buf) << "decryption of the reference's ciphertext differs";
}

INSTANTIATE_TEST_SUITE_P(KeyAndSector, XtsKat,
                         ::testing::Combine(::testing::Values(32u, 64u),
                                            ::testing::Values(512u, 1024u, 4096u)));

TEST(Xts, TweakCountsIn512ByteUnitsPerSector) {
  // Sector n of a 4096-byte-sector segment equals sector 0 of a segment
  // whose iv_tweak is 8n: the tweak is the 512-byte unit, not the index.
  const SecretBuffer key = random_key(64);
  const auto plain = random_bytes(4096);
  std::vector<std::uint8_t> a(4096), b(4096);
  XtsSectorCipher::create(key, 4096, 0).encrypt(3 * 4096, plain, a);
  XtsSectorCipher::create(key, 4096, 24).encrypt(0, plain, b);
  EXPECT_EQ(a, b);
  XtsSectorCipher::create(key, 4096, 3).encrypt(0, plain, b);
  EXPECT_NE(a, b);
}

TEST(Xts, RejectsBadParameters) {
  const SecretBuffer key = random_key(64);
  using rbdgw::test::error_code;
  EXPECT_EQ(EINVAL, error_code([&] { XtsSectorCipher::create(random_key(48), 4096); }));
  EXPECT_EQ(EINVAL, error_code([&] { XtsSectorCipher::create(key, 256); }));
  EXPECT_EQ(EINVAL, error_code([&] { XtsSectorCipher::create(key, 8192); }));
  EXPECT_EQ(EINVAL, error_code([&] { XtsSectorCipher::create(key, 1536); }));
  std::vector<std::uint8_t> same(64, 7);
  EXPECT_EQ(EINVAL, error_code([&] { XtsSectorCipher::create(SecretBuffer(same.data(), 64), 512); }));

  auto c = XtsSectorCipher::create(key, 4096);
  std::vector<std::uint8_t> buf(8192, 1);
  const auto before = buf;
  EXPECT_EQ(EINVAL, error_code([&] { c.encrypt(512, buf); }));
  EXPECT_EQ(EINVAL, error_code([&] { c.encrypt(0, std::span(buf).first(4000)); }));
  std::vector<std::uint8_t> small(4096);
  EXPECT_EQ(EINVAL, error_code([&] { c.encrypt(0, buf, small); }));
  EXPECT_EQ(before, buf) << "a rejected call changed the data";
  try {
    XtsSectorCipher::create(key, 1536);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sector size 1536"), std::string::npos) << e.what();
  }
}

TEST(Xts, ConcurrentCallsAgreeWithSequentialOnes) {
  const SecretBuffer key = random_key(64);
  const auto cipher = XtsSectorCipher::create(key, 4096, 5);
  const auto plain = random_bytes(1 << 20);
  std::vector<std::uint8_t> expect(plain.size());
  cipher.encrypt(0, plain, expect);

  constexpr int kThreads = 8;
  std::vector<std::vector<std::uint8_t>> got(kThreads, std::vector<std::uint8_t>(plain.size()));
  std::vector<int> decrypt_ok(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        // Interleave directions and chunk sizes so contexts get shared.
        for (std::size_t off = 0; off < plain.size(); off += 64 * 1024)
          cipher.encrypt(off, std::span(plain).subspan(off, 64 * 1024),
                         std::span(got[t]).subspan(off, 64 * 1024));
        std::vector<std::uint8_t> back(got[t]);
        cipher.decrypt(0, back);
        decrypt_ok[t] += back == plain;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(expect, got[t]) << "thread " << t;
    EXPECT_EQ(20, decrypt_ok[t]) << "thread " << t;
  }
}

TEST(Xts, OutOfPlaceLeavesInputAlone) {
  const auto cipher = XtsSectorCipher::create(random_key(32), 512);
  const auto plain = random_bytes(4096);
  const auto copy = plain;
  std::vector<std::uint8_t> out(plain.size());
  cipher.encrypt(0, plain, out);
  EXPECT_EQ(copy, plain);
  EXPECT_NE(plain, out);
  cipher.decrypt(0, out);
  EXPECT_EQ(plain, out);
}

}  // namespace
}  // namespace rbdgw::crypto
