// rbdgw: attach RBD volumes on hosts without Kubernetes, with the same
// attach code (lib/attach) as rbdgw-csi. See usage() for the commands.
//
// Exit status: 0 success; 1 failure; 2 bad usage or input (EINVAL);
// 3 not found (ENOENT); 4 busy / already attached elsewhere (EBUSY);
// 5 refused because the volume holds data (EEXIST); 6 not possible on this
// node (ENOTSUP); 7 wrong secret (EPERM).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "attach/attach.hpp"
#include "common/error.hpp"
#include "common/log.hpp"
#include "kms/config.hpp"
#include "kms/volume_encryption.hpp"
#include "luks/volume_format.hpp"
#include "rbd/image.hpp"
#include "rotate_key.hpp"

namespace fs = std::filesystem;
using namespace rbdgw;

namespace rbdgw::cli {
int cmd_serve(const std::vector<std::string>& argv);  // serve.cpp
}

namespace {

const char* kUsage =
    "usage: rbdgw [--run-root DIR] COMMAND ...\n"
    "  map IMAGE-SPEC [--mount DIR [--fstype ext4|xfs] [--options OPTS]] [--read-only]\n"
    "      [--encrypted --passphrase-file F | --kms-id ID --kms-config F [--kms-secret-file F]]\n"
    "      [--attach auto|kernel|userspace] [--volume-id ID] [--pbkdf argon2id|pbkdf2[:ITER]]\n"
    "      [--node NAME] [--shared-gateway] CLUSTER-OPTIONS\n"
    "      Attaches (and mounts); prints the mount point, or the device without --mount.\n"
    "      Mapping an already mapped volume re-attaches it if its gateway died.\n"
    "      A blank encrypted volume is LUKS2-formatted first (--pbkdf: its key derivation).\n"
    "      One writer: a read-write map is refused while another node's gateway holds the\n"
    "      image (--node: this node's name in its lock record; default $RBDGW_NODE_NAME,\n"
    "      else the host name).\n"
    "      --shared-gateway: served by the node's one gateway for this cluster identity\n"
    "      and kind (plain or decrypting), not a gateway of its own (userspace path).\n"
    "  unmap [--force] VOLUME  VOLUME: volume id, image spec, mount point or device\n"
    "      A dead gateway is restarted first; if that fails, --force tears the volume\n"
    "      down anyway, failing the filesystem's unflushed writes (they are lost).\n"
    "  list [--json]\n"
    "  status VOLUME [--json]\n"
    "  reattach [VOLUME...]  restarts dead gateways (all volumes by default)\n"
    "  format IMAGE-SPEC (--passphrase-file F | --kms-id ID --kms-config F [--kms-secret-file F]\n"
    "      [--volume-id ID]) [--pbkdf argon2id|pbkdf2[:ITER]] CLUSTER-OPTIONS\n"
    "      LUKS2-formats a blank image and tags it encryptionPrepared (the first map\n"
    "      makes its filesystem); an image holding data is refused.\n"
    "  dek unwrap IMAGE-SPEC --kms-id ID --kms-config F [--kms-secret-file F]\n"
    "      [--volume-id ID] --output FILE   writes the volume's LUKS passphrase (0600)\n"
    "  rotate-key IMAGE-SPEC [--kms-id ID] --kms-config F [--kms-secret-file F]\n"
    "      --new-kms-id ID [--new-kms-secret-file F] [--volume-id ID] [--pbkdf P] [--node NAME]\n"
    "      A new LUKS2 passphrase for the volume, kept by KMS --new-kms-id; the old keyslot\n"
    "      is destroyed. --kms-id: the volume's KMS (default: as its metadata names it).\n"
    "      Crash-safe; run it again to finish one that was stopped. The volume must be unmapped.\n"
    "  serve --config FILE [--check]  NBD exports for remote clients over TCP/unix with\n"
    "      TLS (PSK or x509), per-identity grants (see rbdgw(8), docs/serve.md)\n"
    "CLUSTER-OPTIONS: [--conf F] [--id USER] [--keyring F | --key-file F] [--mon-host H]\n"
    "Exit status: 0 ok, 1 failure, 2 bad input, 3 not found, 4 busy, 5 holds data,\n"
    "6 not possible on this node, 7 wrong secret.\n";

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Options of the form --name VALUE (or --flag), and positional arguments.
class Args {
 public:
  Args(std::vector<std::string> argv, std::vector<std::string> flags, std::vector<std::string> valued) {
    for (std::size_t i = 0; i < argv.size(); ++i) {
      const std::string& a = argv[i];
      if (!a.starts_with("--")) {
        pos.push_back(a);
        continue;
      }
      std::string name = a.substr(2), value;
      bool has_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      if (std::find(flags.begin(), flags.end(), name) != flags.end()) {
        if (has_value) throw Usage(cat("option --", name, " takes no value"));
        opts_[name] = "1";
      } else if (std::find(valued.begin(), valued.end(), name) != valued.end()) {
        if (!has_value) {
          if (i + 1 >= argv.size()) throw Usage(cat("option --", name, " needs a value"));
          value = argv[++i];
        }
        opts_[name] = value;
      } else {
        throw Usage(cat("unknown option '", a, "'"));
      }
    }
  }
  bool has(const std::string& n) const { return opts_.count(n) > 0; }
  std::string get(const std::string& n, const std::string& def = {}) const {
    auto it = opts_.find(n);
    return it == opts_.end() ? def : it->second;
  }
  void set(const std::string& n, const std::string& v) { opts_[n] = v; }
  std::string need(const std::string& n) const {
    if (!has(n)) throw Usage(cat("option --", n, " is required"));
    return get(n);
  }
  std::vector<std::string> pos;

 private:
  std::map<std::string, std::string> opts_;
};

const std::vector<std::string> kClusterOpts = {"conf", "id", "keyring", "key-file", "mon-host"};
const std::vector<std::string> kKmsOpts = {"kms-id", "kms-config", "kms-secret-file", "volume-id"};

std::vector<std::string> join(std::initializer_list<std::vector<std::string>> lists) {
  std::vector<std::string> out;
  for (const auto& l : lists) out.insert(out.end(), l.begin(), l.end());
  return out;
}

rbd::ClusterOptions cluster_options(const Args& a) {
  rbd::ClusterOptions c;
  c.conf_file = a.get("conf");
  c.id = a.get("id");
  c.keyring = a.get("keyring");
  c.mon_host = a.get("mon-host");
  if (a.has("keyring") && a.has("key-file")) throw Usage("--keyring and --key-file exclude each other");
  // A cephx key is base64: surrounding whitespace is never part of it.
  if (a.has("key-file")) c.key = trim_whitespace(read_secret_file(a.get("key-file")));
  return c;
}

rbd::ImageSpec one_image(const Args& a) {
  if (a.pos.size() != 1) throw Usage("expected one IMAGE-SPEC");
  return rbd::ImageSpec::parse(a.pos[0]);
}

// The KMS named by --kms-id/--kms-config (secret from --kms-secret-file or
// the config's passphraseFile).
std::shared_ptr<kms::EncryptionKMS> build_kms(const Args& a, const std::string& id_opt,
                                              const std::string& secret_opt) {
  const auto config = kms::KMSConfig::load(a.need("kms-config"));
  kms::Secrets secrets;
  if (a.has(secret_opt)) {
    SecretBuffer s = read_secret_file(a.get(secret_opt));  // exact bytes, as ceph-csi
    secrets[kms::passphrase_secret_key] = std::string(s.view());
  }
  auto k = config.build(a.need(id_opt), secrets);
  for (auto& [key, value] : secrets) wipe_string(value);
  return k;
}

// "argon2id" | "pbkdf2" | "pbkdf2:ITERATIONS" (a fixed count, for tests).
luks::Pbkdf parse_pbkdf(const std::string& s) {
  luks::Pbkdf p;
  const std::string type = s.substr(0, s.find(':'));
  if (type == "argon2id") {
    p.type = luks::Pbkdf::Type::argon2id;
  } else if (type == "pbkdf2") {
    p.type = luks::Pbkdf::Type::pbkdf2;
  } else {
    throw Usage(cat("--pbkdf '", s, "': expected argon2id or pbkdf2[:ITERATIONS]"));
  }
  if (auto colon = s.find(':'); colon != std::string::npos) {
    const std::string n = s.substr(colon + 1);
    if (type != "pbkdf2" || n.empty() || n.size() > 9 ||
        n.find_first_not_of("0123456789") != std::string::npos || std::stoul(n) < 1000)
      throw Usage(cat("--pbkdf '", s, "': ITERATIONS must be a number >= 1000, with pbkdf2"));
    p.iterations = static_cast<std::uint32_t>(std::stoul(n));
  }
  return p;
}

struct Progress {
  void operator()(std::string_view m) const { std::cerr << "rbdgw: " << m << std::endl; }
};

attach::AttachOptions options_for(const std::string& run_root, const std::string& volume_id) {
  attach::AttachOptions o;
  o.run_dir = run_root + "/" + volume_id;
  o.stash_path = o.run_dir + "/stash.json";
  o.tools = attach::Tools::from_environment();
  o.progress = Progress{};
  return o;
}

// The stash of VOLUME (id, image spec, mount point or device).
attach::Stash find_volume(const std::string& run_root, const std::string& what) {
  std::error_code ec;
  const std::string canon = fs::weakly_canonical(what, ec).string();
  std::string spec;
  try {
    spec = rbd::ImageSpec::parse(what).str();
  } catch (const Error&) {
  }
  for (auto& s : attach::list_stashes(run_root))
    if (s.volume_id == what || s.image == spec || (!s.target.empty() && s.target == canon) ||
        s.device == what)
      return s;
  throw Error(ENOENT, cat("volume '", what, "' is not mapped (see rbdgw list)"));
}

int cmd_map(const std::string& run_root, const std::vector<std::string>& argv) {
  Args a(argv, {"encrypted", "read-only", "shared-gateway"},
         join({kClusterOpts, kKmsOpts, {"mount", "fstype", "options", "passphrase-file", "attach", "pbkdf",
                                     "node"}}));
  attach::Volume v;
  v.image = one_image(a);
  v.cluster = cluster_options(a);
  v.id = a.get("volume-id", attach::volume_id_for(v.image));
  attach::validate_volume_id(v.id);
  v.read_only = a.has("read-only") || v.image.is_snapshot();
  const char* node_env = std::getenv("RBDGW_NODE_NAME");
  v.node = a.get("node", node_env ? node_env : "");
  v.block = !a.has("mount");
  if (v.block && (a.has("fstype") || a.has("options"))) throw Usage("--fstype and --options need --mount");
  if (!v.block) {
    std::error_code ec;
    v.target = fs::weakly_canonical(a.get("mount"), ec).string();
    v.fstype = a.get("fstype", "ext4");
    v.mount_options = a.get("options");
  }
  if (a.has("passphrase-file") && a.has("kms-id")) throw Usage("--passphrase-file and --kms-id exclude each other");
  if (a.has("encrypted") && !a.has("passphrase-file") && !a.has("kms-id"))
    throw Usage("--encrypted needs --passphrase-file or --kms-id");
  if (a.has("passphrase-file")) {
    v.encrypted = true;
    v.passphrase = read_secret_file(a.get("passphrase-file"));  // exact bytes, as cryptsetup
    if (v.passphrase.empty()) throw Error(EINVAL, cat(a.get("passphrase-file"), ": empty passphrase"));
  } else if (a.has("kms-id")) {
    v.encrypted = true;
    auto cluster = rbd::Cluster::connect(v.cluster);
    auto img = rbd::Image::open(cluster, v.image, rbd::Image::Mode::read_only);
    kms::VolumeEncryption ve(build_kms(a, "kms-id", "kms-secret-file"), img, v.id);
    v.passphrase = ve.passphrase();
  }
  attach::AttachOptions o = options_for(run_root, v.id);
  o.attach = attach::parse_attach_choice(a.get("attach", "auto"));
  o.shared_gateway = a.has("shared-gateway");
  if (a.has("pbkdf")) o.luks_format.pbkdf = parse_pbkdf(a.get("pbkdf"));
  const attach::Stash s = attach::attach(v, o);
  std::cout << (s.block ? s.device : s.target) << "\n";
  return 0;
}

int cmd_unmap(const std::string& run_root, const std::vector<std::string>& argv) {
  Args a(argv, {"force"}, {});
  if (a.pos.size() != 1) throw Usage("expected one VOLUME");
  const attach::Stash s = find_volume(run_root, a.pos[0]);
  Progress{}(cat("unmapping ", s.volume_id, " (", s.image, ")", a.has("force") ? ", by force if need be" : ""));
  const attach::AttachOptions o = options_for(run_root, s.volume_id);
  // A dead gateway is restarted first, so that the filesystem can flush.
  const attach::DetachResult r = attach::detach(o.stash_path, {.force = a.has("force"), .restart = &o});
  if (r.forced) std::cerr << "rbdgw: warning: unmapped " << s.volume_id << " by force: " << r.loss << "\n";
  return 0;
}

nlohmann::json status_json(const attach::VolumeStatus& st) {
  const auto& s = st.stash;
  return {{"volume_id", s.volume_id}, {"image", s.image},        {"mode", attach::to_string(s.mode)},
          {"device", s.device},       {"target", s.target},      {"fstype", s.fstype},
          {"encrypted", s.encrypted}, {"read_only", s.read_only}, {"complete", s.complete},
          {"gateway_pid", s.gateway.pid}, {"gateway_alive", st.gateway_alive},
          {"fuse_alive", st.fuse_alive},  {"mounted", st.mounted}, {"healthy", st.healthy()},
          {"nbd_connected", st.nbd_connected}};
}

std::string state_word(const attach::VolumeStatus& st) {
  if (!st.stale.empty()) return "stale";  // from an earlier boot
  if (!st.stash.complete) return "incomplete";
  return st.healthy() ? "ok" : !st.gateway_alive ? "gateway-dead" : "degraded";
}

int cmd_list(const std::string& run_root, const std::vector<std::string>& argv) {
  Args a(argv, {"json"}, {});
  if (!a.pos.empty()) throw Usage("list takes no arguments");
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : attach::list_stashes(run_root)) {
    const auto st = attach::status(s);
    if (a.has("json")) {
      out.push_back(status_json(st));
    } else {
      std::cout << s.volume_id << "\t" << s.image << "\t" << attach::to_string(s.mode) << "\t"
                << (s.device.empty() ? "-" : s.device) << "\t" << (s.target.empty() ? "-" : s.target)
                << "\t" << state_word(st) << "\n";
    }
  }
  if (a.has("json")) std::cout << out.dump(2) << "\n";
  return 0;
}

int cmd_status(const std::string& run_root, const std::vector<std::string>& argv) {
  Args a(argv, {"json"}, {});
  if (a.pos.size() != 1) throw Usage("expected one VOLUME");
  const auto st = attach::status(find_volume(run_root, a.pos[0]));
  if (a.has("json")) {
    std::cout << status_json(st).dump(2) << "\n";
  } else {
    const auto& s = st.stash;
    std::cout << "volume:  " << s.volume_id << "\nimage:   " << s.image
              << "\nmode:    " << attach::to_string(s.mode) << (s.encrypted ? ", encrypted" : "")
              << (s.read_only ? ", read-only" : "") << "\ndevice:  " << s.device
              << "\ntarget:  " << (s.block ? "(raw block)" : s.target)
              << "\ngateway: "
              << (!st.stale.empty() ? "none (the stash is from an earlier boot)"
                                    : cat("pid ", s.gateway.pid, st.gateway_alive ? " running" : " dead"))
              << "\nstate:   " << (st.stale.empty() ? state_word(st) : st.stale + "; map it again")
              << "\n";
  }
  return st.healthy() ? 0 : 1;
}

int cmd_reattach(const std::string& run_root, const std::vector<std::string>& argv) {
  Args a(argv, {}, {});
  std::vector<attach::Stash> stashes;
  if (a.pos.empty()) {
    stashes = attach::list_stashes(run_root);
  } else {
    for (const auto& w : a.pos) stashes.push_back(find_volume(run_root, w));
  }
  int rc = 0;
  for (const auto& s : stashes) {
    try {
      const auto st = attach::readopt(options_for(run_root, s.volume_id).stash_path,
                                      options_for(run_root, s.volume_id));
      std::cout << s.volume_id << "\t" << state_word(st) << "\n";
    } catch (const Error& e) {
      std::cerr << "rbdgw: reattach " << s.volume_id << ": " << e.what() << "\n";
      rc = 1;
    }
  }
  return rc;
}

int cmd_format(const std::vector<std::string>& argv) {
  Args a(argv, {}, join({kClusterOpts, kKmsOpts, {"passphrase-file", "pbkdf"}}));
  const auto spec = one_image(a);
  if (a.has("passphrase-file") == a.has("kms-id")) throw Usage("give one of --passphrase-file and --kms-id");
  luks::FormatOptions opts;
  if (a.has("pbkdf")) opts.pbkdf = parse_pbkdf(a.get("pbkdf"));
  auto cluster = rbd::Cluster::connect(cluster_options(a));
  auto img = rbd::Image::open(cluster, spec);
  if (const auto state = kms::get_state(img); state == kms::EncryptionState::encrypted)
    throw Error(EEXIST, cat(spec.str(), ": already encrypted; refusing to format it"));
  SecretBuffer pass;
  if (a.has("passphrase-file")) {
    pass = read_secret_file(a.get("passphrase-file"));  // exact bytes, as cryptsetup
    if (pass.empty()) throw Error(EINVAL, cat(a.get("passphrase-file"), ": empty passphrase"));
  } else {
    kms::VolumeEncryption ve(build_kms(a, "kms-id", "kms-secret-file"), img,
                             a.get("volume-id", attach::volume_id_for(spec)));
    if (ve.state() == kms::EncryptionState::none) ve.create_dek();
    pass = ve.passphrase();
  }
  Progress{}(cat("formatting ", spec.str(), " as LUKS2"));
  luks::format_image(img, pass, opts, kms::get_state(img) != kms::EncryptionState::none);
  kms::set_state(img, kms::EncryptionState::prepared);
  return 0;
}

int cmd_dek(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] != "unwrap") throw Usage("expected 'dek unwrap'");
  Args a({argv.begin() + 1, argv.end()}, {}, join({kClusterOpts, kKmsOpts, {"output"}}));
  const auto spec = one_image(a);
  const std::string output = a.need("output");
  auto cluster = rbd::Cluster::connect(cluster_options(a));
  auto img = rbd::Image::open(cluster, spec, rbd::Image::Mode::read_only);
  kms::VolumeEncryption ve(build_kms(a, "kms-id", "kms-secret-file"), img,
                           a.get("volume-id", attach::volume_id_for(spec)));
  const SecretBuffer pass = ve.passphrase();
  int fd = ::open(output.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw_errno("open", output, errno);
  bool ok = ::write(fd, pass.data(), pass.size()) == static_cast<ssize_t>(pass.size());
  int e = errno;
  ::close(fd);
  if (!ok) throw_errno("write", output, e);
  Progress{}(cat("wrote the passphrase of ", spec.str(), " to ", output));
  return 0;
}

int cmd_rotate_key(const std::vector<std::string>& argv) {  // csi-shim/cli/rotate_key.cpp
  Args a(argv, {}, join({kClusterOpts, kKmsOpts, {"new-kms-id", "new-kms-secret-file", "pbkdf", "node"}}));
  cli::RotateKeyArgs r;
  r.image = one_image(a);
  r.cluster = cluster_options(a);
  r.volume_id = a.get("volume-id", attach::volume_id_for(r.image));
  if (a.has("kms-id")) r.from_id = a.get("kms-id");
  r.to_id = a.need("new-kms-id");
  (void)a.need("kms-config");
  if (a.has("pbkdf")) r.pbkdf = parse_pbkdf(a.get("pbkdf"));
  const char* node_env = std::getenv("RBDGW_NODE_NAME");
  r.node = a.get("node", node_env ? node_env : "");
  r.build = [&a](const std::string& id, bool is_new) {
    Args b = a;
    b.set(is_new ? "new-kms-id" : "kms-id", id);
    return is_new ? build_kms(b, "new-kms-id", "new-kms-secret-file") : build_kms(b, "kms-id", "kms-secret-file");
  };
  r.progress = Progress{};
  return cli::rotate_key(r);
}

int exit_status(int err) {
  switch (err) {
    case EINVAL: return 2;
    case ENOENT: return 3;
    case EBUSY: return 4;
    case EEXIST:
    case ENOTEMPTY: return 5;
    case ENOTSUP: return 6;
    case EPERM: return 7;
    default: return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string run_root = attach::kRunRoot;
  while (!args.empty() && args[0].starts_with("--run-root")) {
    if (args[0] == "--run-root" && args.size() > 1) {
      run_root = args[1];
      args.erase(args.begin(), args.begin() + 2);
    } else if (args[0].starts_with("--run-root=")) {
      run_root = args[0].substr(11);
      args.erase(args.begin());
    } else {
      break;
    }
  }
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (cmd == "map") return cmd_map(run_root, rest);
    if (cmd == "unmap") return cmd_unmap(run_root, rest);
    if (cmd == "list") return cmd_list(run_root, rest);
    if (cmd == "status") return cmd_status(run_root, rest);
    if (cmd == "reattach") return cmd_reattach(run_root, rest);
    if (cmd == "format") return cmd_format(rest);
    if (cmd == "dek") return cmd_dek(rest);
    if (cmd == "rotate-key") return cmd_rotate_key(rest);
    if (cmd == "serve") return cli::cmd_serve(rest);
    throw Usage(cat("unknown command '", cmd, "'"));
  } catch (const Usage& e) {
    std::cerr << "rbdgw: " << e.what() << " (see rbdgw --help)\n";
    return 2;
  } catch (const Error& e) {
    std::cerr << "rbdgw " << cmd << ": " << e.what() << "\n";
    return exit_status(e.code());
  } catch (const std::exception& e) {
    std::cerr << "rbdgw " << cmd << ": " << e.what() << "\n";
    return 1;
  }
}
