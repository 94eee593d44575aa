// The gateway host: where the daemons of staged volumes (nbdkit gateways,
// rbdgw-fuse exporters) are started when the caller must not be their
// parent, because whatever kills the caller's container or cgroup would
// kill them too (docs/attach-paths.md, "Where gateways live").
//
// rbdgw-gateway-host (csi-shim/gateway-host/) listens on a unix socket
// (SOCK_SEQPACKET, mode 0600, default kDefaultGatewayHostSocket) and runs
// serve_gateway_host(). A client (spawn_detached, when $RBDGW_GATEWAY_HOST
// names the socket) sends one request per connection:
//
//   request  "RBDGWGH1", then u32 counts and length-prefixed strings:
//            exe, cwd, log path (for messages), argv[], envp[], the target fd numbers of the passed
//            descriptors, and a flag for a pid file; SCM_RIGHTS carries the
//            log fd, the pid file fd (if flagged), then the passed fds.
//   reply    "RBDGWGH1", i32 errno (0: started), i32 pid, u64 start time
//            (/proc/<pid>/stat field 22), the error message.
//
// Only a peer with uid 0 (SO_PEERCRED) is served. The host opens no file
// and keeps no state: the caller opens the log and pid file itself, and
// secrets reach the daemon only as the descriptors they are in (never
// argv, environment, a log line or a file of the host's). Restarting the
// host harms nothing: what it started is not its child after the double
// fork, and a caller retries the connection while the host comes back.
//
// Thread safety: all functions are thread-safe.
#pragma once

#include <string>
#include <vector>

#include "attach/attach.hpp"
#include "attach/process.hpp"

namespace rbdgw::attach {

inline constexpr const char* kDefaultGatewayHostSocket = "/run/rbdgw/gateway-host.sock";

// The socket named by $RBDGW_GATEWAY_HOST, empty when unset or empty
// (then daemons are children of the caller, as before).
std::string gateway_host_socket();

// Asks the host on `socket` to start exe (argv, envp) as spawn_detached
// does, with stdout+stderr on log_fd (log_name: its path), pid_fd (or -1) for its pid file and
// `pass` as its fds. Waits up to `connect_wait` for a host that is not
// there yet (restarting). Throws Error naming the socket when no host
// answers (never falls back to starting the daemon here), and the host's
// error (errno and message) when it could not start the program. The pid
// must be visible here (one PID namespace): Error(ESRCH) otherwise.
ProcessRef gateway_host_spawn(const std::string& socket, const std::string& exe,
                              const std::vector<std::string>& argv,
                              const std::vector<std::string>& envp, int log_fd,
                              const std::string& log_name, int pid_fd,
                              const std::vector<PassFd>& pass,
                              std::chrono::milliseconds connect_wait = std::chrono::seconds(10));

// Binds `socket` (replacing a stale socket file; mode 0600) and serves
// requests until `stop` is set (checked at least every 200 ms), one thread
// per connection. Writes one log line per request (program, pid or error;
// never argv, which may name files of secrets). Throws Error when the
// socket cannot be bound.
void serve_gateway_host(const std::string& socket, const volatile int& stop);

}  // namespace rbdgw::attach
