#include "kms/volume_encryption.hpp"

#include <cerrno>

#include "common/base64.hpp"
#include "common/error.hpp"
#include "common/log.hpp"
#include "crypto/random.hpp"
#include "kms/rotation.hpp"

namespace rbdgw::kms {

SecretBuffer new_volume_passphrase() {
  SecretBuffer raw = crypto::random_secret(passphrase_random_bytes);
  SecretBuffer out(base64::encoded_size(raw.size()));
  base64::encode_to(raw.bytes(), reinterpret_cast<char*>(out.data()), base64::Alphabet::url);
  return out;
}

VolumeEncryption::VolumeEncryption(std::shared_ptr<EncryptionKMS> kms, rbd::Image& image,
                                   std::string volume_id)
    : kms_(std::move(kms)), image_(image), volume_id_(std::move(volume_id)),
      image_store_(image, volume_id_) {
  if (!kms_) throw Error(EINVAL, cat(describe(), ": no KMS given"));
  if (volume_id_.empty()) throw Error(EINVAL, cat("image ", image.spec(), ": empty volume ID"));
}

std::string VolumeEncryption::describe() const {
  return cat("volume ", volume_id_, " (image ", image_.spec(), ")");
}

DEKStore& VolumeEncryption::store_for(EncryptionKMS& kms) {
  if (kms.requires_dek_store() == DEKStoreType::metadata) return image_store_;
  DEKStore* s = kms.integrated_store();
  if (!s)
    throw Error(EINVAL, cat("KMS '", kms.id(), "' claims an integrated DEK store but has none"));
  return *s;
}

void VolumeEncryption::create_dek() {
  EncryptionState st = state();
  if (st == EncryptionState::prepared || st == EncryptionState::encrypted)
    throw Error(EEXIST, cat(describe(), ": already has a DEK (state '", state_value(st),
                            "'); refusing to replace it"));
  SecretBuffer dek = new_volume_passphrase();
  store_for(*kms_).store_dek(volume_id_, kms_->encrypt_dek(volume_id_, dek));
  set_state(EncryptionState::prepared);
  log::info(describe(), ": new DEK stored with KMS '", kms_->id(), "', state '",
            state_value(EncryptionState::prepared), "'");
}

SecretBuffer VolumeEncryption::passphrase() {
  DEKStore& store = store_for(*kms_);
  // A key rotation stopped half-way (kms/rotation.hpp) knows which DEK opens.
  auto wrapped = rotation_wrapped_for(image_, kms_->id());
  if (!wrapped) wrapped = store.fetch_dek(volume_id_);
  if (!wrapped)
    throw Error(ENOENT, cat(describe(), ": no DEK in ", store.describe(),
                            " (the volume was not prepared for encryption)"));
  try {
    return kms_->decrypt_dek(volume_id_, *wrapped);
  } catch (const Error& e) {
    throw Error(e.code(), cat(store.describe(), ": ", e.what()));  // e names KMS and volume
  }
}

void VolumeEncryption::remove_dek() {
  store_for(*kms_).remove_dek(volume_id_);
  set_state(EncryptionState::none);
  log::info(describe(), ": DEK removed (KMS '", kms_->id(), "')");
}

void VolumeEncryption::rewrap(std::shared_ptr<EncryptionKMS> new_kms) {
  if (!new_kms) throw Error(EINVAL, cat(describe(), ": rewrap: no KMS given"));
  SecretBuffer dek = passphrase();
  std::string wrapped = new_kms->encrypt_dek(volume_id_, dek);
  if (!new_kms->decrypt_dek(volume_id_, wrapped).equals(dek))
    throw Error(ENOTSUP, cat(describe(), ": KMS '", new_kms->id(),
                             "' cannot hold this volume's passphrase (it has one passphrase "
                             "for every volume); change the LUKS keyslot instead"));
  DEKStore& old_store = store_for(*kms_);
  DEKStore& new_store = store_for(*new_kms);
  new_store.store_dek(volume_id_, wrapped);
  if (&old_store != &new_store) old_store.remove_dek(volume_id_);
  log::info(describe(), ": DEK re-wrapped from KMS '", kms_->id(), "' to KMS '", new_kms->id(),
            "'");
  kms_ = std::move(new_kms);
}

}  // namespace rbdgw::kms
