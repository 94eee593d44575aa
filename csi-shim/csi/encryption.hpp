// The shim's one seam to key management (lib/kms VolumeEncryption): a new
// DEK for a new encrypted volume, its passphrase for NodeStage, and its
// removal on DeleteVolume. kms_id "" means the default (no KMS ID given in
// the StorageClass). KMS configuration comes from --kms-config.
//
// Thread safety: functions may run concurrently for different volumes.
#pragma once

#include <string>

#include "crypto/secret.hpp"
#include "csi/config.hpp"
#include "csi/volume_id.hpp"
#include "rbd/image.hpp"

namespace rbdgw::csi {

// Loads and validates the KMS configuration (ceph-csi-encryption-kms-config
// JSON, lib/kms KMSConfig) once at start; without it only the default KMS
// (passphrase in the request's secrets) exists. Throws Error naming the
// file, or the KMS ID and key of the bad entry.
void load_kms_config(const std::string& path);

// Checks that a StorageClass's encryptionKMSID ("" = default) can be
// built from the configuration (its secret is not needed yet). Throws
// Error(EINVAL) naming the KMS ID and the known ones.
void check_kms_id(const std::string& kms_id);

// CreateVolume's argument check, before anything is made: the KMS exists
// in the configuration and has its secret. Throws Error(EINVAL) naming the
// KMS ID and the cause.
void check_kms(const std::string& kms_id, const StringMap& secrets);

// Creates and stores the DEK of a new volume and tags the image
// encryptionPrepared. Idempotent: an existing DEK is kept.
void prepare_encryption(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                        const StringMap& secrets);

// The LUKS passphrase of an encrypted volume. Throws Error (EINVAL unknown
// KMS ID, EACCES/EPERM wrong secret, ENOENT missing DEK).
SecretBuffer volume_passphrase(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                               const StringMap& secrets);

// Removes the volume's DEK where the KMS keeps it outside the image (an
// integrated DEK store); never touches the image's own metadata (a DEK
// there goes with the image). A missing one is success.
void remove_encryption(rbd::Image& image, const VolumeId& id, const std::string& kms_id,
                       const StringMap& secrets);

}  // namespace rbdgw::csi

namespace rbdgw::csi {

// Snapshots and clones (ceph-csi's copyEncryptionConfig): dst is a copy of
// src's data, LUKS header included, so it has src's passphrase; that
// passphrase is stored again for dst, wrapped by dst_kms under dst_id (in
// dst's metadata or the KMS's own store), and dst gets src's encryption
// state. Throws Error (EINVAL when dst_kms cannot carry the passphrase,
// e.g. the default KMS with another passphrase; the KMS errors of
// volume_passphrase).
void copy_encryption(rbd::Image& src, const VolumeId& src_id, const std::string& src_kms,
                     rbd::Image& dst, const VolumeId& dst_id, const std::string& dst_kms,
                     const StringMap& secrets);

}  // namespace rbdgw::csi
