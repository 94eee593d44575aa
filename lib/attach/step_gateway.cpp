// Steps around the gateway: run_dir (the 0700 run directory and its owner
// file), secrets (what a restart of the gateway needs, in the secret
// store), gateway (nbdkit rbd [+ luks2] on the run dir's socket) and
// gateway_identity (its RADOS client, so that a restart can fence exactly
// it).
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "attach/secret_store.hpp"
#include "attach/steps.hpp"
#include "rbd/image.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach::detail {
namespace {
// Fixed descriptor numbers of the secrets in the gateway.
constexpr int kKeyFd = 3;
constexpr int kPassphraseFd = 4;
}  // namespace

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

std::vector<std::string> other_watchers(const rbd::Cluster& cluster, const rbd::Image& img) {
  const auto self = static_cast<std::int64_t>(rados_get_instance_id(cluster.handle()));
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
  return others;
}

// The address of the one RADOS client other than ours watching the image
// (the gateway), waiting up to `timeout` for it; empty if there is not
// exactly one.
std::string gateway_client(const rbd::ClusterOptions& c, const rbd::ImageSpec& spec,
                           std::chrono::milliseconds timeout) {
  auto cluster = rbd::Cluster::connect(c);
  auto img = rbd::Image::open(cluster, spec, rbd::Image::Mode::read_only);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::vector<std::string> others = other_watchers(cluster, img);
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

void run_dir_run(Context& c) {
  Stash& s = c.s;
  fs::create_directories(fs::path(s.run_dir).parent_path());
  if (::mkdir(s.run_dir.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("mkdir", s.run_dir, errno);
  ::chmod(s.run_dir.c_str(), 0700);
  c.save();
  std::ofstream(s.run_dir + "/owner") << c.o.stash_path << "\n";
}

// Everything in the run dir but the stash (the CLI keeps it there), which
// detach removes last, with the dir itself; a mount still in the dir (a
// FUSE file not let go) fails the undo before anything is removed.
void run_dir_undo(Context& c) {
  const Stash& s = c.s;
  if (s.run_dir.empty() || !fs::exists(s.run_dir)) return;
  if (is_mountpoint(s.fuse_file))
    throw Error(EBUSY, cat("volume ", s.volume_id, ": ", s.fuse_file, " is still mounted"));
  std::error_code ec;
  const fs::path keep = fs::weakly_canonical(c.stash_path, ec);
  for (const auto& e : fs::directory_iterator(s.run_dir, ec)) {
    if (!c.stash_path.empty() && fs::weakly_canonical(e.path(), ec) == keep) continue;
    fs::remove_all(e.path(), ec);
    if (ec) throw Error(ec.value(), cat("remove ", e.path().string(), ": ", ec.message()));
  }
}

// Userspace: the gateway decrypts (luks2 filter), so a restart needs the
// passphrase; kernel: dm-crypt does, and holds the key itself.
void secrets_run(Context& c) {
  if (c.v->encrypted && c.s.mode == Mode::userspace)
    store_secret(c.s.volume_id, kPassphrase, c.v->passphrase);
  if (c.s.cephx_key_in_keyring) store_secret(c.s.volume_id, kCephx, c.v->cluster.key);
}

void secrets_undo(Context& c) {
  remove_secret(c.s.volume_id, kPassphrase);
  remove_secret(c.s.volume_id, kCephx);
}

void gateway_run(Context& c) {
  progress(c.o, cat("starting the gateway for ", c.s.image));
  const bool decrypts = c.v->encrypted && c.s.mode == Mode::userspace;
  start_gateway(c.s, c.o.tools, c.s.cephx_key_in_keyring ? &c.v->cluster.key : nullptr,
                decrypts ? &c.v->passphrase : nullptr, c.o.timeout, c.save);
}

void gateway_undo(Context& c) {
  stop_process(c.s.gateway, 10s);
  // One started but not recorded (the caller died in between).
  if (!c.s.run_dir.empty()) stop_process(stray(c.s, gateway_pid_file(c.s)), 10s);
}

// After the device is up: the gateway's RADOS client address (its watch on
// the image), so that a restart can break the dead gateway's exclusive lock
// at once instead of waiting ~30 s for its watch to time out.
void gateway_identity_run(Context& c) {
  if (c.s.read_only) return;
  c.s.gateway_client = gateway_client(c.v->cluster, c.v->image, 2s);
  c.save();
}

}  // namespace rbdgw::attach::detail
