// CSI volume IDs in ceph-csi's CSIIdentifier format, so that every call
// finds cluster, pool and image from the ID alone, without a database:
//
//   0001-<clusterID length, 4 hex>-<clusterID>-<pool id, 16 hex>-<uuid>
//
// e.g. "0001-0009-rook-ceph-0000000000000002-92837648-1431-11eb-8990-0242ac110005".
// The image is "csi-vol-<uuid>" in that pool (and the cluster's RADOS
// namespace). Our uuid is a name-based (version 5 style, SHA-1) UUID of the
// CreateVolume request name, so a repeated CreateVolume finds the same image.
//
// Thread safety: plain value types and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rbdgw::csi {

struct VolumeId {
  std::string cluster_id;
  std::int64_t pool_id = 0;
  std::string uuid;  // 36 characters, lower-case hex with dashes

  // Parses an ID; throws Error(EINVAL) naming the ID and what is wrong.
  static VolumeId parse(std::string_view id);
  // The encoded ID. Throws Error(EINVAL) if the cluster ID is empty or too
  // long for the 128-byte CSI limit, or the uuid is malformed.
  std::string str() const;
  // "csi-vol-<uuid>".
  std::string image_name() const { return "csi-vol-" + uuid; }

  bool operator==(const VolumeId&) const = default;
};

// The UUID (version 5 layout, SHA-1 over a fixed rbdgw namespace UUID and
// the name) of a CreateVolume name. Deterministic; lower-case, with dashes.
std::string uuid_from_name(std::string_view name);

// True if s is a 36-character UUID in lower-case hex with dashes.
bool is_uuid(std::string_view s) noexcept;

}  // namespace rbdgw::csi
