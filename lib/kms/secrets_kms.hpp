// The two KMS providers that need no key server, compatible with ceph-csi's
// internal/kms/secretskms.go:
//
// default ("default" KMS ID, or no KMS ID): one passphrase, from the secret
//   key "encryptionPassphrase", is the LUKS passphrase of every volume. It is
//   its own (integrated) DEK store, which stores nothing: a DEK generated
//   for a new volume is dropped and the passphrase is used instead, exactly
//   as ceph-csi does.
//
// metadata (encryptionKMSType "metadata"): a random DEK per volume, wrapped
//   with a KEK derived from the secret passphrase and kept in the image's
//   metadata (DEKStoreType::metadata). Format of the wrapped DEK:
//     KEK     = scrypt(passphrase, salt = volume ID, N=32768, r=8, p=1, 32 bytes)
//     sealed  = AES-256-GCM(KEK, 12-byte random nonce, DEK, no aad), tag appended
//     wrapped = {"dek":"<base64 sealed>","nonce":"<base64 nonce>"}
//   i.e. Go's json.Marshal of struct{DEK []byte `json:"dek"`; Nonce []byte
//   `json:"nonce"`} (standard base64 alphabet, padded). Reading accepts
//   what Go's json.Unmarshal accepts for it (field names in any case,
//   whitespace, escapes, newlines inside the base64).
//
// Thread safety: see kms.hpp (immutable, any thread).
#pragma once

#include <memory>
#include <string>

#include "kms/kms.hpp"

namespace rbdgw::kms {

// A default-type KMS with the given ID and passphrase (must not be empty:
// Error(EINVAL) naming the KMS ID).
std::shared_ptr<EncryptionKMS> make_default_kms(std::string id, SecretBuffer passphrase);

// A metadata-type KMS with the given ID and passphrase (must not be empty).
std::shared_ptr<EncryptionKMS> make_metadata_kms(std::string id, SecretBuffer passphrase);

}  // namespace rbdgw::kms
