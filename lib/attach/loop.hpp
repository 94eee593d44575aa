// Detaching a loop device only if it is still backed by the file the caller
// means. A device name read from sysfs (or a stash) can be freed and taken by
// another volume's loop device before `losetup --detach NAME` opens it; here
// the device is opened first (while it is open nobody else can detach it),
// its binding checked, and the detach (LOOP_CLR_FD) sent to that open device.
#pragma once

#include <string>

namespace rbdgw::attach {

// Detaches `loop` (/dev/loopN) if it is backed by `backing` (a file or a
// device node, by the path the kernel reports; never stat'ed). Returns false, touching
// nothing, if `loop` is not a loop device, is not bound, or is bound to
// something else. A device still open elsewhere (a lazily unmounted
// filesystem) is only marked to go when let go (autoclear), as losetup -d
// does. Throws Error naming the device if the detach itself fails.
bool detach_loop_if_backed_by(const std::string& loop, const std::string& backing);

}  // namespace rbdgw::attach
