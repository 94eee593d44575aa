// probe(): what the first bytes of a volume hold, so that callers format
// only blank volumes and name what they found otherwise.
//
// Thread safety: pure function.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace rbdgw::luks {

enum class Content {
  blank,            // all zero
  luks1,            // LUKS version 1 header
  luks2,            // LUKS version 2 header
  other_signature,  // a known non-LUKS signature (see ProbeResult::signature)
  unknown,          // non-zero data without a known signature
};

struct ProbeResult {
  Content content = Content::unknown;
  // For other_signature: "ext2/3/4 filesystem", "xfs filesystem", "swap",
  // "GPT partition table", "DOS partition table"; otherwise a short
  // description of `content` ("blank", "LUKS1", "LUKS2", "unknown data").
  std::string_view signature;
};

// Classifies the first bytes of a volume. Pass at least 4096 bytes: fewer
// are classified on what is there (a short all-zero span is "blank").
ProbeResult probe(std::span<const std::uint8_t> first);

}  // namespace rbdgw::luks
