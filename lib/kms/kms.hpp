// Key management after ceph-csi's design for encrypted volumes
// (ceph/ceph-csi internal/kms/kms.go): an EncryptionKMS wraps and unwraps a
// volume's DEK, a DEKStore keeps the wrapped DEK. A KMS either stores DEKs
// itself (DEKStoreType::integrated; it is then its own DEKStore) or needs a
// separate store, for now the RBD image's metadata (DEKStoreType::metadata).
//
// A "DEK" here is what ceph-csi calls the volume's crypto passphrase: the
// LUKS passphrase of the volume, not the LUKS volume key.
//
// Wrapped DEKs are not secret and travel as std::string. Plain DEKs and
// passphrases only ever live in SecretBuffers. A KMS whose store would hold a
// plain value (the default KMS) keeps it inside and stores nothing.
//
// Thread safety: implementations are immutable after construction and may be
// used from any number of threads, unless they say otherwise.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "common/error.hpp"
#include "crypto/secret.hpp"

namespace rbdgw::kms {

// A CSI request's secrets (StorageClass or per-volume Secret), as ceph-csi
// receives them. The key "encryptionPassphrase" holds the KMS passphrase.
using Secrets = std::map<std::string, std::string>;

inline constexpr const char* passphrase_secret_key = "encryptionPassphrase";
// The KMS ID and type of the passphrase-for-every-volume KMS.
inline constexpr const char* default_kms_id = "default";

enum class DEKStoreType { integrated, metadata };

class DEKStore {
 public:
  virtual ~DEKStore() = default;
  // Saves (overwrites) the wrapped DEK of a volume.
  virtual void store_dek(const std::string& volume_id, const std::string& wrapped) = 0;
  // The wrapped DEK, or nullopt if none is stored.
  virtual std::optional<std::string> fetch_dek(const std::string& volume_id) = 0;
  // Forgets the DEK; nothing happens if there is none.
  virtual void remove_dek(const std::string& volume_id) = 0;
  // For messages ("image rbd/csi-vol-1 metadata", "KMS 'default'").
  virtual std::string describe() const = 0;
};

class EncryptionKMS {
 public:
  virtual ~EncryptionKMS() = default;
  // The KMS ID of the configuration it was built from.
  virtual const std::string& id() const = 0;
  // Whether VolumeEncryption must join it with a separate DEKStore.
  virtual DEKStoreType requires_dek_store() const = 0;
  // With DEKStoreType::integrated, the KMS itself; nullptr otherwise.
  virtual DEKStore* integrated_store() { return nullptr; }
  // Wraps a volume's plain DEK for storage. Throws rbdgw::Error.
  virtual std::string encrypt_dek(const std::string& volume_id, const SecretBuffer& plain_dek) = 0;
  // Unwraps what encrypt_dek produced. Throws Error(EPERM) naming the KMS
  // and the volume if the secret does not match, Error(EBADMSG) if the
  // wrapped value is corrupt.
  virtual SecretBuffer decrypt_dek(const std::string& volume_id, const std::string& wrapped) = 0;
};

}  // namespace rbdgw::kms
