// rbd::first_data, the blankness proof behind every format and mkfs, with
// views of our own (no cluster needed): a chunk is blank only when one view
// READ all of it and it was zeros.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "rbd/allocation.hpp"

using namespace rbdgw;

namespace {

// A view over `bytes` that returns at most `limit` bytes per read from `cut` on
// (limit 0: the device ends at `cut`).
rbd::RangeReader view(const std::vector<std::uint8_t>& bytes, std::uint64_t cut = UINT64_MAX,
                      std::size_t limit = 0) {
  return [&bytes, cut, limit](std::span<std::uint8_t> buf, std::uint64_t off) -> std::size_t {
    if (off >= bytes.size()) return 0;
    std::size_t n = std::min<std::uint64_t>(buf.size(), bytes.size() - off);
    if (off + n > cut) n = off >= cut ? std::min(limit, n) : cut - off;
    std::copy_n(bytes.begin() + off, n, buf.begin());
    return n;
  };
}

}  // namespace

TEST(FirstData, ZerosThroughAnyViewAreBlankAndDataIsFound) {
  std::vector<std::uint8_t> raw(1 << 20, 0), plain(1 << 20, 0);
  const std::vector<rbd::Extent> all{{0, raw.size()}};
  std::vector<rbd::RangeReader> views{view(raw), view(plain)};
  EXPECT_FALSE(rbd::first_data(all, views, 0, "img"));
  raw[5000] = 1;  // ciphertext, plaintext zeros: written as zeros
  EXPECT_FALSE(rbd::first_data(all, views, 0, "img"));
  plain[5000] = 7;
  EXPECT_EQ(rbd::first_data(all, views, 0, "img"), 5000u);
}

// A view that stops short (a device smaller than the image, a size-0 loop
// device) proves nothing about the bytes it did not return.
TEST(FirstData, AViewThatReadsShortProvesNothing) {
  std::vector<std::uint8_t> raw(1 << 20, 0), plain(1 << 20, 0);
  raw[700000] = 1;
  plain[700000] = 9;
  const std::vector<rbd::Extent> all{{0, raw.size()}};
  // The plaintext device ends at 0 and at 512 KiB.
  for (std::uint64_t cut : {0ull, 512ull << 10}) {
    std::vector<rbd::RangeReader> views{view(raw), view(plain, cut)};
    const auto at = rbd::first_data(all, views, 0, "img");
    ASSERT_TRUE(at) << "cut at " << cut;
    EXPECT_LE(*at, 700000u) << "cut at " << cut;
  }
}
