#include "luks/layout.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>

#include "common/error.hpp"
#include "luks/probe.hpp"

namespace rbdgw::luks {
namespace {

using nlohmann::json;

[[noreturn]] void corrupt(std::string_view object, std::string_view what) {
  throw Error(EINVAL, cat(object, ": corrupt LUKS2 header: ", what));
}

// Reads up to n bytes at off; fewer only where the source ends. n is at
// most 2 * 4 MiB here.
std::vector<std::uint8_t> read_some(const Reader& read, std::uint64_t off, std::size_t n) {
  std::vector<std::uint8_t> buf(n);
  std::size_t got = 0;
  while (got < n) {
    const std::size_t r = read(std::span(buf).subspan(got), off + got);
    if (r == 0) break;
    got += r;
  }
  buf.resize(got);
  return buf;
}

std::vector<std::uint8_t> read_exact(const Reader& read, std::string_view object,
                                     std::uint64_t off, std::size_t n) {
  auto buf = read_some(read, off, n);
  if (buf.size() < n)
    throw Error(EINVAL, cat(object, ": truncated LUKS2 header: it needs ", off + n,
                            " bytes but the source ends at ", off + buf.size()));
  return buf;
}

std::uint64_t be64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

bool valid_hdr_size(std::uint64_t v) {
  return v >= (16u << 10) && v <= (4u << 20) && (v & (v - 1)) == 0;
}

std::string hdr_size_error(std::uint64_t v) {
  return cat("header size ", v, " is not one of LUKS2's 16 KiB..4 MiB sizes");
}

// One header copy (binary header + JSON area) as found at `at`.
struct Copy {
  bool valid = false;
  std::string why;  // when not valid
  std::uint64_t seqid = 0;
  json j;
};

// Checks the copy that starts at `at` of `bytes` (which holds at least
// at + hdr_size bytes): magic, version, size, position, checksum, and that
// its JSON area parses.
Copy check_copy(std::span<const std::uint8_t> bytes, std::uint64_t at, std::uint64_t hdr_size) {
  static constexpr std::string_view magic[2] = {{"LUKS\xba\xbe", 6}, {"SKUL\xba\xbe", 6}};
  Copy c;
  const std::uint8_t* h = bytes.data() + at;
  if (std::memcmp(h, magic[at == 0 ? 0 : 1].data(), 6) != 0) {
    c.why = "no LUKS2 magic";
    return c;
  }
  if (h[6] != 0 || h[7] != 2) {
    c.why = cat("version ", (unsigned{h[6]} << 8) | h[7]);
    return c;
  }
  if (be64(h + 8) != hdr_size) {
    c.why = hdr_size_error(be64(h + 8));
    return c;
  }
  if (be64(h + 256) != at) {
    c.why = cat("header offset ", be64(h + 256), " is not its position ", at);
    return c;
  }
  char alg[33] = {};
  std::memcpy(alg, h + 72, 32);
  const EVP_MD* md = EVP_get_digestbyname(alg);
  if (!md || EVP_MD_get_size(md) > 64) {
    c.why = cat("unsupported checksum algorithm '", alg, "'");
    return c;
  }
  // The checksum covers the copy with its checksum field (64 bytes at 448)
  // zeroed.
  std::uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  static const std::uint8_t zeros[64] = {};
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = ctx && EVP_DigestInit_ex(ctx, md, nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, h, 448) == 1 && EVP_DigestUpdate(ctx, zeros, 64) == 1 &&
                  EVP_DigestUpdate(ctx, h + 512, hdr_size - 512) == 1 &&
                  EVP_DigestFinal_ex(ctx, digest, &len) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok) {
    c.why = cat("cannot compute its ", alg, " checksum");
    return c;
  }
  if (std::memcmp(digest, h + 448, len) != 0) {
    c.why = "checksum mismatch";
    return c;
  }
  const auto* b = h + kBinaryHeaderSize;
  const auto* e = h + hdr_size;
  c.j = json::parse(b, std::find(b, e, std::uint8_t{0}), nullptr, false);
  if (c.j.is_discarded()) {
    c.why = "JSON area is not valid JSON";
    return c;
  }
  c.seqid = be64(h + 16);
  c.valid = true;
  return c;
}

// j[key], which must be a JSON object.
const json& member_object(const json& j, const char* key, std::string_view object) {
  const auto it = j.is_object() ? j.find(key) : j.end();
  if (it == j.end() || !it->is_object()) corrupt(object, cat("no ", key, " object"));
  return *it;
}

std::uint64_t u64_field(const json& j, const char* key, std::string_view what,
                        std::string_view object) {
  const auto v = detail::json_u64(j, key);
  if (!v) corrupt(object, cat(what, key, " is not a number"));
  return *v;
}

void check_requirements(const json& config, std::string_view object) {
  const auto it = config.find("requirements");
  if (it == config.end()) return;
  if (!it->is_object()) corrupt(object, "config.requirements is not an object");
  const auto m = it->find("mandatory");
  if (m == it->end()) return;
  if (!m->is_array()) corrupt(object, "config.requirements.mandatory is not an array");
  if (m->empty()) return;
  std::string names;
  for (const auto& r : *m) {
    if (!names.empty()) names += ", ";
    names += r.is_string() ? r.get<std::string>() : r.dump();
    if (names.size() > 200) break;  // a name list is not a reason to build a huge message
  }
  throw Error(ENOTSUP, cat(object, ": LUKS2 header requires ", names,
                           " (a re-encryption in progress?); not supported"));
}

void check_keyslot(const std::string& id, const json& k, std::uint64_t lo, std::uint64_t hi,
                   std::vector<Extent>& material, std::string_view object) {
  if (!k.is_object()) corrupt(object, cat("keyslot ", id, " is not an object"));
  const auto type = k.find("type");
  if (type == k.end() || !type->is_string())
    corrupt(object, cat("keyslot ", id, " has no type"));
  if (*type == "reencrypt")
    throw Error(ENOTSUP, cat(object, ": LUKS2 keyslot ", id,
                             " of type reencrypt (a re-encryption in progress); not supported"));
  if (*type != "luks2")
    throw Error(ENOTSUP, cat(object, ": LUKS2 keyslot ", id, " of type ",
                             type->get<std::string>().substr(0, 64), " is not supported"));
  const auto ks = k.find("key_size");
  if (ks == k.end() || !ks->is_number_integer())
    corrupt(object, cat("keyslot ", id, ": key_size is not a number"));
  const auto key_size = ks->get<std::int64_t>();
  if (key_size < 1 || static_cast<std::uint64_t>(key_size) > kMaxKeyslotKeySize)
    corrupt(object, cat("keyslot ", id, ": key_size ", key_size, " is not in 1..",
                        kMaxKeyslotKeySize));
  const auto af = k.find("af");
  if (af == k.end() || !af->is_object())
    corrupt(object, cat("keyslot ", id, ": no af object"));
  const auto stripes = af->find("stripes");
  if (stripes == af->end() || !stripes->is_number_integer())
    corrupt(object, cat("keyslot ", id, ": af.stripes is not a number"));
  if (stripes->get<std::int64_t>() != static_cast<std::int64_t>(kAfStripes))
    corrupt(object, cat("keyslot ", id, ": ", stripes->get<std::int64_t>(),
                        " AF stripes; LUKS2 uses ", kAfStripes));
  const auto area = k.find("area");
  if (area == k.end() || !area->is_object())
    corrupt(object, cat("keyslot ", id, ": no area object"));
  const std::string what = cat("keyslot ", id, ": area.");
  const std::uint64_t off = u64_field(*area, "offset", what, object);
  const std::uint64_t size = u64_field(*area, "size", what, object);
  if (off < lo || off > hi || size > hi - off)
    corrupt(object, cat("keyslot ", id, " area [", off, ", +", size,
                        ") is outside the keyslots area [", lo, ", +", hi - lo, ")"));
  // What libcryptsetup reads of the area: the AF-split key, in whole
  // 512-byte sectors.
  const std::uint64_t need = (static_cast<std::uint64_t>(key_size) * kAfStripes + 511) / 512 * 512;
  material.push_back({off, std::min(size, need)});
}

}  // namespace

namespace detail {
std::optional<std::uint64_t> json_u64(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  const auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  if (!it->is_string()) return std::nullopt;
  const auto& s = it->get_ref<const std::string&>();
  std::uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}
}  // namespace detail

HeaderLayout check_json(const json& j, std::uint64_t hdr_size, std::string_view object) {
  HeaderLayout l;
  l.hdr_size = hdr_size;
  const json& keyslots = member_object(j, "keyslots", object);
  const json& segments = member_object(j, "segments", object);
  const json& config = member_object(j, "config", object);

  const auto json_size = detail::json_u64(config, "json_size");
  if (!json_size || *json_size != hdr_size - kBinaryHeaderSize)
    corrupt(object, cat("config.json_size ",
                        json_size ? std::to_string(*json_size) : std::string("(not a number)"),
                        " does not match the header size ", hdr_size, " (expected ",
                        hdr_size - kBinaryHeaderSize, ")"));
  l.keyslots_size = u64_field(config, "keyslots_size", "config.", object);
  if (l.keyslots_size > kMaxKeyslotsSize)
    corrupt(object, cat("keyslots area of ", l.keyslots_size, " bytes exceeds LUKS2's limit of ",
                        kMaxKeyslotsSize, " (128 MiB)"));
  if (l.keyslots_size % 4096 != 0)
    corrupt(object, cat("keyslots area size ", l.keyslots_size, " is not a multiple of 4096"));
  check_requirements(config, object);

  if (keyslots.size() > kMaxKeyslots)
    corrupt(object, cat(keyslots.size(), " keyslots; LUKS2 has at most ", kMaxKeyslots));
  const std::uint64_t lo = 2 * hdr_size, hi = lo + l.keyslots_size;
  for (const auto& [id, k] : keyslots.items())
    check_keyslot(id.substr(0, 16), k, lo, hi, l.key_material, object);

  if (segments.empty()) corrupt(object, "no data segment");
  l.data_offset = UINT64_MAX;
  for (const auto& [id, s] : segments.items())
    l.data_offset = std::min(l.data_offset,
                             u64_field(s, "offset", cat("segment ", id.substr(0, 16), ": "), object));
  if (l.data_offset < 2 * hdr_size)
    throw Error(ENOTSUP, cat(object, ": LUKS2 header with the data at offset ", l.data_offset,
                             " (a detached header?) is not supported"));

  std::sort(l.key_material.begin(), l.key_material.end(),
            [](const Extent& a, const Extent& b) { return a.offset < b.offset; });
  std::vector<Extent> merged;
  for (const Extent& e : l.key_material) {
    if (e.end() > l.data_offset) corrupt(object, "keyslot area beyond the data offset");
    if (!merged.empty() && e.offset <= merged.back().end())
      merged.back().size = std::max(merged.back().end(), e.end()) - merged.back().offset;
    else
      merged.push_back(e);
  }
  l.key_material = std::move(merged);
  return l;
}

HeaderLayout inspect_header(const Reader& read, std::string_view object) {
  const auto first = read_some(read, 0, kBinaryHeaderSize);
  if (first.empty()) throw Error(EINVAL, cat(object, ": empty source (0 bytes), not a LUKS2 volume"));
  const ProbeResult p = probe(first);
  if (p.content == Content::luks1)
    throw Error(ENOTSUP, cat(object, ": LUKS1 is not supported by the luks2 code; only LUKS2 "
                                     "(convert with `cryptsetup convert --type luks2`)"));
  if (p.content != Content::luks2)
    throw Error(EINVAL, cat(object, ": not a LUKS2 volume (found ", p.signature, ")"));
  if (first.size() < kBinaryHeaderSize) read_exact(read, object, 0, kBinaryHeaderSize);  // throws

  // The primary copy's size says where the secondary is; if it is not a
  // LUKS2 size, look for the secondary at each size, as libcryptsetup does.
  std::uint64_t hdr_size = be64(first.data() + 8);
  Copy primary, secondary;
  std::vector<std::uint8_t> headers;
  if (valid_hdr_size(hdr_size)) {
    headers = read_exact(read, object, 0, 2 * hdr_size);
    primary = check_copy(headers, 0, hdr_size);
    secondary = check_copy(headers, hdr_size, hdr_size);
  } else {
    primary.why = hdr_size_error(hdr_size);
    secondary.why = "none found";
    for (std::uint64_t size = 16u << 10; size <= (4u << 20); size *= 2) {
      const auto b = read_some(read, size, kBinaryHeaderSize);
      if (b.size() < kBinaryHeaderSize || be64(b.data() + 8) != size ||
          std::memcmp(b.data(), "SKUL\xba\xbe", 6) != 0)
        continue;
      auto all = read_some(read, 0, 2 * size);
      if (all.size() < 2 * size) continue;
      Copy c = check_copy(all, size, size);
      if (!c.valid) continue;
      hdr_size = size;
      headers = std::move(all);
      secondary = std::move(c);
      break;
    }
  }
  const Copy* chosen = nullptr;
  if (primary.valid && (!secondary.valid || primary.seqid >= secondary.seqid))
    chosen = &primary;
  else if (secondary.valid)
    chosen = &secondary;
  else
    corrupt(object, cat("no valid LUKS2 header copy (primary: ", primary.why,
                        "; secondary: ", secondary.why, ")"));

  HeaderLayout l = check_json(chosen->j, hdr_size, object);
  l.headers = std::move(headers);
  return l;
}

void check_data_inside(const Reader& read, const HeaderLayout& l, std::string_view object) {
  std::uint8_t b[1];
  if (l.data_offset > 0 && read(b, l.data_offset - 1) == 0)
    throw Error(EINVAL, cat(object, ": the data segment at offset ", l.data_offset,
                            " starts past the end of the source"));
}

}  // namespace rbdgw::luks
