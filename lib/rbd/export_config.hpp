// ExportConfig: the parameters of one served RBD image, as the `rbd` nbdkit
// plugin (and anything else that serves an image) takes them as key=value
// pairs:
//
//   [image=]pool[/ns]/image[@snap]  conf=FILE  id=USER  keyring=FILE
//   key=SECRET  mon_host=ADDRS  timeout=SECONDS  ceph.OPTION=VALUE
//   encryption-format=luks1|luks2  encryption-passphrase=SECRET
//   durable-writes=true|false  exclusive=true|false  node=NAME
//
// Secret values (is_secret_key) never arrive as plain strings: the caller
// reads them (nbdkit_read_password) and hands over a SecretBuffer.
//
// Thread safety: a plain value type; configure it from one thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "crypto/secret.hpp"
#include "rbd/cluster.hpp"
#include "rbd/encryption.hpp"
#include "rbd/spec.hpp"

namespace rbdgw::rbd {

struct ExportConfig {
  std::optional<ImageSpec> spec;
  ClusterOptions cluster;
  std::optional<EncryptionFormat> encryption;
  SecretBuffer passphrase;
  // Every write is on the OSDs when it completes: the librbd cache is off
  // (rbd_cache=false), and an image or pool whose configuration would still
  // acknowledge writes early is refused. What a gateway that can be killed
  // and re-attached under a filesystem needs: the client above never learns
  // that the gateway it flushes to is not the one it wrote to.
  bool durable_writes = false;
  // One writer: the gateway takes the image's exclusive lock for its whole
  // life (rbd/exclusive_lock.hpp) and refuses to serve without it; `node`
  // names where it runs in its holder record (empty: the host name).
  bool exclusive = false;
  std::string node;

  // True for keys whose value is a secret ("key", "encryption-passphrase").
  static bool is_secret_key(std::string_view key);

  // Applies one non-secret key=value. Throws Error(EINVAL) naming the key
  // for an unknown key, a secret key, a repeated key or a malformed value;
  // the configuration is unchanged then.
  void set(std::string_view key, std::string_view value);

  // Applies a secret key (is_secret_key); throws Error(EINVAL) otherwise or
  // when the key was already given.
  void set_secret(std::string_view key, SecretBuffer value);

  // Checks the rules across parameters (an image is given; a passphrase
  // exactly when an encryption format is; keyring and key exclusive;
  // exclusive not with a snapshot, node only with exclusive).
  // Throws Error(EINVAL) naming the parameters.
  void validate() const;
};

// Connects to the cluster, opens the image (read-only for a snapshot or
// with read_only) and loads its encryption when configured. Throws
// rbdgw::Error naming the cluster, pool, image or passphrase problem, and
// EINVAL when durable_writes cannot be had on this image.
Image open_export(const ExportConfig& c, bool read_only = false);

}  // namespace rbdgw::rbd
