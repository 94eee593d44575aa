// CSI snapshots, restores and clones of RBD volumes, free of gRPC (like
// controller.hpp).
//
// Design (after ceph-csi's internal/rbd snapshot.go / clone.go, reduced to
// what stays correct without a database and under RBD's delete rules):
//
//  * A snapshot is an image of its own, csi-snap-<uuid_from_name(name)> in
//    the source's pool, and its ID is the volume ID layout of volume_id.hpp
//    with that uuid (ceph-csi's format). It is made as ceph-csi makes it:
//    an RBD snapshot of the source (csi-snap-tmp-<uuid>), an RBD clone v2 of
//    it into the snapshot image, the temporary snapshot removed again (clone
//    v2 keeps it in the source's trash namespace while the clone lives), then
//    one RBD snapshot "csi-snap" of the snapshot image, the last step: its
//    presence marks the snapshot complete (ready_to_use), its timestamp is
//    creation_time. The snapshot image costs nothing until the source is
//    written (copy-on-write), and the source carries no user snapshot.
//  * A volume from a snapshot (restore) is an RBD clone v2 of the snapshot
//    image's "csi-snap", flattened before CreateVolume answers; a volume
//    from a volume (clone) is an RBD clone v2 of a temporary snapshot of the
//    source (csi-clone-tmp-<uuid>), flattened, the snapshot removed. So every
//    volume we hand out is independent: deleting the snapshot or the source
//    volume afterwards never touches it, and no chain grows. The cost is a
//    full copy at creation (rbd flatten, resumed by a retried CreateVolume).
//  * The one link that remains is a snapshot image on its source volume.
//    RBD cannot remove an image while a clone depends on it; DeleteVolume
//    refuses such a source with FAILED_PRECONDITION naming its snapshots
//    (Controller::remove), before anything is touched: never silent data
//    loss, and the user deletes the VolumeSnapshots first.
//  * Encrypted volumes: the clone copies the LUKS header and data, so the
//    copy has the same LUKS volume key and passphrase; the passphrase is
//    stored again for the copy, wrapped by the target's KMS under the copy's
//    own ID (ceph-csi's copyEncryptionConfig), for snapshot images (under
//    the snapshot ID) as for volumes. A copy therefore opens after the
//    source and its DEK are gone, and may use another encryptionKMSID. A
//    plain source into an encrypted class, or the reverse, is refused
//    (EINVAL naming both): the first would hand out plaintext as "encrypted",
//    the second ciphertext as a filesystem.
//
// Idempotency: names map to image names; the metadata records the request
// name and source; the marker of a finished step is written last (the
// "csi-snap" snapshot; rbdgw.csi/contentSource for a volume). A retry of a
// half-done call finishes it.
//
// Thread safety: as Controller; the caller serialises calls per name/ID.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "csi/controller.hpp"

namespace rbdgw::csi {

inline constexpr const char* kSnapImagePrefix = "csi-snap-";
inline constexpr const char* kSnapName = "csi-snap";  // the RBD snapshot of a snapshot image
inline constexpr const char* kMetaSnapName = "rbdgw.csi/snapshotName";
inline constexpr const char* kMetaSnapSource = "rbdgw.csi/sourceVolumeID";
// On a volume made from a source: "snapshot:<id>" or "volume:<id>". Written last.
inline constexpr const char* kMetaContentSource = "rbdgw.csi/contentSource";

// "csi-snap-<uuid>" for a snapshot ID.
inline std::string snapshot_image_name(const VolumeId& id) { return kSnapImagePrefix + id.uuid; }

struct SnapshotInfo {
  std::string snapshot_id;
  std::string source_volume_id;
  std::uint64_t size_bytes = 0;
  std::int64_t created_seconds = 0;
  std::int32_t created_nanos = 0;
  bool ready = false;
};

struct SnapshotPage {
  std::vector<SnapshotInfo> entries;
  std::string next_token;  // "" on the last page
};

struct ContentSource {
  bool snapshot = false;  // else a volume
  std::string id;
  std::string str() const { return (snapshot ? "snapshot:" : "volume:") + id; }
};

// The clones of any snapshot of img (also of snapshots in the trash
// namespace), as "pool/[ns/]image" each.
std::vector<std::string> image_children(const rbd::Image& img);

class Snapshots {
 public:
  explicit Snapshots(Controller& c) : controller_(c) {}

  // CreateSnapshot. Throws Error: ENOENT (source missing), EEXIST (name
  // taken by a snapshot of another source), EBUSY (the source's lock holder
  // no longer watches it), cluster errors.
  SnapshotInfo create(const std::string& name, const std::string& source_volume_id,
                      const StringMap& secrets);

  // DeleteSnapshot: success for a malformed or unknown ID. Restores from it
  // that were interrupted (clones of it, none running here: the caller
  // holds the ID's lock) are flattened first, so they keep their data.
  void remove(const std::string& snapshot_id, const StringMap& secrets);

  // ListSnapshots: by ID (an unknown one is an empty list), by source
  // volume, or all of the configured clusters' pools the secrets reach;
  // sorted by ID. The token is the index of the next entry; one we could
  // not have handed out is Error(EAGAIN) (ABORTED, as the spec says).
  SnapshotPage list(const std::string& snapshot_id, const std::string& source_volume_id,
                    std::int32_t max_entries, const std::string& starting_token,
                    const StringMap& secrets);

  // CreateVolume with a volume_content_source. Throws Error: ENOENT
  // (source missing), ERANGE (smaller than the source), EINVAL (encryption
  // mismatch, other cluster), EEXIST (name taken with another source or
  // parameters).
  CreatedVolume create_volume(const std::string& name, const VolumeParams& params,
                              std::int64_t required_bytes, std::int64_t limit_bytes,
                              const ContentSource& source, const StringMap& secrets);

 private:
  Controller& controller_;
};

}  // namespace rbdgw::csi
