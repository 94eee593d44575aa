// What ceph-csi keeps in an RBD image's metadata for an encrypted volume
// (ceph/ceph-csi internal/rbd/encryption.go, rbd_util.go):
//
//   rbd.csi.ceph.com/encrypted  the encryption state: "" or absent (not
//                               encrypted), "encryptionPrepared" (a DEK is
//                               stored, the LUKS header not yet written),
//                               "encrypted" (LUKS formatted), and the
//                               deprecated "requiresEncryption" (made by a
//                               ceph-csi before v3.3, which had no DEK yet)
//   rbd.csi.ceph.com/dek        the wrapped DEK of a metadata-type KMS
//
// Before ceph-csi v3.4 both keys started with a dot (".rbd.csi.ceph.com/...").
// Reading falls back to the old key and, like ceph-csi's MigrateMetadata,
// moves the value to the new key when the image is writable.
//
// Thread safety: none; one user of the Image at a time.
#pragma once

#include <optional>
#include <string>

#include "kms/kms.hpp"
#include "rbd/image.hpp"

namespace rbdgw::kms {

inline constexpr const char* meta_state_key = "rbd.csi.ceph.com/encrypted";
inline constexpr const char* meta_state_key_old = ".rbd.csi.ceph.com/encrypted";
inline constexpr const char* meta_dek_key = "rbd.csi.ceph.com/dek";
inline constexpr const char* meta_dek_key_old = ".rbd.csi.ceph.com/dek";

enum class EncryptionState { none, requires_encryption, prepared, encrypted };

// The metadata value of a state ("", "requiresEncryption", ...).
const char* state_value(EncryptionState s);

// The image's state (surrounding whitespace ignored, as ceph-csi does).
// Throws Error(EBADMSG) naming the image and the value for an unknown one.
EncryptionState get_state(rbd::Image& image);
// Records the state; none removes the key (and its old form).
void set_state(rbd::Image& image, EncryptionState s);

// Reads key, else old_key (moved to key if the image is writable).
std::optional<std::string> get_meta_migrating(rbd::Image& image, const std::string& key,
                                              const std::string& old_key);

// The image metadata as the DEK store of one volume, as ceph-csi's rbdImage
// is: it refuses a volume ID other than its own (Error(EINVAL)).
class ImageDEKStore final : public DEKStore {
 public:
  ImageDEKStore(rbd::Image& image, std::string volume_id)
      : image_(image), volume_id_(std::move(volume_id)) {}
  void store_dek(const std::string& volume_id, const std::string& wrapped) override;
  std::optional<std::string> fetch_dek(const std::string& volume_id) override;
  void remove_dek(const std::string& volume_id) override;
  std::string describe() const override;

 private:
  void check_volume(const std::string& volume_id) const;
  rbd::Image& image_;
  std::string volume_id_;
};

}  // namespace rbdgw::kms
