#include "luks/probe.hpp"

#include <algorithm>
#include <cstring>

namespace rbdgw::luks {
namespace {

bool has(std::span<const std::uint8_t> b, std::size_t at, std::string_view magic) {
  return b.size() >= at + magic.size() && std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

}  // namespace

ProbeResult probe(std::span<const std::uint8_t> b) {
  static constexpr std::string_view luks_magic{"LUKS\xba\xbe", 6};
  if (has(b, 0, luks_magic) && b.size() >= 8) {
    const unsigned version = (unsigned{b[6]} << 8) | b[7];
    if (version == 1) return {Content::luks1, "LUKS1"};
    if (version == 2) return {Content::luks2, "LUKS2"};
  }
  if (std::all_of(b.begin(), b.end(), [](std::uint8_t c) { return c == 0; }))
    return {Content::blank, "blank"};
  if (has(b, 0, "XFSB")) return {Content::other_signature, "xfs filesystem"};
  if (has(b, 0x438, "\x53\xef")) return {Content::other_signature, "ext2/3/4 filesystem"};
  if (has(b, 4086, "SWAPSPACE2") || has(b, 4086, "SWAP-SPACE"))
    return {Content::other_signature, "swap"};
  if (has(b, 512, "EFI PART")) return {Content::other_signature, "GPT partition table"};
  if (has(b, 510, "\x55\xaa")) return {Content::other_signature, "DOS partition table"};
  return {Content::unknown, "unknown data"};
}

}  // namespace rbdgw::luks
