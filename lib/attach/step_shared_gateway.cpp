// The shared gateway (AttachOptions::shared_gateway, `rbdgw map
// --shared-gateway`): one nbdkit rbd exports-dir=DIR per cluster identity
// and kind on the node, serving every volume mapped with it as its own NBD
// export (named by the volume id), on one RADOS client.
//
// Identity: the cluster (conf file, mon_host), the cephx user, its keyring
// or key, the node name of the holder records, and the kind: plain, or
// decrypting (the luks2 filter with passphrase-store=<secret store root>:
// for export N it reads the store's (N, "passphrase"), which the secrets
// step keeps for every userspace encrypted volume). Its dir,
// <run root>/@shared-<first 16 hex digits of the identity's SHA-256> ('@' is
// outside the volume-id alphabet), 0700, holds the socket (nbd.sock), the
// pid files, the log (gateway.log) and the registry (exports/<volume-id>:
// "image=SPEC" [+ "read-only=true"], read by the plugin at the export's
// open). Everything that starts or stops the gateway or changes the
// registry holds an exclusive flock on that dir.
//
// Steps (userspace path only): shared_gateway (start the gateway when none
// is alive, then register the volume) replaces gateway; after
// fuse_exporter (rbdgw-fuse --export <volume-id>), shared_lock waits until
// the image's exclusive lock is the shared gateway's (taken at the export's
// open, by the exporter's first connection). Undo: the entry goes once the
// exporter is stopped (its connections closed: the plugin closes the image
// and lets its lock go), and the gateway with the last entry.
//
// A (re)start of the shared gateway empties the registry first: after a
// crash, each volume's readopt puts its own entry back only after the
// fencing check of refuse_if_taken_since, so that a volume whose lock
// another client took meanwhile is never served again from this node's
// stale view (its exporter's I/O fails after its reconnect timeout), while
// the others recover.
//
// A fence of one volume (rbd lock rm blocklists the lock's client) fences
// the live shared gateway's one RADOS client, so every volume on it: readopt
// asks the OSD blocklist for the volume's recorded client, replaces the
// gateway for a volume whose lock that client still holds, and refuses
// (ESTALE) the volume whose lock it lost (collateral_of_a_fence).
#include <fcntl.h>
#include <openssl/evp.h>
#include <rados/librados.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "attach/secret_store.hpp"
#include "attach/steps.hpp"
#include "rbd/exclusive_lock.hpp"
#include "rbd/image.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach::detail {
namespace {

constexpr int kKeyFd = 3;
// nbdkit worker threads per connection of the shared gateway (nbdkit's
// default is 16): nbdkit starts them with every connection, so each open
// connection of each volume costs that many plus its connection thread.
// With 2, a volume in use (one connection open) costs the gateway 3
// threads, not 9 as with 8 (issue 13: 8 threads per volume; test
// e2e.cli.shared-gateway-volume-in-use-costs-at-most-8-threads); a busy
// one takes up to 16 such connections (step_userspace.cpp), 32 requests
// in flight as before. $RBDGW_SHARED_GATEWAY_THREADS overrides it (1..64;
// benchmarks). docs/benchmarks.md, ninth round.
constexpr int kSharedThreads = 2;

// An idle exporter connection costs the gateway nbdkit's connection
// thread and its --threads workers: a volume's exporter closes it after
// this long without a request (the plugin keeps the image open and locked
// while the volume is registered; on a decrypting gateway the luks2 filter
// keeps the unlocked volume while its passphrase is in the secret store),
// and connects again at its next request (a few ms, no PBKDF run).
constexpr int kIdleDisconnect = 10;

std::string hex16_sha256(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw Error(EIO, "SHA-256 of the shared gateway's identity failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < 8; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::string field(const std::string& s) { return cat(s.size(), ":", s, ";"); }

std::string pid_file_of(const std::string& dir) { return dir + "/gateway.pid"; }
// The gateway's worker threads per connection (shared_workers).
std::string workers_file_of(const std::string& dir) { return dir + "/workers"; }
std::string nbdkit_pid_file_of(const std::string& dir) { return dir + "/nbdkit.pid"; }
std::string exports_of(const std::string& dir) { return dir + "/exports"; }
// The rbd plugin's exports-dir mode creates it once connected and serving.
std::string connected_marker_of(const std::string& dir) { return exports_of(dir) + "/.connected"; }
std::string entry_of(const Stash& s) { return exports_of(s.shared_dir) + "/" + s.volume_id; }

// An exclusive flock on the shared gateway's dir (created 0700 when
// `create`), held while the gateway is started or stopped or its registry
// changed. A dir removed while waiting for it is made (or opened) again.
class SharedLock {
 public:
  SharedLock(const std::string& dir, bool create) {
    for (int attempt = 0; attempt < 10; ++attempt) {
      if (create) {
        fs::create_directories(fs::path(dir).parent_path());
        if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("mkdir", dir, errno);
      }
      fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd_ < 0) {
        if (errno == ENOENT && create) continue;
        if (errno == ENOENT) return;  // nothing to lock: no gateway
        throw_errno("open", dir, errno);
      }
      while (::flock(fd_, LOCK_EX) < 0) {
        if (errno != EINTR) throw_errno("flock", dir, errno);
      }
      struct stat st;
      if (::fstat(fd_, &st) == 0 && st.st_nlink > 0) {
        if (create) {
          ::chmod(dir.c_str(), 0700);
          if (::mkdir(exports_of(dir).c_str(), 0700) < 0 && errno != EEXIST)
            throw_errno("mkdir", exports_of(dir), errno);
        }
        return;
      }
      ::close(fd_);
      fd_ = -1;
    }
    throw Error(EAGAIN, cat("shared gateway dir ", dir, " keeps disappearing"));
  }
  ~SharedLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool held() const { return fd_ >= 0; }
  SharedLock(const SharedLock&) = delete;
  SharedLock& operator=(const SharedLock&) = delete;

 private:
  int fd_ = -1;
};

// The registry's entries (export names), temporary files left out.
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(exports_of(dir), ec)) {
    const std::string n = e.path().filename().string();
    if (!n.empty() && n[0] != '.') out.push_back(n);
  }
  return out;
}

void write_entry(const Stash& s) {
  const std::string path = entry_of(s), tmp = exports_of(s.shared_dir) + "/." + s.volume_id + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "image=" << s.image << "\n";
    if (s.read_only) f << "read-only=true\n";
    f.flush();
    if (!f) throw Error(EIO, cat("volume ", s.volume_id, ": cannot write ", tmp));
  }
  ::chmod(tmp.c_str(), 0600);
  if (::rename(tmp.c_str(), path.c_str()) < 0) throw_errno("rename", path, errno);
}

std::vector<std::string> shared_argv(const Tools& t, const Stash& s, bool with_key, int threads) {
  const std::string& dir = s.shared_dir;
  std::vector<std::string> v = {t.nbdkit, "--foreground", "--log=stderr", "--unix", s.socket,
                                "--pidfile", nbdkit_pid_file_of(dir), "--threads",
                                std::to_string(threads)};
  if (s.encrypted) v.push_back("--filter=" + t.filter);
  v.push_back(t.plugin);
  v.push_back("exports-dir=" + exports_of(dir));
  v.push_back("durable-writes=true");
  // Per export: the plugin takes a read-write export's lock for good at its
  // open, and opens a read-only one (read-only=true) without.
  v.push_back("exclusive=true");
  if (!s.node.empty()) v.push_back("node=" + s.node);
  if (!s.conf_file.empty()) v.push_back("conf=" + s.conf_file);
  if (!s.mon_host.empty()) v.push_back("mon_host=" + s.mon_host);
  if (!s.user_id.empty()) v.push_back("id=" + s.user_id);
  if (with_key) v.push_back(cat("key=-", kKeyFd));
  else if (!s.keyring.empty()) v.push_back("keyring=" + s.keyring);
  if (s.encrypted) v.push_back("passphrase-store=" + secret_root());
  return v;
}

// What a gateway that is not ready is doing, for the error (a start that
// hangs says nothing in its log): its state, each thread's name and kernel
// wait channel, and which of its pid file and socket are there.
std::string not_ready_state(const ProcessRef& g, const Stash& s) {
  auto first_line = [](const std::string& path) {
    std::ifstream f(path);
    std::string l;
    std::getline(f, l);
    return l.empty() ? std::string("-") : l;
  };
  const std::string proc = cat("/proc/", g.pid);
  const std::string stat = first_line(proc + "/stat");
  const auto paren = stat.rfind(')');
  const std::string state =
      paren != std::string::npos && paren + 2 < stat.size() ? stat.substr(paren + 2, 1) : "?";
  std::string out = cat("pid ", g.pid, " state ", state, "; threads:");
  std::error_code ec;
  int n = 0;
  for (const auto& t : fs::directory_iterator(proc + "/task", ec)) {
    if (++n > 24) {
      out += " ...";
      break;
    }
    out += cat(" ", first_line((t.path() / "comm").string()), "(",
               first_line((t.path() / "wchan").string()), ")");
  }
  const std::string pid_file = nbdkit_pid_file_of(s.shared_dir);
  struct stat st;
  out += cat("; ", pid_file, ::stat(pid_file.c_str(), &st) == 0 ? cat(" ", st.st_size, " bytes") : " absent",
             ", socket ", ::stat(s.socket.c_str(), &st) == 0 ? "present" : "absent");
  return out;
}

// Starts the shared gateway of s.shared_dir (the caller holds its lock) with
// an empty registry. Returns it once its socket is up.
ProcessRef start_shared(const Stash& s, const Tools& tools, const SecretBuffer* cephx_key,
                        std::chrono::seconds timeout, const AttachOptions& o) {
  const std::string& dir = s.shared_dir;
  progress(o, cat("starting the shared gateway ", dir, s.encrypted ? " (decrypting)" : ""));
  stop_process(stray_process(pid_file_of(dir), dir + "/"), 10s);
  for (const auto& n : entries(dir)) ::unlink((exports_of(dir) + "/" + n).c_str());
  // (the new gateway removes the .open.* markers of the old one itself)
  ::unlink(s.socket.c_str());
  ::unlink(nbdkit_pid_file_of(dir).c_str());
  ::unlink(connected_marker_of(dir).c_str());
  // A restart keeps the count the volumes' exporters were started for.
  const int workers = shared_workers(dir);
  {
    const std::string tmp = workers_file_of(dir) + ".tmp";
    std::ofstream f(tmp, std::ios::trunc);
    f << workers << "\n";
    f.flush();
    if (!f || ::rename(tmp.c_str(), workers_file_of(dir).c_str()) < 0)
      throw Error(EIO, cat("shared gateway ", dir, ": cannot record its worker count in ",
                           workers_file_of(dir)));
  }
  std::vector<PassFd> pass;
  int key_fd = -1;
  if (cephx_key) {
    key_fd = secret_pipe(*cephx_key);
    pass.push_back({key_fd, kKeyFd});
  }
  ProcessRef g;
  try {
    g = spawn_detached(shared_argv(tools, s, cephx_key != nullptr, workers), s.gateway_log,
                       pass, pid_file_of(dir));
  } catch (...) {
    if (key_fd >= 0) ::close(key_fd);
    throw;
  }
  if (key_fd >= 0) ::close(key_fd);
  try {
    wait_ready(g, cat("shared gateway ", dir), s.gateway_log, timeout, [&] {
      struct stat st;
      // nbdkit writes its pid file before the plugin connects (.after_fork);
      // the plugin's marker says it is connected.
      return ::stat(nbdkit_pid_file_of(dir).c_str(), &st) == 0 && st.st_size > 0 &&
             ::stat(s.socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
             ::stat(connected_marker_of(dir).c_str(), &st) == 0;
    });
  } catch (const Error& e) {
    const std::string state = e.code() == ETIMEDOUT && alive(g) ? not_ready_state(g, s) : "";
    stop_process(g, 10s);
    if (state.empty()) throw;
    throw Error(e.code(), cat(e.what(), "; the gateway was: ", state));
  } catch (...) {
    stop_process(g, 10s);
    throw;
  }
  return g;
}

// Stops the gateway and removes its dir when no entry is left (lock held).
void stop_if_unused(const std::string& dir) {
  if (!entries(dir).empty()) return;
  stop_process(stray_process(pid_file_of(dir), dir + "/"), 10s);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) fs::remove_all(e.path(), ec);
  ::rmdir(dir.c_str());
}

}  // namespace

int shared_threads() {
  const char* e = std::getenv("RBDGW_SHARED_GATEWAY_THREADS");
  if (!e || !*e) return kSharedThreads;
  const int n = std::atoi(e);
  if (n < 1 || n > 64)
    throw Error(EINVAL, cat("RBDGW_SHARED_GATEWAY_THREADS='", e, "': expected 1..64"));
  return n;
}

int shared_workers(const std::string& dir) {
  auto valid = [](long n) { return n >= 1 && n <= 64; };
  {
    std::ifstream f(workers_file_of(dir));
    long n = 0;
    if (f >> n && valid(n)) return static_cast<int>(n);
  }
  // A gateway started before the count was recorded: its --threads.
  if (const ProcessRef g = stray_process(pid_file_of(dir), dir + "/"); g.pid > 0) {
    std::ifstream cf(cat("/proc/", g.pid, "/cmdline"), std::ios::binary);
    for (std::string a; std::getline(cf, a, '\0');)
      if (a == "--threads" && std::getline(cf, a, '\0')) {
        const long n = std::strtol(a.c_str(), nullptr, 10);
        if (valid(n)) return static_cast<int>(n);
      }
  }
  return shared_threads();
}

int shared_idle_disconnect() {
  const char* e = std::getenv("RBDGW_IDLE_DISCONNECT");
  if (!e || !*e) return kIdleDisconnect;
  char* end = nullptr;
  const long n = std::strtol(e, &end, 10);
  if (*end != '\0' || n < 0 || n > 86400)
    throw Error(EINVAL, cat("RBDGW_IDLE_DISCONNECT='", e, "': expected 0..86400 seconds"));
  return static_cast<int>(n);
}

std::string shared_gateway_dir(const std::string& run_root, const Stash& s, const SecretBuffer& key) {
  const std::string id = cat(field(s.conf_file), field(s.mon_host), field(s.user_id), field(s.keyring),
                             field(std::string(key.view())), field(s.node),
                             field(s.encrypted ? "luks2" : "plain"));
  return cat(run_root, "/@shared-", hex16_sha256(id));
}

ProcessRef shared_gateway_process(const Stash& s) {
  if (s.shared_dir.empty()) return {};
  return stray_process(pid_file_of(s.shared_dir), s.shared_dir + "/");
}

bool gateway_up(const Stash& s) {
  if (s.shared_dir.empty()) return alive(s.gateway);
  struct stat st;
  return alive(shared_gateway_process(s)) && ::stat(entry_of(s).c_str(), &st) == 0;
}

void shared_gateway_run(Context& c) {
  Stash& s = c.s;
  const Volume& v = *c.v;
  s.shared_dir = shared_gateway_dir(fs::path(s.run_dir).parent_path().string(), s, v.cluster.key);
  s.socket = s.shared_dir + "/nbd.sock";
  s.gateway_log = s.shared_dir + "/gateway.log";
  c.save();
  const SharedLock lock(s.shared_dir, true);
  ProcessRef g = shared_gateway_process(s);
  if (!alive(g)) g = start_shared(s, c.o.tools, s.cephx_key_in_keyring ? &v.cluster.key : nullptr,
                                  c.o.timeout, c.o);
  else progress(c.o, cat("joining the shared gateway ", s.shared_dir, " (pid ", g.pid, ")"));
  s.gateway = g;
  c.save();
  write_entry(s);
}

void shared_gateway_undo(Context& c) {
  const Stash& s = c.s;
  if (s.shared_dir.empty()) return;
  const SharedLock lock(s.shared_dir, false);
  if (!lock.held()) return;
  if (::unlink(entry_of(s).c_str()) < 0 && errno != ENOENT) throw_errno("unlink", entry_of(s), errno);
  // The gateway keeps a registered image open (its lock held) also with
  // no connection, and closes it when it sees the entry gone: wait for
  // that (its .open.<volume> marker goes), so that the image is free when
  // the unmap returns (to be removed, or mapped on another node).
  const std::string marker = exports_of(s.shared_dir) + "/.open." + s.volume_id;
  const ProcessRef g = shared_gateway_process(s);
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  struct stat st;
  while (alive(g) && ::stat(marker.c_str(), &st) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      log::warn("volume ", s.volume_id, ": the shared gateway ", s.shared_dir, " (pid ", g.pid,
                ") has not closed ", s.image, " 30 s after its unmap; its log: ", log_tail(s.gateway_log));
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  stop_if_unused(s.shared_dir);
}

namespace {
// Waits (up to timeout) until the image's lock owner is the shared gateway
// s.gateway by its holder record; records its client. Returns false on
// timeout when !must, throws otherwise.
bool await_shared_lock(Stash& s, const rbd::ClusterOptions& co, std::chrono::seconds timeout, bool must,
                       const std::string& fuse_log) {
  auto cluster = rbd::Cluster::connect(co);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // A fresh handle each time: a read-only one sees the lock as of its open.
    auto img = rbd::Image::open(cluster, rbd::ImageSpec::parse(s.image), rbd::Image::Mode::read_only);
    const auto o = rbd::lock_owner(img);
    if (o && o->holder && o->holder->pid == s.gateway.pid && o->holder->node == s.node) {
      s.gateway_client = o->client;
      return true;
    }
    if (!alive(s.gateway))
      throw Error(EIO, cat("volume ", s.volume_id, ": the shared gateway exited (", exit_reason(s.gateway),
                           "); its log: ", log_tail(s.gateway_log)));
    if (must && !alive(s.fuse))
      throw Error(EIO, cat("volume ", s.volume_id, ": its FUSE exporter exited; its log: ", log_tail(fuse_log),
                           "; the shared gateway's log: ", log_tail(s.gateway_log)));
    if (std::chrono::steady_clock::now() > deadline) {
      if (!must) return false;
      std::string held;
      if (o) held = cat(" (", rbd::in_use_message(img, *o), ")");
      throw Error(ETIMEDOUT, cat("volume ", s.volume_id, ": the shared gateway did not take the exclusive "
                                 "lock of ", s.image, " within ", timeout.count(), " s", held,
                                 "; its log: ", log_tail(s.gateway_log)));
    }
    std::this_thread::sleep_for(100ms);
  }
}
}  // namespace

void shared_lock_run(Context& c) {
  Stash& s = c.s;
  if (s.read_only) return;
  await_shared_lock(s, c.v->cluster, c.o.timeout, true, s.run_dir + "/fuse.log");
  c.save();
}

namespace {
// An address without its messenger prefix ("v1:", "v2:", "any:").
std::string bare_addr(std::string a) {
  for (const char* p : {"any:", "v1:", "v2:"})
    if (a.rfind(p, 0) == 0) return a.substr(std::strlen(p));
  return a;
}

// Whether the OSD blocklist holds `client` (osd blocklist ls); nullopt when
// the monitors do not say (a cephx user without the cap): nothing known.
std::optional<bool> blocklisted(const rbd::Cluster& cluster, const std::string& client) {
  const char* cmd[] = {R"({"prefix": "osd blocklist ls", "format": "json"})"};
  char *out = nullptr, *outs = nullptr;
  size_t outlen = 0, outslen = 0;
  const int r = rados_mon_command(cluster.handle(), cmd, 1, "", 0, &out, &outlen, &outs, &outslen);
  const std::string body = out ? std::string(out, outlen) : std::string();
  const std::string why = outs ? std::string(outs, outslen) : std::string();
  if (out) rados_buffer_free(out);
  if (outs) rados_buffer_free(outs);
  if (r < 0) {
    log::warn("cannot list the OSD blocklist (", Error(-r, why).what(), "): a fence of the shared "
              "gateway's client ", client, " goes unnoticed");
    return std::nullopt;
  }
  // The addresses, then (Reef and later) the address ranges: "[...][...]".
  nlohmann::json j;
  try {
    std::istringstream in(body);
    in >> j;  // the first value only
  } catch (const nlohmann::json::exception&) {
  }
  if (!j.is_array()) {
    log::warn("the OSD blocklist is no JSON list ('", body.substr(0, 80), "'): a fence of the shared "
              "gateway's client ", client, " goes unnoticed");
    return std::nullopt;
  }
  const std::string want = bare_addr(client);
  for (const auto& e : j)
    if (e.is_object() && e.contains("addr") && e["addr"].is_string() &&
        bare_addr(e["addr"].get<std::string>()) == want)
      return true;
  return false;
}

// A fence of the shared gateway's one RADOS client (rbd lock rm of any of
// its volumes, a controller's fence: librbd blocklists the lock's client)
// fails the I/O of every volume on it while the gateway lives on. For a
// read-write volume s whose recorded client s.gateway_client is on the
// blocklist: when its lock is still that client's (the fence was of
// another volume: nobody can have written this one since), true: its
// gateway must be replaced; when the lock is now the live shared gateway's
// (a new one already took it over), false; otherwise this volume's lock
// was broken (it was the one fenced), and whether or not another client
// took it since, this node's view must never reach the image again:
// Error(ESTALE). False for a client not (or not known to be) blocklisted.
bool collateral_of_a_fence(const Stash& s, const std::optional<SecretBuffer>& key) {
  if (s.read_only || s.gateway_client.empty()) return false;
  auto cluster = rbd::Cluster::connect(cluster_options(s, key));
  if (blocklisted(cluster, s.gateway_client) != true) return false;
  auto img = rbd::Image::open(cluster, rbd::ImageSpec::parse(s.image), rbd::Image::Mode::read_only);
  const auto o = rbd::lock_owner(img);
  if (o && o->client == s.gateway_client) return true;
  const ProcessRef g = shared_gateway_process(s);
  if (o && o->holder && alive(g) && o->holder->pid == g.pid && o->holder->node == s.node) return false;
  // Another client held it since: refused naming it (as for a dead gateway).
  refuse_if_taken_since(s, key ? &*key : nullptr);
  throw Error(ESTALE, cat("volume ", s.volume_id, " (", s.image, "): its shared gateway's RADOS client ",
                          s.gateway_client, " was fenced (blocklisted) and the volume's exclusive lock is "
                          "no longer its (",
                          "broken, and nobody has held it since",
                          "): this node's cached writes are stale and must never reach the image, so it "
                          "is not served again. Unmap it with --force (rbdgw unmap --force), which "
                          "discards them"));
}
}  // namespace

void shared_readopt(Stash& s, const AttachOptions& o, const std::function<void()>& save) {
  // Up: a live gateway with this volume's entry; fine unless it was fenced
  // (asked of the cluster; when that cannot be told, up stays fine).
  const bool up = gateway_up(s) && shared_gateway_process(s) == s.gateway;
  std::optional<SecretBuffer> key;
  if (s.encrypted && !load_secret(s.volume_id, kPassphrase)) {
    if (up) return;
    throw Error(ENOKEY, cat("volume ", s.volume_id, ": passphrase not in the secret store ", secret_root(),
                            "; detach it and attach again"));
  }
  if (s.cephx_key_in_keyring && !(key = load_secret(s.volume_id, kCephx))) {
    if (up) return;
    throw Error(ENOKEY, cat("volume ", s.volume_id, ": cephx key not in the secret store ", secret_root(),
                            "; detach it and attach again"));
  }
  bool fenced = false;
  try {
    fenced = collateral_of_a_fence(s, key);
  } catch (const Error& e) {
    if (!up || e.code() == ESTALE) throw;
    log::warn("volume ", s.volume_id, ": cannot tell whether its shared gateway was fenced: ", e.what());
  }
  if (up && !fenced) return;
  {
    const SharedLock lock(s.shared_dir, true);
    ProcessRef g = shared_gateway_process(s);
    if (fenced && alive(g) && g == s.gateway) {
      // The fenced gateway itself: replaced (an empty registry, each
      // volume registers again through its own readopt).
      progress(o, cat("volume ", s.volume_id, ": the shared gateway ", s.shared_dir, " (pid ", g.pid,
                      ") was fenced (its RADOS client ", s.gateway_client, " is blocklisted): replacing it"));
      stop_process(g, 10s);
      g = {};
    }
    if (fenced || !(gateway_up(s) && g == s.gateway)) {
      // The old gateway's lock must still be ours (or free, its record
      // naming it) before this volume is served again.
      refuse_if_taken_since(s, key ? &*key : nullptr);
      if (!alive(g)) g = start_shared(s, o.tools, key ? &*key : nullptr, o.timeout, o);
      else progress(o, cat("volume ", s.volume_id, ": rejoining the shared gateway ", s.shared_dir,
                           " (pid ", g.pid, ")"));
      s.gateway = g;
      save();
      write_entry(s);
    }
  }
  // The exporter's next connection opens the export and takes the lock;
  // record the new client when that is quick (the holder record names the
  // gateway's pid either way, which refuse_if_taken_since accepts).
  if (!s.read_only) {
    try {
      if (await_shared_lock(s, cluster_options(s, key), 5s, false, {})) save();
    } catch (const Error& e) {
      log::warn(e.what());
    }
  }
}

}  // namespace rbdgw::attach::detail
