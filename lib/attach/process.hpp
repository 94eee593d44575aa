// Child processes for lib/attach: detached daemons and short commands.
//
// Thread safety: all functions are thread-safe (fork/exec only
// async-signal-safe calls between fork and exec).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "attach/attach.hpp"

namespace rbdgw::attach {

// A descriptor handed to the child as fd number `target` (3, 4, ...).
struct PassFd {
  int fd;
  int target;
};

// Starts argv[0] (searched in PATH) as a daemon that outlives the caller:
// double fork, new session, stdin /dev/null, stdout+stderr appended to
// log_path, only the `pass` descriptors inherited. argv runs only after the
// middle process of the double fork is gone, so a program that asks for a
// signal on its parent's death (nbdkit does) is not killed by that exit.
// Returns its identity.
// When pid_file is given, the daemon writes its pid there (0600) before it
// executes argv, so it can be found (stray_process) even if the caller dies
// before it learns the pid. Throws Error when the program cannot be started.
// When $RBDGW_GATEWAY_HOST names a socket, the daemon is started by the
// gateway host there (lib/attach/gateway_host.hpp), with this process's
// environment and working directory, so that it lives in the host's cgroup
// and container rather than the caller's; the caller still opens log_path
// and pid_file. A host that does not answer is an error: the daemon is
// never started here instead.
ProcessRef spawn_detached(const std::vector<std::string>& argv, const std::string& log_path,
                          const std::vector<PassFd>& pass = {}, const std::string& pid_file = {});

// The double fork of spawn_detached on open descriptors: exe (an absolute
// path) with argv and envp, in cwd ("/" when empty or gone), stdout+stderr
// on log_fd (log_name: its path, for messages), its pid written to pid_fd
// (-1: none). What the gateway host runs for a request.
ProcessRef spawn_detached_fds(const std::string& exe, const std::vector<std::string>& argv,
                              const std::vector<std::string>& envp, const std::string& cwd,
                              int log_fd, const std::string& log_name, int pid_fd,
                              const std::vector<PassFd>& pass);

// The live process named by pid_file whose command line mentions `marker`
// (a path of its own, against pid reuse); pid 0 if there is none.
ProcessRef stray_process(const std::string& pid_file, const std::string& marker);

struct CommandResult {
  int status = 0;  // exit status, or 128+signal
  std::string out, err;
};
// Runs argv to completion (stdin /dev/null), capturing stdout and stderr.
CommandResult run_command(const std::vector<std::string>& argv);
// Like run_command, but throws Error(EIO) "argv0: <stderr>" on a non-zero exit.
std::string run_checked(const std::vector<std::string>& argv);

// /proc/<pid>/stat start time, 0 if the process does not exist.
std::uint64_t process_start_time(pid_t pid);
// The process exists, is not a zombie, and has the recorded start time.
bool alive(const ProcessRef& p);
// SIGTERM, wait up to grace, then SIGKILL and wait. No-op when not alive.
void stop_process(const ProcessRef& p, std::chrono::milliseconds grace);
// How a process that is no longer alive ended, from the exit status an
// unreaped zombie keeps in /proc/<pid>/stat: "exited with status N" or
// "killed by signal N (SIGNAME)"; says so when that cannot be known (the
// process was reaped) or when it still runs.
std::string exit_reason(const ProcessRef& p);

// A pipe whose read end carries `secret` (written, write end closed). The read
// end is close-on-exec; hand it over with PassFd. Throws Error.
int secret_pipe(const SecretBuffer& secret);

}  // namespace rbdgw::attach
