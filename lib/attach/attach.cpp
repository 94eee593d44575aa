// attach(), detach(), status(), readopt(): the staging transaction over the
// steps of steps.hpp. Every step records in the stash what its undo needs
// before it waits on anything, so that a failure (or a crash of the
// caller) is undone by detach() from the stash alone.
#include "attach/attach.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

#include "attach/mount_options.hpp"
#include "attach/nbd_netlink.hpp"
#include "attach/secret_store.hpp"
#include "attach/steps.hpp"
#include "common/boot_id.hpp"
#include "rbd/image.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach {
using namespace detail;

namespace detail {

const std::vector<Step>& steps_for(Mode m, bool shared) {
  // name, run, undo: attach runs them in order, detach undoes them in reverse.
  static const std::vector<Step> userspace = {
      {"inspect", inspect_run, nullptr},
      {"run_dir", run_dir_run, run_dir_undo},
      {"secrets", secrets_run, secrets_undo},
      {"gateway", gateway_run, gateway_undo},
      {"fuse_exporter", fuse_exporter_run, fuse_exporter_undo},
      {"loop_device", loop_device_run, loop_device_undo},
      {"filesystem", filesystem_run, nullptr},
      {"mount", mount_run, mount_undo},
      {"mark_encrypted", mark_encrypted_run, nullptr},
  };
  static const std::vector<Step> kernel = {
      {"inspect", inspect_run, nullptr},
      {"run_dir", run_dir_run, run_dir_undo},
      {"secrets", secrets_run, secrets_undo},
      {"gateway", gateway_run, gateway_undo},
      {"nbd_device", nbd_device_run, nbd_device_undo},
      {"dm_crypt", dm_crypt_run, dm_crypt_undo},
      {"filesystem", filesystem_run, nullptr},
      {"mount", mount_run, mount_undo},
      {"mark_encrypted", mark_encrypted_run, nullptr},
  };
  // The userspace path on a shared gateway (step_shared_gateway.cpp): the
  // volume's registry entry goes only after its exporter is stopped.
  static const std::vector<Step> userspace_shared = {
      {"inspect", inspect_run, nullptr},
      {"run_dir", run_dir_run, run_dir_undo},
      {"secrets", secrets_run, secrets_undo},
      {"shared_gateway", shared_gateway_run, shared_gateway_undo},
      {"fuse_exporter", fuse_exporter_run, fuse_exporter_undo},
      {"shared_lock", shared_lock_run, nullptr},
      {"loop_device", loop_device_run, loop_device_undo},
      {"filesystem", filesystem_run, nullptr},
      {"mount", mount_run, mount_undo},
      {"mark_encrypted", mark_encrypted_run, nullptr},
  };
  if (m == Mode::kernel) return kernel;
  return shared ? userspace_shared : userspace;
}

void progress(const AttachOptions& o, const std::string& msg) {
  if (o.progress) o.progress(msg);
  log::debug(msg);
}

namespace {
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
}  // namespace

namespace {

bool in_mountinfo(const std::string& want) {
  std::ifstream f("/proc/self/mountinfo");
  for (std::string line; std::getline(f, line);) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt;
    if (ls >> id >> parent >> devno >> root >> mnt && unescape_mount_path(mnt) == want) return true;
  }
  return false;
}

}  // namespace

bool is_mountpoint(const std::string& path) {
  if (path.empty()) return false;
  // The path itself is not touched first: a stat of a FUSE mount waits for
  // its exporter, which cannot answer while a dead gateway holds every one
  // of its threads in a reconnect (and fails with ENOTCONN once it died).
  // Its parent is resolved instead; only a path not found that way (its
  // last component a symbolic link) is resolved whole.
  std::error_code ec;
  const fs::path p(path);
  if (in_mountinfo((fs::weakly_canonical(p.parent_path(), ec) / p.filename()).string())) return true;
  const std::string whole = fs::weakly_canonical(p, ec).string();
  return !ec && !whole.empty() && in_mountinfo(whole);
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

rbd::ClusterOptions cluster_options(const Stash& s, const std::optional<SecretBuffer>& key) {
  rbd::ClusterOptions c;
  c.conf_file = s.conf_file;
  c.mon_host = s.mon_host;
  c.id = s.user_id;
  c.keyring = s.keyring;
  if (key) c.key = key->clone();
  return c;
}

}  // namespace detail

namespace {

// Whether anything of the volume still needs its gateway to finish I/O: a
// mounted filesystem or a block device on it.
bool has_io_path(const Stash& s) {
  return (!s.target.empty() && is_mountpoint(s.target)) || !s.loop_device.empty() ||
         !s.nbd_device.empty();
}

// syncfs on the mounted target, waiting at most `limit` (0: no limit).
// Returns false on timeout; the flush goes on in its own thread, which ends
// when the I/O completes or fails.
bool flush_filesystem(const std::string& target, std::chrono::seconds limit) {
  struct State {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    int err = 0;
  };
  auto st = std::make_shared<State>();
  std::thread([st, target] {
    int fd = ::open(target.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int e = fd < 0 ? errno : (::syncfs(fd) < 0 ? errno : 0);
    if (fd >= 0) ::close(fd);
    std::lock_guard lk(st->m);
    st->done = true;
    st->err = e;
    st->cv.notify_all();
  }).detach();
  std::unique_lock lk(st->m);
  if (limit.count() == 0) st->cv.wait(lk, [&] { return st->done; });
  else if (!st->cv.wait_for(lk, limit, [&] { return st->done; })) return false;
  if (st->err) log::warn("syncfs ", target, ": ", std::strerror(st->err));
  return true;
}

// A forced teardown: fail the volume's outstanding I/O now, so that nothing
// below waits on a gateway that will not answer.
void fail_outstanding_io(const Stash& s) {
  if (s.mode == Mode::userspace && alive(s.fuse)) {
    // rbdgw-fuse: every waiting and later request fails with EIO.
    if (::kill(s.fuse.pid, SIGUSR2) < 0) log::warn("kill SIGUSR2 ", s.fuse.pid, ": ", std::strerror(errno));
  }
  if (s.mode == Mode::kernel && !s.nbd_device.empty() &&
      fs::exists(cat("/sys/block/", fs::path(s.nbd_device).filename().string()))) {
    try {
      // Only the volume's own device (step_kernel.cpp names it so).
      const int index = nbd_device_index(s.nbd_device);
      if (nbd_backend(index) == "rbdgw:" + s.volume_id) nbd_disconnect(index);
      else log::warn(s.nbd_device, " is not connected for volume ", s.volume_id, ": left alone");
    } catch (const Error& e) {
      log::warn(e.what());
    }
  }
}

// Serialises attaches and detaches of one volume across threads and
// processes (the CLI and rbdgw-csi, two maps at once): an exclusive flock
// on the volume's run dir itself, held for the whole call. Another holder
// is an EBUSY at once, naming the volume.
class VolumeLock {
 public:
  // create: make the run dir first (attach); otherwise a missing run dir
  // means there is nothing to lock (detach of an attach that never got it).
  VolumeLock(const std::string& run_dir, const std::string& volume_id, bool create) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (create) {
        fs::create_directories(fs::path(run_dir).parent_path());
        if (::mkdir(run_dir.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("mkdir", run_dir, errno);
      }
      fd_ = ::open(run_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd_ < 0) {
        if (errno == ENOENT) continue;
        throw_errno("open", run_dir, errno);
      }
      if (::flock(fd_, LOCK_EX | LOCK_NB) < 0) {
        const int e = errno;
        ::close(fd_);
        fd_ = -1;
        if (e == EWOULDBLOCK)
          throw Error(EBUSY, cat("volume ", volume_id, ": another attach or detach of it is running "
                                 "(", run_dir, " is locked); try again when it is done"));
        throw_errno("flock", run_dir, e);
      }
      struct stat st;
      if (::fstat(fd_, &st) == 0 && st.st_nlink > 0) return;  // not removed meanwhile
      ::close(fd_);
      fd_ = -1;
    }
    if (create) throw Error(EAGAIN, cat("volume ", volume_id, ": ", run_dir, " keeps disappearing"));
  }
  ~VolumeLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  VolumeLock(const VolumeLock&) = delete;
  VolumeLock& operator=(const VolumeLock&) = delete;

 private:
  int fd_ = -1;
};

DetachResult detach_locked(const std::string& stash_path, const DetachOptions& d);

// Forgets a stale stash (stale_reason()) without touching the pids, devices
// or mounts it names: they went with its boot, and the numbers may belong to
// someone else now. Wipes the volume's secrets and the files its run dir
// kept (a run root on disk keeps them across a reboot), then the stash.
// locked_run_dir: the run dir whose VolumeLock the caller holds; a stale
// stash naming another run dir leaves that one alone. Throws Error(EBUSY)
// when the run dir belongs to another attach of the volume (its owner file
// names another stash) or something is mounted on its FUSE file.
void forget_stale(const Stash& old, const std::string& stash_path, const std::string& locked_run_dir) {
  const std::string why = stale_reason(old);
  log::warn("volume ", old.volume_id, ": stash ", stash_path, " is ", why, "; its gateway, exporter, "
            "devices and mounts went with that boot: forgetting it, without touching the pids or "
            "devices it names");
  Stash s = old;
  const AttachOptions none;
  Context c{s, none, [] {}, nullptr, {}, false, {}, stash_path};
  if (!s.run_dir.empty() && s.run_dir == locked_run_dir) {
    std::ifstream f(s.run_dir + "/owner");
    std::string other;
    if (std::getline(f, other) && other != stash_path && fs::exists(other))
      throw Error(EBUSY, cat("volume ", s.volume_id, ": run dir ", s.run_dir, " belongs to its attach "
                             "with stash ", other, ", not to the stale stash ", stash_path));
    run_dir_undo(c);
  } else if (!s.run_dir.empty()) {
    log::warn("volume ", s.volume_id, ": the stale stash's run dir ", s.run_dir, " is not ",
              locked_run_dir, ": left as it is");
  }
  secrets_undo(c);
  if (::unlink(stash_path.c_str()) < 0 && errno != ENOENT) throw_errno("unlink", stash_path, errno);
}

// The gateway of a stale stash died with its boot, but the OSDs keep its
// watch on the image until it times out (osd_client_watch_timeout, 30 s
// after the boot ended: a reboot faster than that still finds it). The
// take-over rule (rbd/exclusive_lock.hpp) counts a holder of this node
// from another boot as dead only once its watch is gone -- another machine
// with the same node name has another boot id too, and lives. So wait for
// exactly that watch to go (a real reboot is over before it would matter);
// never fence it here. Past the wait the attach goes on, and refuses a
// watcher that is still there as it refuses any other.
void wait_out_dead_watch(const Volume& v, const std::string& client, const AttachOptions& o) {
  if (client.empty() || v.read_only) return;
  try {
    auto cluster = rbd::Cluster::connect(v.cluster);
    auto img = rbd::Image::open(cluster, v.image, rbd::Image::Mode::read_only);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(45);
    bool told = false;
    for (;;) {
      const auto others = other_watchers(cluster, img);
      if (std::find(others.begin(), others.end(), client) == others.end()) return;
      if (std::chrono::steady_clock::now() > deadline) return;
      if (!told)
        progress(o, cat("waiting for the watch of ", v.image.str(), "'s gateway from the earlier boot (",
                        client, ") to time out"));
      told = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  } catch (const Error& e) {
    log::warn("volume ", v.id, ": cannot tell whether the earlier boot's gateway still watches ",
              v.image.str(), ": ", e.what());
  }
}

}  // namespace

bool VolumeStatus::healthy() const {
  return stale.empty() && gateway_alive && (stash.mode == Mode::kernel ? nbd_connected : fuse_alive) &&
         (stash.block || mounted);
}

VolumeStatus status(const Stash& s) {
  VolumeStatus st;
  st.stash = s;
  st.stale = stale_reason(s);
  if (!st.stale.empty()) return st;  // what it names is not its own any more
  st.gateway_alive = gateway_up(s);
  if (!s.shared_dir.empty()) st.stash.gateway = shared_gateway_process(s);
  st.fuse_alive = s.mode == Mode::userspace && alive(s.fuse) && is_mountpoint(s.fuse_file);
  st.mounted = !s.block && is_mountpoint(s.target);
  st.nbd_connected = s.mode == Mode::kernel && !s.nbd_device.empty() &&
                     nbd_status(nbd_device_index(s.nbd_device)) == NbdState::connected;
  // Configured is not enough: the kernel keeps a device whose connection it
  // gave up or whose gateway died; its socket table tells.
  if (st.nbd_connected) {
    try {
      st.nbd_connected = nbd_server_connected(s.socket);
    } catch (const Error& e) {
      log::warn("volume ", s.volume_id, ": cannot tell whether ", s.nbd_device, "'s connection is up: ", e.what());
    }
  }
  return st;
}

Stash attach(const Volume& v, const AttachOptions& o) {
  validate_volume_id(v.id);
  if (o.stash_path.empty()) throw Error(EINVAL, cat("attach ", v.id, ": no stash path given"));
  if (v.encrypted && v.passphrase.empty())
    throw Error(EINVAL, cat("attach ", v.id, ": encrypted volume without a passphrase"));
  if (!v.block) {
    mkfs_argv(v.fstype, "-");  // validates the fstype
    parse_mount_options(v.mount_options, v.fstype, v.read_only);  // refused before anything starts
    if (v.target.empty() || v.target[0] != '/')
      throw Error(EINVAL, cat("attach ", v.id, ": target '", v.target, "' is not an absolute path"));
    if (!fs::is_directory(v.target))
      throw Error(ENOENT, cat("attach ", v.id, ": target ", v.target, " is not a directory"));
  }
  if (o.shared_gateway && o.attach == AttachChoice::kernel)
    throw Error(ENOTSUP, cat("attach ", v.id, ": a shared gateway serves the userspace path only "
                             "(--attach kernel with --shared-gateway)"));
  const Mode mode = o.shared_gateway ? Mode::userspace : choose_mode(o.attach, o.root);
  const std::string run_dir = o.run_dir.empty() ? cat(kRunRoot, "/", v.id) : o.run_dir;
  const VolumeLock lock(run_dir, v.id, true);
  // The lock made the run dir: a refused attach takes it away again (rmdir
  // fails, harmlessly, while anything is still in it).
  struct RemoveIfEmpty {
    const std::string& dir;
    ~RemoveIfEmpty() { if (std::uncaught_exceptions() > 0) ::rmdir(dir.c_str()); }
  } remove_if_empty{run_dir};

  std::string interrupted_mkfs_token;
  if (fs::exists(o.stash_path)) {
    Stash old = load_stash(o.stash_path);
    if (old.volume_id != v.id)
      throw Error(EBUSY, cat("stash ", o.stash_path, " belongs to volume ", old.volume_id, ", not ", v.id));
    if (const std::string why = stale_reason(old); !why.empty()) {
      // After a reboot: nothing of it is up, and re-adopting it could only
      // fail (its secrets went with the boot's tmpfs). Stage afresh.
      progress(o, cat("the stash of ", v.id, " is ", why, ": attaching afresh"));
      forget_stale(old, o.stash_path, run_dir);
      if (!old.complete) interrupted_mkfs_token = old.mkfs_token;
      wait_out_dead_watch(v, old.gateway_client, o);
    } else if (old.complete) {
      if (old.block != v.block || (!v.block && old.target != v.target))
        throw Error(EBUSY, cat("volume ", v.id, " is already attached at ",
                               old.block ? old.device : old.target));
      readopt(o.stash_path, o);
      return load_stash(o.stash_path);
    } else {
      progress(o, cat("undoing an interrupted attach of ", v.id));
      interrupted_mkfs_token = old.mkfs_token;
      detach_locked(o.stash_path, {.force = true});
    }
  }

  Stash s;
  s.volume_id = v.id;
  s.boot_id = this_boot_id();
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
  s.run_dir = run_dir;
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

  Context c{s, o, [&] { save_stash(s, o.stash_path); }, &v, {}, false, interrupted_mkfs_token, {}};
  try {
    for (const Step& step : steps_for(mode, o.shared_gateway)) {
      if (!step.run) continue;
      log::debug("attach ", v.id, ": step ", step.name);
      step.run(c);
    }
    s.complete = true;
    c.save();
    return s;
  } catch (...) {
    // The volume never reached its user: nothing of it can be lost, so a
    // gateway that died meanwhile does not keep its remains up.
    try {
      detach_locked(o.stash_path, {.force = true});
    } catch (const std::exception& e) {
      log::error("undoing the attach of ", v.id, ": ", e.what());
    }
    throw;
  }
}

DetachResult detach(const std::string& stash_path, const DetachOptions& d) {
  if (!fs::exists(stash_path)) return {};
  const Stash first = load_stash(stash_path);
  const VolumeLock lock(first.run_dir, first.volume_id, false);
  return detach_locked(stash_path, d);
}

namespace {
DetachResult detach_locked(const std::string& stash_path, const DetachOptions& d) {
  DetachResult res;
  if (!fs::exists(stash_path)) return res;
  Stash s = load_stash(stash_path);
  if (!stale_reason(s).empty()) {
    forget_stale(s, stash_path, s.run_dir);
    if (!s.run_dir.empty() && ::rmdir(s.run_dir.c_str()) < 0 && errno != ENOENT)
      throw_errno("rmdir", s.run_dir, errno);
    return res;
  }
  const AttachOptions none;
  Context c{s, d.restart ? *d.restart : none, [&] { save_stash(s, stash_path); }, nullptr, {}, false,
            {}, stash_path};

  // The filesystem above can flush only through a live gateway (and, on
  // the userspace path, a live exporter).
  const auto dead = [](const Stash& st) {
    return !gateway_up(st) || (st.mode == Mode::userspace && !st.fuse_file.empty() && !alive(st.fuse));
  };
  if (has_io_path(s) && dead(s)) {
    std::string why = !gateway_up(s) ? "it is not running" : "its FUSE exporter died";
    if (d.restart && s.complete) {
      try {
        readopt(stash_path, *d.restart);
        s = load_stash(stash_path);
      } catch (const std::exception& e) {
        why = cat("a restart failed: ", e.what());
      }
    }
    if (dead(s)) {
      if (!d.force)
        throw Error(EIO, cat("volume ", s.volume_id, " (", s.image, "): its gateway is dead (", why,
                             "); unmounting would wait for writes that cannot complete. "
                             "Repair it (rbdgw reattach) or force the unmap (rbdgw unmap --force; "
                             "NodeUnstageVolume does after its timeout), which fails the "
                             "filesystem's unflushed writes: they are lost"));
      res.forced = true;
      res.loss = cat("the gateway of ", s.volume_id, " was dead (", why, "): writes the filesystem "
                     "had not flushed to it were failed with EIO and are lost");
    }
  }
  if (!res.forced && !s.read_only && !s.target.empty() && is_mountpoint(s.target) &&
      !flush_filesystem(s.target, d.flush_timeout)) {
    if (!d.force)
      throw Error(ETIMEDOUT, cat("volume ", s.volume_id, " (", s.image, "): flushing ", s.target,
                                 " did not finish within ", d.flush_timeout.count(),
                                 " s (is its gateway or the cluster stuck?); nothing was torn "
                                 "down. A forced unmap fails the outstanding writes: they are lost"));
    res.forced = true;
    res.loss = cat("flushing ", s.target, " did not finish within ", d.flush_timeout.count(),
                   " s: the writes still outstanding were failed with EIO and are lost");
  }
  if (res.forced) {
    log::warn("detach ", s.volume_id, ": forced: ", res.loss);
    fail_outstanding_io(s);
    c.forced = true;
  }

  const auto& steps = steps_for(s.mode, !s.shared_dir.empty());
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    if (!it->undo) continue;
    log::debug("detach ", s.volume_id, ": undo ", it->name);
    it->undo(c);
  }
  // The stash goes last: until here a failed undo can be retried from it.
  if (::unlink(stash_path.c_str()) < 0 && errno != ENOENT) throw_errno("unlink", stash_path, errno);
  if (!s.run_dir.empty() && ::rmdir(s.run_dir.c_str()) < 0 && errno != ENOENT)
    throw_errno("rmdir", s.run_dir, errno);
  return res;
}
}  // namespace

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
  if (const std::string why = stale_reason(s); !why.empty())
    throw Error(ESTALE, cat("volume ", s.volume_id, ": ", why, "; attach it again"));
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
  if (const std::string why = stale_reason(s); !why.empty())
    throw Error(ESTALE, cat("volume ", s.volume_id, ": ", why, "; nothing of it is up and its "
                            "secrets are gone: map (stage) it again, which forgets the stale stash "
                            "and attaches afresh, or unmap (unstage) it"));
  if (!s.complete)
    throw Error(EIO, cat("volume ", s.volume_id, ": its attach was interrupted; detach it and attach again"));
  if (!s.shared_dir.empty()) {
    shared_readopt(s, o, [&] { save_stash(s, stash_path); });
  } else if (!alive(s.gateway)) {
    std::optional<SecretBuffer> pass, key;
    if (s.encrypted && s.mode == Mode::userspace && !(pass = load_secret(s.volume_id, kPassphrase)))
      throw Error(ENOKEY, cat("volume ", s.volume_id, ": passphrase not in the secret store ", secret_root(), "; "
                              "detach it and attach again"));
    if (s.cephx_key_in_keyring && !(key = load_secret(s.volume_id, kCephx)))
      throw Error(ENOKEY, cat("volume ", s.volume_id, ": cephx key not in the secret store ", secret_root(), "; "
                              "detach it and attach again"));
    refuse_if_taken_since(s, key ? &*key : nullptr);
    progress(o, cat("restarting the gateway for ", s.image, " (volume ", s.volume_id, ")"));
    // A read-write gateway takes the dead one's exclusive lock over itself
    // (same node, same boot, its pid gone: rbd/exclusive_lock.hpp).
    const auto save = [&] { save_stash(s, stash_path); };
    start_gateway(s, o.tools, key ? &*key : nullptr, pass ? &*pass : nullptr, o.timeout, save);
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
