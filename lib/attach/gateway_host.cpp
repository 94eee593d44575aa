#include "attach/gateway_host.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::attach {
namespace {

constexpr char kMagic[8] = {'R', 'B', 'D', 'G', 'W', 'G', 'H', '1'};
constexpr std::size_t kMaxMessage = 128 * 1024;  // argv + environment
constexpr std::size_t kMaxFds = 32;

struct Fd {
  int fd = -1;
  explicit Fd(int f = -1) : fd(f) {}
  ~Fd() { if (fd >= 0) ::close(fd); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// Little helpers for the wire format (host byte order: one machine).
struct Writer {
  std::string buf{kMagic, sizeof kMagic};
  template <typename T>
  void num(T v) { buf.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void str(const std::string& s) {
    num(static_cast<std::uint32_t>(s.size()));
    buf += s;
  }
  void strs(const std::vector<std::string>& v) {
    num(static_cast<std::uint32_t>(v.size()));
    for (const auto& s : v) str(s);
  }
};

struct Reader {
  const char* p;
  const char* end;
  bool ok = true;
  Reader(const std::string& b) : p(b.data()), end(b.data() + b.size()) {
    if (b.size() < sizeof kMagic || std::memcmp(p, kMagic, sizeof kMagic) != 0) ok = false;
    p += ok ? sizeof kMagic : 0;
  }
  template <typename T>
  T num() {
    T v{};
    if (!ok || static_cast<std::size_t>(end - p) < sizeof v) {
      ok = false;
      return v;
    }
    std::memcpy(&v, p, sizeof v);
    p += sizeof v;
    return v;
  }
  std::string str() {
    const auto n = num<std::uint32_t>();
    if (!ok || static_cast<std::size_t>(end - p) < n) {
      ok = false;
      return {};
    }
    std::string s(p, n);
    p += n;
    return s;
  }
  std::vector<std::string> strs() {
    const auto n = num<std::uint32_t>();
    std::vector<std::string> v;
    for (std::uint32_t i = 0; ok && i < n; ++i) v.push_back(str());
    return v;
  }
};

sockaddr_un address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path)
    throw Error(EINVAL, cat("gateway host socket ", path, ": path empty or too long"));
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

// One message with descriptors (SOCK_SEQPACKET keeps it whole).
void send_message(int sock, const std::string& data, const std::vector<int>& fds,
                  const std::string& what) {
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    m.msg_control = ctl.data();
    m.msg_controllen = ctl.size();
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t r;
  while ((r = ::sendmsg(sock, &m, MSG_NOSIGNAL)) < 0 && errno == EINTR) {}
  if (r < 0) throw_errno("sendmsg", what, errno);
}

// Receives one message; its descriptors (close-on-exec) go to fds.
// Returns false on end of stream.
bool recv_message(int sock, std::string& data, std::vector<std::unique_ptr<Fd>>& fds,
                  const std::string& what) {
  data.assign(kMaxMessage, '\0');
  iovec iov{data.data(), data.size()};
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * kMaxFds));
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl.data();
  m.msg_controllen = ctl.size();
  ssize_t r;
  while ((r = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
  if (r < 0) throw_errno("recvmsg", what, errno);
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.push_back(std::make_unique<Fd>(fd));
    }
  }
  if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
    throw Error(EMSGSIZE, cat(what, ": message or descriptors truncated"));
  data.resize(static_cast<std::size_t>(r));
  return r > 0;
}

std::string reply(int err, const ProcessRef& p, const std::string& message) {
  Writer w;
  w.num(static_cast<std::int32_t>(err));
  w.num(static_cast<std::int32_t>(p.pid));
  w.num(static_cast<std::uint64_t>(p.start_time));
  w.str(message);
  return w.buf;
}

// One connection: check the peer, read the request, start, reply.
void serve_one(int conn) {
  Fd c(conn);
  ucred cred{};
  socklen_t len = sizeof cred;
  const std::string what = "gateway host connection";
  try {
    if (::getsockopt(c.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
      throw_errno("getsockopt(SO_PEERCRED)", what, errno);
    const timeval tv{10, 0};
    ::setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string data;
    std::vector<std::unique_ptr<Fd>> fds;
    // Read the request even when it is refused: closing with it unread
    // would reset the connection and lose the answer.
    if (!recv_message(c.fd, data, fds, what)) return;
    if (cred.uid != 0) {
      log::warn("refused a request from uid ", cred.uid, " (pid ", cred.pid, "): only root is served");
      send_message(c.fd, reply(EPERM, {}, cat("gateway host: uid ", cred.uid, " is not served (root only)")),
                   {}, what);
      return;
    }
    Reader r(data);
    const std::string exe = r.str();
    const std::string cwd = r.str();
    const std::string log_name = r.str();
    const auto argv = r.strs();
    const auto envp = r.strs();
    const auto npass = r.num<std::uint32_t>();
    std::vector<int> targets;
    for (std::uint32_t i = 0; r.ok && i < npass && i <= kMaxFds; ++i) targets.push_back(r.num<std::int32_t>());
    const bool has_pid = r.num<std::uint32_t>() != 0;
    const std::size_t want = 1 + (has_pid ? 1 : 0) + targets.size();
    if (!r.ok || r.p != r.end || argv.empty() || exe.empty() || fds.size() != want) {
      send_message(c.fd, reply(EPROTO, {}, "gateway host: malformed request"), {}, what);
      return;
    }
    std::vector<PassFd> pass;
    for (std::size_t i = 0; i < targets.size(); ++i)
      pass.push_back({fds[1 + (has_pid ? 1 : 0) + i]->fd, targets[i]});
    try {
      const ProcessRef p = spawn_detached_fds(exe, argv, envp, cwd, fds[0]->fd, log_name,
                                              has_pid ? fds[1]->fd : -1, pass);
      log::info("started ", exe, " as pid ", p.pid, " for pid ", cred.pid);
      send_message(c.fd, reply(0, p, {}), {}, what);
    } catch (const Error& e) {
      log::warn("could not start ", exe, " for pid ", cred.pid, ": ", e.what());
      send_message(c.fd, reply(e.code(), {}, e.what()), {}, what);
    }
  } catch (const std::exception& e) {
    log::warn(what, ": ", e.what());
  }
}

}  // namespace

std::string gateway_host_socket() {
  const char* v = std::getenv("RBDGW_GATEWAY_HOST");
  return v ? v : "";
}

ProcessRef gateway_host_spawn(const std::string& socket, const std::string& exe,
                              const std::vector<std::string>& argv,
                              const std::vector<std::string>& envp, int log_fd,
                              const std::string& log_name, int pid_fd,
                              const std::vector<PassFd>& pass, std::chrono::milliseconds connect_wait) {
  const sockaddr_un a = address(socket);
  const std::string what = cat("gateway host ", socket);
  Fd s;
  const auto deadline = std::chrono::steady_clock::now() + connect_wait;
  for (;;) {
    s.fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s.fd < 0) throw_errno("socket", what, errno);
    if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) break;
    const int e = errno;
    ::close(s.fd);
    s.fd = -1;
    // Not there (yet): a host being restarted. Anything else is final.
    const bool retry = e == ENOENT || e == ECONNREFUSED || e == EAGAIN || e == EINTR;
    if (!retry || std::chrono::steady_clock::now() >= deadline)
      throw Error(e, cat("connect: ", what, " (RBDGW_GATEWAY_HOST): ", std::strerror(e),
                         "; is rbdgw-gateway-host running? Daemons are not started without it"));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Writer w;
  w.str(exe);
  char cwd[4096];
  w.str(::getcwd(cwd, sizeof cwd) ? cwd : "/");
  w.str(log_name);
  w.strs(argv);
  w.strs(envp);
  w.num(static_cast<std::uint32_t>(pass.size()));
  for (const auto& p : pass) w.num(static_cast<std::int32_t>(p.target));
  w.num(static_cast<std::uint32_t>(pid_fd >= 0 ? 1 : 0));
  if (w.buf.size() > kMaxMessage) throw Error(E2BIG, cat(what, ": request too large for ", exe));
  std::vector<int> fds{log_fd};
  if (pid_fd >= 0) fds.push_back(pid_fd);
  for (const auto& p : pass) fds.push_back(p.fd);
  if (fds.size() > kMaxFds) throw Error(E2BIG, cat(what, ": too many descriptors for ", exe));
  send_message(s.fd, w.buf, fds, what);
  // Starting takes a fork and an exec; a host that does not answer in
  // 30 s is stuck.
  const timeval tv{30, 0};
  ::setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string data;
  std::vector<std::unique_ptr<Fd>> none;
  if (!recv_message(s.fd, data, none, what))
    throw Error(ECONNRESET, cat(what, ": closed the connection without a reply while starting ", exe));
  Reader r(data);
  const auto err = r.num<std::int32_t>();
  ProcessRef p{static_cast<pid_t>(r.num<std::int32_t>()), r.num<std::uint64_t>()};
  const std::string message = r.str();
  if (!r.ok) throw Error(EPROTO, cat(what, ": malformed reply"));
  if (err != 0) throw Error(err, message);
  if (process_start_time(p.pid) != p.start_time)
    throw Error(ESRCH, cat(what, ": started ", exe, " as pid ", p.pid,
                           ", which is not that process here: the host must share this PID namespace"
                           " (Kubernetes: shareProcessNamespace: true)"));
  return p;
}

void serve_gateway_host(const std::string& socket, const volatile int& stop) {
  const sockaddr_un a = address(socket);
  Fd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (s.fd < 0) throw_errno("socket", socket, errno);
  // A socket file left by a killed host: nobody answers on it.
  if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0)
    throw Error(EADDRINUSE, cat("bind: ", socket, ": another gateway host serves it"));
  ::close(s.fd);
  s.fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s.fd < 0) throw_errno("socket", socket, errno);
  ::unlink(socket.c_str());
  const mode_t old = ::umask(0177);
  const int r = ::bind(s.fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  const int e = errno;
  ::umask(old);
  if (r < 0) throw_errno("bind", socket, e);
  if (::chmod(socket.c_str(), 0600) < 0) throw_errno("chmod", socket, errno);
  if (::listen(s.fd, 64) < 0) throw_errno("listen", socket, errno);
  log::info("serving on ", socket);
  while (!stop) {
    pollfd p{s.fd, POLLIN, 0};
    const int n = ::poll(&p, 1, 200);
    if (n <= 0) continue;
    const int c = ::accept4(s.fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    std::thread(serve_one, c).detach();
  }
  ::unlink(socket.c_str());
}

}  // namespace rbdgw::attach
