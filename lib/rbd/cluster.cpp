#include "rbd/cluster.hpp"

#include <cerrno>
#include <cstring>
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
