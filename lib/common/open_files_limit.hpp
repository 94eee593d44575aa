// The open files limit of a server that holds descriptors per client
// connection (rbdgw serve's front, the shared gateway's rbd plugin): at the
// usual soft limit of 1024 (systemd's default too) it runs out long before
// the hard limit, and accept() fails with EMFILE.
#pragma once

#include <sys/resource.h>

namespace rbdgw {

// Raises this process's RLIMIT_NOFILE soft limit to its hard limit and
// returns the limits it had before (for children that should get them
// back). Throws Error naming both values (errno of the failed call) when
// it cannot.
rlimit raise_open_files_limit();

}  // namespace rbdgw
