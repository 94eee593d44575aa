#include "attach/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/close_range.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "attach/gateway_host.hpp"
#include "common/error.hpp"

extern char** environ;

namespace rbdgw::attach {
namespace {

// Closes an fd on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f = -1) : fd(f) {}
  ~Fd() { if (fd >= 0) ::close(fd); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// argv[0] as an absolute path (PATH search done here, not after fork).
std::string resolve(const std::string& prog) {
  if (prog.find('/') != std::string::npos) return prog;
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
  for (std::string d; std::getline(dirs, d, ':');) {
    std::string p = (d.empty() ? "." : d) + "/" + prog;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  throw Error(ENOENT, cat(prog, ": command not found in PATH"));
}

std::vector<char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<char*> v;
  for (const auto& a : argv) v.push_back(const_cast<char*>(a.c_str()));
  v.push_back(nullptr);
  return v;
}

bool read_full(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void write_full(int fd, const void* buf, size_t n) {
  auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = ::write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    p += r;
    n -= static_cast<size_t>(r);
  }
}

// Writes the calling process's pid to fd as decimal text; async-signal-safe.
void write_own_pid(int fd) {
  char buf[24];
  char* p = buf + sizeof buf;
  *--p = '\n';
  for (pid_t v = ::getpid(); v > 0; v /= 10) *--p = static_cast<char>('0' + v % 10);
  write_full(fd, p, static_cast<size_t>(buf + sizeof buf - p));
}

}  // namespace

ProcessRef spawn_detached(const std::vector<std::string>& argv, const std::string& log_path,
                          const std::vector<PassFd>& pass, const std::string& pid_file) {
  if (argv.empty()) throw Error(EINVAL, "spawn: empty command");
  const std::string exe = resolve(argv[0]);
  Fd log(::open(log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (log.fd < 0) throw_errno("open", log_path, errno);
  Fd pidf(pid_file.empty() ? -1
                           : ::open(pid_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!pid_file.empty() && pidf.fd < 0) throw_errno("open", pid_file, errno);
  std::vector<std::string> envp;
  for (char** e = environ; *e; ++e) envp.emplace_back(*e);
  if (const std::string host = gateway_host_socket(); !host.empty())
    return gateway_host_spawn(host, exe, argv, envp, log.fd, log_path, pidf.fd, pass);
  char cwd[4096];
  return spawn_detached_fds(exe, argv, envp, ::getcwd(cwd, sizeof cwd) ? cwd : "/", log.fd, log_path,
                            pidf.fd, pass);
}

ProcessRef spawn_detached_fds(const std::string& exe, const std::vector<std::string>& argv,
                              const std::vector<std::string>& envp, const std::string& cwd,
                              int log_fd, const std::string& log_name, int pid_fd,
                              const std::vector<PassFd>& pass) {
  if (argv.empty()) throw Error(EINVAL, "spawn: empty command");
  auto args = c_argv(argv);
  auto env = c_argv(envp);
  const std::string dir = cwd.empty() ? "/" : cwd;
  Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (devnull.fd < 0) throw_errno("open", "/dev/null", errno);
  // Move passed fds out of the way of the target numbers.
  std::vector<std::unique_ptr<Fd>> high;
  for (const auto& p : pass) {
    int h = ::fcntl(p.fd, F_DUPFD_CLOEXEC, 100);
    if (h < 0) throw_errno("fcntl(F_DUPFD)", argv[0], errno);
    high.push_back(std::make_unique<Fd>(h));
  }
  int rep[2];
  if (::pipe2(rep, O_CLOEXEC) < 0) throw_errno("pipe2", argv[0], errno);
  Fd rd(rep[0]);
  Fd wr(rep[1]);

  pid_t child = ::fork();
  if (child < 0) throw_errno("fork", argv[0], errno);
  if (child == 0) {
    // Only async-signal-safe calls from here on.
    ::setsid();
    ::signal(SIGHUP, SIG_IGN);
    const pid_t middle = ::getpid();
    pid_t gc = ::fork();
    if (gc != 0) {
      int v = gc < 0 ? -errno : gc;
      write_full(wr.fd, &v, sizeof v);
      ::_exit(gc < 0 ? 1 : 0);
    }
    // Run argv only once this middle process is gone (we were reparented):
    // a program that asks for a signal when its parent dies gets it from
    // that exit otherwise. nbdkit does (PR_SET_PDEATHSIG, SIGTERM, at start,
    // even without --exit-with-parent), and a gateway that got that far
    // before the middle process had exited was killed before it wrote a
    // word: the "gateway exits at once" of concurrent stages.
    while (::getppid() == middle) {
      const timespec pause{0, 100'000};
      ::nanosleep(&pause, nullptr);
    }
    ::signal(SIGHUP, SIG_DFL);
    if (pid_fd >= 0) write_own_pid(pid_fd);
    if (::chdir(dir.c_str()) < 0) (void)::chdir("/");
    ::dup2(devnull.fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    for (size_t i = 0; i < pass.size(); ++i) ::dup2(high[i]->fd, pass[i].target);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(exe.c_str(), args.data(), env.data());
    int e = errno;
    write_full(wr.fd, &e, sizeof e);
    ::_exit(127);
  }
  ::close(wr.fd);
  wr.fd = -1;
  int status;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {}
  int v = 0;
  if (!read_full(rd.fd, &v, sizeof v) || v < 0)
    throw_errno("fork", argv[0], v < 0 ? -v : EIO);
  ProcessRef ref{static_cast<pid_t>(v), 0};
  int exec_err = 0;
  if (read_full(rd.fd, &exec_err, sizeof exec_err)) throw_errno("execve", exe, exec_err);
  ref.start_time = process_start_time(ref.pid);
  if (ref.start_time == 0) throw Error(ESRCH, cat(argv[0], ": exited at once; see ", log_name));
  return ref;
}

CommandResult run_command(const std::vector<std::string>& argv) {
  if (argv.empty()) throw Error(EINVAL, "run: empty command");
  const std::string exe = resolve(argv[0]);
  auto args = c_argv(argv);
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) < 0) throw_errno("pipe2", argv[0], errno);
  Fd out_r(out[0]), out_w(out[1]);
  if (::pipe2(err, O_CLOEXEC) < 0) throw_errno("pipe2", argv[0], errno);
  Fd err_r(err[0]), err_w(err[1]);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_w.fd, 1);
  posix_spawn_file_actions_adddup2(&fa, err_w.fd, 2);
  pid_t pid;
  int r = ::posix_spawn(&pid, exe.c_str(), &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (r != 0) throw_errno("posix_spawn", exe, r);
  ::close(out_w.fd);
  out_w.fd = -1;
  ::close(err_w.fd);
  err_w.fd = -1;

  CommandResult res;
  pollfd fds[2] = {{out_r.fd, POLLIN, 0}, {err_r.fd, POLLIN, 0}};
  std::string* bufs[2] = {&res.out, &res.err};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        bufs[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  res.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return res;
}

std::string run_checked(const std::vector<std::string>& argv) {
  CommandResult r = run_command(argv);
  if (r.status != 0) {
    std::string msg = r.err.empty() ? r.out : r.err;
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    throw Error(EIO, cat(argv[0], " failed (status ", r.status, "): ", msg));
  }
  return r.out;
}

namespace {
// What /proc/<pid>/stat says of a process.
struct ProcStat {
  char state = 0;
  std::uint64_t start = 0;  // field 22, clock ticks since boot
  int exit_code = -1;       // field 52 (wait status of a zombie), -1 if absent
};

// /proc/<pid>/stat of pid; false if absent.
bool proc_stat(pid_t pid, ProcStat& st) {
  std::ifstream f(cat("/proc/", pid, "/stat"));
  std::string line;
  if (pid <= 0 || !std::getline(f, line)) return false;
  auto close_paren = line.rfind(')');
  if (close_paren == std::string::npos || close_paren + 2 > line.size()) return false;
  std::istringstream rest(line.substr(close_paren + 2));
  std::string field;
  // Fields 3.. follow the command name.
  bool have_start = false;
  for (int i = 3; i <= 52 && rest >> field; ++i) {
    if (i == 3) st.state = field[0];
    if (i == 22) {
      st.start = std::stoull(field);
      have_start = true;
    }
    if (i == 52) st.exit_code = std::stoi(field);
  }
  return have_start;
}
}  // namespace

std::uint64_t process_start_time(pid_t pid) {
  ProcStat st;
  return proc_stat(pid, st) ? st.start : 0;
}

bool alive(const ProcessRef& p) {
  ProcStat st;
  if (p.pid <= 0 || !proc_stat(p.pid, st)) return false;
  return st.start == p.start_time && st.state != 'Z' && st.state != 'X';
}

std::string exit_reason(const ProcessRef& p) {
  ProcStat st;
  if (p.pid <= 0 || !proc_stat(p.pid, st) || st.start != p.start_time)
    return "gone, its exit status unknown";
  if (st.state != 'Z' && st.state != 'X') return "still running";
  if (st.exit_code < 0) return "exit status unknown";
  const int status = st.exit_code;
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = sigabbrev_np(sig);
    return cat("killed by signal ", sig, name ? cat(" (SIG", name, ")") : std::string(),
               WCOREDUMP(status) ? ", core dumped" : "");
  }
  return cat("exited with status ", WEXITSTATUS(status));
}

void stop_process(const ProcessRef& p, std::chrono::milliseconds grace) {
  using namespace std::chrono_literals;
  auto wait_gone = [&](std::chrono::milliseconds limit) {
    for (auto waited = 0ms; waited < limit; waited += 20ms) {
      if (!alive(p)) return true;
      std::this_thread::sleep_for(20ms);
    }
    return !alive(p);
  };
  if (!alive(p)) return;
  ::kill(p.pid, SIGTERM);
  if (wait_gone(grace)) return;
  ::kill(p.pid, SIGKILL);
  if (!wait_gone(10s)) throw Error(EBUSY, cat("kill: process ", p.pid, " did not exit"));
}

ProcessRef stray_process(const std::string& pid_file, const std::string& marker) {
  std::ifstream f(pid_file);
  long pid = 0;
  if (!(f >> pid) || pid <= 0) return {};
  std::ifstream c(cat("/proc/", pid, "/cmdline"));
  std::stringstream cmd;
  cmd << c.rdbuf();
  const ProcessRef p{static_cast<pid_t>(pid), process_start_time(static_cast<pid_t>(pid))};
  if (cmd.str().find(marker) == std::string::npos || !alive(p)) return {};
  return p;
}

int secret_pipe(const SecretBuffer& secret) {
  if (secret.size() > 65536) throw Error(EINVAL, "secret_pipe: secret larger than a pipe buffer");
  int p[2];
  if (::pipe2(p, O_CLOEXEC) < 0) throw_errno("pipe2", "secret", errno);
  Fd wr(p[1]);
  size_t done = 0;
  while (done < secret.size()) {
    ssize_t n = ::write(wr.fd, secret.data() + done, secret.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(p[0]);
      throw_errno("write", "secret pipe", e);
    }
    done += static_cast<size_t>(n);
  }
  return p[0];
}

}  // namespace rbdgw::attach
