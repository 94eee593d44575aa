// Key rotation of an encrypted volume, after ceph-csi's
// EncryptionKeyRotation (internal/rbd/encryption.go RotateEncryptionKey):
// the volume's LUKS2 passphrase (its "DEK") is replaced by a new random one
// that another KMS (or the same KMS ID with another secret) wraps and
// stores; the image metadata then names the new KMS and the old keyslot is
// destroyed. The LUKS volume key, and so the data, do not change; only the
// header area (keyslots and JSON) is rewritten, in place in the RBD image
// (luks::Header::read / write_back, no device-mapper).
//
// Steps, each one recorded before the next starts, in the image metadata key
// rbdgw.io/keyRotation (a JSON record holding both wrapped DEKs, which are
// not secret, the two KMS IDs, the two keyslot numbers and the last step
// done):
//   recorded  the record is written; nothing else changed yet
//   added     a keyslot for the new passphrase, authorised by the old one
//   stored    the new wrapped DEK is in the new KMS's store (the old one's
//             store forgets it), rbdgw.csi/encryptionKMSID names the new KMS
//   removed   the old keyslot is destroyed (its key material wiped)
//   (done)    the record is removed
// Where ceph-csi first copies the old passphrase to a spare keyslot (it
// reuses keyslot 0 for the new one), rbdgw adds the new passphrase to a
// free keyslot and never touches the old one until the end, so no copy is
// needed for the same guarantee: killed between any two steps, the old or
// the new secret opens the volume, VolumeEncryption::passphrase() (which
// reads the record) finds the one that does, and rotate_key() run again
// with the same KMS IDs finishes the rotation (or, with the KMS IDs swapped,
// rolls it back while the old keyslot still exists).
//
// While it runs, rotate_key holds the image's exclusive lock as an rbdgw
// holder (rbd/exclusive_lock.hpp), so no gateway maps the volume in the
// middle, and a rotate-key killed with -9 is taken over by the next map or
// rotate-key on the same node as a dead gateway would be. It refuses a
// volume that is mapped anywhere (lock held, or other clients watching it):
// a running gateway keeps serving with the volume key, but its stash's
// passphrase would no longer open the volume at its next restart.
//
// Thread safety: none; one rotation of a volume at a time (the lock).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "kms/kms.hpp"
#include "luks/header.hpp"
#include "rbd/cluster.hpp"
#include "rbd/image.hpp"

namespace rbdgw::kms {

// The KMS ID of an encrypted volume, as rbdgw-csi records it (CreateVolume)
// and reads it (NodeStageVolume).
inline constexpr const char* meta_kms_id_key = "rbdgw.csi/encryptionKMSID";
// The record of a rotation in progress.
inline constexpr const char* meta_rotation_key = "rbdgw.io/keyRotation";

enum class RotationStep { recorded, added, stored, removed };
const char* step_name(RotationStep s);

struct RotationRecord {
  std::string from, to;        // KMS IDs
  std::string old_wrapped;     // the old DEK as `from` wraps it
  std::string new_wrapped;     // the new DEK as `to` wraps it
  int old_slot = -1;           // the keyslot the old passphrase opens
  int new_slot = -1;           // the new passphrase's keyslot, from step added on
  RotationStep step = RotationStep::recorded;
  std::string started;         // UTC, ISO 8601
};

std::string rotation_to_json(const RotationRecord& r);
// Throws Error(EBADMSG) naming what is malformed.
RotationRecord rotation_from_json(const std::string& json, std::string_view object);
// The record of the image, if any (EBADMSG for a malformed one).
std::optional<RotationRecord> read_rotation(const rbd::Image& image);

// For VolumeEncryption::passphrase(): while a rotation is recorded, the
// wrapped DEK that KMS `kms_id` unwraps to a passphrase that opens the
// volume at the recorded step (nullopt: not a rotation's KMS, or none).
std::optional<std::string> rotation_wrapped_for(const rbd::Image& image, const std::string& kms_id);

struct RotateOptions {
  // Key derivation of the new keyslot; nullopt: the old keyslot's (type
  // and cost), so a rotation costs what the format cost.
  std::optional<luks::Pbkdf> pbkdf;
  // The node named in the lock's holder record (default: the host name).
  std::string node;
  // Called after each step is recorded (a test hook: the CLI stops there
  // under RBDGW_TEST_PAUSE_AT=<step>); may throw to stop the rotation.
  std::function<void(RotationStep)> after_step;
  // Progress lines ("added keyslot 1", ...); may be empty.
  std::function<void(std::string_view)> progress;
};

struct RotateResult {
  bool resumed = false;       // finished a rotation a killed run began
  bool rolled_back = false;   // undid one instead (to == the record's from)
  bool header_changed = false;
  int old_slot = -1, new_slot = -1;
};

// Moves the volume `volume_id` on `image` (opened read-write on `cluster`)
// from KMS `from` to KMS `to` with a new passphrase as above. A KMS with one
// passphrase for every volume (the default type) as `to` gets that
// passphrase's keyslot instead of a random one. Everything that can fail
// without changing anything is checked first: both KMSes work (the new one
// wraps and unwraps a test value), the old secret opens the volume, the
// volume is not in use; then errors name the volume and the cause: EINVAL
// not encrypted, ENOENT no DEK, EPERM wrong secret, EBUSY in use or another
// rotation in progress (naming its KMS IDs), ENOTSUP no LUKS2 header yet
// (state encryptionPrepared: the DEK is only re-wrapped, no keyslot work).
RotateResult rotate_key(const rbd::Cluster& cluster, rbd::Image& image, const std::string& volume_id,
                        std::shared_ptr<EncryptionKMS> from, std::shared_ptr<EncryptionKMS> to,
                        const RotateOptions& opts = {});

}  // namespace rbdgw::kms
