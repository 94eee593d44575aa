#include "rbd/allocation.hpp"

#include <algorithm>

#include "common/error.hpp"

namespace rbdgw::rbd {
namespace {

constexpr std::size_t kReadChunk = 1 << 20;

bool has_parent(const Image& img) {
  rbd_linked_image_spec_t parent;
  rbd_snap_spec_t snap;
  int r = rbd_get_parent(img.handle(), &parent, &snap);
  if (r == -ENOENT) return false;
  check(r, "rbd_get_parent", img.spec());
  rbd_linked_image_spec_cleanup(&parent);
  rbd_snap_spec_cleanup(&snap);
  return true;
}

}  // namespace

bool allocation_map_is_fast(const Image& img) {
  std::uint64_t features = 0, flags = 0;
  check(rbd_get_features(img.handle(), &features), "rbd_get_features", img.spec());
  if (!(features & RBD_FEATURE_FAST_DIFF)) return false;
  check(rbd_get_flags(img.handle(), &flags), "rbd_get_flags", img.spec());
  if (flags & (RBD_FLAG_OBJECT_MAP_INVALID | RBD_FLAG_FAST_DIFF_INVALID)) return false;
  return !has_parent(img);
}

std::vector<Extent> allocated_extents(const Image& img, std::uint64_t from, std::uint64_t to) {
  const ImageInfo info = img.info();
  to = std::min(to, info.size);
  std::vector<Extent> out;
  if (from >= to) return out;
  const std::uint64_t objects = (to - from + info.object_size - 1) / info.object_size;
  if (objects > kMaxObjectsWithoutFastDiff && !allocation_map_is_fast(img))
    throw Error(ENOTSUP,
                cat(img.spec(), ": cannot prove within the time bound that it holds no data: ",
                    objects, " objects to ask the OSDs about one by one (more than ",
                    kMaxObjectsWithoutFastDiff, ") and no usable fast-diff map; enable it "
                    "(rbd feature enable ", img.spec(), " object-map fast-diff; rbd object-map "
                    "rebuild ", img.spec(), ") or format the volume yourself"));
  auto add = [](std::uint64_t off, std::size_t len, int exists, void* arg) -> int {
    if (!exists) return 0;
    auto& v = *static_cast<std::vector<Extent>*>(arg);
    if (!v.empty() && v.back().offset + v.back().length == off) v.back().length += len;
    else v.push_back({off, len});
    return 0;
  };
  check(rbd_diff_iterate2(img.handle(), nullptr, from, to - from, 1, 1, add, &out),
        "rbd_diff_iterate2", img.spec());
  for (auto& e : out) {  // whole-object extents may reach past [from, to)
    const std::uint64_t b = std::max(e.offset, from), end = std::min(e.offset + e.length, to);
    e = {b, end > b ? end - b : 0};
  }
  std::erase_if(out, [](const Extent& e) { return e.length == 0; });
  return out;
}

std::optional<std::uint64_t> first_data(const std::vector<Extent>& extents,
                                        std::span<const RangeReader> views, std::uint64_t shift,
                                        std::string_view object) {
  std::uint64_t total = 0;
  for (const auto& e : extents) total += e.length;
  if (total > kMaxAllocatedToRead)
    throw Error(ENOTEMPTY, cat(object, ": ", total >> 20, " MiB of it were written (more than ",
                               kMaxAllocatedToRead >> 20, " MiB to read back to prove they are "
                               "all zeros): it holds data"));
  std::vector<std::uint8_t> buf(kReadChunk);
  for (const auto& e : extents) {
    for (std::uint64_t off = e.offset; off < e.offset + e.length;) {
      const std::size_t want = std::min<std::uint64_t>(buf.size(), e.offset + e.length - off);
      // The first byte in the last view read not proven zero: a non-zero
      // byte, or the first byte a view did not return (a view that reads
      // short -- a device smaller than the image -- proves nothing past it).
      std::optional<std::uint64_t> at;
      for (const auto& read : views) {
        const std::size_t got = std::min(read(std::span(buf).first(want), off - shift), want);
        const auto chunk = std::span(buf).first(got);
        const auto nz = std::find_if(chunk.begin(), chunk.end(), [](auto c) { return c != 0; });
        if (nz == chunk.end() && got == want) {
          at.reset();
          break;
        }
        at = off + static_cast<std::uint64_t>(nz - chunk.begin());
      }
      if (at) return at;
      off += want;
    }
  }
  return std::nullopt;
}

void require_blank(const Image& img, std::uint64_t from, std::uint64_t to,
                   std::span<const RangeReader> views, std::string_view object,
                   std::string_view action, bool plaintext) {
  const auto extents = allocated_extents(img, from, to);
  if (const auto at = first_data(extents, views, from, object))
    throw Error(ENOTEMPTY, plaintext ? cat(object, ": holds data at offset ", *at - from,
                                           " of its plaintext (image offset ", *at,
                                           "); refusing to ", action)
                                     : cat(object, ": holds data at offset ", *at,
                                           "; refusing to ", action));
}

RangeReader raw_reader(const Image& img, std::uint64_t base) {
  return [&img, base](std::span<std::uint8_t> buf, std::uint64_t rel) -> std::size_t {
    const std::uint64_t size = img.size(), off = base + rel;
    const std::size_t n = off >= size ? 0 : std::min<std::uint64_t>(buf.size(), size - off);
    img.read(off, buf.data(), n);
    return n;
  };
}

}  // namespace rbdgw::rbd
