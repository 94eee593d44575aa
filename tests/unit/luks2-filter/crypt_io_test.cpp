// CryptIO against an in-memory ciphertext device: unaligned reads and writes
// checked against a plaintext model and against the sector cipher applied to
// the whole device; read-modify-write under concurrent writers; zero.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "common/error.hpp"
#include "crypto/random.hpp"
#include "luks/crypt_io.hpp"

namespace rbdgw::luks {
namespace {

constexpr std::uint64_t kDataOffset = 16 * 4096;  // a "header" the I/O must not touch

// The device below: a byte array. Records the largest write and fails on
// demand. Concurrent access to disjoint bytes only (CryptIO's job to ensure).
class MemDevice : public CryptBackend {
 public:
  explicit MemDevice(std::size_t size) : bytes(size, 0xA5) {}
  void pread(std::span<std::uint8_t> buf, std::uint64_t off) override {
    check(buf.size(), off);
    std::memcpy(buf.data(), bytes.data() + off, buf.size());
  }
  void pwrite(std::span<const std::uint8_t> buf, std::uint64_t off, bool fua) override {
    check(buf.size(), off);
    if (fail_writes) throw Error(EIO, "pwrite: test device: injected failure");
    std::memcpy(bytes.data() + off, buf.data(), buf.size());
    std::size_t prev = max_write.load();
    while (prev < buf.size() && !max_write.compare_exchange_weak(prev, buf.size())) {}
    if (fua) ++fua_writes;
  }
  std::vector<std::uint8_t> bytes;
  std::atomic<std::size_t> max_write{0};
  std::atomic<int> fua_writes{0};
  bool fail_writes = false;

 private:
  void check(std::size_t len, std::uint64_t off) const {
    // Must stay past the header and be whole ciphertext sectors.
    if (off < kDataOffset || off + len > bytes.size())
      throw Error(EINVAL, cat("test device: I/O out of range: ", off, "+", len));
  }
};

struct Fixture {
  Fixture(std::uint32_t sector, std::size_t key_bytes, std::size_t segment)
      : dev(kDataOffset + segment),
        io(crypto::XtsSectorCipher::create(crypto::random_secret(key_bytes), sector, 5),
           kDataOffset),
        model(segment, 0) {
    // Start from a consistent state: the whole segment encrypted zeros.
    io.zero(dev, segment, 0, false);
  }
  // The whole segment through one aligned read (one pread + decrypt).
  std::vector<std::uint8_t> plaintext() {
    std::vector<std::uint8_t> out(model.size());
    io.read(dev, out, 0);
    return out;
  }
  MemDevice dev;
  CryptIO io;
  std::vector<std::uint8_t> model;
};

class CryptIOParam : public ::testing::TestWithParam<std::tuple<std::uint32_t, std::size_t>> {};

TEST_P(CryptIOParam, RandomUnalignedOpsMatchModel) {
  const auto [sector, key_bytes] = GetParam();
  const std::size_t segment = 64 * 4096;
  Fixture f(sector, key_bytes, segment);
  std::mt19937_64 rng(sector * 131 + key_bytes);
  for (int i = 0; i < 400; ++i) {
    const std::uint64_t off = rng() % segment;
    const std::size_t len = 1 + rng() % std::min<std::uint64_t>(segment - off, 3 * sector + 7);
    switch (rng() % 3) {
      case 0: {  // write
        std::vector<std::uint8_t> data(len);
        for (auto& b : data) b = static_cast<std::uint8_t>(rng());
        f.io.write(f.dev, data, off, false);
        std::memcpy(f.model.data() + off, data.data(), len);
        break;
      }
      case 1:  // zero
        f.io.zero(f.dev, len, off, false);
        std::memset(f.model.data() + off, 0, len);
        break;
      default: {  // read
        std::vector<std::uint8_t> got(len);
        f.io.read(f.dev, got, off);
        ASSERT_EQ(0, std::memcmp(got.data(), f.model.data() + off, len))
            << "read " << off << "+" << len << " after " << i << " ops";
      }
    }
  }
  EXPECT_EQ(f.plaintext(), f.model);
  // The header area was never touched.
  EXPECT_TRUE(std::all_of(f.dev.bytes.begin(), f.dev.bytes.begin() + kDataOffset,
                          [](std::uint8_t b) { return b == 0xA5; }));
}

INSTANTIATE_TEST_SUITE_P(SectorAndKey, CryptIOParam,
                         ::testing::Combine(::testing::Values(512u, 4096u),
                                            ::testing::Values(std::size_t{32}, std::size_t{64})));

TEST(CryptIO, CiphertextIsTheSectorCipherOfThePlaintext) {
  const SecretBuffer key = crypto::random_secret(64);
  const std::size_t segment = 8 * 4096;
  MemDevice dev(kDataOffset + segment);
  CryptIO io(crypto::XtsSectorCipher::create(key, 4096, 8), kDataOffset);
  std::vector<std::uint8_t> plain(segment);
  crypto::random_fill(plain);
  // Written in odd pieces (head RMW, aligned middle, tail RMW).
  io.write(dev, std::span(plain).first(100), 0, false);
  io.write(dev, std::span(plain).subspan(100, segment - 5000), 100, false);
  io.write(dev, std::span(plain).subspan(segment - 4900), segment - 4900, false);
  // A second cipher instance from the same key encrypts the same bytes.
  auto other = crypto::XtsSectorCipher::create(key, 4096, 8);
  std::vector<std::uint8_t> expect(segment);
  other.encrypt(0, plain, expect);
  EXPECT_TRUE(std::equal(expect.begin(), expect.end(), dev.bytes.begin() + kDataOffset));
}

TEST(CryptIO, ConcurrentWritersToTheSameSectorsLoseNothing) {
  // Each thread owns every 8th byte of the first four sectors and writes its
  // bytes one small unaligned request at a time: without RMW locking the
  // read-modify-write cycles would overwrite each other's bytes.
  constexpr int kThreads = 8;
  constexpr std::size_t kSpan = 4 * 512;
  Fixture f(512, 64, 16 * 4096);
  std::vector<std::thread> threads;
  std::atomic<bool> failed{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int round = 1; round <= 20; ++round)
          for (std::size_t i = t; i < kSpan; i += kThreads) {
            const std::uint8_t v = static_cast<std::uint8_t>(t * 20 + round);
            f.io.write(f.dev, std::span(&v, 1), i, false);
          }
      } catch (...) {
        failed = true;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_FALSE(failed);
  std::vector<std::uint8_t> got(kSpan);
  f.io.read(f.dev, got, 0);
  for (std::size_t i = 0; i < kSpan; ++i)
    ASSERT_EQ(got[i], (i % kThreads) * 20 + 20) << "byte " << i;
}

TEST(CryptIO, ZeroWritesEncryptedZeros) {
  Fixture f(4096, 64, 16 * 4096);
  std::vector<std::uint8_t> data(16 * 4096);
  crypto::random_fill(data);
  f.io.write(f.dev, data, 0, false);
  f.io.zero(f.dev, 3 * 4096 + 10, 4096 - 5, true);
  std::vector<std::uint8_t> got(data.size());
  f.io.read(f.dev, got, 0);
  std::memset(data.data() + 4096 - 5, 0, 3 * 4096 + 10);
  EXPECT_EQ(got, data);
  // Below, the zeroed sectors hold ciphertext, not zeros.
  const auto below = f.dev.bytes.begin() + kDataOffset + 4096;
  EXPECT_FALSE(std::all_of(below, below + 2 * 4096, [](std::uint8_t b) { return b == 0; }));
  EXPECT_GT(f.dev.fua_writes.load(), 0);
}

TEST(CryptIO, LargeWritesAreChunked) {
  const std::size_t segment = 3 * CryptIO::kChunk + 8192;
  Fixture f(4096, 64, segment);
  std::vector<std::uint8_t> data(segment - 4096 - 3);
  crypto::random_fill(data);
  f.dev.max_write = 0;
  f.io.write(f.dev, data, 3, false);
  EXPECT_EQ(f.dev.max_write.load(), CryptIO::kChunk);
  std::vector<std::uint8_t> got(data.size());
  f.io.read(f.dev, got, 3);
  EXPECT_EQ(got, data);
}

TEST(CryptIO, BackendErrorsPropagate) {
  Fixture f(512, 32, 4 * 4096);
  f.dev.fail_writes = true;
  const std::uint8_t b = 1;
  try {
    f.io.write(f.dev, std::span(&b, 1), 700, false);
    FAIL() << "write did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EIO);
    EXPECT_NE(std::string(e.what()).find("injected failure"), std::string::npos);
  }
}

}  // namespace
}  // namespace rbdgw::luks
