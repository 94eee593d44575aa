// The KMS configuration: the JSON of ceph-csi's
// `ceph-csi-encryption-kms-config` ConfigMap (its `config.json` value,
// mounted at /etc/ceph-csi-encryption-kms-config/config.json), an object
// keyed by KMS ID:
//
//   {
//     "secrets-metadata": { "encryptionKMSType": "metadata" },
//     "user-secret":      { "encryptionKMSType": "metadata",
//                           "secretName": "my-secret", "secretNamespace": "ns",
//                           "passphraseFile": "/etc/rbdgw/kms/user-secret" },
//     "shared":           { "encryptionKMSType": "default",
//                           "passphraseFile": "/etc/rbdgw/kms/shared" }
//   }
//
// An entry may also be a JSON string holding such an object (the form of
// ceph-csi's csi-kms-connection-details ConfigMap); "KMS_PROVIDER" is
// accepted for "encryptionKMSType", as ceph-csi does.
//
// Types and their keys:
//   default   one passphrase for every volume (also used for an empty KMS ID
//             or "default" when the config has no such entry)
//   metadata  a DEK per volume, wrapped with a KEK from the passphrase, in
//             the image metadata
// Both take the passphrase (the KMS secret) from, in this order:
//   passphraseFile   (rbdgw's own key) a file holding the passphrase, byte
//                    for byte (a trailing newline is part of it). Keep it
//                    mode 0600.
//   the request's secrets, key "encryptionPassphrase" (as ceph-csi).
// secretName/secretNamespace (ceph-csi: read a Kubernetes Secret) are
// accepted but rbdgw has no Kubernetes API: such a KMS needs passphraseFile
// or the passphrase in the request's secrets, and says so if both are
// missing. Other keys are ignored, as ceph-csi ignores them.
//
// Errors (rbdgw::Error, EINVAL unless said) name the KMS ID and the key:
// an unknown KMS ID (ENOENT, listing the known ones), an entry that is not
// an object, a missing or unknown encryptionKMSType, a key of the wrong
// JSON type, a missing secret.
//
// Thread safety: KMSConfig is immutable after parsing; build() may be called
// from any thread.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kms/kms.hpp"

namespace rbdgw::kms {

// ceph-csi's mount point of the ConfigMap.
inline constexpr const char* ceph_csi_config_path =
    "/etc/ceph-csi-encryption-kms-config/config.json";

class KMSConfig {
 public:
  // An empty configuration (only the default KMS, from the request's secrets).
  KMSConfig();

  // Parses the JSON text; `source` names it in messages (a path, "ConfigMap").
  // Throws Error(EINVAL) "<source>: ..." for invalid JSON or a top level
  // that is not an object.
  static KMSConfig parse(std::string_view text, std::string_view source);
  // Reads and parses a file (Error(ENOENT) etc. naming the path).
  static KMSConfig load(const std::string& path);

  // Builds the KMS for kms_id ("" means "default") with the request's secrets.
  std::shared_ptr<EncryptionKMS> build(const std::string& kms_id, const Secrets& secrets) const;

  // Checks every entry as build() would, short of reading a passphrase:
  // for a start-up check. Throws the Error build() throws for the first bad
  // entry (naming the KMS ID and the key).
  void validate() const;

  // The configured KMS IDs, sorted.
  std::vector<std::string> ids() const;

 private:
  std::shared_ptr<const nlohmann::json> doc_;  // an object; shared by copies
  std::string source_ = "KMS config";
};

}  // namespace rbdgw::kms
