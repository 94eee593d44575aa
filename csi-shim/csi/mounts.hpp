// Bind mounts for NodePublishVolume and mount-point checks, on mount(2)
// directly (no mount(8) parsing).
//
// Thread safety: functions are thread-safe.
#pragma once

#include <string>

#include "attach/mount_options.hpp"

namespace rbdgw::csi {

// True if path is a mount point (listed in /proc/self/mountinfo).
bool is_mount_point(const std::string& path);
// True if the mount at path is read-only.
bool is_read_only_mount(const std::string& path);
// Bind-mounts source on target (an existing directory or file), read-only
// when asked; undone if the read-only remount fails. Throws Error.
void bind_mount(const std::string& source, const std::string& target, bool read_only);
// Bind-mounts the mounted filesystem at source on target, then remounts
// the bind (MS_BIND | MS_REMOUNT: the first bind takes no flags) with
// source's per-mount flags changed by those `o` asks for or off, and
// MS_RDONLY when read_only; undone if the remount fails. Throws Error.
void bind_mount(const std::string& source, const std::string& target,
                const attach::MountOptions& o, bool read_only);
// Unmounts target; EBUSY (in use) is thrown as Error(EBUSY).
void unmount(const std::string& target);

// A read-only loop device of its own over the block device `device`
// (losetup --read-only: the kernel refuses to open it for writing and fails
// writes with EPERM), for a read-only raw-block publish of a device that is
// writable. Returns "/dev/loopN". Throws Error naming the device and the
// cause when none can be set up.
std::string read_only_loop(const std::string& device);
// Detaches loop when it is a loop device backed by `backing` (a loop still
// open goes when let go); returns false, doing nothing, when it is not.
bool detach_loop_if(const std::string& loop, const std::string& backing);
// True if the device node `dev` ("/dev/loopN") is bind-mounted somewhere
// (a mount whose root in devtmpfs is that node).
bool device_node_mounted(const std::string& dev);

}  // namespace rbdgw::csi
