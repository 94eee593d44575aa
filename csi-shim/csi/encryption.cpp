#include "csi/encryption.hpp"

#include <algorithm>

#include "common/error.hpp"
#include "kms/config.hpp"
#include "kms/volume_encryption.hpp"

namespace rbdgw::csi {

namespace {

// From --kms-config; set once at start, before any request.
kms::KMSConfig g_config;

}  // namespace

void load_kms_config(const std::string& path) {
  kms::KMSConfig config = kms::KMSConfig::load(path);
  config.validate();
  g_config = std::move(config);
}

void check_kms_id(const std::string& kms_id) {
  const auto ids = g_config.ids();
  if (kms_id.empty() || kms_id == kms::default_kms_id ||
      std::find(ids.begin(), ids.end(), kms_id) != ids.end())
    return;
  std::string known;
  for (const auto& k : ids) known += (known.empty() ? "" : ", ") + k;
  throw Error(EINVAL, cat("encryptionKMSID '", kms_id, "' is not in the KMS config (known: ",
                          known.empty() ? "none" : known, ")"));
}

void check_kms(const std::string& kms_id, const StringMap& secrets) {
  try {
    g_config.build(kms_id, secrets);
  } catch (const Error& e) {
    throw Error(EINVAL, e.what());  // a bad StorageClass parameter or secret
  }
}

void prepare_encryption(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                        const StringMap& secrets) {
  kms::VolumeEncryption ve(g_config.build(kms_id, secrets), image, id.str());
  if (ve.state() == kms::EncryptionState::prepared || ve.state() == kms::EncryptionState::encrypted)
    return;  // a retried CreateVolume: keep the DEK
  ve.create_dek();
}

SecretBuffer volume_passphrase(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                               const StringMap& secrets) {
  kms::VolumeEncryption ve(g_config.build(kms_id, secrets), image, id.str());
  return ve.passphrase();
}

void remove_encryption(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                       const StringMap& secrets) {
  // The default KMS stores nothing and the metadata KMS stores the DEK in
  // the image's metadata, which goes with the image: without the KMS secret
  // there is nothing else to remove.
  if (!secrets.count(kms::passphrase_secret_key)) return;
  kms::VolumeEncryption ve(g_config.build(kms_id, secrets), image, id.str());
  ve.remove_dek();
}

}  // namespace rbdgw::csi
