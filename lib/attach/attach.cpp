// attach(), detach(), status(), readopt(): the staging transaction.
//
// Every step is recorded in the stash before/after it is done, so that a
// failure (or a crash of the caller) is undone by detach() from the stash.
#include "attach/attach.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "attach/secret_store.hpp"
#include "attach/nbd_netlink.hpp"
#include "attach/process.hpp"
#include "common/error.hpp"
#include "common/log.hpp"
#include "luks/probe.hpp"
#include "luks/volume.hpp"
#include "luks/volume_format.hpp"
#include "rbd/allocation.hpp"
#include "rbd/image.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace rbdgw::attach {
namespace {

constexpr const char* kPassphrase = "passphrase";
constexpr const char* kCephx = "cephx";
constexpr std::size_t kProbeBytes = 1 << 20;
// Fixed descriptor numbers of the secrets in the gateway.
constexpr int kKeyFd = 3;
constexpr int kPassphraseFd = 4;
// Kernel path: how long I/O waits for a restarted gateway (rbdgw reattach)
// before it fails.
constexpr std::chrono::seconds kNbdDeadConnTimeout{300};

void progress(const AttachOptions& o, const std::string& msg) {
  if (o.progress) o.progress(msg);
  log::debug(msg);
}

// Undoes octal escapes of /proc/self/mountinfo ("\040" for a space).
std::string unescape_mount_path(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

bool is_mountpoint(const std::string& path) {
  if (path.empty()) return false;
  std::error_code ec;
  const std::string want = fs::weakly_canonical(path, ec).string();
  std::ifstream f("/proc/self/mountinfo");
  for (std::string line; std::getline(f, line);) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt;
    if (ls >> id >> parent >> devno >> root >> mnt && unescape_mount_path(mnt) == want) return true;
  }
  return false;
}

std::string log_tail(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  if (s.size() > 600) s = "..." + s.substr(s.size() - 600);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "(no output)" : s;
}

// Waits until ready() or the process died or the timeout passed.
template <typename F>
void wait_ready(const ProcessRef& p, const std::string& what, const std::string& log_path,
                std::chrono::seconds timeout, F ready) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!ready()) {
    if (!alive(p))
      throw Error(EIO, cat(what, " exited (", exit_reason(p), "); its log: ", log_tail(log_path)));
    if (std::chrono::steady_clock::now() > deadline)
      throw Error(ETIMEDOUT, cat(what, " not ready after ", timeout.count(), " s; its log: ",
                                 log_tail(log_path)));
    std::this_thread::sleep_for(50ms);
  }
}

// Pid files the daemons write themselves before they run (spawn_detached),
// so that detach() finds one whose start the caller did not live to record.
std::string gateway_pid_file(const Stash& s) { return s.run_dir + "/gateway.pid"; }
std::string fuse_pid_file(const Stash& s) { return s.run_dir + "/fuse.pid"; }
std::string size_file(const Stash& s) { return s.run_dir + "/size"; }

// The daemon named by a pid file in the run dir, if it is alive and ours.
ProcessRef stray(const Stash& s, const std::string& pid_file) {
  return stray_process(pid_file, s.run_dir + "/");
}

// Starts the gateway for s on s.socket, with the secrets on fds 3 and 4.
// A gateway left by an earlier start that was not recorded is stopped
// first; the new one is recorded (save) before it is waited for.
void start_gateway(Stash& s, const Tools& tools, const SecretBuffer* cephx_key,
                   const SecretBuffer* passphrase, std::chrono::seconds timeout,
                   const std::function<void()>& save) {
  const std::string pidfile = s.run_dir + "/nbdkit.pid";
  // A gateway that exits at once without a word was, until spawn_detached
  // waited for its middle process to be gone, nbdkit killed by that exit
  // (docs/attach-paths.md). Kept as a defence: such a gateway is started
  // once more before the stage fails, with a warning naming how it ended.
  for (int attempt = 1;; ++attempt) {
    stop_process(stray(s, gateway_pid_file(s)), 10s);
    ::unlink(s.socket.c_str());
    ::unlink(pidfile.c_str());
    GatewayArgs a{s.socket, pidfile, s.image, s.conf_file, s.mon_host, s.user_id, s.keyring,
                  -1, -1, s.read_only};
    std::vector<PassFd> pass;
    std::vector<int> fds;
    struct Closer {
      std::vector<int>& v;
      ~Closer() { for (int fd : v) ::close(fd); }
    } closer{fds};
    if (cephx_key) {
      fds.push_back(secret_pipe(*cephx_key));
      pass.push_back({fds.back(), kKeyFd});
      a.key_fd = kKeyFd;
    }
    if (passphrase) {
      fds.push_back(secret_pipe(*passphrase));
      pass.push_back({fds.back(), kPassphraseFd});
      a.passphrase_fd = kPassphraseFd;
    }
    s.gateway = spawn_detached(gateway_argv(tools, a), s.gateway_log, pass, gateway_pid_file(s));
    save();
    try {
      wait_ready(s.gateway, cat("gateway for ", s.image), s.gateway_log, timeout, [&] {
        struct stat st;
        return ::stat(pidfile.c_str(), &st) == 0 && st.st_size > 0 &&
               ::stat(s.socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
      });
      return;
    } catch (const Error&) {
      if (attempt >= 2 || alive(s.gateway) || log_tail(s.gateway_log) != "(no output)") throw;
      log::warn("gateway for ", s.image, " (pid ", s.gateway.pid, ") exited at start without a message (",
                exit_reason(s.gateway), "); starting it again");
    }
  }
}

// The stash's cluster connection, with the cephx key from the keyring.
rbd::ClusterOptions cluster_options(const Stash& s, const std::optional<SecretBuffer>& key) {
  rbd::ClusterOptions c;
  c.conf_file = s.conf_file;
  c.mon_host = s.mon_host;
  c.id = s.user_id;
  c.keyring = s.keyring;
  if (key) c.key = key->clone();
  return c;
}

// The address of the one RADOS client other than ours watching the image
// (the gateway), waiting up to `timeout` for it; empty if there is not
// exactly one.
std::string gateway_client(const rbd::ClusterOptions& c, const rbd::ImageSpec& spec,
                           std::chrono::milliseconds timeout) {
  auto cluster = rbd::Cluster::connect(c);
  auto img = rbd::Image::open(cluster, spec, rbd::Image::Mode::read_only);
  const auto self = static_cast<std::int64_t>(rados_get_instance_id(cluster.handle()));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::vector<rbd_image_watcher_t> w(8);
    std::size_t n = w.size();
    int r = rbd_watchers_list(img.handle(), w.data(), &n);
    if (r == -ERANGE) {
      w.resize(n);
      r = rbd_watchers_list(img.handle(), w.data(), &n);
    }
    check(r, "rbd_watchers_list", img.spec());
    std::vector<std::string> others;
    for (std::size_t i = 0; i < n; ++i)
      if (w[i].id != self) others.emplace_back(w[i].addr);
    rbd_watchers_list_cleanup(w.data(), n);
    if (others.size() == 1) return others[0];
    if (others.size() > 1 || std::chrono::steady_clock::now() > deadline) return {};
    std::this_thread::sleep_for(50ms);
  }
}

// Breaks the exclusive lock of the image if the dead gateway `client` holds
// it (librbd blocklists that client), so the new gateway need not wait for
// the dead one's watch to time out. Only our own dead client is fenced.
void fence_dead_gateway(const rbd::ClusterOptions& c, const rbd::ImageSpec& spec,
                        const std::string& client) {
  if (client.empty()) return;
  auto cluster = rbd::Cluster::connect(c);
  auto img = rbd::Image::open(cluster, spec);
  rbd_lock_mode_t mode;
  std::vector<char*> owners(8);
  std::size_t n = owners.size();
  int r = rbd_lock_get_owners(img.handle(), &mode, owners.data(), &n);
  if (r == -ENOENT) return;  // no lock held
  check(r, "rbd_lock_get_owners", img.spec());
  bool ours = false;
  for (std::size_t i = 0; i < n; ++i) ours = ours || client == owners[i];
  rbd_lock_get_owners_cleanup(owners.data(), n);
  if (!ours) return;
  log::info(img.spec(), ": breaking the exclusive lock of the dead gateway ", client);
  r = rbd_lock_break(img.handle(), RBD_LOCK_MODE_EXCLUSIVE, client.c_str());
  if (r < 0 && r != -ENOENT) check(r, "rbd_lock_break", img.spec());
}

struct ImageState {
  // Where the filesystem's bytes start in the image: 0, or the LUKS2 data
  // segment's offset.
  std::uint64_t data_offset = 0;
  bool first_use = false;  // encrypted, tagged encryptionPrepared: marked encrypted when done
};

// Checks the image (and an encrypted volume's passphrase) and formats an
// encrypted volume on its first attach, only where the image is provably
// blank (luks::format_image). Whether a filesystem may be made is decided
// later, on the device (ensure_filesystem).
ImageState inspect_image(const Volume& v, const AttachOptions& o) {
  using kms::EncryptionState;
  const std::string obj = v.image.str();
  auto cluster = rbd::Cluster::connect(v.cluster);
  auto img = rbd::Image::open(cluster, v.image,
                              v.read_only ? rbd::Image::Mode::read_only : rbd::Image::Mode::read_write);
  const EncryptionState state = kms::get_state(img);
  if (!v.encrypted) {
    if (state != EncryptionState::none)
      throw Error(EINVAL, cat(obj, ": the volume is tagged '", kms::state_value(state),
                              "'; attach it as encrypted, with its passphrase"));
    return {};
  }
  const luks::Reader read = rbd::raw_reader(img);
  // Checked here (one key derivation) so that a wrong passphrase is a clear
  // EPERM rather than a gateway that serves nothing.
  const auto check_passphrase = [&] {
    progress(o, cat("checking the passphrase of ", obj));
    return luks::unlock(read, obj, v.passphrase).segment.offset;
  };
  if (state == EncryptionState::encrypted) return {check_passphrase(), false};
  // A LUKS2 header already there: made by `rbdgw format` or an attach that
  // stopped before the filesystem (tagged), or, untagged, a LUKS2 volume
  // made elsewhere that opens as it is.
  const bool tagged = state != EncryptionState::none;
  std::vector<std::uint8_t> first(4096);
  first.resize(read(first, 0));
  if (luks::probe(first).content == luks::Content::luks2) return {check_passphrase(), tagged};
  if (v.read_only) throw Error(EROFS, cat(obj, ": a new encrypted volume cannot be attached read-only"));
  progress(o, cat("formatting ", obj, " as LUKS2 (once it is shown to hold no data)"));
  const luks::Segment seg = luks::format_image(img, v.passphrase, o.luks_format, tagged);
  if (!tagged) kms::set_state(img, EncryptionState::prepared);
  return {seg.offset, true};
}

// After the first filesystem (or first raw attach) of a formatted volume.
void mark_encrypted(const Volume& v) {
  auto cluster = rbd::Cluster::connect(v.cluster);
  auto img = rbd::Image::open(cluster, v.image);
  kms::set_state(img, kms::EncryptionState::encrypted);
}

// Set in the image metadata right before mkfs runs on a volume proven
// blank, removed when it succeeded: a retry after a crash in between knows
// that the data it finds is a half-made filesystem of ours, not the user's.
constexpr const char* kMkfsMarker = "rbdgw.io/mkfs-started";

// Makes the filesystem when the volume provably holds nothing where it
// would write, else checks that it holds one of the requested type.
// Blank means: no filesystem signature (blkid), and every extent of the
// image ever allocated past data_offset (the parent's included) holds
// nothing: zeros in the raw image (never written) or, for an encrypted
// volume, zeros in its plaintext (rbd::require_blank: bounded in time,
// refusing rather than guessing). The plaintext of never-written ciphertext
// is noise, so an encrypted volume's device is not probed for zeros.
void ensure_filesystem(const Stash& s, const Volume& v, const ImageState& image,
                       const AttachOptions& o) {
  const bool encrypted = image.data_offset > 0;
  auto cluster = rbd::Cluster::connect(v.cluster);
  auto img = rbd::Image::open(cluster, v.image,
                              v.read_only ? rbd::Image::Mode::read_only : rbd::Image::Mode::read_write);
  const bool half_made = img.get_meta(kMkfsMarker).has_value();
  if (!half_made) {
    const CommandResult r = run_command({"blkid", "-p", "-s", "TYPE", "-o", "value", s.device});
    const std::string type = r.out.substr(0, r.out.find('\n'));
    if (type == s.fstype) return;
    if (!type.empty())
      throw Error(EEXIST, cat(s.image, ": holds ", type, " filesystem, not ", s.fstype,
                              "; refusing to format a volume that holds data"));
    int fd = ::open(s.device.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_errno("open", s.device, errno);
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    const rbd::RangeReader on_device = [&](std::span<std::uint8_t> buf, std::uint64_t off) {
      ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
      if (n < 0) throw_errno("read", s.device, errno);
      return static_cast<std::size_t>(n);
    };
    if (!encrypted) {
      std::vector<std::uint8_t> first(kProbeBytes);
      first.resize(on_device(first, 0));
      const auto found = luks::probe(first);
      if (found.content != luks::Content::blank)
        throw Error(EEXIST, cat(s.image, ": holds ", found.signature, ", not ", s.fstype,
                                "; refusing to format a volume that holds data"));
    }
    progress(o, cat("checking that ", s.image, " holds no data"));
    std::vector<rbd::RangeReader> views;
    if (encrypted) views.push_back(rbd::raw_reader(img, image.data_offset));
    views.push_back(on_device);
    rbd::require_blank(img, image.data_offset, img.size(), views, s.image,
                       cat("make an ", s.fstype, " filesystem on it"), encrypted);
  }
  if (s.read_only) throw Error(EROFS, cat(s.image, ": blank, and read-only: cannot make a filesystem"));
  img.set_meta(kMkfsMarker, s.fstype);
  progress(o, cat("making an ", s.fstype, " filesystem on ", s.device, " (", s.image, ")",
                  half_made ? ", again after an interrupted first attach" : ""));
  run_checked(mkfs_argv(s.fstype, s.device));
  img.remove_meta(kMkfsMarker);
}

// The loop devices backed by file (recorded or not).
std::vector<std::string> loops_on(const std::string& file) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/block", ec)) {
    std::ifstream f(e.path() / "loop/backing_file");
    std::string p;
    if (std::getline(f, p) && p == file) out.push_back("/dev/" + e.path().filename().string());
  }
  return out;
}

}  // namespace

bool VolumeStatus::healthy() const {
  return gateway_alive && (stash.mode == Mode::kernel ? nbd_connected : fuse_alive) &&
         (stash.block || mounted);
}

VolumeStatus status(const Stash& s) {
  VolumeStatus st;
  st.stash = s;
  st.gateway_alive = alive(s.gateway);
  st.fuse_alive = s.mode == Mode::userspace && alive(s.fuse) && is_mountpoint(s.fuse_file);
  st.mounted = !s.block && is_mountpoint(s.target);
  st.nbd_connected = s.mode == Mode::kernel && !s.nbd_device.empty() &&
                     nbd_status(nbd_device_index(s.nbd_device)) == NbdState::connected;
  return st;
}

Stash attach(const Volume& v, const AttachOptions& o) {
  validate_volume_id(v.id);
  if (o.stash_path.empty()) throw Error(EINVAL, cat("attach ", v.id, ": no stash path given"));
  if (v.encrypted && v.passphrase.empty())
    throw Error(EINVAL, cat("attach ", v.id, ": encrypted volume without a passphrase"));
  if (!v.block) {
    mkfs_argv(v.fstype, "-");  // validates the fstype
    if (v.target.empty() || v.target[0] != '/')
      throw Error(EINVAL, cat("attach ", v.id, ": target '", v.target, "' is not an absolute path"));
    if (!fs::is_directory(v.target))
      throw Error(ENOENT, cat("attach ", v.id, ": target ", v.target, " is not a directory"));
  }
  const Mode mode = choose_mode(o.attach, o.root);

  if (fs::exists(o.stash_path)) {
    Stash old = load_stash(o.stash_path);
    if (old.volume_id != v.id)
      throw Error(EBUSY, cat("stash ", o.stash_path, " belongs to volume ", old.volume_id, ", not ", v.id));
    if (old.complete) {
      if (old.block != v.block || (!v.block && old.target != v.target))
        throw Error(EBUSY, cat("volume ", v.id, " is already attached at ",
                               old.block ? old.device : old.target));
      readopt(o.stash_path, o);
      return load_stash(o.stash_path);
    }
    progress(o, cat("undoing an interrupted attach of ", v.id));
    detach(o.stash_path);
  }

  Stash s;
  s.volume_id = v.id;
  s.mode = mode;
  s.image = v.image.str();
  s.conf_file = v.cluster.conf_file;
  s.mon_host = v.cluster.mon_host;
  s.user_id = v.cluster.id;
  s.keyring = v.cluster.keyring;
  s.cephx_key_in_keyring = !v.cluster.key.empty();
  s.encrypted = v.encrypted;
  s.block = v.block;
  s.read_only = v.read_only;
  s.fstype = v.block ? "" : v.fstype;
  s.mount_options = v.mount_options;
  s.run_dir = o.run_dir.empty() ? cat(kRunRoot, "/", v.id) : o.run_dir;
  s.socket = s.run_dir + "/nbd.sock";
  s.gateway_log = s.run_dir + "/gateway.log";
  s.target = v.block ? "" : v.target;

  const std::string owner = s.run_dir + "/owner";
  if (fs::exists(owner)) {
    std::ifstream f(owner);
    std::string other;
    std::getline(f, other);
    if (other != o.stash_path && fs::exists(other))
      throw Error(EBUSY, cat("volume ", v.id, " is already attached (stash ", other, ")"));
  }
  if (!v.block && is_mountpoint(v.target))
    throw Error(EBUSY, cat("attach ", v.id, ": target ", v.target, " is already a mount point"));

  const ImageState image = inspect_image(v, o);

  const auto save = [&] { save_stash(s, o.stash_path); };
  try {
    fs::create_directories(fs::path(s.run_dir).parent_path());
    if (::mkdir(s.run_dir.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("mkdir", s.run_dir, errno);
    ::chmod(s.run_dir.c_str(), 0700);
    save();
    std::ofstream(owner) << o.stash_path << "\n";

    // Userspace: the gateway decrypts (luks2 filter); kernel: dm-crypt does.
    const bool gateway_decrypts = v.encrypted && mode == Mode::userspace;
    if (gateway_decrypts) store_secret(v.id, kPassphrase, v.passphrase);
    if (s.cephx_key_in_keyring) store_secret(v.id, kCephx, v.cluster.key);
    progress(o, cat("starting the gateway for ", s.image));
    start_gateway(s, o.tools, s.cephx_key_in_keyring ? &v.cluster.key : nullptr,
                  gateway_decrypts ? &v.passphrase : nullptr, o.timeout, save);

    if (mode == Mode::userspace) {
      s.fuse_file = s.run_dir + "/disk";
      std::ofstream(s.fuse_file).close();
      ::chmod(s.fuse_file.c_str(), 0600);
      save();
      s.fuse = spawn_detached(fuse_argv(o.tools, s.socket, s.fuse_file, "rbdgw:" + v.id,
                                        v.read_only, size_file(s)),
                              s.run_dir + "/fuse.log", {}, fuse_pid_file(s));
      save();
      wait_ready(s.fuse, "FUSE exporter", s.run_dir + "/fuse.log", o.timeout,
                 [&] { return is_mountpoint(s.fuse_file); });
      std::vector<std::string> losetup = {"losetup", "--find", "--show", "--direct-io=off"};
      if (v.read_only) losetup.push_back("--read-only");
      losetup.push_back(s.fuse_file);
      // A loop device made just before a crash is found by its backing file.
      std::string dev = run_checked(losetup);
      s.loop_device = dev.substr(0, dev.find('\n'));
      s.device = s.loop_device;
      save();
    } else {
      s.nbd_device = find_free_nbd(o.root);
      save();  // detach disconnects it only if connected
      // I/O waits for `rbdgw reattach` (nbd_reconnect) if the gateway dies.
      nbd_connect(s.socket, {.dead_conn_timeout = kNbdDeadConnTimeout, .backend = "rbdgw:" + v.id,
                             .index = nbd_device_index(s.nbd_device)});
      s.device = s.nbd_device;
      save();
      if (v.encrypted) {
        s.mapper_name = "luks-" + v.id;
        save();
        progress(o, cat("opening ", s.nbd_device, " with dm-crypt as ", s.mapper_name));
        s.device = luks::LuksOpen(s.nbd_device, s.mapper_name, v.passphrase,
                                  {.read_only = v.read_only, .allow_discards = true});
        save();
      }
    }

    if (!v.read_only) {
      s.gateway_client = gateway_client(v.cluster, v.image, 2s);
      save();
    }
    if (!v.block) {
      ensure_filesystem(s, v, image, o);
      progress(o, cat("mounting ", s.device, " on ", s.target));
      if (::mount(s.device.c_str(), s.target.c_str(), s.fstype.c_str(),
                  v.read_only ? MS_RDONLY : 0,
                  s.mount_options.empty() ? nullptr : s.mount_options.c_str()) < 0)
        throw_errno("mount", cat(s.device, " on ", s.target), errno);
      s.mounted = true;
      save();
    }
    if (image.first_use) mark_encrypted(v);
    s.complete = true;
    save();
    return s;
  } catch (...) {
    try {
      detach(o.stash_path);
    } catch (const std::exception& e) {
      log::error("undoing the attach of ", v.id, ": ", e.what());
    }
    throw;
  }
}

void detach(const std::string& stash_path) {
  if (!fs::exists(stash_path)) return;
  Stash s = load_stash(stash_path);
  if (!s.target.empty() && is_mountpoint(s.target) && (s.mounted || !s.complete)) {
    if (::umount2(s.target.c_str(), 0) < 0 && errno != EINVAL && errno != ENOENT)
      throw_errno("umount", s.target, errno);
  }
  s.mounted = false;
  save_stash(s, stash_path);

  if (!s.mapper_name.empty() && luks::device_mapper_available()) luks::LuksClose(s.mapper_name);
  if (!s.nbd_device.empty() && fs::exists(cat("/sys/block/", fs::path(s.nbd_device).filename().string())))
    nbd_disconnect(nbd_device_index(s.nbd_device));
  if (!s.fuse_file.empty())
    for (const auto& loop : loops_on(s.fuse_file)) run_checked({"losetup", "--detach", loop});
  if (!s.fuse_file.empty()) {
    // The loop device may let go of the file a moment after losetup -d.
    for (int i = 0; is_mountpoint(s.fuse_file); ++i) {
      const CommandResult r = run_command({"fusermount3", "-u", s.fuse_file});
      if (r.status == 0) break;
      if (i == 100) throw Error(EBUSY, cat("fusermount3 -u ", s.fuse_file, ": ", r.err));
      std::this_thread::sleep_for(50ms);
    }
    stop_process(s.fuse, 5s);
  }
  stop_process(s.gateway, 10s);
  // Daemons started but not recorded (the caller died in between).
  if (!s.run_dir.empty()) {
    stop_process(stray(s, fuse_pid_file(s)), 5s);
    stop_process(stray(s, gateway_pid_file(s)), 10s);
  }
  remove_secret(s.volume_id, kPassphrase);
  remove_secret(s.volume_id, kCephx);
  std::error_code ec;
  if (!s.run_dir.empty()) fs::remove_all(s.run_dir, ec);
  if (ec) throw Error(ec.value(), cat("remove ", s.run_dir, ": ", ec.message()));
  if (::unlink(stash_path.c_str()) < 0 && errno != ENOENT) throw_errno("unlink", stash_path, errno);
}

std::uint64_t device_size(const std::string& device) {
  int fd = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open", device, errno);
  std::uint64_t size = 0;
  int r = ::ioctl(fd, BLKGETSIZE64, &size);
  int e = errno;
  ::close(fd);
  if (r != 0) throw_errno("ioctl BLKGETSIZE64", device, e);
  return size;
}

std::uint64_t refresh_size(const std::string& stash_path, const AttachOptions& o) {
  const Stash s = load_stash(stash_path);
  if (!s.complete) throw Error(EBUSY, cat("volume ", s.volume_id, ": not completely attached"));
  if (s.mode == Mode::kernel)
    throw Error(ENOTSUP, cat("volume ", s.volume_id, ": the kernel path cannot show a new size "
                             "in place; detach it and attach it again"));
  if (!alive(s.fuse))
    throw Error(EIO, cat("volume ", s.volume_id, ": its FUSE exporter died; detach it and attach again"));
  progress(o, cat("refreshing the size of ", s.volume_id, " (", s.image, ")"));
  const std::string size_path = size_file(s), log_path = s.run_dir + "/fuse.log";
  ::unlink(size_path.c_str());
  if (::kill(s.fuse.pid, SIGUSR1) < 0)
    throw_errno("kill SIGUSR1", cat("FUSE exporter of ", s.volume_id), errno);
  std::uint64_t size = 0;
  wait_ready(s.fuse, "FUSE exporter (size refresh)", log_path, o.timeout, [&] {
    std::ifstream f(size_path);
    return static_cast<bool>(f >> size);
  });
  // The kernel takes the new size when the file's attributes time out (1 s).
  wait_ready(s.fuse, cat("FUSE file ", s.fuse_file, " (size ", size, ")"), log_path, o.timeout, [&] {
    struct stat st;
    return ::stat(s.fuse_file.c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == size;
  });
  run_checked({"losetup", "--set-capacity", s.loop_device});
  if (!s.block && !s.read_only) {
    progress(o, cat("growing the ", s.fstype, " filesystem on ", s.target));
    if (s.fstype == "xfs") run_checked({"xfs_growfs", s.target});
    else run_checked({"resize2fs", s.device});
  }
  return device_size(s.device);
}

VolumeStatus readopt(const std::string& stash_path, const AttachOptions& o) {
  Stash s = load_stash(stash_path);
  if (!s.complete)
    throw Error(EIO, cat("volume ", s.volume_id, ": its attach was interrupted; detach it and attach again"));
  if (!alive(s.gateway)) {
    std::optional<SecretBuffer> pass, key;
    if (s.encrypted && s.mode == Mode::userspace && !(pass = load_secret(s.volume_id, kPassphrase)))
      throw Error(ENOKEY, cat("volume ", s.volume_id, ": passphrase not in the secret store ", secret_root(), "; "
                              "detach it and attach again"));
    if (s.cephx_key_in_keyring && !(key = load_secret(s.volume_id, kCephx)))
      throw Error(ENOKEY, cat("volume ", s.volume_id, ": cephx key not in the secret store ", secret_root(), "; "
                              "detach it and attach again"));
    progress(o, cat("restarting the gateway for ", s.image, " (volume ", s.volume_id, ")"));
    const auto cluster = cluster_options(s, key);
    const auto spec = rbd::ImageSpec::parse(s.image);
    fence_dead_gateway(cluster, spec, s.gateway_client);
    const auto save = [&] { save_stash(s, stash_path); };
    start_gateway(s, o.tools, key ? &*key : nullptr, pass ? &*pass : nullptr, o.timeout, save);
    if (!s.read_only) s.gateway_client = gateway_client(cluster, spec, 5s);
    save();
    if (s.mode == Mode::kernel && !s.nbd_device.empty()) {
      progress(o, cat("reconnecting ", s.nbd_device, " to the new gateway"));
      nbd_reconnect(nbd_device_index(s.nbd_device), s.socket);
    }
  }
  VolumeStatus st = status(s);
  if (s.mode == Mode::userspace && !st.fuse_alive)
    throw Error(EIO, cat("volume ", s.volume_id, ": its FUSE exporter died; "
                         "detach it and attach again"));
  return st;
}

}  // namespace rbdgw::attach
