// rbdgw rotate-key: moves an encrypted volume's DEK to another KMS ID with a
// new LUKS2 passphrase, crash-safely (lib/kms/rotation.hpp).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "kms/kms.hpp"
#include "luks/header.hpp"
#include "rbd/cluster.hpp"
#include "rbd/spec.hpp"

namespace rbdgw::cli {

struct RotateKeyArgs {
  rbd::ImageSpec image;
  rbd::ClusterOptions cluster;
  std::string volume_id;
  std::optional<std::string> from_id;  // nullopt: from the image's metadata
  std::string to_id;
  std::optional<luks::Pbkdf> pbkdf;    // nullopt: as the old keyslot
  std::string node;                    // "" : the host name
  // Builds KMS `id` with the secret of the old (false) or new (true) KMS.
  std::function<std::shared_ptr<kms::EncryptionKMS>(const std::string& id, bool is_new)> build;
  std::function<void(std::string_view)> progress;
};

// Returns 0; throws rbdgw::Error (see kms::rotate_key).
int rotate_key(const RotateKeyArgs& a);

}  // namespace rbdgw::cli
