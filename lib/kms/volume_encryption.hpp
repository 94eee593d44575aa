// VolumeEncryption: one volume's encryption keys in one place, joining an
// EncryptionKMS with the DEK store it needs (itself, or the image metadata)
// and the encryption state in the image metadata, as ceph-csi's
// util.VolumeEncryption and rbd/encryption.go do, so that a volume made by
// either opens with the other given the same KMS configuration and secret.
//
// Typical use: create_dek() in CreateVolume; passphrase() to format (then
// set_state(encrypted)) or to open in NodeStage; remove_dek() in
// DeleteVolume; rewrap() to rotate the KMS secret.
//
// Thread safety: none; one VolumeEncryption per volume and thread (the Image
// reference must outlive it).
#pragma once

#include <memory>
#include <string>

#include "kms/image_meta.hpp"
#include "kms/kms.hpp"
#include "rbd/image.hpp"

namespace rbdgw::kms {

// Size of a generated passphrase's random part (ceph-csi:
// encryptionPassphraseSize = 20, i.e. 160 bits).
inline constexpr std::size_t passphrase_random_bytes = 20;

// A new volume passphrase as ceph-csi generates it: 20 random bytes in
// Go's base64.URLEncoding (padded), 28 ASCII characters.
SecretBuffer new_volume_passphrase();

class VolumeEncryption {
 public:
  // volume_id is the CSI volume ID (ceph-csi salts the KEK with it).
  VolumeEncryption(std::shared_ptr<EncryptionKMS> kms, rbd::Image& image, std::string volume_id);

  const EncryptionKMS& kms() const { return *kms_; }
  const std::string& volume_id() const { return volume_id_; }

  // Generates, wraps and stores a new DEK and sets the state to
  // encryptionPrepared. Throws Error(EEXIST) if the volume already has one
  // (state encryptionPrepared or encrypted): a DEK is never replaced.
  void create_dek();

  // The volume's LUKS passphrase. Throws Error(ENOENT) if no DEK is stored,
  // Error(EPERM) for a wrong KMS secret, Error(EBADMSG) for a corrupt DEK;
  // each message names the volume and where the DEK was read from.
  SecretBuffer passphrase();

  // Forgets the DEK and the state (for DeleteVolume). Idempotent.
  void remove_dek();

  // Key rotation: unwraps the DEK with the current KMS, wraps it with
  // new_kms (another secret or another KMS), stores it, and uses new_kms
  // from then on. The LUKS passphrase itself does not change, so the LUKS
  // header is not touched. Throws Error(ENOTSUP) and changes nothing if
  // new_kms cannot carry this passphrase (the default KMS, whose passphrase
  // is fixed: change the LUKS keyslot instead).
  void rewrap(std::shared_ptr<EncryptionKMS> new_kms);

  EncryptionState state() { return get_state(image_); }
  void set_state(EncryptionState s) { kms::set_state(image_, s); }

 private:
  DEKStore& store_for(EncryptionKMS& kms);
  std::string describe() const;

  std::shared_ptr<EncryptionKMS> kms_;
  rbd::Image& image_;
  std::string volume_id_;
  ImageDEKStore image_store_;
};

}  // namespace rbdgw::kms
