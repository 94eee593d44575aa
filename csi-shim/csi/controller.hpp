// Controller logic of rbdgw-csi: create, delete and expand RBD-backed
// volumes, free of gRPC so that it can be driven and tested directly.
//
// Idempotency without a database: the image name comes from the request
// name (csi-vol-<uuid_from_name(name)>), and the image's metadata records
// the name and the canonical parameters; the last key is written last, so
// an image without it is a half-done create of ours that a retry finishes.
// A create that finds the image with other parameters or an incompatible
// size fails with Error(EEXIST).
//
// Thread safety: methods may run concurrently for different volumes; the
// caller serialises calls for one volume (VolumeLocks).
#pragma once

#include <cstdint>
#include <string>

#include "csi/config.hpp"
#include "csi/volume_id.hpp"
#include "rbd/cluster.hpp"
#include "rbd/image.hpp"

namespace rbdgw::csi {

// Image metadata keys written by CreateVolume.
inline constexpr const char* kMetaName = "rbdgw.csi/name";
inline constexpr const char* kMetaParams = "rbdgw.csi/params";
inline constexpr const char* kMetaKmsId = "rbdgw.csi/encryptionKMSID";

struct CreatedVolume {
  VolumeId id;
  std::uint64_t size = 0;
  StringMap context;  // volume_context handed back to Node calls
};

// A connected cluster and the pool/namespace of a volume.
struct VolumeLocation {
  rbd::IoCtx io;
  std::string image;  // image name
};

class Controller {
 public:
  explicit Controller(ClusterConfig clusters) : clusters_(std::move(clusters)) {}

  // Creates (or finds, for a repeated request) the volume for name.
  // Throws Error: EINVAL (unknown clusterID, bad secrets), ENOENT (pool),
  // EEXIST (name reused with other parameters or size), cluster errors.
  CreatedVolume create(const std::string& name, const VolumeParams& params,
                       std::int64_t required_bytes, std::int64_t limit_bytes,
                       const StringMap& secrets);

  // Removes the image (and its DEK). A volume that no longer exists (image,
  // pool or cluster entry gone) is success. EBUSY while it is attached.
  void remove(const VolumeId& id, const StringMap& secrets);

  // Grows the image to the MiB-rounded size for the range (never shrinks);
  // returns the size after. ENOENT for a missing volume, ERANGE for a bad range.
  std::uint64_t expand(const VolumeId& id, std::int64_t required_bytes,
                       std::int64_t limit_bytes, const StringMap& secrets);

  // Throws Error(ENOENT) unless the volume exists.
  void check_exists(const VolumeId& id, const StringMap& secrets);

  // Connects to the volume's cluster and pool. Throws Error(ENOENT) naming
  // the volume when its cluster ID or pool no longer exists.
  VolumeLocation locate(const VolumeId& id, const StringMap& secrets) const;

  const ClusterConfig& clusters() const { return clusters_; }

 private:
  ClusterConfig clusters_;
};

}  // namespace rbdgw::csi
