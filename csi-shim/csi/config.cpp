#include "csi/config.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "common/error.hpp"
#include "rbd/image.hpp"

namespace rbdgw::csi {

using nlohmann::json;

std::string ClusterEntry::mon_host() const {
  std::string s;
  for (const auto& m : monitors) s += (s.empty() ? "" : ",") + m;
  return s;
}

ClusterConfig ClusterConfig::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_errno("cluster config", path, errno ? errno : ENOENT);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

ClusterConfig ClusterConfig::parse(std::string_view text, std::string_view origin) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(EINVAL, cat("cluster config ", origin, ": not valid JSON: ", e.what()));
  }
  if (!doc.is_array())
    throw Error(EINVAL, cat("cluster config ", origin, ": expected a JSON array of clusters"));
  ClusterConfig cfg;
  for (std::size_t i = 0; i < doc.size(); ++i) {
    const json& e = doc[i];
    const std::string where = cat("cluster config ", origin, ": entry ", i);
    if (!e.is_object()) throw Error(EINVAL, cat(where, ": not an object"));
    ClusterEntry c;
    if (!e.contains("clusterID") || !e["clusterID"].is_string() ||
        e["clusterID"].get<std::string>().empty())
      throw Error(EINVAL, cat(where, ": missing or empty \"clusterID\""));
    c.cluster_id = e["clusterID"].get<std::string>();
    const std::string wid = cat(where, " (clusterID '", c.cluster_id, "')");
    if (cfg.find(c.cluster_id)) throw Error(EINVAL, cat(wid, ": duplicate clusterID"));
    if (!e.contains("monitors") || !e["monitors"].is_array() || e["monitors"].empty())
      throw Error(EINVAL, cat(wid, ": \"monitors\" must be a non-empty array"));
    for (const json& m : e["monitors"]) {
      if (!m.is_string() || m.get<std::string>().empty())
        throw Error(EINVAL, cat(wid, ": \"monitors\" holds a non-string or empty entry"));
      c.monitors.push_back(m.get<std::string>());
    }
    if (e.contains("rbd")) {
      const json& r = e["rbd"];
      if (!r.is_object()) throw Error(EINVAL, cat(wid, ": \"rbd\" must be an object"));
      if (r.contains("radosNamespace")) {
        if (!r["radosNamespace"].is_string())
          throw Error(EINVAL, cat(wid, ": \"rbd.radosNamespace\" must be a string"));
        c.rados_namespace = r["radosNamespace"].get<std::string>();
      }
    }
    cfg.entries_.push_back(std::move(c));
  }
  return cfg;
}

const ClusterEntry* ClusterConfig::find(std::string_view id) const {
  for (const auto& e : entries_)
    if (e.cluster_id == id) return &e;
  return nullptr;
}

namespace {

// The StorageClass parameters: the one list parse() and --list-parameters use.
struct ParamSpec {
  VolumeParams::Parameter doc;
  void (*set)(VolumeParams&, const std::string&);
};
const ParamSpec kParams[] = {
    {{"clusterID", "cluster ID of the cluster config (required)"},
     [](VolumeParams& p, const std::string& v) { p.cluster_id = v; }},
    {{"pool", "RBD pool of the images (required)"},
     [](VolumeParams& p, const std::string& v) { p.pool = v; }},
    {{"dataPool", "data pool of the images (erasure-coded pools)"},
     [](VolumeParams& p, const std::string& v) { p.data_pool = v; }},
    {{"imageFeatures", "RBD image features, e.g. \"layering,exclusive-lock\""},
     [](VolumeParams& p, const std::string& v) {
       if (!v.empty()) rbd::parse_features(v);  // validates
       p.image_features = v;
     }},
    {{"imageFormat", "\"2\" (the only format)"},
     [](VolumeParams&, const std::string& v) {
       if (v != "2") throw Error(EINVAL, cat("parameter 'imageFormat': only \"2\" is supported, not '", v, "'"));
     }},
    {{"encrypted", "\"true\" for LUKS2-encrypted volumes (default \"false\")"},
     [](VolumeParams& p, const std::string& v) {
       if (v != "true" && v != "false")
         throw Error(EINVAL, cat("parameter 'encrypted': '", v, "' is not \"true\" or \"false\""));
       p.encrypted = v == "true";
     }},
    {{"encryptionType", "\"block\" (the only type)"},
     [](VolumeParams&, const std::string& v) {
       if (v != "block")
         throw Error(EINVAL, cat("parameter 'encryptionType': only \"block\" is supported, not '", v, "'"));
     }},
    {{"encryptionKMSID", "KMS ID of the KMS config (encrypted volumes; default: \"default\")"},
     [](VolumeParams& p, const std::string& v) { p.kms_id = v; }},
};

}  // namespace

std::vector<VolumeParams::Parameter> VolumeParams::parameters() {
  std::vector<Parameter> out;
  for (const auto& p : kParams) out.push_back(p.doc);
  return out;
}

VolumeParams VolumeParams::parse(const StringMap& params) {
  VolumeParams p;
  for (const auto& [k, v] : params) {
    if (k.rfind(kSidecarPrefix, 0) == 0) continue;
    const ParamSpec* spec = nullptr;
    for (const auto& ps : kParams)
      if (k == ps.doc.key) spec = &ps;
    if (!spec) throw Error(EINVAL, cat("unknown parameter '", k, "'"));
    spec->set(p, v);
  }
  if (p.cluster_id.empty()) throw Error(EINVAL, "parameter 'clusterID' is missing");
  if (p.pool.empty()) throw Error(EINVAL, "parameter 'pool' is missing");
  if (!p.kms_id.empty() && !p.encrypted)
    throw Error(EINVAL, cat("parameter 'encryptionKMSID' ('", p.kms_id, "') needs encrypted=\"true\""));
  return p;
}

std::string VolumeParams::canonical() const {
  return cat("clusterID=", cluster_id, ";pool=", pool, ";dataPool=", data_pool,
             ";imageFeatures=", image_features, ";encrypted=", encrypted ? "true" : "false",
             ";encryptionKMSID=", kms_id);
}

rbd::ClusterOptions cluster_options(const ClusterEntry& cluster, const StringMap& secrets) {
  auto id = secrets.find("userID");
  auto key = secrets.find("userKey");
  if (id == secrets.end() || id->second.empty()) throw Error(EINVAL, "secrets: 'userID' is missing");
  if (key == secrets.end() || key->second.empty()) throw Error(EINVAL, "secrets: 'userKey' is missing");
  rbd::ClusterOptions o;
  o.id = id->second;
  o.key = SecretBuffer(key->second);
  o.mon_host = cluster.mon_host();
  o.connect_timeout = std::chrono::seconds(20);
  return o;
}

std::uint64_t size_for_range(std::int64_t required, std::int64_t limit, std::uint64_t default_size) {
  if (required < 0 || limit < 0)
    throw Error(ERANGE, cat("capacity range: negative value (required_bytes ", required,
                            ", limit_bytes ", limit, ")"));
  if (limit > 0 && limit < required)
    throw Error(EINVAL, cat("capacity range: limit_bytes ", limit, " < required_bytes ", required));
  std::uint64_t want = required > 0 ? static_cast<std::uint64_t>(required)
                                    : (limit > 0 ? std::min<std::uint64_t>(default_size, limit)
                                                 : default_size);
  std::uint64_t size = (want + kMiB - 1) / kMiB * kMiB;
  if (limit > 0 && size > static_cast<std::uint64_t>(limit))
    throw Error(ERANGE, cat("capacity range: ", want, " bytes rounded up to whole MiB (", size,
                            ") exceeds limit_bytes ", limit));
  return size;
}

}  // namespace rbdgw::csi

namespace rbdgw::csi {

Secrets::~Secrets() {
  for (auto& [k, v] : map) wipe_string(v);
}

Options Options::parse(int argc, const char* const* argv, bool& help) {
  Options o;
  help = false;
  const std::pair<const char*, std::string Options::*> flags[] = {
      {"endpoint", &Options::endpoint},         {"driver-name", &Options::driver_name},
      {"node-id", &Options::node_id},           {"cluster-config", &Options::cluster_config},
      {"kms-config", &Options::kms_config},     {"attach", &Options::attach},
      {"state-dir", &Options::state_dir},       {"allowed-root", &Options::allowed_root},
  };
  const std::pair<const char*, bool Options::*> switches[] = {
      {"check-config", &Options::check_config}, {"list-parameters", &Options::list_parameters},
      {"list-capabilities", &Options::list_capabilities}, {"shared-gateway", &Options::shared_gateway}};
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      help = true;
      return o;
    }
    bool is_switch = false;
    for (const auto& [n, f] : switches)
      if (a.substr(2) == n && a.substr(0, 2) == "--") o.*f = is_switch = true;
    if (is_switch) continue;
    if (a.substr(0, 2) != "--") {
      const auto eq = a.find('=');
      if (eq == std::string_view::npos || eq == 0)
        throw Error(EINVAL, cat("unexpected argument '", a, "'"));
      o.check_parameters[std::string(a.substr(0, eq))] = std::string(a.substr(eq + 1));
      continue;
    }
    a.remove_prefix(2);
    std::string name(a), value;
    bool have_value = false;
    if (auto eq = a.find('='); eq != std::string_view::npos) {
      name = std::string(a.substr(0, eq));
      value = std::string(a.substr(eq + 1));
      have_value = true;
    }
    std::string Options::*field = nullptr;
    for (const auto& [n, f] : flags)
      if (name == n) field = f;
    if (!field) throw Error(EINVAL, cat("unknown option '--", name, "' (see --help)"));
    if (!have_value) {
      if (i + 1 >= argc) throw Error(EINVAL, cat("option '--", name, "' needs a value"));
      value = argv[++i];
    }
    o.*field = value;
  }
  if (!o.check_parameters.empty() && !o.check_config)
    throw Error(EINVAL, cat("unexpected argument '", o.check_parameters.begin()->first,
                            "=...': StorageClass parameters go with --check-config"));
  if (o.list_parameters || o.list_capabilities) return o;
  if (o.cluster_config.empty()) throw Error(EINVAL, "--cluster-config is required");
  if (o.check_config) return o;
  if (o.endpoint.empty()) throw Error(EINVAL, "--endpoint is required");
  o.socket_path();  // validates
  if (o.allowed_root.empty() || o.allowed_root.front() != '/')
    throw Error(EINVAL, cat("--allowed-root '", o.allowed_root, "': not an absolute path"));
  if (o.state_dir.empty() || o.state_dir.front() != '/')
    throw Error(EINVAL, cat("--state-dir '", o.state_dir, "': not an absolute path"));
  if (o.driver_name.empty() || o.driver_name.size() > 63)
    throw Error(EINVAL, cat("--driver-name '", o.driver_name, "': must be 1..63 characters"));
  return o;
}

std::string Options::socket_path() const {
  constexpr std::string_view scheme = "unix://";
  if (endpoint.rfind(scheme, 0) != 0 || endpoint.size() <= scheme.size() ||
      endpoint[scheme.size()] != '/')
    throw Error(EINVAL, cat("--endpoint '", endpoint, "': expected unix:///absolute/path"));
  return endpoint.substr(scheme.size());
}

const char* usage() {
  return "Usage: rbdgw-csi --endpoint unix:///PATH/csi.sock --cluster-config FILE [options]\n"
         "       rbdgw-csi --check-config --cluster-config FILE [--kms-config FILE] [KEY=VALUE...]\n"
         "       rbdgw-csi --list-parameters\n"
         "       rbdgw-csi --list-capabilities\n"
         "\n"
         "The CSI (v1) service of rbdgw: RBD volumes for nodes without the kernel\n"
         "rbd/nbd/dm-crypt modules.\n"
         "\n"
         "  --endpoint URL         unix socket to serve on (required)\n"
         "  --cluster-config FILE  ceph-csi style config.json: [{\"clusterID\", \"monitors\",\n"
         "                         \"rbd\": {\"radosNamespace\"}}] (required)\n"
         "  --kms-config FILE      ceph-csi-encryption-kms-config JSON (encrypted volumes)\n"
         "  --driver-name NAME     plugin name (default rbd.gw.csi.rbdgw.io)\n"
         "  --node-id ID           node ID (default: the host name)\n"
         "  --attach MODE          auto | kernel | userspace (default auto)\n"
         "  --shared-gateway       userspace stages share one gateway per cluster identity\n"
         "                         and kind (plain, decrypting) instead of one per volume\n"
         "  --state-dir DIR        index of staged volumes (default /var/lib/rbdgw-csi)\n"
         "  --allowed-root DIR     staging/target paths must be below it\n"
         "                         (default /var/lib/kubelet)\n"
         "  --check-config         check the cluster and KMS configs and the StorageClass\n"
         "                         parameters KEY=VALUE given (clusterID and\n"
         "                         encryptionKMSID must be configured), then exit\n"
         "                         (0 good, 2 bad)\n"
         "  --list-parameters      print the StorageClass parameters accepted, one\n"
         "                         \"KEY<TAB>description\" a line, and exit\n";
}

}  // namespace rbdgw::csi
