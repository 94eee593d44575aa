// The "kmip" KMS type, compatible with ceph-csi's internal/kms/kmip.go: a
// key held by a KMIP server (UNIQUE_IDENTIFIER) wraps each volume's DEK
// with the KMIP Encrypt operation (AES, CBC, PKCS5 padding, a 16-byte
// random IV chosen by the client) and unwraps it with Decrypt. The wrapped
// DEK lives in the image metadata (DEKStoreType::metadata) in ceph-csi's
// format, Go's json.Marshal of struct{DEK []byte `json:"dek"`; Nonce
// []byte `json:"nonce"`}:
//     {"dek":"<base64 ciphertext>","nonce":"<base64 16-byte IV>"}
// so a volume moves between ceph-csi and rbdgw both ways. Reading accepts
// field names in any case, as Go does.
//
// Configuration keys and where the credentials come from: see
// kms/config.hpp. Every encrypt/decrypt is one TLS connection
// (kms/kmip_client.hpp); building the KMS does not contact the server.
//
// Thread safety: immutable, any thread (see kms.hpp).
#pragma once

#include <memory>
#include <string>

#include "kms/kmip_client.hpp"
#include "kms/kms.hpp"

namespace rbdgw::kms {

inline constexpr std::size_t kmip_nonce_size = 16;

// Throws Error(EINVAL) naming the KMS for bad settings or credentials, or
// an empty unique_identifier.
std::shared_ptr<EncryptionKMS> make_kmip_kms(std::string id, KmipSettings settings,
                                             std::string unique_identifier);

}  // namespace rbdgw::kms
