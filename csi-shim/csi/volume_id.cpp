#include "csi/volume_id.hpp"

#include <openssl/evp.h>

#include <array>
#include <cstdio>

#include "common/error.hpp"

namespace rbdgw::csi {

namespace {

constexpr std::string_view kVersion = "0001";
constexpr std::size_t kMaxIdLength = 128;  // the CSI size limit for IDs
// rbdgw's namespace for name-based volume UUIDs (random, fixed forever:
// changing it would break CreateVolume idempotency for existing volumes).
constexpr std::array<unsigned char, 16> kNamespace = {
    0x6b, 0x1e, 0x4a, 0x3c, 0x9d, 0x27, 0x4f, 0x83,
    0xa5, 0x0e, 0x71, 0xc2, 0x58, 0xd9, 0x3b, 0x16};

[[noreturn]] void bad(std::string_view id, std::string_view why) {
  throw Error(EINVAL, cat("volume ID '", id, "': ", why));
}

bool parse_hex(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  out = 0;
  for (char c : s) {
    int v;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    else return false;  // upper case is not canonical
    out = out * 16 + v;
  }
  return true;
}

}  // namespace

bool is_uuid(std::string_view s) noexcept {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

VolumeId VolumeId::parse(std::string_view id) {
  if (id.empty()) bad(id, "empty");
  if (id.size() > kMaxIdLength) bad(id, "longer than 128 bytes");
  // "0001-LLLL-" then clusterID, then "-" 16 hex "-" 36 uuid.
  if (id.size() < 10 || id.substr(0, 4) != kVersion || id[4] != '-' || id[9] != '-')
    bad(id, "not a CSI volume ID of encoding version 0001");
  std::uint64_t len = 0;
  if (!parse_hex(id.substr(5, 4), len) || len == 0) bad(id, "malformed cluster ID length");
  const std::size_t rest = 10 + len;  // index after the cluster ID
  if (id.size() != rest + 1 + 16 + 1 + 36) bad(id, "wrong length for its cluster ID length");
  VolumeId v;
  v.cluster_id = std::string(id.substr(10, len));
  std::uint64_t pool = 0;
  if (id[rest] != '-' || !parse_hex(id.substr(rest + 1, 16), pool) || id[rest + 17] != '-')
    bad(id, "malformed pool ID");
  if (pool > static_cast<std::uint64_t>(INT64_MAX)) bad(id, "pool ID out of range");
  v.pool_id = static_cast<std::int64_t>(pool);
  v.uuid = std::string(id.substr(rest + 18));
  if (!is_uuid(v.uuid)) bad(id, "malformed uuid");
  return v;
}

std::string VolumeId::str() const {
  if (cluster_id.empty()) throw Error(EINVAL, "volume ID: empty cluster ID");
  if (pool_id < 0) throw Error(EINVAL, cat("volume ID: negative pool ID ", pool_id));
  if (!is_uuid(uuid)) throw Error(EINVAL, cat("volume ID: malformed uuid '", uuid, "'"));
  char head[16], pool[24];
  std::snprintf(head, sizeof head, "%s-%04zx-", kVersion.data(), cluster_id.size());
  std::snprintf(pool, sizeof pool, "-%016llx-", static_cast<unsigned long long>(pool_id));
  std::string s = cat(head, cluster_id, pool, uuid);
  if (s.size() > kMaxIdLength)
    throw Error(EINVAL, cat("cluster ID '", cluster_id, "' is too long for a 128-byte volume ID"));
  return s;
}

std::string uuid_from_name(std::string_view name) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) throw Error(ENOMEM, "EVP_MD_CTX_new: out of memory");
  bool ok = EVP_DigestInit_ex(ctx, EVP_sha1(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, kNamespace.data(), kNamespace.size()) == 1 &&
            EVP_DigestUpdate(ctx, name.data(), name.size()) == 1 &&
            EVP_DigestFinal_ex(ctx, md, &mdlen) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok || mdlen < 16) throw Error(EIO, "uuid_from_name: SHA-1 failed");
  md[6] = static_cast<unsigned char>((md[6] & 0x0f) | 0x50);  // version 5
  md[8] = static_cast<unsigned char>((md[8] & 0x3f) | 0x80);  // RFC 4122 variant
  char out[37];
  std::snprintf(out, sizeof out,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                md[0], md[1], md[2], md[3], md[4], md[5], md[6], md[7], md[8], md[9],
                md[10], md[11], md[12], md[13], md[14], md[15]);
  return out;
}

}  // namespace rbdgw::csi
