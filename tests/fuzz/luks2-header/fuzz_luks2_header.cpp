// libFuzzer target over the LUKS2 header inspection that runs before any
// allocation sized by a header (lib/luks/layout.cpp: inspect_header and
// check_data_inside), built with clang's -fsanitize=fuzzer,address,undefined.
//
// Input: one flag byte, then the start of a volume. With bit 0 of the flag
// set, both header copies get valid SHA-256 checksums first, so that the
// fuzzer reaches the JSON checks instead of stopping at the checksum.
// Every refusal must be an rbdgw::Error (anything else escapes and is a
// finding), and an accepted header must keep the promises inspect_header
// makes (sizes within LUKS2's limits, key material inside the keyslots
// area and before the data); a broken promise aborts.
#include <openssl/evp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/error.hpp"
#include "luks/layout.hpp"

namespace {

using namespace rbdgw;

std::uint64_t be64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

void fix_checksum(std::vector<std::uint8_t>& v, std::uint64_t at, std::uint64_t hdr_size) {
  if (v.size() < at + hdr_size) return;
  std::uint8_t* h = v.data() + at;
  std::memset(h + 72, 0, 32);
  std::memcpy(h + 72, "sha256", 6);
  std::memset(h + 448, 0, 64);
  unsigned int len = 0;
  EVP_Digest(h, hdr_size, h + 448, &len, EVP_sha256(), nullptr);
}

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  std::vector<std::uint8_t> v(data + 1, data + size);
  if ((data[0] & 1) && v.size() >= 16) {
    const std::uint64_t hdr_size = be64(v.data() + 8);
    if (hdr_size >= (16u << 10) && hdr_size <= (4u << 20) && (hdr_size & (hdr_size - 1)) == 0) {
      fix_checksum(v, 0, hdr_size);
      fix_checksum(v, hdr_size, hdr_size);
    }
  }
  const luks::Reader read = [&v](std::span<std::uint8_t> buf, std::uint64_t off) -> std::size_t {
    if (off >= v.size()) return 0;
    const std::size_t n = std::min<std::uint64_t>(buf.size(), v.size() - off);
    std::memcpy(buf.data(), v.data() + off, n);
    return n;
  };
  try {
    const luks::HeaderLayout l = luks::inspect_header(read, "fuzz");
    check(l.headers.size() == 2 * l.hdr_size);
    check(l.keyslots_size <= luks::kMaxKeyslotsSize);
    check(l.data_offset >= 2 * l.hdr_size);
    std::uint64_t prev_end = 0;
    for (const luks::Extent& e : l.key_material) {
      check(e.offset >= 2 * l.hdr_size && e.offset >= prev_end);
      check(e.end() <= 2 * l.hdr_size + l.keyslots_size && e.end() <= l.data_offset);
      prev_end = e.end();
    }
    luks::check_data_inside(read, l, "fuzz");
  } catch (const Error& e) {
    check(e.code() > 0 && std::strncmp(e.what(), "fuzz: ", 6) == 0);
  }
  return 0;
}
