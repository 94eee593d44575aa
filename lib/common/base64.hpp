// Base64 as Go's encoding/base64 StdEncoding and URLEncoding do it (RFC 4648,
// padded). ceph-csi stores DEKs as Go's json.Marshal of []byte (StdEncoding)
// and generates passphrases with URLEncoding, so both must match Go exactly.
//
// Decoding follows Go's non-strict decoder: '\r' and '\n' are skipped,
// padding is required, characters of the other alphabet are rejected, and
// non-zero bits after the last full byte are accepted.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rbdgw::base64 {

enum class Alphabet { standard, url };  // "+/" or "-_" for the last two digits

// Length of the padded encoding of n bytes.
constexpr std::size_t encoded_size(std::size_t n) { return (n + 2) / 3 * 4; }

// Writes the padded encoding of `in` to out[0, encoded_size(in.size())), so
// that a secret can be encoded straight into a SecretBuffer.
void encode_to(std::span<const std::uint8_t> in, char* out, Alphabet a = Alphabet::standard);

// The padded encoding of `in`.
std::string encode(std::span<const std::uint8_t> in, Alphabet a = Alphabet::standard);

// Decodes `text`. Throws Error(EINVAL) "<what>: illegal base64 data at input
// byte N" (N counted as Go counts it) for malformed input.
std::vector<std::uint8_t> decode(std::string_view text, Alphabet a = Alphabet::standard,
                                 std::string_view what = "base64");

}  // namespace rbdgw::base64
