// Steps around the gateway: run_dir (the 0700 run directory and its owner
// file), secrets (what a restart of the gateway needs, in the secret
// store) and gateway (nbdkit rbd [+ luks2] on the run dir's socket; a
// read-write one with exclusive=true: it holds the image's exclusive lock
// for its whole life, rbd/exclusive_lock.hpp).
//
// A restart of this node's dead gateway (readopt) needs no fencing of its
// own: the new gateway takes the lock over itself, because the holder record
// proves the old one dead (same node, same boot, its pid gone). A gateway
// on another node is never fenced from here.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "attach/secret_store.hpp"
#include "attach/steps.hpp"
#include "rbd/exclusive_lock.hpp"
#include "rbd/image.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach::detail {
namespace {
// Fixed descriptor numbers of the secrets in the gateway.
constexpr int kKeyFd = 3;
constexpr int kPassphraseFd = 4;

rbd::ClusterOptions cluster_of(const Stash& s, const SecretBuffer* cephx_key) {
  std::optional<SecretBuffer> key;
  if (cephx_key) key = cephx_key->clone();
  return cluster_options(s, key);
}

// A read-write gateway is ready only once it holds the exclusive lock: its
// socket and pid file come before nbdkit's .after_fork, which takes the lock
// (or fails). Waits until the lock's owner is the gateway s.gateway by its
// holder record, and records its RADOS client in the stash.
void await_lock(Stash& s, const SecretBuffer* cephx_key, std::chrono::seconds timeout,
                const std::function<void()>& save) {
  auto cluster = rbd::Cluster::connect(cluster_of(s, cephx_key));
  auto img = rbd::Image::open(cluster, rbd::ImageSpec::parse(s.image));
  wait_ready(s.gateway, cat("gateway for ", s.image, " (taking the exclusive lock)"), s.gateway_log,
             timeout, [&] {
               const auto o = rbd::lock_owner(img);
               if (!o || !o->holder || o->holder->pid != s.gateway.pid || o->holder->node != s.node)
                 return false;
               s.gateway_client = o->client;
               return true;
             });
  save();
}

// After a read-write gateway exited at start: when another client holds the
// image's lock (a second stage of this volume on another node got it
// first), the answer is EBUSY naming it, not the gateway's exit.
void refuse_if_in_use(const Stash& s, const SecretBuffer* cephx_key, const Error& e) {
  std::optional<rbd::LockOwner> o;
  std::string msg;
  try {
    auto cluster = rbd::Cluster::connect(cluster_of(s, cephx_key));
    auto img = rbd::Image::open(cluster, rbd::ImageSpec::parse(s.image));
    o = rbd::lock_owner(img);
    if (o) msg = rbd::in_use_message(img, *o);
  } catch (const Error&) {
    return;  // the gateway's own error says more
  }
  if (o) throw Error(EBUSY, cat(msg, " (the gateway for volume ", s.volume_id, " refused to start: ",
                                e.what(), ")"));
}

}  // namespace

// Before a dead read-write gateway is restarted for a volume still up here
// (readopt, a detach's restart to flush): the new gateway is a new RADOS
// client, not blocklisted, and would write this node's cached writes (the
// page cache, a half-flushed filesystem) to the image. That is right only
// while nobody else has written the volume since this node's gateway held
// it: the lock is still that gateway's, or free with its holder record
// still naming that gateway. Otherwise (it was fenced and another client
// held the volume since) this node's view is stale: Error(ESTALE), nothing
// restarted.
void refuse_if_taken_since(const Stash& s, const SecretBuffer* cephx_key) {
  if (s.read_only || s.gateway_client.empty()) return;
  auto cluster = rbd::Cluster::connect(cluster_of(s, cephx_key));
  auto img = rbd::Image::open(cluster, rbd::ImageSpec::parse(s.image), rbd::Image::Mode::read_only);
  // This node's last gateway: the recorded client, or (its caller died
  // before it recorded the client) the recorded process.
  const auto ours = [&](const std::string& client, const std::optional<rbd::Holder>& h) {
    return client == s.gateway_client ||
           (h && h->node == s.node && h->pid == s.gateway.pid &&
            h->pid_start == s.gateway.start_time);
  };
  const auto o = rbd::lock_owner(img);
  if (o && ours(o->client, o->holder)) return;
  std::string since;
  if (o) {
    since = cat(o->client, o->holder ? cat(" on node ", o->holder->node) : std::string(),
                " holds the volume's exclusive lock now");
  } else {
    const auto h = rbd::read_holder(img);
    if (h && ours(h->client, h)) return;
    since = h ? cat(h->client, " on node ", h->node, " has held it since ", h->since)
              : std::string("no holder record says who held it since");
  }
  throw Error(ESTALE, cat("volume ", s.volume_id, " (", s.image, "): its gateway ", s.gateway_client,
                          " lost the exclusive lock before it died (fenced), and ", since,
                          ": this node's cached writes are stale and must never reach the image, so "
                          "the gateway is not restarted. Unmap it with --force (rbdgw unmap --force; "
                          "NodeUnstageVolume forces after its timeout), which discards them"));
}

// Starts the gateway for s on s.socket, with the secrets on fds 3 and 4.
// A gateway left by an earlier start that was not recorded is stopped
// first; the new one is recorded (save) before it is waited for.
void start_gateway(Stash& s, const Tools& tools, const SecretBuffer* cephx_key,
                   const SecretBuffer* passphrase, std::chrono::seconds timeout,
                   const std::function<void()>& save) {
  const std::string pidfile = s.run_dir + "/nbdkit.pid";
  if (s.node.empty()) s.node = rbd::host_name();  // a stash of 0.2.0
  // A gateway that exits at once without a word was, until spawn_detached
  // waited for its middle process to be gone, nbdkit killed by that exit
  // (docs/attach-paths.md). Kept as a defence: such a gateway is started
  // once more before the stage fails, with a warning naming how it ended.
  for (int attempt = 1;; ++attempt) {
    stop_process(stray(s, gateway_pid_file(s)), 10s);
    ::unlink(s.socket.c_str());
    ::unlink(pidfile.c_str());
    GatewayArgs a{s.socket, pidfile, s.image, s.conf_file, s.mon_host, s.user_id, s.keyring,
                  -1, -1, s.read_only, s.node};
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
      if (!s.read_only) await_lock(s, cephx_key, timeout, save);
      return;
    } catch (const Error& e) {
      if (!s.read_only && !alive(s.gateway)) refuse_if_in_use(s, cephx_key, e);
      if (attempt >= 2 || alive(s.gateway) || log_tail(s.gateway_log) != "(no output)") throw;
      log::warn("gateway for ", s.image, " (pid ", s.gateway.pid, ") exited at start without a message (",
                exit_reason(s.gateway), "); starting it again");
    }
  }
}

std::vector<std::string> other_watchers(const rbd::Cluster& cluster, const rbd::Image& img) {
  const auto self = static_cast<std::int64_t>(rados_get_instance_id(cluster.handle()));
  std::vector<std::string> others;
  for (const auto& w : img.watchers())
    if (w.id != self) others.push_back(w.addr);
  return others;
}

std::string node_name(const Volume& v) { return v.node.empty() ? rbd::host_name() : v.node; }

void run_dir_run(Context& c) {
  Stash& s = c.s;
  s.node = node_name(*c.v);
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

}  // namespace rbdgw::attach::detail
