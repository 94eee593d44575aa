#include "csi/node.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "common/error.hpp"
#include "common/log.hpp"
#include "csi/encryption.hpp"
#include "csi/mounts.hpp"
#include "kms/image_meta.hpp"
#include "rbd/image.hpp"

namespace fs = std::filesystem;

using namespace std::chrono_literals;

namespace rbdgw::csi {

namespace {

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) throw_errno("gethostname", "", errno);
  return buf;
}

// The record of a read-only block publish's own loop device:
// <state dir>/published/<hash of the target>, three lines: target, loop
// device, the staged device it is on.
struct PublishRecord {
  std::string target, loop, backing;
};

void save_publish_record(const std::string& path, const PublishRecord& r) {
  fs::create_directories(fs::path(path).parent_path());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << r.target << "\n" << r.loop << "\n" << r.backing << "\n";
    if (!f.flush()) throw Error(EIO, cat("write ", tmp, ": failed"));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("rename", tmp, errno);
}

std::optional<PublishRecord> load_publish_record(const std::string& path) {
  std::ifstream f(path);
  PublishRecord r;
  if (!f || !std::getline(f, r.target) || !std::getline(f, r.loop) || !std::getline(f, r.backing))
    return std::nullopt;
  return r;
}

std::string value_or(const StringMap& m, const std::string& key, const std::string& def = {}) {
  auto it = m.find(key);
  return it == m.end() ? def : it->second;
}

}  // namespace

Node::Node(const Controller& controller, VolumeLocks& locks, const Options& opt)
    : controller_(controller),
      locks_(locks),
      node_id_(opt.node_id.empty() ? host_name() : opt.node_id),
      state_dir_(opt.state_dir),
      allowed_root_(opt.allowed_root),
      attach_choice_(attach::parse_attach_choice(opt.attach)),
      shared_gateway_(opt.shared_gateway) {}

std::string Node::index_link(const VolumeId& id) const {
  return cat(state_dir_, "/volumes/", id.str());
}

std::string Node::publish_record(const std::string& target) const {
  char name[32];
  std::snprintf(name, sizeof name, "%016zx", std::hash<std::string>{}(target));
  return cat(state_dir_, "/published/", name);
}

std::optional<std::string> Node::indexed_stash(const VolumeId& id) const {
  std::error_code ec;
  fs::path target = fs::read_symlink(index_link(id), ec);
  if (ec) return std::nullopt;
  return target.string();
}

// How long NodeUnstageVolume lets the filesystem flush through a live
// gateway before it tears the volume down by force.
constexpr std::chrono::seconds kUnstageFlushTimeout{120};

attach::AttachOptions Node::attach_options(const std::string& stash) const {
  attach::AttachOptions o;
  o.attach = attach_choice_;
  o.shared_gateway = shared_gateway_;
  o.stash_path = stash;
  o.tools = attach::Tools::from_environment();
  o.progress = [](std::string_view m) { log::info(m); };
  return o;
}

attach::Stash Node::staged_stash(const VolumeId& id, const std::string& staging) const {
  const std::string want = stash_path(staging);
  auto have = indexed_stash(id);
  if (!have || *have != want || !fs::exists(want))
    throw Error(EBUSY, cat("volume '", id.str(), "' is not staged at '", staging, "'"));
  attach::Stash s = attach::load_stash(want);
  // Its device number may be someone else's since the reboot.
  if (const std::string why = attach::stale_reason(s); !why.empty())
    throw Error(EBUSY, cat("volume '", id.str(), "' is not staged at '", staging, "': its stash is ",
                           why, "; NodeStageVolume stages it afresh"));
  if (!s.complete || s.volume_id != id.str())
    throw Error(EBUSY, cat("volume '", id.str(), "' is not completely staged at '", staging, "'"));
  return s;
}

void Node::stage(const VolumeId& id, const std::string& staging, const Capability& cap,
                 const StringMap& secrets, const StringMap& context) {
  const std::string stash = stash_path(staging);
  // Mount options are refused (INVALID_ARGUMENT naming them) before anything starts.
  if (!cap.block) attach::parse_mount_options(cap.mount_options(), cap.fs_type, cap.read_only);
  if (auto other = indexed_stash(id); other && *other != stash && fs::exists(*other))
    throw Error(EBUSY, cat("volume '", id.str(), "' is already staged at '",
                           other->substr(0, other->size() - std::string(".rbdgw.json").size()), "'"));
  if (!fs::is_directory(staging))
    throw Error(EINVAL, cat("staging_target_path '", staging, "': not an existing directory"));
  if (fs::exists(stash)) {
    attach::Stash s = attach::load_stash(stash);
    if (s.volume_id != id.str())
      throw Error(EBUSY, cat("staging_target_path '", staging, "' holds volume '", s.volume_id, "'"));
    if (s.complete && attach::stale_reason(s).empty() && (s.block != cap.block || s.read_only != cap.read_only ||
                       (!cap.block && s.fstype != cap.fs_type)))
      throw Error(EEXIST, cat("volume '", id.str(), "' is staged at '", staging,
                              "' with another capability (",
                              s.block ? "block" : s.fstype, s.read_only ? ", read-only" : "", ")"));
  }

  // Find the volume and its encryption state; ENOENT for unknown volumes.
  VolumeLocation loc = controller_.locate(id, secrets);
  attach::Volume v;
  {
    rbd::Image img = rbd::Image::open(loc.io, loc.image);
    v.encrypted = kms::get_state(img) != kms::EncryptionState::none ||
                  value_or(context, "encrypted") == "true";
    if (v.encrypted) {
      const std::string kms = img.get_meta(kMetaKmsId).value_or(value_or(context, "encryptionKMSID"));
      v.passphrase = volume_passphrase(img, id, kms, secrets);
    }
  }
  v.id = id.str();
  v.cluster = cluster_options(*controller_.clusters().find(id.cluster_id), secrets);
  v.image = rbd::ImageSpec{loc.io.pool(), loc.io.ns(), loc.image, ""};
  v.read_only = cap.read_only;
  v.node = node_id_;  // named in the gateway's lock record: another node's stage is refused naming it
  v.block = cap.block;
  if (!cap.block) {
    v.fstype = cap.fs_type;
    v.target = staging;
    v.mount_options = cap.mount_options();
  }

  // Index first, so that a crash mid-attach is found (and undone) later.
  const std::string link = index_link(id);
  fs::create_directories(fs::path(link).parent_path());
  std::error_code ec;
  fs::remove(link, ec);
  fs::create_symlink(stash, link);
  try {
    attach::attach(v, attach_options(stash));
  } catch (...) {
    if (!fs::exists(stash)) fs::remove(link, ec);
    throw;
  }
  log::info("NodeStageVolume: ", id.str(), " staged at ", staging);
}

void Node::unstage(const VolumeId& id, const std::string& staging) {
  const std::string stash = stash_path(staging);
  std::error_code ec;
  if (fs::exists(stash)) {
    attach::Stash s = attach::load_stash(stash);
    if (s.volume_id != id.str())
      throw Error(EINVAL, cat("staging_target_path '", staging, "' holds volume '", s.volume_id,
                              "', not '", id.str(), "'"));
    // A dead gateway is restarted so that the filesystem can flush; when
    // that fails, or the flush outlasts kUnstageFlushTimeout, the volume is
    // torn down by force (its outstanding writes fail) and the call fails
    // with DATA_LOSS naming what was lost; the kubelet's retry then finds
    // nothing left to unstage. A target still in use (EBUSY) is not forced.
    const attach::AttachOptions o = attach_options(stash);
    try {
      attach::detach(stash, {.flush_timeout = kUnstageFlushTimeout, .restart = &o});
    } catch (const Error& e) {
      if (e.code() != EIO && e.code() != ETIMEDOUT) throw;
      log::warn("NodeUnstageVolume: ", id.str(), ": ", e.what(), "; unstaging by force");
      const attach::DetachResult r = attach::detach(stash, {.force = true, .flush_timeout = 1s});
      if (indexed_stash(id) == stash) fs::remove(index_link(id), ec);
      if (r.forced)
        throw Error(ENOTRECOVERABLE, cat("volume ", id.str(), " unstaged from ", staging,
                                         " by force: ", r.loss));
    }
    log::info("NodeUnstageVolume: ", id.str(), " unstaged from ", staging);
  }
  if (indexed_stash(id) == stash) fs::remove(index_link(id), ec);
}

void Node::publish(const VolumeId& id, const std::string& staging, const std::string& target,
                   const Capability& cap, bool read_only) {
  attach::Stash s = staged_stash(id, staging);
  if (s.block != cap.block)
    throw Error(EINVAL, cat("volume_capability: ", cap.block ? "block" : "mount",
                            " access, but the volume is staged for ", s.block ? "block" : "mount"));
  // The publish's mount flags (its filesystem options were the stage's to apply).
  const attach::MountOptions mo =
      cap.block ? attach::MountOptions{} : attach::parse_mount_options(cap.mount_options(), s.fstype);
  const bool ro = read_only || cap.read_only || s.read_only || mo.asks_read_only() ||
                  (!cap.block && is_read_only_mount(staging));
  if (is_mount_point(target)) {
    if (is_read_only_mount(target) != ro)
      throw Error(EEXIST, cat("target_path '", target, "' is already published ",
                              ro ? "read-write" : "read-only"));
    return;
  }
  if (cap.block) {
    fs::create_directories(fs::path(target).parent_path());
    int fd = ::open(target.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) throw_errno("create", target, errno);
    ::close(fd);
    if (ro && !s.read_only) {
      // A read-only bind mount of a device node does not stop writes to
      // the device: a read-only publish of a writable staged device gets a
      // read-only loop device of its own, recorded (before it is exposed)
      // so that NodeUnpublishVolume detaches it.
      const std::string loop = read_only_loop(s.device);
      try {
        save_publish_record(publish_record(target), {target, loop, s.device});
        bind_mount(loop, target, true);
      } catch (...) {
        detach_loop_if(loop, s.device);
        std::error_code ec;
        fs::remove(publish_record(target), ec);
        throw;
      }
    } else {
      bind_mount(s.device, target, ro);
    }
  } else {
    fs::create_directories(target);
    bind_mount(staging, target, mo, ro);
  }
  log::info("NodePublishVolume: ", id.str(), " at ", target, ro ? " (read-only)" : "");
}

void Node::unpublish(const VolumeId& id, const std::string& target) {
  std::error_code ec;
  const bool mounted = is_mount_point(target);
  // A read-only block publish's own loop device, detached before the
  // unmount (a retry then finds none left of its own) and only when it is
  // provably this publish's: the target shows it, or (a publish that died
  // before its bind mount) no mount shows it and it is still a loop device
  // on the recorded staged device.
  const std::string record = publish_record(target);
  if (const auto r = load_publish_record(record); r && r->target == target) {
    struct stat t{}, l{};
    const bool shown = ::stat(target.c_str(), &t) == 0 && S_ISBLK(t.st_mode) &&
                       ::stat(r->loop.c_str(), &l) == 0 && S_ISBLK(l.st_mode) && t.st_rdev == l.st_rdev;
    const bool ours = mounted ? shown : !device_node_mounted(r->loop);
    if (!ours || !detach_loop_if(r->loop, r->backing))
      log::warn("NodeUnpublishVolume: ", id.str(), ": ", r->loop, " is not (or no longer) this "
                "publish's read-only loop device on ", r->backing, ": left alone");
  }
  if (mounted) unmount(target);
  fs::remove(record, ec);
  fs::remove(target, ec);  // an empty directory or the block target file
  log::info("NodeUnpublishVolume: ", id.str(), " from ", target);
}

bool Node::staged_here(const VolumeId& id) const {
  auto stash = indexed_stash(id);
  return stash && fs::exists(*stash);
}

VolumeStats Node::stats(const VolumeId& id, const std::string& path) {
  const auto stash = indexed_stash(id);
  if (!stash || !fs::exists(*stash))
    throw Error(ENOENT, cat("volume '", id.str(), "' is not staged on this node"));
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    throw Error(ENOENT, cat("volume_path '", path, "' of volume '", id.str(), "' does not exist"));
  {
    // The staging path, a bind mount of its filesystem, or a block publish
    // (the staged device, or a read-only publish's own loop device on it).
    const std::string staging = stash->substr(0, stash->size() - std::string(".rbdgw.json").size());
    const attach::Stash s = attach::load_stash(*stash);
    struct stat sg{}, dev{};
    bool here = path == staging;
    if (!here && S_ISBLK(st.st_mode)) {
      here = ::stat(s.device.c_str(), &dev) == 0 && S_ISBLK(dev.st_mode) && dev.st_rdev == st.st_rdev;
      if (const auto r = load_publish_record(publish_record(path)); !here && r && r->target == path)
        here = r->backing == s.device;
    } else if (!here && S_ISDIR(st.st_mode)) {
      here = !s.block && is_mount_point(path) && ::stat(staging.c_str(), &sg) == 0 &&
             is_mount_point(staging) && sg.st_dev == st.st_dev;
    }
    if (!here)
      throw Error(ENOENT, cat("volume '", id.str(), "' is neither staged nor published at '", path,
                              "' (it is staged at '", staging, "')"));
  }
  VolumeStats out;
  if (S_ISBLK(st.st_mode)) {
    out.block = true;
    out.total_bytes = static_cast<std::int64_t>(attach::device_size(path));
  } else {
    if (!is_mount_point(path))
      throw Error(ENOENT, cat("volume '", id.str(), "' is not mounted at '", path, "'"));
    struct statvfs v{};
    if (::statvfs(path.c_str(), &v) != 0) throw_errno("statvfs", path, errno);
    out.total_bytes = static_cast<std::int64_t>(v.f_blocks * v.f_frsize);
    out.available_bytes = static_cast<std::int64_t>(v.f_bavail * v.f_frsize);
    out.used_bytes = static_cast<std::int64_t>((v.f_blocks - v.f_bfree) * v.f_frsize);
    out.total_inodes = static_cast<std::int64_t>(v.f_files);
    out.available_inodes = static_cast<std::int64_t>(v.f_favail);
    out.used_inodes = static_cast<std::int64_t>(v.f_files - v.f_ffree);
  }
  out.condition = "healthy";
  if (auto stash = indexed_stash(id); stash && fs::exists(*stash)) {
    attach::VolumeStatus vs = attach::status(attach::load_stash(*stash));
    if (!vs.stale.empty()) {
      out.abnormal = true;
      out.condition = vs.stale;
    } else if (!vs.healthy()) {
      out.abnormal = true;
      out.condition = cat("gateway ", vs.gateway_alive ? "up" : "down", ", exporter ",
                          vs.fuse_alive ? "up" : "down", ", ", vs.mounted ? "mounted" : "not mounted");
    }
  }
  return out;
}

std::uint64_t Node::expand(const VolumeId& id, const std::string& path, std::uint64_t required) {
  auto stash = indexed_stash(id);
  if (!stash || !fs::exists(*stash))
    throw Error(ENOENT, cat("volume '", id.str(), "' is not staged on this node"));
  const std::uint64_t size = attach::refresh_size(*stash, attach_options(*stash));
  if (size < required)
    throw Error(ERANGE, cat("volume '", id.str(), "' shows ", size, " bytes after the refresh, less "
                            "than the required ", required, " (was the image expanded?)"));
  log::info("NodeExpandVolume: ", id.str(), " at ", path, ": ", size, " bytes");
  return size;
}

void Node::readopt_all() {
  const fs::path dir = fs::path(state_dir_) / "volumes";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::error_code lec;
    const fs::path stash = fs::read_symlink(e.path(), lec);
    if (lec) continue;
    if (!fs::exists(stash)) {
      log::info("re-adopt: ", e.path().filename().string(), ": no stash any more, forgetting it");
      fs::remove(e.path(), lec);
      continue;
    }
    try {
      attach::Stash s = attach::load_stash(stash);
      if (!s.complete) {
        log::warn("re-adopt: ", s.volume_id, ": interrupted stage; a retried NodeStageVolume "
                  "or NodeUnstageVolume finishes it");
        continue;
      }
      attach::VolumeStatus vs = attach::readopt(stash, attach_options(stash));
      log::info("re-adopt: ", s.volume_id, vs.healthy() ? ": healthy" : ": NOT healthy");
    } catch (const Error& err) {
      if (err.code() == ESTALE)  // a reboot: nothing of it is up, nothing to repair
        log::warn("re-adopt: ", stash.string(), ": ", err.what(), " (the next NodeStageVolume "
                  "stages it afresh, NodeUnstageVolume forgets it)");
      else
        log::error("re-adopt: ", stash.string(), ": ", err.what());
    }
  }
}

}  // namespace rbdgw::csi
