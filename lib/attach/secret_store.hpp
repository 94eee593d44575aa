// Secrets of attached volumes kept for re-adoption: the LUKS passphrase the
// gateway decrypts with and a cephx key given as a key, so that a dead
// gateway can be restarted (`rbdgw reattach`, rbdgw-csi at start) without
// asking the caller again.
//
// Where: one file per volume and secret, "<root>/<volume-id>.<name>", in a
// store directory that must be
//   - on tmpfs or ramfs (statfs f_type): never on persistent disk, gone after
//     a reboot. Refused otherwise (ENOTSUP);
//   - a real directory (not a symbolic link, ELOOP), owned by this process's
//     euid (root) with no group or other permission bits (EACCES).
// Default root: kSecretRoot, /run/rbdgw/@secrets ('@' is outside the volume-id
// alphabet, so no volume's run dir /run/rbdgw/<volume-id> can be it);
// $RBDGW_SECRET_DIR overrides it (an absolute path; the tests and hosts whose
// /run is not tmpfs). /run/rbdgw is what the node DaemonSet mounts as a
// hostPath and what the systemd units keep (RuntimeDirectoryPreserve=yes), so
// the store survives a restart of the service and of its container.
//
// Why files and not the kernel keyring (the previous design): a key in
// root's user keyring (@u) is readable only by a process that possesses @u
// through its session keyring, so under systemd's KeyringMode=private and in
// a container (a fresh session keyring each) re-adoption could not read its
// own secrets, while any root process could `keyctl link @u @s` and read all
// of them. A 0700 directory is readable by the service and by no unprivileged
// process in any namespace; other containers do not see the hostPath. Limit:
// a root process with CAP_DAC_OVERRIDE in the same mount namespace can read
// the files, as it can read the gateway's memory (/proc/PID/mem) where the
// same secrets live while the volume is attached. See docs/attach-paths.md.
//
// Files are created 0600 with O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC under a
// temporary name and renamed into place (no fsync: tmpfs); a replaced or
// removed secret is overwritten with zeros before its name goes. Reads go
// into a SecretBuffer (wiped when freed) and refuse a file that is not a
// regular 0600 file of this euid. The store records the boot id
// (this_boot_id(), common/boot_id.hpp) in "<root>/boot_id" when first written: a
// store from another boot (restored, copied, checkpointed) is never trusted:
// load_secret() ignores it with a warning naming both ids, store_secret()
// wipes its secrets and starts it afresh. No secret byte is ever logged or put
// in an error message; messages name the store, the volume and the secret.
//
// Thread safety: all functions are thread-safe and safe across processes
// (an flock on the store directory); the caller serialises calls for the
// same volume as for everything else in lib/attach.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "crypto/secret.hpp"

namespace rbdgw::attach {

inline constexpr const char* kSecretRoot = "/run/rbdgw/@secrets";

// The store root: $RBDGW_SECRET_DIR when set and not empty, else kSecretRoot.
// Throws Error(EINVAL) when the variable is not an absolute path.
std::string secret_root();

// Stores (or replaces) secret `name` ([a-z0-9_-], 1..32 characters) of
// volume `volume_id` (validate_volume_id()). Creates the store directory
// (0700) when missing. root empty: secret_root(). Throws Error naming the
// store and the secret (EINVAL bad names, ENOTSUP not on tmpfs/ramfs, ELOOP
// a symlink, EACCES wrong owner or mode, or the errno of a failed call).
void store_secret(std::string_view volume_id, std::string_view name, const SecretBuffer& secret,
                  const std::string& root = {});

// The secret, or nullopt when the store or the secret is missing, or the
// store is from another boot (logged as a warning). Throws like
// store_secret(), and Error(EACCES) for a secret file that is not a regular
// 0600 file of this euid.
std::optional<SecretBuffer> load_secret(std::string_view volume_id, std::string_view name,
                                        const std::string& root = {});

// Overwrites the secret with zeros and removes it; absent (also no store) is
// fine. Works on a store load_secret() would refuse (removing is always
// safe); a store path that is a symlink is left alone.
void remove_secret(std::string_view volume_id, std::string_view name, const std::string& root = {});

}  // namespace rbdgw::attach
