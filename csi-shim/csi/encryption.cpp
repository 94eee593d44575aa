#include "csi/encryption.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <mutex>
#include <sstream>

#include "common/error.hpp"
#include "kms/secrets_kms.hpp"
#include "kms/volume_encryption.hpp"

namespace rbdgw::csi {

namespace {

// KMS ID -> encryptionKMSType, from --kms-config. Set once at start.
// TODO(kms): replace with lib/kms's KMS configuration once it lands there.
std::map<std::string, std::string> g_kms_types;

std::shared_ptr<kms::EncryptionKMS> kms_for(const std::string& kms_id, const StringMap& secrets) {
  auto pass = secrets.find(kms::passphrase_secret_key);
  const std::string name = kms_id.empty() ? kms::default_kms_id : kms_id;
  if (pass == secrets.end() || pass->second.empty())
    throw Error(EINVAL, cat("KMS '", name, "': secret '", kms::passphrase_secret_key, "' is missing"));
  SecretBuffer passphrase(pass->second);
  if (name == kms::default_kms_id) return kms::make_default_kms(name, std::move(passphrase));
  auto type = g_kms_types.find(name);
  if (type == g_kms_types.end())
    throw Error(EINVAL, cat("encryptionKMSID '", name, "' is not in the KMS configuration"));
  if (type->second == "metadata") return kms::make_metadata_kms(name, std::move(passphrase));
  throw Error(EINVAL, cat("encryptionKMSID '", name, "': unsupported encryptionKMSType '",
                          type->second, "'"));
}

}  // namespace

void load_kms_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_errno("KMS config", path, errno ? errno : ENOENT);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(EINVAL, cat("KMS config ", path, ": not valid JSON: ", e.what()));
  }
  if (!doc.is_object()) throw Error(EINVAL, cat("KMS config ", path, ": expected a JSON object"));
  for (const auto& [id, entry] : doc.items()) {
    if (!entry.is_object() || !entry.contains("encryptionKMSType") ||
        !entry["encryptionKMSType"].is_string())
      throw Error(EINVAL, cat("KMS config ", path, ": KMS ID '", id,
                              "': \"encryptionKMSType\" is missing"));
    g_kms_types[id] = entry["encryptionKMSType"].get<std::string>();
  }
}

void prepare_encryption(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                        const StringMap& secrets) {
  kms::VolumeEncryption ve(kms_for(kms_id, secrets), image, id.str());
  if (ve.state() == kms::EncryptionState::prepared || ve.state() == kms::EncryptionState::encrypted)
    return;  // a retried CreateVolume: keep the DEK
  ve.create_dek();
}

SecretBuffer volume_passphrase(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                               const StringMap& secrets) {
  kms::VolumeEncryption ve(kms_for(kms_id, secrets), image, id.str());
  return ve.passphrase();
}

void remove_encryption(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                       const StringMap& secrets) {
  // The default KMS stores nothing and the metadata KMS stores the DEK in
  // the image's metadata, which goes with the image: without the KMS secret
  // there is nothing else to remove.
  if (!secrets.count(kms::passphrase_secret_key)) return;
  kms::VolumeEncryption ve(kms_for(kms_id, secrets), image, id.str());
  ve.remove_dek();
}

}  // namespace rbdgw::csi
