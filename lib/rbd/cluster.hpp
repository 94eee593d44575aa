// RAII over librados: a cluster connection and a pool I/O context.
//
// Cluster::connect returns a connected cluster or throws rbdgw::Error naming
// the cause; there is no half-initialised object. IoCtx keeps its Cluster
// alive (shared ownership), so handles may be destroyed in any order.
//
// Thread safety: librados handles are thread-safe; these wrappers add no
// state of their own after construction.
#pragma once

#include <rados/librados.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "crypto/secret.hpp"

namespace rbdgw::rbd {

struct ClusterOptions {
  std::string conf_file;  // ceph.conf; empty: librados' default search ($CEPH_CONF, /etc/ceph)
  std::string id;         // cephx user without "client."; empty: "admin"
  std::string mon_host;   // overrides the conf file's mon_host when set
  std::string keyring;    // keyring file
  SecretBuffer key;       // a cephx key (base64), instead of a keyring
  std::chrono::seconds connect_timeout{30};
  // Further "option = value" settings, applied last.
  std::vector<std::pair<std::string, std::string>> config;
};

class IoCtx;

class Cluster {
 public:
  // Connects; throws Error (ETIMEDOUT for an unreachable cluster, EACCES or
  // EPERM for a wrong key, ENOENT for a missing conf file).
  static Cluster connect(const ClusterOptions& opts);

  // Connects as connect() does, but in a child process that exits right
  // after, and throws what connect() would have thrown: the cluster answers
  // and the key is right, and this process is left with no librados thread
  // or connection. For a program that must stay single-threaded past the
  // check (nbdkit's .get_ready: nbdkit then reopens stdin and stdout and
  // expects fds 0 and 1, which a messenger thread opening a socket would
  // take). Throws Error(ETIMEDOUT) when the child has not answered within
  // twice opts.connect_timeout.
  static void check_in_child(const ClusterOptions& opts);

  // Throws Error(ENOENT) "pool 'x' does not exist" for a missing pool.
  IoCtx open_ioctx(const std::string& pool, const std::string& ns = {}) const;

  // Pool names.
  std::vector<std::string> pools() const;
  // The cluster fsid.
  std::string fsid() const;
  // A short human-readable description ("client.admin@<fsid>").
  const std::string& name() const { return name_; }

  rados_t handle() const { return h_.get(); }

 private:
  struct Deleter { void operator()(rados_t h) const noexcept; };
  using Handle = std::shared_ptr<void>;
  explicit Cluster(Handle h, std::string name) : h_(std::move(h)), name_(std::move(name)) {}
  Handle h_;
  std::string name_;
  friend class IoCtx;
};

class IoCtx {
 public:
  rados_ioctx_t handle() const { return h_.get(); }
  // Shared ownership of the handle (and, through it, of the cluster).
  std::shared_ptr<void> shared_handle() const { return h_; }
  const std::string& pool() const { return pool_; }
  const std::string& ns() const { return ns_; }
  // "pool" or "pool/ns", for messages.
  std::string str() const { return ns_.empty() ? pool_ : pool_ + "/" + ns_; }

 private:
  friend class Cluster;
  IoCtx(std::shared_ptr<void> cluster, rados_ioctx_t h,
        std::string pool, std::string ns);
  std::shared_ptr<void> cluster_;  // keeps the rados_t alive
  std::shared_ptr<void> h_;
  std::string pool_, ns_;
};

}  // namespace rbdgw::rbd
