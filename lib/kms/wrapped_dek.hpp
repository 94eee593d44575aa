// The JSON envelope in which ceph-csi stores a wrapped DEK in image metadata
// (rbd.csi.ceph.com/dek), shared by the metadata and kmip KMS types:
// {"dek":"<base64>","nonce":"<base64>"}, field names matched as Go's
// encoding/json does (exactly, then in any case).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace rbdgw::kms {

struct WrappedDek {
  std::vector<std::uint8_t> dek;    // the sealed bytes
  std::vector<std::uint8_t> nonce;  // the IV or nonce they were sealed with
};

std::string encode_wrapped_dek(std::span<const std::uint8_t> dek, std::span<const std::uint8_t> nonce);

// Throws Error(EBADMSG) "<what>: ..." when it is not such an envelope.
WrappedDek decode_wrapped_dek(const std::string& wrapped, const std::string& what);

}  // namespace rbdgw::kms
