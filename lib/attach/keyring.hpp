// Secrets of attached volumes kept in root's kernel user keyring (@u), so a
// dead gateway can be restarted after the caller (rbdgw-csi) restarted,
// without writing the secret to any file. Key type "user", description
// "rbdgw:<volume-id>:<what>".
//
// Thread safety: all functions are thread-safe.
#pragma once

#include <optional>
#include <string>

#include "crypto/secret.hpp"

namespace rbdgw::attach {

// Stores (or replaces) the secret. Throws Error naming the description.
void keyring_store(const std::string& volume_id, const std::string& what, const SecretBuffer& s);
// The secret, or nullopt when there is none.
std::optional<SecretBuffer> keyring_load(const std::string& volume_id, const std::string& what);
// Removes the secret; absent is fine.
void keyring_remove(const std::string& volume_id, const std::string& what);

}  // namespace rbdgw::attach
