// Pure parts of lib/attach: names, the choice of path, device discovery and
// argument vectors.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "attach/attach.hpp"
#include "common/error.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach {

AttachChoice parse_attach_choice(std::string_view s) {
  if (s == "auto") return AttachChoice::automatic;
  if (s == "kernel") return AttachChoice::kernel;
  if (s == "userspace") return AttachChoice::userspace;
  throw Error(EINVAL, cat("attach mode '", s, "': expected auto, kernel or userspace"));
}

const char* to_string(Mode m) { return m == Mode::kernel ? "kernel" : "userspace"; }

Mode parse_mode(std::string_view s) {
  if (s == "kernel") return Mode::kernel;
  if (s == "userspace") return Mode::userspace;
  throw Error(EINVAL, cat("mode '", s, "': expected kernel or userspace"));
}

Mode choose_mode(AttachChoice choice, const std::string& root) {
  if (choice == AttachChoice::userspace) return Mode::userspace;
  const fs::path r(root);
  std::error_code ec;
  const bool nbd = fs::exists(r / "dev/nbd0", ec) || fs::exists(r / "sys/module/nbd", ec);
  const bool dm = fs::exists(r / "dev/mapper/control", ec);
  if (nbd && dm) return Mode::kernel;
  if (choice == AttachChoice::kernel)
    throw Error(ENOTSUP, cat("kernel attach: ", nbd ? "" : "no nbd module (/dev/nbd0)",
                             (!nbd && !dm) ? " and " : "",
                             dm ? "" : "no device-mapper (/dev/mapper/control)",
                             " on this node; use --attach=userspace"));
  return Mode::userspace;
}

namespace {
bool id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == '-';
}
}  // namespace

void validate_volume_id(std::string_view id) {
  if (id.empty() || id.size() > 128)
    throw Error(EINVAL, cat("volume id '", id, "': must be 1 to 128 characters"));
  if (id == "." || id == "..")
    throw Error(EINVAL, cat("volume id '", id, "': not a valid name"));
  for (char c : id)
    if (!id_char(c))
      throw Error(EINVAL, cat("volume id '", id, "': character '", c,
                              "' not allowed (use A-Z a-z 0-9 . _ -)"));
}

std::string volume_id_for(const rbd::ImageSpec& spec) {
  std::string id = spec.pool + "." + (spec.ns.empty() ? "" : spec.ns + ".") + spec.image +
                   (spec.snap.empty() ? "" : "." + spec.snap);
  for (char& c : id)
    if (!id_char(c)) c = '_';
  return id.substr(0, 128);
}

Tools Tools::from_environment() {
  Tools t;
  auto env = [](const char* name, std::string& out) {
    if (const char* v = std::getenv(name); v && *v) out = v;
  };
  env("NBDKIT", t.nbdkit);
  env("RBDGW_PLUGIN", t.plugin);
  env("RBDGW_FILTER", t.filter);
  if (const char* v = std::getenv("RBDGW_FUSE_EXPORTER"); v && *v) {
    t.fuse_exporter = v;
  } else {
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec).parent_path();
    // Installed side by side; in the build tree csi-shim/{cli,fuse}/ and csi-shim/.
    for (const fs::path& p : {self / "rbdgw-fuse", self / "../fuse/rbdgw-fuse", self / "fuse/rbdgw-fuse"})
      if (!ec && ::access(p.c_str(), X_OK) == 0) {
        t.fuse_exporter = fs::weakly_canonical(p).string();
        break;
      }
  }
  return t;
}

std::vector<std::string> gateway_argv(const Tools& t, const GatewayArgs& a) {
  std::vector<std::string> v = {t.nbdkit, "--foreground", "--log=stderr", "--unix", a.socket,
                                "--pidfile", a.pidfile};
  if (a.passphrase_fd >= 0) v.push_back("--filter=" + t.filter);
  if (a.read_only) v.push_back("--readonly");
  v.push_back(t.plugin);
  v.push_back("image=" + a.image);
  // A gateway can be killed and restarted under a mounted filesystem (the
  // exporter or the kernel reconnects): what it acknowledged must already
  // be on the OSDs, or a flush to its successor would report success over
  // writes the dead one only cached.
  v.push_back("durable-writes=true");
  // One writer: a read-write gateway holds the image's exclusive lock for
  // its whole life and refuses to serve without it.
  if (!a.read_only) {
    v.push_back("exclusive=true");
    if (!a.node.empty()) v.push_back("node=" + a.node);
  }
  if (!a.conf_file.empty()) v.push_back("conf=" + a.conf_file);
  if (!a.mon_host.empty()) v.push_back("mon_host=" + a.mon_host);
  if (!a.user_id.empty()) v.push_back("id=" + a.user_id);
  if (a.key_fd >= 0)
    v.push_back(cat("key=-", a.key_fd));
  else if (!a.keyring.empty())
    v.push_back("keyring=" + a.keyring);
  if (a.passphrase_fd >= 0) v.push_back(cat("passphrase=-", a.passphrase_fd));
  return v;
}

std::vector<std::string> fuse_argv(const Tools& t, const std::string& socket,
                                   const std::string& fuse_file, const std::string& name,
                                   bool read_only, const std::string& size_file,
                                   bool no_punch_hole) {
  std::vector<std::string> v = {t.fuse_exporter, "--name", name};
  if (read_only) v.push_back("--readonly");
  if (no_punch_hole) v.push_back("--no-punch-hole");
  v.push_back("--size-file");
  v.push_back(size_file);
  v.push_back(socket);
  v.push_back(fuse_file);
  return v;
}

std::vector<std::string> mkfs_argv(const std::string& fstype, const std::string& device) {
  if (fstype == "ext4") return {"mkfs.ext4", "-q", device};
  if (fstype == "xfs") return {"mkfs.xfs", "-q", device};
  throw Error(EINVAL, cat("fstype '", fstype, "': expected ext4 or xfs"));
}

}  // namespace rbdgw::attach
