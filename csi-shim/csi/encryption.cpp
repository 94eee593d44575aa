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

void remove_encryption(rbd::Image& /*image*/, const VolumeId& id, const std::string& kms_id,
                       const StringMap& secrets) {
  // DeleteVolume calls this on the image in the trash, after it made sure
  // nobody uses it and before it removes it for good, so that a delete put
  // back (restored) finds the volume as it was: only a key kept OUTSIDE
  // the image is removed. The metadata KMS keeps the wrapped DEK and the
  // state in the image's metadata, which goes with the image; the default
  // KMS keeps nothing. An integrated DEK store (a KMS that keeps DEKs
  // itself) forgets the volume's DEK here. Without the KMS secret the
  // default KMS cannot even be built, and it stores nothing: done.
  if (!secrets.count(kms::passphrase_secret_key)) return;
  auto k = g_config.build(kms_id, secrets);
  if (k->requires_dek_store() != kms::DEKStoreType::integrated) return;  // in the image
  kms::DEKStore* store = k->integrated_store();
  if (!store) return;
  store->remove_dek(id.str());
}

}  // namespace rbdgw::csi

namespace rbdgw::csi {

void copy_encryption(rbd::Image& src, const VolumeId& src_id, const std::string& src_kms,
                     rbd::Image& dst, const VolumeId& dst_id, const std::string& dst_kms,
                     const StringMap& secrets) {
  kms::VolumeEncryption from(g_config.build(src_kms, secrets), src, src_id.str());
  const kms::EncryptionState state = from.state();
  SecretBuffer pass = from.passphrase();
  auto k = g_config.build(dst_kms, secrets);
  const std::string wrapped = k->encrypt_dek(dst_id.str(), pass);
  if (k->requires_dek_store() == kms::DEKStoreType::integrated) {
    if (kms::DEKStore* store = k->integrated_store()) store->store_dek(dst_id.str(), wrapped);
  } else {
    kms::ImageDEKStore(dst, dst_id.str()).store_dek(dst_id.str(), wrapped);
  }
  kms::set_state(dst, state);
  // A KMS that cannot keep this passphrase (one passphrase for every volume) is caught here.
  kms::VolumeEncryption to(std::move(k), dst, dst_id.str());
  if (!to.passphrase().equals(pass))
    throw Error(EINVAL, cat("encryptionKMSID '", dst_kms.empty() ? kms::default_kms_id : dst_kms,
                            "' cannot carry the passphrase of '", src_id.str(),
                            "' (a KMS with one passphrase for every volume, and another one)"));
}

}  // namespace rbdgw::csi
