// The data path of a served image: librbd's asynchronous calls, each
// submitted with a completion callback and waited for by the calling
// thread, so that many server threads keep many requests in flight on one
// shared image handle. Also what a server needs to advertise honestly:
// whether a completed write is durable, whether reads are cached, and the
// allocated extents of a range.
//
// Every failure throws rbdgw::Error naming the call, the image and the range.
//
// Thread safety: all functions may be called concurrently on one Image
// (librbd image handles are thread-safe for I/O).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "rbd/image.hpp"

namespace rbdgw::rbd {

// Reads [off, off+len) into buf; bytes past the end of the image read as
// zeros. Does not copy: librbd writes into buf.
void aio_read(const Image& img, std::uint64_t off, void* buf, std::size_t len);
// Writes [off, off+len) from buf.
void aio_write(const Image& img, std::uint64_t off, const void* buf, std::size_t len);
// Discards (trims) a range: whole objects are removed, partial ranges are
// zeroed or skipped as librbd's discard settings say.
void aio_discard(const Image& img, std::uint64_t off, std::uint64_t len);
// Zeroes a range without sending data: objects are removed, truncated or
// zeroed on the OSDs.
void aio_write_zeroes(const Image& img, std::uint64_t off, std::uint64_t len);
// Waits until every write completed before it is durable (flushes the
// librbd cache).
void aio_flush(const Image& img);

// What the librbd cache does with writes on this image, from the image's
// effective configuration (rbd_cache, rbd_cache_policy, rbd_cache_max_dirty,
// including pool and image overrides).
struct CacheMode {
  // A completed write is on the OSDs (no cache, writethrough, or no dirty
  // data allowed): a per-request FUA needs no flush.
  bool writes_durable = false;
  // Reads populate a cache (writeback policy), so prefetching helps.
  bool read_cache = false;
};
CacheMode cache_mode(const Image& img);

struct Extent {
  std::uint64_t off = 0;
  std::uint64_t len = 0;
};

// Allocated ranges (including the parent's for clones) within
// [off, off+len), sorted, from rbd_diff_iterate2. With whole_object
// (fast-diff images) the answer comes from the object map in whole objects;
// without it every object in the range is asked, so keep len small.
std::vector<Extent> allocated_extents(const Image& img, std::uint64_t off, std::uint64_t len,
                                      bool whole_object);

// True if the image has a usable fast-diff object map (feature on, not
// flagged invalid).
bool has_fast_diff(const Image& img);

}  // namespace rbdgw::rbd
