// Bind mounts for NodePublishVolume and mount-point checks, on mount(2)
// directly (no mount(8) parsing).
//
// Thread safety: functions are thread-safe.
#pragma once

#include <string>

namespace rbdgw::csi {

// True if path is a mount point (listed in /proc/self/mountinfo).
bool is_mount_point(const std::string& path);
// True if the mount at path is read-only.
bool is_read_only_mount(const std::string& path);
// Bind-mounts source on target (an existing directory or file), read-only
// when asked; undone if the read-only remount fails. Throws Error.
void bind_mount(const std::string& source, const std::string& target, bool read_only);
// Unmounts target; EBUSY (in use) is thrown as Error(EBUSY).
void unmount(const std::string& target);

}  // namespace rbdgw::csi
