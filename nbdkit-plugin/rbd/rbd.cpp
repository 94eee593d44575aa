// nbdkit plugin `rbd`: serves one Ceph RBD image over NBD through librbd.
//
// A thin layer of nbdkit callbacks over lib/rbd: configuration is parsed by
// rbd::ExportConfig, the data path is rbd::aio_* on ONE image handle shared
// by every connection (separate handles would fight over the exclusive
// lock). The cluster is connected and the image opened once in .get_ready
// to fail early with a clear error (nbdkit then exits non-zero before it
// serves), closed again, and opened for good in .after_fork, because
// librados' threads do not survive nbdkit's fork into the background.
//
// exclusive=true (one writer, rbd/exclusive_lock.hpp): .get_ready refuses an
// image another live client holds, naming it; .after_fork takes the
// exclusive lock for good (librbd's managed mode: never handed to another
// client) and writes the holder record, or the gateway does not serve. A
// gateway that loses the lock later (rbd lock rm breaks and blocklists it)
// fails every write, zero, trim and flush from then on.
//
// Thread model: PARALLEL. Every request blocks its nbdkit worker thread on
// one librbd aio completion; the shared image handle is thread-safe.
//
// exports-dir=DIR (instead of image=): one gateway serves many images, each
// as its own NBD export, on ONE RADOS client (connected in .after_fork).
// The export a client asks for names a registry file DIR/NAME written by
// whoever maps volumes (lib/attach/step_shared_gateway.cpp), read at .open:
// "image=POOL[/NS]/IMAGE[@SNAP]" and optionally "read-only=true". An
// export's image is opened on its first connection and stays open (its
// lock held) while its registry file names it, also with no connection
// (an exporter that drops its idle connection, or one that crashed, must
// not let another client take the lock of a volume still mapped here); it
// is closed (flushed, its lock let go) when its last connection closes
// after the file is removed or names another image, or, with no
// connection, when the registry watcher sees that (inotify, and a sweep
// every few seconds); its connections share the handle. exclusive=true takes each read-write image's exclusive lock for
// good on open, per image (a read-only=true export takes none). One export's bad input (no registry file, a missing
// image, an image another client holds) fails only that export's open.
// Encryption is not offered in this mode yet (the registry refuses it).
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <openssl/crypto.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.hpp"
#include "common/log.hpp"
#include "common/open_files_limit.hpp"
#include "crypto/secret.hpp"
#include "rbd/exclusive_lock.hpp"
#include "rbd/export_config.hpp"
#include "rbd/io.hpp"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

// -D rbd.verbose=1: debug messages from lib/ (shown with nbdkit -v).
extern "C" NBDKIT_DLL_PUBLIC int rbd_debug_verbose;
int rbd_debug_verbose = 0;

namespace {

using namespace rbdgw;

// Largest request we advertise; also the cap on the preferred block size.
constexpr std::uint32_t max_request = 32u << 20;
// Extents: how much to answer per request, so that a large image stays fast.
constexpr std::uint64_t extents_cap_fast_diff = 4ull << 30;  // object map: cheap per object
constexpr std::uint64_t extents_objects_slow = 16;           // one OSD op per object

rbd::ExportConfig config;
// exports-dir=DIR: the registry of exports (empty: one image, image=).
std::string exports_dir;

// A served image and what was learnt about it when it was opened.
struct Export {
  explicit Export(rbd::Image img) : image(std::move(img)) {}
  rbd::Image image;
  rbd::CacheMode cache;
  bool fast_diff = false;
  std::uint64_t object_size = 0;
  // exclusive=true: once the lock is seen lost, it stays lost (the gateway
  // must be restarted to write again).
  std::atomic<bool> lock_lost{false};
  // exclusive=true: when the cluster last confirmed the lock as ours
  // (steady clock, ns; 0: never / to be asked again), see require_lock.
  std::atomic<std::int64_t> lock_confirmed_ns{0};
  // exclusive=true: this gateway's RADOS client, as its holder record names it.
  std::string my_client;
  std::string spec;  // for messages
  std::string name;  // exports-dir: the export name
  bool entry_read_only = false;  // exports-dir: what its registry file said
};
// One image (image=): opened in .after_fork.
std::shared_ptr<Export> served;

// exports-dir: the one RADOS client, and the open exports by name with how
// many connections use each.
std::optional<rbd::Cluster> shared_cluster;
std::mutex exports_mutex;
std::map<std::string, std::pair<std::shared_ptr<Export>, int>> open_exports;

// exports-dir markers (dot files: not registry entries).
// DIR/.connected exists while a gateway on DIR is connected to the cluster
// and serving.
std::string connected_marker() { return exports_dir + "/.connected"; }
// DIR/.open.NAME exists while export NAME's image is open, so that whoever
// removed NAME's entry can wait until the image is closed and its lock let
// go (an unmap, before the image may be removed or mapped elsewhere).
std::string open_marker(const std::string& name) { return exports_dir + "/.open." + name; }
// Creates a marker; false (errno set) if it could not.
bool create_marker(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

// A connection's handle.
struct Conn {
  std::shared_ptr<Export> e;
};
Export& ex(void* h) { return *static_cast<Conn*>(h)->e; }

std::string node_name() { return config.node.empty() ? rbd::host_name() : config.node; }

// exclusive=true: throws unless this gateway (still, or again) owns the
// image's exclusive lock. librbd lets go of its lock for a moment on its
// own: when its watch on the image was re-established (a Ceph stall longer
// than the OSD's watch timeout, 30 s) it updates or releases and re-takes
// the lock. So a lock not owned is asked for again (rbd_lock_acquire joins
// librbd's own re-acquisition); it is lost for good only when that fails:
// the client was blocklisted (rbd lock rm, ControllerUnpublish's fence) or
// another client holds the lock now.
//
// Asked of the cluster at most every kLockRecheck: librbd's
// rbd_is_exclusive_lock_owner is a synchronous OSD round trip (it asserts
// the lock on the header object), and asking it before and after every
// write took two of them per write (4K random writes at about half the
// speed of direct librbd, issue 12). What the gap leaves: a lock broken
// *with* blocklisting (rbd lock rm, a CSI fence: the default) fences the
// gateway at the OSDs at once, so its next write fails there and is
// checked at once (modify); only a lock broken without blocklisting
// (rbd_blocklist_on_break_lock=false, which Ceph itself calls unsafe) lets
// writes that began within kLockRecheck of the last confirmation through.
// That holds only when a completed write is on the OSDs (cache.writes_durable:
// rbd_cache off or writethrough, e.g. durable-writes=true, as the attach paths
// start it). librbd's default cache (writearound) completes a write before the
// OSD has it, so a blocklisted gateway's write "succeeds" and is refused at
// the OSD later: there the cluster is asked after every request (`fresh`),
// one round trip instead of two.
constexpr std::int64_t kLockRecheckNs = 500'000'000;  // 0.5 s

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void require_lock(Export& e, bool fresh = false) {
  if (!config.exclusive) return;
  const std::int64_t now = steady_ns();
  const std::int64_t seen = e.lock_confirmed_ns.load(std::memory_order_relaxed);
  if (!fresh && !e.lock_lost && seen != 0 && now - seen < kLockRecheckNs) return;
  if (!e.lock_lost && rbd::owns_lock(e.image)) {
    e.lock_confirmed_ns.store(now, std::memory_order_relaxed);
    return;
  }
  e.lock_confirmed_ns.store(0, std::memory_order_relaxed);
  if (!e.lock_lost) {
    int r = rbd_lock_acquire(e.image.handle(), RBD_LOCK_MODE_EXCLUSIVE);
    if (r == 0 && rbd::owns_lock(e.image)) {
      // Only if nobody else held the image in between (a lock broken without
      // blocklisting, then taken and let go by another writer): this
      // gateway's cache would be stale.
      const auto rec = rbd::read_holder(e.image);
      if (rec && rec->client == e.my_client) {
        nbdkit_debug("rbd: %s: the exclusive lock was let go by librbd and taken again",
                     e.spec.c_str());
        e.lock_confirmed_ns.store(steady_ns(), std::memory_order_relaxed);
        return;
      }
      rbd_lock_release(e.image.handle());
      r = -ESTALE;
    }
    if (!e.lock_lost.exchange(true))
      nbdkit_error("%s: this gateway lost the image's exclusive lock (%s: broken by another "
                   "client, e.g. rbd lock rm, which blocklists it, or taken by one): every write "
                   "and flush fails from now on; restart the gateway",
                   e.spec.c_str(),
                   r < 0 ? std::strerror(-r) : "taken again but not owned");
  }
  throw Error(EIO, cat(e.spec, ": this gateway no longer holds the image's exclusive "
                       "lock; refusing the request"));
}

// Runs a modifying request between two lock checks. A request that failed
// while the lock was not owned (librbd refuses writes then) is run once
// more after the lock was taken again; writes, zeroes, trims and flushes
// may be repeated.
template <typename F>
int modify(Export& e, F&& f) noexcept {
  return guard_void([&] {
    require_lock(e);
    try {
      f();
    } catch (const Error&) {
      if (!config.exclusive) throw;
      e.lock_confirmed_ns.store(0, std::memory_order_relaxed);  // a failure: ask the cluster now
      if (rbd::owns_lock(e.image)) throw;
      require_lock(e);
      f();
    }
    // A cached write completed before the OSD took it: ask the cluster now.
    require_lock(e, !e.cache.writes_durable);
  });
}

// Runs f, mapping any exception to nbdkit_error + nbdkit_set_error; returns
// f's result or fail.
template <typename R, typename F>
R guard(R fail, F&& f) noexcept {
  try {
    return f();
  } catch (...) {
    const ErrorReport e = current_error();
    nbdkit_error("%s", e.message.c_str());
    nbdkit_set_error(e.code);
    return fail;
  }
}

template <typename F>
int guard_void(F&& f) noexcept {
  return guard<int>(-1, [&] {
    f();
    return 0;
  });
}

void rbd_load() {
  log::set_sink([](log::Level l, std::string_view m) {
    const int n = static_cast<int>(m.size());
    if (l >= log::Level::warn)
      nbdkit_error("%s: %.*s", log::level_name(l), n, m.data());
    else
      nbdkit_debug("%.*s", n, m.data());
  });
}

int rbd_config(const char* key, const char* value) {
  return guard_void([&] {
    // A secret must come as +FILE, -FD or - (prompt): set() refuses the rest,
    // as nbdkit_read_password would take a literal secret from argv.
    if (std::strcmp(key, "exports-dir") == 0) {
      if (!exports_dir.empty()) throw Error(EINVAL, "parameter 'exports-dir' given more than once");
      if (value[0] != '/') throw Error(EINVAL, cat("parameter 'exports-dir': '", value, "' is not an absolute path"));
      exports_dir = value;
      return;
    }
    // A relative file name is taken from where nbdkit was started: nbdkit
    // changes to / when it daemonizes, before .after_fork opens the image.
    if ((std::strcmp(key, "conf") == 0 || std::strcmp(key, "keyring") == 0) && value[0] != '\0' &&
        value[0] != '/') {
      char* abs = nbdkit_absolute_path(value);
      if (!abs) throw Error(EINVAL, cat("parameter '", key, "': '", value, "': no absolute path"));
      const std::string a(abs);
      std::free(abs);
      return config.set(key, a);
    }
    if (!rbd::ExportConfig::is_secret_key(key) || (value[0] != '+' && value[0] != '-'))
      return config.set(key, value);
    // +FILE and -FD: every byte to the end, as cryptsetup --key-file reads
    // a passphrase (nbdkit_read_password keeps one line only); - : typed at
    // a terminal, one line.
    std::optional<SecretBuffer> secret = read_secret_parameter(value, key);
    if (!secret) {
      char* raw = nullptr;
      if (nbdkit_read_password(value, &raw) == -1)
        throw Error(EINVAL, cat("parameter '", key, "': could not read the secret"));
      secret.emplace(raw, std::strlen(raw));
      OPENSSL_cleanse(raw, std::strlen(raw));
      std::free(raw);
    }
    // A cephx key is base64: surrounding whitespace is never part of it.
    if (std::strcmp(key, "key") == 0) secret = trim_whitespace(*secret);
    config.set_secret(key, std::move(*secret));
  });
}

int rbd_config_complete() {
  return guard_void([] {
    if (!exports_dir.empty()) {
      if (config.spec)
        throw Error(EINVAL, "parameters 'exports-dir' and 'image' exclude each other");
      if (config.encryption)
        throw Error(EINVAL, "parameter 'encryption-format' is not offered with 'exports-dir'");
      // The rules across the other parameters, as for one image.
      config.spec = rbd::ImageSpec{"rbd", "", "-", ""};
      try {
        config.validate();
      } catch (...) {
        config.spec.reset();
        throw;
      }
      config.spec.reset();
      if (rbd_debug_verbose) log::set_level(log::Level::debug);
      // A node's shared gateway holds 3 descriptors per connection of every
      // volume (a busy volume has up to 16): at a soft limit of 1024 about
      // 20 busy volumes made accept() fail with EMFILE, which nbdkit 1.32
      // retries at once (a busy loop logging a line each time) while new
      // connections hang.
      try {
        const rlimit was = raise_open_files_limit();
        nbdkit_debug("rbd: open files limit %llu, raised to %llu",
                     static_cast<unsigned long long>(was.rlim_cur),
                     static_cast<unsigned long long>(was.rlim_max));
      } catch (const Error& e) {
        nbdkit_error("rbd: %s", e.what());
      }
      return;
    }
    config.validate();
    if (rbd_debug_verbose) log::set_level(log::Level::debug);
  });
}

// Before the fork: fail now, while nbdkit can still exit non-zero. Leave
// no thread behind: nbdkit reopens stdin and stdout right after and
// expects fds 0 and 1 ("open: Success" when a librados messenger thread
// took one first). image= connects, checks and shuts down here; exports-dir
// checks the cluster in a child process and connects in .after_fork.
int rbd_get_ready() {
  return guard_void([] {
    if (!exports_dir.empty()) {
      ::unlink(connected_marker().c_str());  // an earlier gateway's
      rbd::Cluster::check_in_child(config.cluster);
      return;
    }
    rbd::Image img = rbd::open_export(config);
    if (config.exclusive) rbd::check_available(img, node_name());
    img.close();
  });
}

// An opened image as an Export: its exclusive lock taken for good
// (exclusive=true), its cache mode and allocation map learnt.
std::shared_ptr<Export> make_export(rbd::Image img, const std::string& spec) {
  std::string client;
  // exports-dir: a read-only export (read-only=true) takes no lock.
  if (config.exclusive && !img.read_only()) {
    const rbd::Holder h = rbd::acquire_for_life(img, rbd::this_process(node_name()));
    client = h.client;
    nbdkit_debug("rbd: %s: holding the exclusive lock for good as %s on node %s",
                 spec.c_str(), h.client.c_str(), h.node.c_str());
  }
  const rbd::ImageInfo info = img.info();
  auto e = std::make_shared<Export>(std::move(img));
  e->spec = spec;
  e->my_client = client;
  e->object_size = info.object_size;
  e->cache = rbd::cache_mode(e->image);
  e->fast_diff = rbd::has_fast_diff(e->image);
  nbdkit_debug("rbd: serving %s (%s): %" PRIu64 " bytes, object size %" PRIu64
               ", FUA %s, read cache %s, extents %s",
               spec.c_str(), e->image.read_only() ? "read-only" : "read-write",
               e->image.size(), e->object_size, e->cache.writes_durable ? "native" : "emulated",
               e->cache.read_cache ? "on" : "off",
               config.encryption ? "off (encrypted)" : e->fast_diff ? "fast-diff" : "per object");
  return e;
}

void start_registry_watcher();
void stop_registry_watcher();

int rbd_after_fork() {
  return guard_void([] {
    if (!exports_dir.empty()) {
      shared_cluster.emplace(rbd::Cluster::connect(config.cluster));
      nbdkit_debug("rbd: serving the exports registered in %s as %s", exports_dir.c_str(),
                   shared_cluster->name().c_str());
      start_registry_watcher();
      // nbdkit wrote its pid file before .after_fork: this marker is what
      // says the gateway is connected and serving (rbdgw waits for it).
      if (!create_marker(connected_marker()))
        throw Error(errno, cat("create ", connected_marker(), ": ", std::strerror(errno)));
      return;
    }
    served = make_export(rbd::open_export(config), config.spec->str());
  });
}

void rbd_cleanup() {
  if (!exports_dir.empty() && shared_cluster) ::unlink(connected_marker().c_str());
  stop_registry_watcher();
  (void)guard_void([] {
    if (served) served->image.close();  // flushes the librbd cache
    served.reset();
    std::lock_guard<std::mutex> g(exports_mutex);
    for (auto& [name, ec] : open_exports) ec.first->image.close();
    open_exports.clear();
    shared_cluster.reset();
  });
}

// exports-dir: what the registry file of export `name` says. Throws
// Error(ENOENT) naming the export when it is not registered, EINVAL for a
// malformed entry.
struct Entry {
  rbd::ImageSpec spec;
  bool read_only = false;
};
Entry read_entry(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos || name.size() > 255)
    throw Error(ENOENT, cat("export '", name, "': no such export (names are registry file names in ",
                            exports_dir, ")"));
  const std::string path = exports_dir + "/" + name;
  std::ifstream in(path);
  if (!in) throw Error(ENOENT, cat("export '", name, "': not registered (no ", path, ")"));
  std::optional<rbd::ImageSpec> spec;
  Entry e;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    const std::string k = line.substr(0, eq), v = eq == std::string::npos ? "" : line.substr(eq + 1);
    if (k == "image")
      spec = rbd::ImageSpec::parse(v);
    else if (k == "read-only" && (v == "true" || v == "false"))
      e.read_only = v == "true";
    else
      throw Error(EINVAL, cat("export '", name, "': ", path, ": unknown or malformed line '", k, "'"));
  }
  if (!spec) throw Error(EINVAL, cat("export '", name, "': ", path, " names no image"));
  if (config.exclusive && !spec->snap.empty() && !e.read_only)
    throw Error(EINVAL, cat("export '", name, "': a snapshot is read-only and takes no lock"));
  e.spec = *spec;
  return e;
}

// exports-dir: whether the registry file of e still names its image as at
// its open (the same image spec, the same read-only=).
// Only a file that is gone (ENOENT) or reads as another image counts as
// unregistered: a file that cannot be read for another reason (EMFILE,
// ENOMEM...) keeps the export open, its lock held, until it can be.
bool still_registered(const Export& e) {
  const std::string path = exports_dir + "/" + e.name;
  struct stat st;
  try {
    const Entry en = read_entry(e.name);
    return en.spec.str() == e.spec && en.read_only == e.entry_read_only;
  } catch (const Error& err) {
    if (err.code() == EINVAL) return false;  // it names no image now
  } catch (...) {
  }
  // Not read: unregistered only if the file is gone.
  return ::stat(path.c_str(), &st) == 0 || errno != ENOENT;
}

// exports-dir: closes an export's image (exports_mutex held; flushes, lets
// its lock go). Errors are logged: the export is gone either way.
void close_export(Export& e, const char* why) {
  nbdkit_debug("rbd: export '%s' (%s): %s, closing the image", e.name.c_str(), e.spec.c_str(), why);
  (void)guard_void([&] { e.image.close(); });
  ::unlink(open_marker(e.name).c_str());
}

// exports-dir: the export `name`, opened on its first connection (or kept
// open since, while registered).
std::shared_ptr<Export> open_shared(const std::string& name) {
  std::lock_guard<std::mutex> g(exports_mutex);
  if (auto it = open_exports.find(name); it != open_exports.end()) {
    if (it->second.second > 0 || still_registered(*it->second.first)) {
      ++it->second.second;
      return it->second.first;
    }
    // Kept open with no connection, and its registry file changed since.
    close_export(*it->second.first, "registry entry changed");
    open_exports.erase(it);
  }
  const Entry en = read_entry(name);
  rbd::Image img = rbd::Image::open(*shared_cluster, en.spec,
                                    en.read_only || !en.spec.snap.empty() ? rbd::Image::Mode::read_only
                                                                          : rbd::Image::Mode::read_write);
  if (config.durable_writes && !rbd::cache_mode(img).writes_durable)
    throw Error(EINVAL, cat(img.spec(), ": its own configuration (rbd_cache, rbd_cache_policy) "
                            "acknowledges writes before they are on the OSDs; durable-writes=true "
                            "refuses to serve it"));
  auto e = make_export(std::move(img), en.spec.str());
  e->name = name;
  e->entry_read_only = en.read_only;
  (void)create_marker(open_marker(name));  // best effort: unmap waits for it only if it exists
  open_exports.emplace(name, std::make_pair(e, 1));
  return e;
}

void close_shared(const std::shared_ptr<Export>& e) {
  std::lock_guard<std::mutex> g(exports_mutex);
  auto it = open_exports.find(e->name);
  if (it == open_exports.end() || it->second.first != e || --it->second.second > 0) return;
  if (still_registered(*e)) {
    nbdkit_debug("rbd: export '%s' (%s): no connection left; kept open, its lock held, while "
                 "its registry file names it", e->name.c_str(), e->spec.c_str());
    return;
  }
  close_export(*e, "last connection closed and no longer registered");
  open_exports.erase(it);
}

// exports-dir: closes every export with no connection whose registry file
// is gone or names another image now.
void sweep_unregistered() {
  std::lock_guard<std::mutex> g(exports_mutex);
  for (auto it = open_exports.begin(); it != open_exports.end();) {
    if (it->second.second == 0 && !still_registered(*it->second.first)) {
      close_export(*it->second.first, "no longer registered");
      it = open_exports.erase(it);
    } else {
      ++it;
    }
  }
}

// exports-dir: the registry watcher (started in .after_fork, stopped in
// .cleanup): sweeps on every change inotify reports in the registry dir,
// and every 2 s in any case (inotify may be unavailable or overflow).
std::thread registry_watcher;
int watcher_stop_fd = -1;

void watch_registry(int ifd) {
  for (;;) {
    pollfd p[2] = {{watcher_stop_fd, POLLIN, 0}, {ifd, POLLIN, 0}};
    const int r = ::poll(p, ifd >= 0 ? 2 : 1, 2000);
    if (r > 0 && (p[0].revents & POLLIN)) break;
    if (r > 0 && (p[1].revents & POLLIN)) {
      char buf[4096];
      while (::read(ifd, buf, sizeof buf) > 0) {
      }
    }
    sweep_unregistered();
  }
  if (ifd >= 0) ::close(ifd);
}

void start_registry_watcher() {
  // Markers of an earlier gateway on this dir: nothing of it is open now.
  if (DIR* d = ::opendir(exports_dir.c_str())) {
    while (const dirent* de = ::readdir(d))
      if (std::strncmp(de->d_name, ".open.", 6) == 0) ::unlinkat(::dirfd(d), de->d_name, 0);
    ::closedir(d);
  }
  watcher_stop_fd = ::eventfd(0, EFD_CLOEXEC);
  if (watcher_stop_fd < 0) throw Error(errno, cat("eventfd: ", std::strerror(errno)));
  int ifd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (ifd >= 0 && ::inotify_add_watch(ifd, exports_dir.c_str(),
                                      IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
    nbdkit_debug("rbd: inotify on %s: %s; sweeping every 2 s only", exports_dir.c_str(),
                 std::strerror(errno));
    ::close(ifd);
    ifd = -1;
  }
  registry_watcher = std::thread(watch_registry, ifd);
}

void stop_registry_watcher() {
  if (!registry_watcher.joinable()) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t w = ::write(watcher_stop_fd, &one, sizeof one);
  registry_watcher.join();
  ::close(watcher_stop_fd);
  watcher_stop_fd = -1;
}

void rbd_dump_plugin() {
  int major = 0, minor = 0, extra = 0;
  rbd_version(&major, &minor, &extra);
  std::printf("rbd_librbd_version=%d.%d.%d\n", major, minor, extra);
  std::printf("rbd_encryption=luks1,luks2\n");
  std::printf("rbd_secret_parameters=key,encryption-passphrase\n");
}

// One image: every connection shares it. exports-dir: the export the
// client named, opened now if no other connection has it open.
void* rbd_open(int readonly) {
  return guard<void*>(nullptr, [] {
    if (exports_dir.empty()) return static_cast<void*>(new Conn{served});
    const char* n = nbdkit_export_name();
    return static_cast<void*>(new Conn{open_shared(n ? n : "")});
  });
}

void rbd_close(void* h) {
  auto* c = static_cast<Conn*>(h);
  if (!exports_dir.empty()) (void)guard_void([&] { close_shared(c->e); });
  delete c;
  // nbdkit has joined the connection's worker threads: give back what their
  // malloc arenas kept of the requests' buffers (nbdkit's 1 MiB write
  // buffers, librbd's). Without this a gateway whose connections come and
  // go (idle disconnects of a shared gateway's volumes) kept its busiest
  // moment's memory: 94 MiB after 128 MiB of writes on 4 connections, 57-61
  // with it (measured by hand). At most every kTrimEveryNs: a trim walks
  // every arena, locking each in turn, and a fragmented heap took up to
  // ~0.2 s per call (review RN), which other connections' requests would
  // wait for at every close of many idle volumes.
  constexpr std::int64_t kTrimEveryNs = 5'000'000'000;
  static std::atomic<std::int64_t> last_trim{0};
  const std::int64_t now = steady_ns();
  std::int64_t last = last_trim.load(std::memory_order_relaxed);
  if (now - last >= kTrimEveryNs && last_trim.compare_exchange_strong(last, now))
    ::malloc_trim(0);
}

int64_t rbd_get_size(void* h) {
  // Asked once per connection: a resize is seen by new connections (librbd
  // refreshes the handle on the header watch notification).
  return guard<int64_t>(-1, [&] { return static_cast<int64_t>(ex(h).image.size()); });
}

int rbd_can_write(void* h) { return ex(h).image.read_only() ? 0 : 1; }
int rbd_can_flush(void*) { return 1; }
int rbd_can_trim(void*) { return 1; }
int rbd_can_zero(void*) { return 1; }  // native: write-zeroes
// write-zeroes is object removal/truncation on the OSDs, except through the
// encryption layer, which has to write encrypted zeros.
int rbd_can_fast_zero(void*) { return config.encryption ? 0 : 1; }
int rbd_can_fua(void* h) { return ex(h).cache.writes_durable ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_EMULATE; }
// One handle (and cache) for all connections: a flush on one covers all.
int rbd_can_multi_conn(void*) { return 1; }
// Offsets of an encrypted image differ from the allocation map's.
int rbd_can_extents(void*) { return config.encryption ? 0 : 1; }
int rbd_can_cache(void* h) { return ex(h).cache.read_cache ? NBDKIT_CACHE_EMULATE : NBDKIT_CACHE_NONE; }
int rbd_is_rotational(void*) { return 0; }

int rbd_block_size(void* h, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  *minimum = 1;
  *preferred = static_cast<uint32_t>(std::min<std::uint64_t>(ex(h).object_size, max_request));
  if (*preferred < 512) *preferred = 512;
  *maximum = max_request;
  return 0;
}

int rbd_pread(void* h, void* buf, uint32_t count, uint64_t offset, uint32_t) {
  return guard_void([&] { rbd::aio_read(ex(h).image, offset, buf, count); });
}

// With native FUA a completed write is already durable (see rbd_can_fua),
// so the flag needs no action here.
int rbd_pwrite(void* h, const void* buf, uint32_t count, uint64_t offset, uint32_t) {
  Export& e = ex(h);
  return modify(e, [&] { rbd::aio_write(e.image, offset, buf, count); });
}

int rbd_flush(void* h, uint32_t) {
  Export& e = ex(h);
  return modify(e, [&] { rbd::aio_flush(e.image); });
}

int rbd_trim(void* h, uint32_t count, uint64_t offset, uint32_t) {
  Export& e = ex(h);
  return modify(e, [&] { rbd::aio_discard(e.image, offset, count); });
}

int rbd_zero(void* h, uint32_t count, uint64_t offset, uint32_t) {
  Export& e = ex(h);
  return modify(e, [&] { rbd::aio_write_zeroes(e.image, offset, count); });
}

int rbd_extents(void* h, uint32_t count, uint64_t offset, uint32_t, nbdkit_extents* extents) {
  Export* const served = &ex(h);
  return guard_void([&] {
    const std::uint64_t cap =
        served->fast_diff ? extents_cap_fast_diff : extents_objects_slow * served->object_size;
    const std::uint64_t len = std::min<std::uint64_t>(count, cap);
    std::uint64_t pos = offset;
    auto add = [&](std::uint64_t off, std::uint64_t n, uint32_t type) {
      if (n > 0 && nbdkit_add_extent(extents, off, n, type) == -1)
        throw Error(errno ? errno : EIO, cat("nbdkit_add_extent: ", served->spec));
    };
    for (const rbd::Extent& e : rbd::allocated_extents(served->image, offset, len, served->fast_diff)) {
      add(pos, e.off - pos, NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
      add(e.off, e.len, 0);
      pos = e.off + e.len;
    }
    add(pos, offset + len - pos, NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
  });
}

nbdkit_plugin make_plugin() {
  nbdkit_plugin p{};
  p.name = "rbd";
  p.longname = "rbdgw Ceph RBD plugin";
  p.version = "0.2.0";
  p.description = "Serves a Ceph RBD image (or snapshot) through librbd";
  p.load = rbd_load;
  p.config = rbd_config;
  p.config_complete = rbd_config_complete;
  p.config_help =
      "[image=]POOL[/NAMESPACE]/IMAGE[@SNAP]  The image to serve (a snapshot read-only).\n"
      "conf=FILE                  ceph.conf (default: $CEPH_CONF, /etc/ceph/ceph.conf).\n"
      "id=USER                    cephx user without 'client.' (default: admin).\n"
      "keyring=FILE               Keyring with the user's key.\n"
      "key=+FILE|-FD|-            The user's cephx key (instead of a keyring).\n"
      "mon_host=ADDRS             Monitor addresses (overrides the conf file).\n"
      "timeout=SECS               Connect timeout (default: 30).\n"
      "ceph.OPTION=VALUE          Any other Ceph client option, e.g. ceph.rbd_cache=false.\n"
      "durable-writes=true        Every completed write is on the OSDs (librbd cache off;\n"
      "                           an image whose own config would cache writes is refused).\n"
      "exclusive=true             One writer: hold the image's exclusive lock for the\n"
      "                           gateway's whole life; refuse to start while another\n"
      "                           client holds it; fail writes once it is lost.\n"
      "node=NAME                  Node named in the holder record (default: host name).\n"
      "exports-dir=DIR            Instead of image=: serve every image registered in DIR\n"
      "                           (file NAME: image=SPEC [read-only=true]) as export NAME.\n"
      "encryption-format=luks1|luks2  Load librbd encryption (rbd encryption format).\n"
      "encryption-passphrase=+FILE|-FD|-  Its passphrase (from a file or fd: every byte,\n"
      "                           as cryptsetup --key-file reads it).";
  p.magic_config_key = "image";
  p.get_ready = rbd_get_ready;
  p.after_fork = rbd_after_fork;
  p.cleanup = rbd_cleanup;
  p.dump_plugin = rbd_dump_plugin;
  p.open = rbd_open;
  p.close = rbd_close;
  p.get_size = rbd_get_size;
  p.block_size = rbd_block_size;
  p.can_write = rbd_can_write;
  p.can_flush = rbd_can_flush;
  p.can_trim = rbd_can_trim;
  p.can_zero = rbd_can_zero;
  p.can_fast_zero = rbd_can_fast_zero;
  p.can_fua = rbd_can_fua;
  p.can_multi_conn = rbd_can_multi_conn;
  p.can_extents = rbd_can_extents;
  p.can_cache = rbd_can_cache;
  p.is_rotational = rbd_is_rotational;
  p.pread = rbd_pread;
  p.pwrite = rbd_pwrite;
  p.flush = rbd_flush;
  p.trim = rbd_trim;
  p.zero = rbd_zero;
  p.extents = rbd_extents;
  p.errno_is_preserved = 0;
  return p;
}

nbdkit_plugin plugin = make_plugin();

}  // namespace

NBDKIT_REGISTER_PLUGIN(plugin)
