// Where an RBD image may hold data, and proof that a range of it holds none.
//
// The proof behind "never format a volume that holds data": a range is
// blank when no object in it was ever allocated (librbd's allocation map,
// the parent's included), or when every allocated extent reads as zeros
// through the caller's reader (the raw image, or the plaintext of an opened
// LUKS2 volume). Nothing is guessed from a sample of the image.
//
// Bounded in time: with a valid fast-diff map the allocation map costs a
// few reads however large the image; without one librbd asks the OSDs about
// every object, so an image with more than kMaxObjectsWithoutFastDiff
// objects in the range (and no usable map) is refused with ENOTSUP, and so
// is a range with more than kMaxAllocatedToRead allocated bytes to read back
// (ENOTEMPTY: it almost surely holds data, and proving otherwise would take
// too long). Both errors say so and what to do.
//
// Thread safety: stateless; librbd handles are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "rbd/image.hpp"

namespace rbdgw::rbd {

inline constexpr std::uint64_t kMaxObjectsWithoutFastDiff = 65536;  // 256 GiB of 4 MiB objects
inline constexpr std::uint64_t kMaxAllocatedToRead = 256ull << 20;

struct Extent {
  std::uint64_t offset = 0, length = 0;
  bool operator==(const Extent&) const = default;
};

// Whether the image's allocation map answers fast: fast-diff enabled and
// neither the object map nor the fast-diff flagged invalid, and no parent
// (a parent's map is not checked here).
bool allocation_map_is_fast(const Image& img);

// The allocated extents of img within [from, to) (clipped to it), the
// parent's included, object-granular. Throws Error(ENOTSUP) when the range
// has more than kMaxObjectsWithoutFastDiff objects and the map is not fast.
std::vector<Extent> allocated_extents(const Image& img, std::uint64_t from, std::uint64_t to);

// Reads up to buf.size() bytes at `offset`; returns the count (short at the end).
using RangeReader = std::function<std::size_t(std::span<std::uint8_t> buf, std::uint64_t offset)>;

// The first offset in `extents` (image offsets) holding data: a byte that
// reads non-zero, or cannot be read, through every one of `views` (each given the offset minus
// `shift`), if any. A chunk that reads as zeros through any view holds
// nothing: for an encrypted volume the views are the raw image (zero:
// never written) and the plaintext (zero: written as zeros). Throws
// Error(ENOTEMPTY) naming `object` when the extents add up to more than
// kMaxAllocatedToRead bytes.
std::optional<std::uint64_t> first_data(const std::vector<Extent>& extents,
                                        std::span<const RangeReader> views, std::uint64_t shift,
                                        std::string_view object);

// Throws Error(ENOTEMPTY) "<object>: holds data at offset N ...; refusing to
// <action>" unless img's range [from, to) is blank (see above) through
// `views` (offsets relative to `from`). plaintext: the last view is an
// encrypted volume's plaintext, and the message names both offsets.
// Errors of allocated_extents pass through.
void require_blank(const Image& img, std::uint64_t from, std::uint64_t to,
                   std::span<const RangeReader> views, std::string_view object,
                   std::string_view action, bool plaintext = false);

// A RangeReader over the raw image bytes from image offset `base` on.
RangeReader raw_reader(const Image& img, std::uint64_t base = 0);

}  // namespace rbdgw::rbd
