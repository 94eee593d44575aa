#include "attach/keyring.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common/error.hpp"

namespace rbdgw::attach {
namespace {

// From <linux/keyctl.h>; called through syscall(2) to avoid a libkeyutils
// dependency.
constexpr long kUserKeyring = -4;  // KEY_SPEC_USER_KEYRING
constexpr long kKeyctlUnlink = 9;
constexpr long kKeyctlSearch = 10;
constexpr long kKeyctlRead = 11;

std::string description(const std::string& volume_id, const std::string& what) {
  return cat("rbdgw:", volume_id, ":", what);
}

long find_key(const std::string& desc) {
  long id = ::syscall(SYS_keyctl, kKeyctlSearch, kUserKeyring, "user", desc.c_str(), 0L);
  if (id < 0 && errno != ENOKEY && errno != ENOENT && errno != EKEYREVOKED && errno != EKEYEXPIRED)
    throw_errno("keyctl_search", desc, errno);
  return id;
}

}  // namespace

void keyring_store(const std::string& volume_id, const std::string& what, const SecretBuffer& s) {
  const std::string desc = description(volume_id, what);
  if (::syscall(SYS_add_key, "user", desc.c_str(), s.data(), s.size(), kUserKeyring) < 0)
    throw_errno("add_key", desc, errno);
}

std::optional<SecretBuffer> keyring_load(const std::string& volume_id, const std::string& what) {
  const std::string desc = description(volume_id, what);
  long id = find_key(desc);
  if (id < 0) return std::nullopt;
  for (;;) {
    long n = ::syscall(SYS_keyctl, kKeyctlRead, id, nullptr, 0L);
    if (n < 0) throw_errno("keyctl_read", desc, errno);
    SecretBuffer buf(static_cast<std::size_t>(n));
    long m = ::syscall(SYS_keyctl, kKeyctlRead, id, buf.data(), n);
    if (m < 0) throw_errno("keyctl_read", desc, errno);
    if (m <= n) return SecretBuffer(buf.data(), static_cast<std::size_t>(m));
  }
}

void keyring_remove(const std::string& volume_id, const std::string& what) {
  const std::string desc = description(volume_id, what);
  long id;
  while ((id = find_key(desc)) >= 0) {
    if (::syscall(SYS_keyctl, kKeyctlUnlink, id, kUserKeyring) < 0) {
      if (errno == ENOENT) break;  // found through a nested keyring: not ours
      throw_errno("keyctl_unlink", desc, errno);
    }
  }
}

}  // namespace rbdgw::attach
