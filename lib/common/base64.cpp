#include "common/base64.hpp"

#include <array>
#include <cerrno>

#include "common/error.hpp"

namespace rbdgw::base64 {
namespace {

constexpr char std_digits[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char url_digits[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr std::uint8_t invalid = 0xff;

const char* digits(Alphabet a) { return a == Alphabet::url ? url_digits : std_digits; }

std::array<std::uint8_t, 256> make_map(const char* d) {
  std::array<std::uint8_t, 256> m{};
  m.fill(invalid);
  for (std::uint8_t i = 0; i < 64; ++i) m[static_cast<unsigned char>(d[i])] = i;
  return m;
}

const std::array<std::uint8_t, 256>& decode_map(Alphabet a) {
  static const auto std_map = make_map(std_digits);
  static const auto url_map = make_map(url_digits);
  return a == Alphabet::url ? url_map : std_map;
}

bool is_newline(char c) { return c == '\n' || c == '\r'; }

}  // namespace

void encode_to(std::span<const std::uint8_t> in, char* out, Alphabet a) {
  const char* d = digits(a);
  std::size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    std::uint32_t v = in[i] << 16 | in[i + 1] << 8 | in[i + 2];
    *out++ = d[v >> 18 & 63];
    *out++ = d[v >> 12 & 63];
    *out++ = d[v >> 6 & 63];
    *out++ = d[v & 63];
  }
  std::size_t rest = in.size() - i;
  if (rest == 0) return;
  std::uint32_t v = in[i] << 16 | (rest == 2 ? in[i + 1] << 8 : 0);
  *out++ = d[v >> 18 & 63];
  *out++ = d[v >> 12 & 63];
  *out++ = rest == 2 ? d[v >> 6 & 63] : '=';
  *out++ = '=';
}

std::string encode(std::span<const std::uint8_t> in, Alphabet a) {
  std::string s(encoded_size(in.size()), '\0');
  encode_to(in, s.data(), a);
  return s;
}

// Quantum by quantum, with the error offsets of Go's decodeQuantum.
std::vector<std::uint8_t> decode(std::string_view src, Alphabet a, std::string_view what) {
  const auto& map = decode_map(a);
  auto corrupt = [&](std::size_t at) {
    return Error(EINVAL, cat(what, ": illegal base64 data at input byte ", at));
  };
  std::vector<std::uint8_t> out;
  out.reserve(src.size() / 4 * 3);
  std::size_t si = 0;
  for (;;) {
    std::uint8_t q[4] = {0, 0, 0, 0};
    std::size_t len = 4;  // digits in this quantum
    for (std::size_t j = 0; j < 4; ++j) {
      if (si == src.size()) {
        if (j == 0) return out;
        throw corrupt(si - j);  // padding is required
      }
      char c = src[si++];
      std::uint8_t v = map[static_cast<unsigned char>(c)];
      if (v != invalid) {
        q[j] = v;
        continue;
      }
      if (is_newline(c)) {
        --j;
        continue;
      }
      if (c != '=' || j < 2) throw corrupt(si - 1);
      if (j == 2) {  // a second '=' must follow
        while (si < src.size() && is_newline(src[si])) ++si;
        if (si == src.size()) throw corrupt(src.size());
        if (src[si] != '=') throw corrupt(si - 1);
        ++si;
      }
      while (si < src.size() && is_newline(src[si])) ++si;
      if (si < src.size()) throw corrupt(si);  // data after the padding
      len = j;
      break;
    }
    std::uint32_t v = q[0] << 18 | q[1] << 12 | q[2] << 6 | q[3];
    out.push_back(static_cast<std::uint8_t>(v >> 16));
    if (len >= 3) out.push_back(static_cast<std::uint8_t>(v >> 8));
    if (len == 4) out.push_back(static_cast<std::uint8_t>(v));
    if (len < 4) return out;
  }
}

}  // namespace rbdgw::base64
