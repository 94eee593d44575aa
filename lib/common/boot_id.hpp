// The boot id of the running kernel: a random UUID the kernel picks at each
// boot (/proc/sys/kernel/random/boot_id). State that outlives a process but
// not a reboot (the attach stash's processes and devices, the secret store,
// a gateway's exclusive-lock holder record) records it, so that a reader can
// tell "from this boot" from "from an earlier boot" without guessing from
// pids or device numbers, which a reboot hands out again.
//
// Test knob: $RBDGW_BOOT_ID_FILE, when set and not empty, names the file read
// instead of /proc/sys/kernel/random/boot_id. Tests simulate a reboot by
// pointing it at a file holding another id; child processes (the gateway,
// the exporter) inherit the environment and so see the same id. Not meant
// for production use.
//
// Thread safety: this_boot_id() may be called from any thread.
#pragma once

#include <string>

namespace rbdgw {

inline constexpr const char* kBootIdSource = "/proc/sys/kernel/random/boot_id";

// The boot id (trimmed of trailing whitespace), read from
// $RBDGW_BOOT_ID_FILE or kBootIdSource each call. Throws Error naming the file
// (errno of the failed open/read, or EIO when it is empty).
std::string this_boot_id();

}  // namespace rbdgw
