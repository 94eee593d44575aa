#include "rbd/cluster.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::rbd {

void Cluster::Deleter::operator()(rados_t h) const noexcept { rados_shutdown(h); }

namespace {

void set_opt(rados_t h, const std::string& key, const char* value) {
  int r = rados_conf_set(h, key.c_str(), value);
  if (r < 0) throw Error(-r, cat("ceph option '", key, "': ", std::strerror(-r)));
}

}  // namespace

Cluster Cluster::connect(const ClusterOptions& o) {
  const std::string id = o.id.empty() ? "admin" : o.id;
  rados_t raw = nullptr;
  check(rados_create(&raw, id.c_str()), "rados_create", "client." + id);
  Handle h(raw, Deleter{});

  if (!o.conf_file.empty()) {
    int r = rados_conf_read_file(raw, o.conf_file.c_str());
    if (r < 0) throw_errno("read ceph config", o.conf_file, r);
  } else {
    // $CEPH_CONF or the default search path; a missing file is fine when
    // mon_host is given.
    int r = rados_conf_read_file(raw, nullptr);
    if (r < 0 && o.mon_host.empty())
      throw Error(-r, cat("read ceph config: no ceph.conf found (set conf= or mon_host=): ",
                          std::strerror(-r)));
  }
  // Environment overrides such as CEPH_ARGS.
  rados_conf_parse_env(raw, nullptr);

  if (!o.mon_host.empty()) set_opt(raw, "mon_host", o.mon_host.c_str());
  if (!o.keyring.empty()) {
    if (::access(o.keyring.c_str(), R_OK) != 0) throw_errno("keyring", o.keyring, errno);
    set_opt(raw, "keyring", o.keyring.c_str());
  }
  if (!o.key.empty()) {
    // librados copies the value; our copy is wiped by SecretBuffer.
    SecretBuffer z(o.key.size() + 1);
    std::memcpy(z.data(), o.key.data(), o.key.size());
    set_opt(raw, "key", z.chars());
  }
  const std::string t = std::to_string(o.connect_timeout.count());
  set_opt(raw, "client_mount_timeout", t.c_str());
  set_opt(raw, "rados_mon_op_timeout", t.c_str());
  for (const auto& [k, v] : o.config) set_opt(raw, k, v.c_str());

  std::string who = "client." + id;
  int r = rados_connect(raw);
  if (r < 0) {
    std::string why;
    switch (-r) {
      case ETIMEDOUT: why = "cluster unreachable (timed out after " + t + " s)"; break;
      case EACCES:
      case EPERM: why = "authentication failed (wrong key or user)"; break;
      case ENOENT: why = "no keyring or key found for this user"; break;
      default: why = std::strerror(-r);
    }
    std::string mons = o.mon_host;
    if (mons.empty()) {
      char buf[512] = {0};
      if (rados_conf_get(raw, "mon_host", buf, sizeof buf - 1) == 0) mons = buf;
    }
    throw Error(-r, cat("rados_connect: ", who, " to mon_host '", mons, "': ", why));
  }
  // Restore the mon op timeout so that long operations are not cut short.
  rados_conf_set(raw, "rados_mon_op_timeout", "0");
  return Cluster(std::move(h), who);
}

void Cluster::check_in_child(const ClusterOptions& o) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) < 0) throw_errno("pipe2", "cluster check", errno);
  const pid_t child = ::fork();
  if (child < 0) {
    const int e = errno;
    ::close(p[0]);
    ::close(p[1]);
    throw_errno("fork", "cluster check", e);
  }
  if (child == 0) {
    // The answer: the error code (0: connected) and its message. _exit
    // while the connection is up: no rados_shutdown, no destructors.
    ::close(p[0]);
    std::string out;
    try {
      const Cluster c = connect(o);
      (void)!::write(p[1], "0 ", 2);
      ::_exit(0);
    } catch (...) {
      const ErrorReport r = current_error();
      out = std::to_string(r.code ? r.code : EIO) + " " + r.message;
    }
    // Short, in one write (below PIPE_BUF it is atomic).
    if (out.size() > 4000) out.resize(4000);
    (void)!::write(p[1], out.data(), out.size());
    ::_exit(0);
  }
  ::close(p[1]);
  std::string answer;
  const auto deadline = std::chrono::steady_clock::now() + 2 * o.connect_timeout;
  bool timed_out = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd pf{p[0], POLLIN, 0};
    const int r = ::poll(&pf, 1, static_cast<int>(std::min<long long>(left.count(), 60000)));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;  // the deadline is checked above
    if (r < 0) break;
    char buf[1024];
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  ::close(p[0]);
  if (timed_out) ::kill(child, SIGKILL);
  int status = 0;
  pid_t w;
  while ((w = ::waitpid(child, &status, 0)) < 0 && errno == EINTR) {
  }
  const bool reaped = w == child;  // not when SIGCHLD is ignored (ECHILD)
  // Who and where, as connect()'s own messages say it.
  const std::string who =
      cat("client.", o.id.empty() ? std::string("admin") : o.id, " to ",
          !o.mon_host.empty()   ? cat("mon_host '", o.mon_host, "'")
          : !o.conf_file.empty() ? cat("the monitors of ", o.conf_file)
                                 : std::string("the monitors of the default ceph.conf"));
  if (timed_out)
    throw Error(ETIMEDOUT, cat("rados_connect: ", who, ": no answer within ",
                               2 * o.connect_timeout.count(), " s (checked in a child process)"));
  const auto sp = answer.find(' ');
  if (sp == std::string::npos) {
    const std::string how = !reaped              ? std::string("its exit status is unknown")
                            : WIFSIGNALED(status) ? cat("killed by signal ", WTERMSIG(status))
                                                  : cat("exit status ", WEXITSTATUS(status));
    throw Error(EIO, cat("rados_connect: ", who, ": the checking child process died (", how, ")"));
  }
  const int code = std::atoi(answer.substr(0, sp).c_str());
  if (code != 0) throw Error(code, answer.substr(sp + 1));
}

IoCtx Cluster::open_ioctx(const std::string& pool, const std::string& ns) const {
  rados_ioctx_t io = nullptr;
  int r = rados_ioctx_create(h_.get(), pool.c_str(), &io);
  if (r == -ENOENT) throw Error(ENOENT, cat("pool '", pool, "' does not exist"));
  check(r, "rados_ioctx_create", pool);
  IoCtx ctx(h_, io, pool, ns);
  if (!ns.empty()) rados_ioctx_set_namespace(io, ns.c_str());
  return ctx;
}

std::vector<std::string> Cluster::pools() const {
  std::vector<char> buf(4096);
  for (;;) {
    int r = rados_pool_list(h_.get(), buf.data(), buf.size());
    check(r, "rados_pool_list", name_);
    if (static_cast<std::size_t>(r) <= buf.size()) break;
    buf.resize(r);
  }
  std::vector<std::string> out;
  for (const char* p = buf.data(); *p; p += std::strlen(p) + 1) out.emplace_back(p);
  return out;
}

std::string Cluster::fsid() const {
  char buf[64] = {0};
  check(rados_cluster_fsid(h_.get(), buf, sizeof buf - 1), "rados_cluster_fsid", name_);
  return buf;
}

IoCtx::IoCtx(std::shared_ptr<void> cluster, rados_ioctx_t h, std::string pool, std::string ns)
    : cluster_(std::move(cluster)),
      h_(h, [c = cluster_](void* p) { rados_ioctx_destroy(p); }),
      pool_(std::move(pool)),
      ns_(std::move(ns)) {}

}  // namespace rbdgw::rbd
