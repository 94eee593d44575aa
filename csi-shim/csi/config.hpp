// Configuration and request parsing for rbdgw-csi:
//   - the cluster config file (ceph-csi's config.json format):
//       [{"clusterID": "c1", "monitors": ["10.0.0.1:6789", ...],
//         "rbd": {"radosNamespace": "ns"}}, ...]
//   - StorageClass parameters of CreateVolume,
//   - cephx credentials from a request's secrets map ("userID", "userKey"),
//   - capacity ranges.
// Every parse error is an Error(EINVAL) naming the file or key and the cause.
//
// Thread safety: plain value types; a loaded ClusterConfig is immutable.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "rbd/cluster.hpp"

namespace rbdgw::csi {

using StringMap = std::map<std::string, std::string>;

struct ClusterEntry {
  std::string cluster_id;
  std::vector<std::string> monitors;
  std::string rados_namespace;  // "" = default namespace

  // "mon1,mon2": the monitors as a librados mon_host value.
  std::string mon_host() const;
};

class ClusterConfig {
 public:
  // Reads and parses a config file. Throws Error naming the file.
  static ClusterConfig load(const std::string& path);
  // Parses JSON text; origin names it in errors.
  static ClusterConfig parse(std::string_view json, std::string_view origin);

  // The entry for a cluster ID, or nullptr.
  const ClusterEntry* find(std::string_view cluster_id) const;
  const std::vector<ClusterEntry>& entries() const { return entries_; }

 private:
  std::vector<ClusterEntry> entries_;
};

// The StorageClass parameters of CreateVolume that we understand.
struct VolumeParams {
  std::string cluster_id;       // clusterID (required)
  std::string pool;             // pool (required)
  std::string data_pool;        // dataPool
  std::string image_features;   // imageFeatures, e.g. "layering"
  bool encrypted = false;       // encrypted: "true" | "false"
  std::string kms_id;           // encryptionKMSID (only with encrypted)

  // Keys with this prefix are set by the Kubernetes sidecars; ignored.
  static constexpr const char* kSidecarPrefix = "csi.storage.k8s.io/";

  // Parses parameters; sidecar keys are ignored, any other key not in
  // parameters() is an error. Throws Error(EINVAL) naming the key.
  static VolumeParams parse(const StringMap& params);

  struct Parameter {
    const char* key;
    const char* help;
  };
  // The accepted parameters (for --list-parameters), in a fixed order.
  static std::vector<Parameter> parameters();

  // A canonical one-line form, recorded in image metadata to detect a
  // CreateVolume that reuses a name with other parameters.
  std::string canonical() const;
};

// librados options for a cluster entry and a request's secrets
// ("userID" without "client.", "userKey" base64). The key goes into a
// SecretBuffer; the caller should wipe the map afterwards. Throws
// Error(EINVAL) naming the missing secret.
rbd::ClusterOptions cluster_options(const ClusterEntry& cluster, const StringMap& secrets);

constexpr std::uint64_t kMiB = 1024 * 1024;
// Default size when CreateVolume gives no capacity range.
constexpr std::uint64_t kDefaultVolumeSize = 1024 * kMiB;

// The size to create or expand to for a CSI capacity range: required_bytes
// rounded up to a MiB (the default when both are 0). Throws Error(ERANGE)
// if a value is negative or the rounded size exceeds limit_bytes, and
// Error(EINVAL) if limit < required.
std::uint64_t size_for_range(std::int64_t required, std::int64_t limit,
                             std::uint64_t default_size = kDefaultVolumeSize);

}  // namespace rbdgw::csi

namespace rbdgw::csi {

// A copy of a request's secrets map, wiped when it goes out of scope.
struct Secrets {
  StringMap map;
  Secrets() = default;
  template <typename Map>
  explicit Secrets(const Map& m) {
    for (const auto& [k, v] : m) map.emplace(k, v);
  }
  Secrets(const Secrets&) = delete;
  Secrets& operator=(const Secrets&) = delete;
  ~Secrets();
};

// Command-line options of rbdgw-csi.
struct Options {
  std::string endpoint;            // unix:///path/csi.sock
  std::string driver_name = "rbd.gw.csi.rbdgw.io";
  std::string node_id;             // default: the host name
  std::string cluster_config;      // required
  std::string kms_config;          // optional
  std::string attach = "auto";     // auto | kernel | userspace
  bool shared_gateway = false;     // --shared-gateway: userspace stages on the node's shared gateways
  std::string state_dir = "/var/lib/rbdgw-csi";
  std::string allowed_root = "/var/lib/kubelet";
  bool check_config = false;       // --check-config: validate the configs and exit
  bool list_parameters = false;    // --list-parameters: print the SC parameters and exit
  bool list_capabilities = false;  // --list-capabilities: print the controller's and exit
  StringMap check_parameters;      // KEY=VALUE arguments (only with --check-config)

  // Parses argv ("--name=value" or "--name value"). Throws Error(EINVAL)
  // naming an unknown or malformed flag; --help is reported via help=true.
  // --endpoint is not needed with --check-config or --list-parameters,
  // --cluster-config not with --list-parameters.
  static Options parse(int argc, const char* const* argv, bool& help);
  // The unix socket path of endpoint; throws Error(EINVAL) otherwise.
  std::string socket_path() const;
};

// Usage text for --help.
const char* usage();

}  // namespace rbdgw::csi
