#include "luks/volume_format.hpp"

#include <algorithm>
#include <optional>
#include <vector>

#include "common/error.hpp"
#include "common/log.hpp"
#include "luks/layout.hpp"
#include "luks/probe.hpp"
#include "rbd/allocation.hpp"

namespace rbdgw::luks {
namespace {

// LUKS2's default header area (libcryptsetup's data offset): what is
// checked before the (slow, PBKDF) header is made.
constexpr std::uint64_t kDefaultHeaderArea = 16 << 20;
constexpr std::size_t kCheckChunk = 1 << 20;

// The offset of the first non-zero byte in [from, to), if any.
std::optional<std::uint64_t> first_data(const Reader& read, std::uint64_t from, std::uint64_t to) {
  std::vector<std::uint8_t> buf(kCheckChunk);
  for (std::uint64_t off = from; off < to;) {
    const std::size_t want = std::min<std::uint64_t>(buf.size(), to - off);
    const std::size_t got = read(std::span(buf).first(want), off);
    const auto it = std::find_if(buf.begin(), buf.begin() + got, [](auto b) { return b != 0; });
    if (it != buf.begin() + got) return off + (it - buf.begin());
    if (got < want) break;  // end of the volume
    off += got;
  }
  return std::nullopt;
}

// Throws unless [0, area) may be overwritten (see the header comment).
void check_formattable(const Reader& read, std::uint64_t area, std::string_view object,
                       bool encryption_prepared) {
  std::vector<std::uint8_t> first(4096);
  first.resize(read(first, 0));
  const ProbeResult p = probe(first);
  switch (p.content) {
    case Content::blank:
      break;
    case Content::luks2:
      if (encryption_prepared) {
        log::info(object, ": replacing the LUKS2 header of an interrupted format "
                  "(volume tagged encryptionPrepared)");
        return;
      }
      [[fallthrough]];
    case Content::luks1:
      throw Error(EEXIST, cat(object, ": refusing to format: already encrypted (found ",
                              p.signature, ")"));
    default:
      throw Error(ENOTEMPTY, cat(object, ": refusing to format over data (found ", p.signature,
                                 ")"));
  }
  if (const auto at = first_data(read, first.size(), area))
    throw Error(ENOTEMPTY, cat(object, ": refusing to format over data (found unknown data at "
                               "offset ", *at, ")"));
}

}  // namespace

Segment format_volume(const Reader& read, const Writer& write, std::uint64_t volume_size,
                      std::string_view object, const SecretBuffer& passphrase,
                      const FormatOptions& opts, bool encryption_prepared) {
  const std::uint64_t checked = std::min(volume_size, kDefaultHeaderArea);
  check_formattable(read, checked, object, encryption_prepared);

  const Header header = Header::format_in_memory(passphrase, opts);
  const std::vector<std::uint8_t> bytes = header.bytes();
  const Segment seg = header.segment();
  if (volume_size < bytes.size() + seg.sector_size)
    throw Error(ENOSPC, cat(object, ": too small for LUKS2: ", volume_size, " bytes, the header "
                            "area alone takes ", bytes.size()));
  if (bytes.size() > checked) check_formattable(read, bytes.size(), object, encryption_prepared);

  write(bytes, 0);
  log::info(object, ": formatted as LUKS2 (", seg.cipher, ", ", seg.key_bits, "-bit key, ",
            seg.sector_size, "-byte sectors, data at ", seg.offset, ")");
  return seg;
}

Segment format_image(rbd::Image& image, const SecretBuffer& passphrase, const FormatOptions& opts,
                     bool encryption_prepared) {
  const std::uint64_t size = image.size();
  const Reader read = [&](std::span<std::uint8_t> buf, std::uint64_t off) {
    const std::size_t n = off >= size ? 0 : std::min<std::uint64_t>(buf.size(), size - off);
    image.read(off, buf.data(), n);
    return n;
  };
  const Writer write = [&](std::span<const std::uint8_t> buf, std::uint64_t off) {
    image.write(off, buf.data(), buf.size());
  };
  // format_volume reads the header area byte by byte; past it, the image's
  // allocation map shows where data may be, and that is read back. An
  // interrupted format's LUKS2 header may put its data segment below the
  // default header area: from there on the image must be blank too.
  std::uint64_t area = std::min(size, kDefaultHeaderArea);
  if (encryption_prepared) {
    std::vector<std::uint8_t> first(4096);
    first.resize(read(first, 0));
    if (probe(first).content == Content::luks2) {
      try {
        area = std::min(area, inspect_header(read, image.spec()).data_offset);
      } catch (const Error& e) {
        log::warn(image.spec(), ": the LUKS2 header to replace does not parse (", e.what(),
                  "); checking the image from the default header area on");
      }
    }
  }
  const rbd::RangeReader raw[] = {rbd::raw_reader(image, area)};
  rbd::require_blank(image, area, size, raw, image.spec(), "format it as LUKS2");
  const Segment seg =
      format_volume(read, write, size, image.spec(), passphrase, opts, encryption_prepared);
  image.flush();
  return seg;
}

}  // namespace rbdgw::luks
