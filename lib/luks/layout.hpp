// What a LUKS2 header says about its own layout, checked against LUKS2's
// own limits before anything is allocated or read on its word: the header
// copy size is one of the fixed 16 KiB..4 MiB values, the checksums verify
// (the copy with the higher sequence id wins, as in libcryptsetup), the
// JSON area parses, the keyslots area is at most 128 MiB and a multiple of
// 4096, there are at most 32 keyslots, each keyslot's area lies inside the
// keyslots area and its key material (key_size * 4000 AF stripes) is what
// unlocking reads of it, no re-encryption is in progress, and (a separate
// call) the data segment starts inside the source. libcryptsetup validates the rest after the
// bounded copy is made (lib/luks/header.cpp).
//
// Each refusal is an rbdgw::Error naming the object and the cause: EINVAL
// for truncated, corrupt or out-of-limit headers, ENOTSUP for LUKS1, a
// re-encryption in progress and detached headers.
//
// Thread safety: pure functions (the Reader is called from the caller's
// thread only).
#pragma once

#include <cstdint>
#include <optional>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "luks/header.hpp"

namespace rbdgw::luks {

constexpr std::uint64_t kBinaryHeaderSize = 4096;
constexpr std::uint64_t kMaxKeyslotsSize = std::uint64_t{128} << 20;  // libcryptsetup's cap
constexpr std::size_t kMaxKeyslots = 32;
constexpr std::uint64_t kAfStripes = 4000;
constexpr std::uint64_t kMaxKeyslotKeySize = 512;  // bytes; far above any cipher's key

struct Extent {
  std::uint64_t offset = 0, size = 0;
  std::uint64_t end() const { return offset + size; }
};

struct HeaderLayout {
  std::uint64_t hdr_size = 0;       // one copy: binary header + JSON area
  std::uint64_t keyslots_size = 0;  // config.keyslots_size, <= kMaxKeyslotsSize
  std::uint64_t data_offset = 0;    // the lowest segment offset
  // The key material of every keyslot (what unlocking reads of the keyslot
  // areas), sorted and merged; inside the keyslots area.
  std::vector<Extent> key_material;
  // Both header copies, [0, 2 * hdr_size).
  std::vector<std::uint8_t> headers;

  // The end of the keyslots area (never past the data).
  std::uint64_t keyslots_end() const {
    return std::min(data_offset, 2 * hdr_size + keyslots_size);
  }
};

// Reads the binary headers and JSON areas that `read` reads (at most
// 2 * 4 MiB, and 4 KiB probes) and checks them as described above, all but
// check_data_inside(). `object` names the source in errors ("rbd/vol1").
HeaderLayout inspect_header(const Reader& read, std::string_view object);

// Throws unless the source holds at least l.data_offset bytes (a one-byte
// read). Callers check it after copying the key material, so that a source
// that ends inside the header says "truncated LUKS2 header".
void check_data_inside(const Reader& read, const HeaderLayout& l, std::string_view object);

// The checks on one parsed JSON area, for a header copy of hdr_size bytes
// (fills everything but `headers` and the data-offset-inside-the-source
// check, which need the source).
HeaderLayout check_json(const nlohmann::json& j, std::uint64_t hdr_size, std::string_view object);

namespace detail {
// LUKS2 JSON numbers are decimal strings ("offset": "16777216"); a JSON
// unsigned integer is accepted too. nullopt when missing or not a number
// that fits in 64 bits.
std::optional<std::uint64_t> json_u64(const nlohmann::json& j, const char* key);
}  // namespace detail

}  // namespace rbdgw::luks
