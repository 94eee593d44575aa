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
#include <string_view>

#include "csi/config.hpp"
#include "csi/volume_id.hpp"
#include "rbd/cluster.hpp"
#include "rbd/image.hpp"

namespace rbdgw::csi {

// Image metadata keys written by CreateVolume.
inline constexpr const char* kMetaName = "rbdgw.csi/name";
inline constexpr const char* kMetaParams = "rbdgw.csi/params";
inline constexpr const char* kMetaKmsId = "rbdgw.csi/encryptionKMSID";
// Set on an encrypted volume whose image carries the LUKS2 header on top of
// the plaintext it was asked for (image = capacity + header); its value is
// the header room reserved. Volumes without it were made the old way (and
// ceph-csi's are like that): the image is the requested size, the header
// inside it, until an expand grows them to capacity + header.
inline constexpr const char* kMetaHeaderOnTop = "rbdgw.csi/luksHeaderOnTop";
// The room a new encrypted volume reserves for its LUKS2 header: the data
// offset of the LUKS2 format lib/luks writes (16 MiB).
inline constexpr std::uint64_t kLuksHeaderRoom = std::uint64_t{16} << 20;

// A volume ID from a request about an existing volume. A malformed ID names
// no volume of ours, so Error(ENOENT) (NOT_FOUND) with the parse error as
// the cause, where VolumeId::parse says EINVAL.
VolumeId parse_existing_volume_id(std::string_view id);

// Bytes of the image before its plaintext: 0 for a plain volume, the LUKS2
// header's data offset when the image holds one, else kLuksHeaderRoom (the
// header the first stage will write).
std::uint64_t encryption_overhead(rbd::Image& image);

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

  // Creates (or finds, for a repeated request) the volume for name. An
  // encrypted volume's image is the capacity plus kLuksHeaderRoom, so that
  // its plaintext is at least what was asked for; CreatedVolume::size is
  // the capacity the volume offers (the plaintext).
  // Throws Error: EINVAL (unknown clusterID, bad secrets), ENOENT (pool),
  // EEXIST (name reused with other parameters or size), cluster errors.
  CreatedVolume create(const std::string& name, const VolumeParams& params,
                       std::int64_t required_bytes, std::int64_t limit_bytes,
                       const StringMap& secrets);

  // DeleteVolume, in an order that makes a refused delete change nothing
  // and a retried one finish:
  //  1. use first: another client watching the image (a gateway on any
  //     node, rbd map, a VM) or snapshots -> Error(EBUSY / ENOTEMPTY), naming
  //     the watchers and the node of the rbdgw gateway holding it; nothing
  //     has been touched;
  //  2. the image goes to the RBD trash (atomic: from now on no stage finds
  //     it by name);
  //  3. the key: the DEK where the KMS keeps it outside the image (an
  //     integrated DEK store; the metadata store and the default KMS keep
  //     nothing outside the image, their key goes with it);
  //  4. the trashed image is removed for good.
  // A delete interrupted after step 2 leaves a trash entry with the image's
  // name (the DEK and the KMS ID still in its metadata): the retry finds it
  // and does steps 3 and 4. A client that opened the image just before step
  // 2 is found in step 3/4: the image is restored under its name and the
  // delete refused (EBUSY). A volume that no longer exists (image, pool or
  // cluster entry gone) is success.
  void remove(const VolumeId& id, const StringMap& secrets);

  // ControllerPublishVolume (attachRequired: true): the volume must exist
  // (ENOENT); a read-write publish is refused with Error(EBUSY) naming the
  // node when the image's exclusive lock is held by an rbdgw gateway on
  // another node (or by a client that is not an rbdgw gateway). Read-only
  // publishes take no lock and are not checked. Changes nothing.
  void publish(const VolumeId& id, const std::string& node, bool read_only,
               const StringMap& secrets);

  // ControllerUnpublishVolume: Kubernetes detaches the volume from `node`
  // after NodeUnstageVolume succeeded, or after it declared the node gone
  // (force detach, out-of-service taint). If an rbdgw gateway whose holder
  // record names that node (any node when node is empty) still holds the
  // exclusive lock, its lock is broken: librbd blocklists that client, so
  // it can never write again, and another node can stage. A lock held by a
  // gateway of another node or by a client without a record is left alone.
  // A volume that no longer exists is success.
  void unpublish(const VolumeId& id, const std::string& node, const StringMap& secrets);

  // Grows the volume to offer the MiB-rounded size for the range (never
  // shrinks): an encrypted volume's image to that plus its LUKS2 header's
  // data offset (an old-style volume, header inside, grows to required +
  // header too). Returns the capacity after: what the volume offers (the
  // plaintext of an encrypted one). ENOENT for a missing volume, ERANGE for a
  // bad range.
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
