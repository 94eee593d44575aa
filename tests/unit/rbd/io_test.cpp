// lib/rbd's data path (rbd/io.hpp) against the real test cluster ($CEPH_CONF).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "common/error.hpp"
#include "rbd/export_config.hpp"
#include "rbd/io.hpp"

using namespace rbdgw::rbd;

namespace {

constexpr std::uint64_t MiB = 1 << 20;

class RbdIo : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::getenv("CEPH_CONF")) GTEST_SKIP() << "CEPH_CONF not set";
    name_ = "io-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ClusterOptions o;
    cluster_.emplace(Cluster::connect(o));
    io_.emplace(cluster_->open_ioctx("rbd"));
    CreateOptions co;
    co.size = 32 * MiB;
    co.features = "layering,exclusive-lock,object-map,fast-diff";
    create_image(*io_, name_, co);
  }
  void TearDown() override {
    if (io_) remove_image(*io_, name_);
  }
  Image open_image(std::vector<std::pair<std::string, std::string>> cfg = {}) {
    ExportConfig c;
    c.set("image", "rbd/" + name_);
    for (auto& [k, v] : cfg) c.set("ceph." + k, v);
    return open_export(c);
  }
  std::vector<char> pattern(std::size_t n, unsigned seed) {
    std::vector<char> v(n);
    std::mt19937 g(seed);
    for (auto& c : v) c = static_cast<char>(g());
    return v;
  }
  std::string name_;
  std::optional<Cluster> cluster_;
  std::optional<IoCtx> io_;
};

TEST_F(RbdIo, UnalignedWriteAcrossObjectBoundaryReadsBack) {
  Image img = open_image();
  const std::uint64_t off = 4 * MiB - 1000;  // objects are 4 MiB
  const auto data = pattern(5000, 1);
  aio_write(img, off, data.data(), data.size());
  std::vector<char> back(data.size());
  aio_read(img, off, back.data(), back.size());
  EXPECT_EQ(back, data);
  // Another handle (librbd's synchronous path) sees the same bytes.
  aio_flush(img);
  img.close();
  Image again = open_image();
  std::vector<char> sync(data.size());
  again.read(off, sync.data(), sync.size());
  EXPECT_EQ(sync, data);
}

TEST_F(RbdIo, ZeroesAndDiscardReadBackAsZerosAndFreeObjects) {
  Image img = open_image();
  const auto data = pattern(12 * MiB, 2);
  aio_write(img, 0, data.data(), data.size());
  aio_write_zeroes(img, 0, 4 * MiB);
  aio_discard(img, 4 * MiB, 4 * MiB);
  aio_flush(img);
  std::vector<char> back(8 * MiB, 'x');
  aio_read(img, 0, back.data(), back.size());
  EXPECT_EQ(back, std::vector<char>(8 * MiB, 0));
  const auto ext = allocated_extents(img, 0, 32 * MiB, has_fast_diff(img));
  ASSERT_EQ(ext.size(), 1u);
  EXPECT_EQ(ext[0].off, 8 * MiB);
  EXPECT_EQ(ext[0].len, 4 * MiB);
}

TEST_F(RbdIo, ExtentsAreClippedToTheRangeAsked) {
  Image img = open_image();
  ASSERT_TRUE(has_fast_diff(img));
  const auto data = pattern(100, 3);
  aio_write(img, 5 * MiB, data.data(), data.size());
  for (bool whole : {true, false}) {
    const auto ext = allocated_extents(img, 4 * MiB + 512, 2 * MiB, whole);
    ASSERT_EQ(ext.size(), 1u) << whole;
    EXPECT_GE(ext[0].off, 4 * MiB + 512);
    EXPECT_LE(ext[0].off + ext[0].len, 6 * MiB + 512);
    EXPECT_LE(ext[0].off, 5 * MiB);
    EXPECT_GE(ext[0].off + ext[0].len, 5 * MiB + 100);
  }
  EXPECT_TRUE(allocated_extents(img, 16 * MiB, 16 * MiB, true).empty());
}

TEST_F(RbdIo, ReadPastTheEndIsZeroFilled) {
  Image img = open_image();
  const auto data = pattern(4096, 4);
  aio_write(img, 32 * MiB - 4096, data.data(), data.size());
  img.resize(32 * MiB - 2048);  // shrink under the handle
  std::vector<char> back(4096, 'x');
  aio_read(img, 32 * MiB - 4096, back.data(), back.size());
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 2048, data.begin()));
  EXPECT_EQ(std::vector<char>(back.begin() + 2048, back.end()), std::vector<char>(2048, 0));
}

TEST_F(RbdIo, ManyThreadsWriteAtOnceOnOneHandle) {
  Image img = open_image();
  constexpr int threads = 8, per = 16;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; t++)
    ts.emplace_back([&, t] {
      for (int i = 0; i < per; i++) {
        const auto d = pattern(64 * 1024, t * per + i);
        aio_write(img, (t * per + i) * 64 * 1024ull, d.data(), d.size());
      }
    });
  for (auto& t : ts) t.join();
  for (int k = 0; k < threads * per; k++) {
    std::vector<char> back(64 * 1024);
    aio_read(img, k * 64 * 1024ull, back.data(), back.size());
    ASSERT_EQ(back, pattern(64 * 1024, k)) << k;
  }
}

TEST_F(RbdIo, ErrorsNameCallImageAndRange) {
  Image img = open_image();
  std::vector<char> buf(4096);
  try {
    aio_write(img, 64 * MiB, buf.data(), buf.size());  // past the end
    FAIL() << "accepted a write past the end";
  } catch (const rbdgw::Error& e) {
    EXPECT_EQ(e.code(), EINVAL);
    EXPECT_NE(std::string(e.what()).find("rbd_aio_write: rbd/" + name_ + " [67108864+4096]"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(RbdIo, CacheModeFollowsTheRbdCacheSettings) {
  const CacheMode off = cache_mode(open_image({{"rbd_cache", "false"}}));
  EXPECT_TRUE(off.writes_durable);
  EXPECT_FALSE(off.read_cache);
  const CacheMode wt = cache_mode(open_image({{"rbd_cache_policy", "writethrough"}}));
  EXPECT_TRUE(wt.writes_durable);
  const CacheMode wb =
      cache_mode(open_image({{"rbd_cache", "true"}, {"rbd_cache_policy", "writeback"}}));
  EXPECT_FALSE(wb.writes_durable);
  EXPECT_TRUE(wb.read_cache);
  const CacheMode wa =
      cache_mode(open_image({{"rbd_cache", "true"}, {"rbd_cache_policy", "writearound"}}));
  EXPECT_FALSE(wa.writes_durable);
  EXPECT_FALSE(wa.read_cache);
}

}  // namespace
