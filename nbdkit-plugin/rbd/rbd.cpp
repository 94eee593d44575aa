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
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <openssl/crypto.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "common/error.hpp"
#include "common/log.hpp"
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

// The served image and what was learnt about it in .after_fork.
struct Export {
  rbd::Image image;
  rbd::CacheMode cache;
  bool fast_diff = false;
  std::uint64_t object_size = 0;
};
std::optional<Export> served;

// exclusive=true: once the lock is seen lost, it stays lost (the gateway
// must be restarted to write again).
std::atomic<bool> lock_lost{false};
// exclusive=true: this gateway's RADOS client, as its holder record names it.
std::string my_client;

std::string node_name() { return config.node.empty() ? rbd::host_name() : config.node; }

// exclusive=true: throws unless this gateway (still, or again) owns the
// image's exclusive lock. librbd lets go of its lock for a moment on its
// own: when its watch on the image was re-established (a Ceph stall longer
// than the OSD's watch timeout, 30 s) it updates or releases and re-takes
// the lock. So a lock not owned is asked for again (rbd_lock_acquire joins
// librbd's own re-acquisition); it is lost for good only when that fails:
// the client was blocklisted (rbd lock rm, ControllerUnpublish's fence) or
// another client holds the lock now.
void require_lock() {
  if (!config.exclusive) return;
  if (!lock_lost && rbd::owns_lock(served->image)) return;
  if (!lock_lost) {
    int r = rbd_lock_acquire(served->image.handle(), RBD_LOCK_MODE_EXCLUSIVE);
    if (r == 0 && rbd::owns_lock(served->image)) {
      // Only if nobody else held the image in between (a lock broken without
      // blocklisting, then taken and let go by another writer): this
      // gateway's cache would be stale.
      const auto rec = rbd::read_holder(served->image);
      if (rec && rec->client == my_client) {
        nbdkit_debug("rbd: %s: the exclusive lock was let go by librbd and taken again",
                     config.spec->str().c_str());
        return;
      }
      rbd_lock_release(served->image.handle());
      r = -ESTALE;
    }
    if (!lock_lost.exchange(true))
      nbdkit_error("%s: this gateway lost the image's exclusive lock (%s: broken by another "
                   "client, e.g. rbd lock rm, which blocklists it, or taken by one): every write "
                   "and flush fails from now on; restart the gateway",
                   config.spec->str().c_str(),
                   r < 0 ? std::strerror(-r) : "taken again but not owned");
  }
  throw Error(EIO, cat(config.spec->str(), ": this gateway no longer holds the image's exclusive "
                       "lock; refusing the request"));
}

// Runs a modifying request between two lock checks. A request that failed
// while the lock was not owned (librbd refuses writes then) is run once
// more after the lock was taken again; writes, zeroes, trims and flushes
// may be repeated.
template <typename F>
int modify(F&& f) noexcept {
  return guard_void([&] {
    require_lock();
    try {
      f();
    } catch (const Error&) {
      if (!config.exclusive || rbd::owns_lock(served->image)) throw;
      require_lock();
      f();
    }
    require_lock();
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
    config.validate();
    if (rbd_debug_verbose) log::set_level(log::Level::debug);
  });
}

// Before the fork: fail now, while nbdkit can still exit non-zero.
int rbd_get_ready() {
  return guard_void([] {
    rbd::Image img = rbd::open_export(config);
    if (config.exclusive) rbd::check_available(img, node_name());
    img.close();
  });
}

int rbd_after_fork() {
  return guard_void([] {
    rbd::Image img = rbd::open_export(config);
    if (config.exclusive) {
      const rbd::Holder h = rbd::acquire_for_life(img, rbd::this_process(node_name()));
      my_client = h.client;
      nbdkit_debug("rbd: %s: holding the exclusive lock for good as %s on node %s",
                   config.spec->str().c_str(), h.client.c_str(), h.node.c_str());
    }
    const rbd::ImageInfo info = img.info();
    Export e{std::move(img), {}, false, info.object_size};
    e.cache = rbd::cache_mode(e.image);
    e.fast_diff = rbd::has_fast_diff(e.image);
    nbdkit_debug("rbd: serving %s (%s): %" PRIu64 " bytes, object size %" PRIu64
                 ", FUA %s, read cache %s, extents %s",
                 config.spec->str().c_str(), e.image.read_only() ? "read-only" : "read-write",
                 e.image.size(), e.object_size, e.cache.writes_durable ? "native" : "emulated",
                 e.cache.read_cache ? "on" : "off",
                 config.encryption ? "off (encrypted)" : e.fast_diff ? "fast-diff" : "per object");
    served.emplace(std::move(e));
  });
}

void rbd_cleanup() {
  (void)guard_void([] {
    if (served) served->image.close();  // flushes the librbd cache
    served.reset();
  });
}

void rbd_dump_plugin() {
  int major = 0, minor = 0, extra = 0;
  rbd_version(&major, &minor, &extra);
  std::printf("rbd_librbd_version=%d.%d.%d\n", major, minor, extra);
  std::printf("rbd_encryption=luks1,luks2\n");
  std::printf("rbd_secret_parameters=key,encryption-passphrase\n");
}

// One shared image: connections need no state of their own.
void* rbd_open(int readonly) {
  static char handle;
  return &handle;
}

int64_t rbd_get_size(void*) {
  // Asked once per connection: a resize is seen by new connections (librbd
  // refreshes the handle on the header watch notification).
  return guard<int64_t>(-1, [] { return static_cast<int64_t>(served->image.size()); });
}

int rbd_can_write(void*) { return served->image.read_only() ? 0 : 1; }
int rbd_can_flush(void*) { return 1; }
int rbd_can_trim(void*) { return 1; }
int rbd_can_zero(void*) { return 1; }  // native: write-zeroes
// write-zeroes is object removal/truncation on the OSDs, except through the
// encryption layer, which has to write encrypted zeros.
int rbd_can_fast_zero(void*) { return config.encryption ? 0 : 1; }
int rbd_can_fua(void*) { return served->cache.writes_durable ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_EMULATE; }
// One handle (and cache) for all connections: a flush on one covers all.
int rbd_can_multi_conn(void*) { return 1; }
// Offsets of an encrypted image differ from the allocation map's.
int rbd_can_extents(void*) { return config.encryption ? 0 : 1; }
int rbd_can_cache(void*) { return served->cache.read_cache ? NBDKIT_CACHE_EMULATE : NBDKIT_CACHE_NONE; }
int rbd_is_rotational(void*) { return 0; }

int rbd_block_size(void*, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  *minimum = 1;
  *preferred = static_cast<uint32_t>(std::min<std::uint64_t>(served->object_size, max_request));
  if (*preferred < 512) *preferred = 512;
  *maximum = max_request;
  return 0;
}

int rbd_pread(void*, void* buf, uint32_t count, uint64_t offset, uint32_t) {
  return guard_void([&] { rbd::aio_read(served->image, offset, buf, count); });
}

// With native FUA a completed write is already durable (see rbd_can_fua),
// so the flag needs no action here.
int rbd_pwrite(void*, const void* buf, uint32_t count, uint64_t offset, uint32_t) {
  return modify([&] { rbd::aio_write(served->image, offset, buf, count); });
}

int rbd_flush(void*, uint32_t) {
  return modify([] { rbd::aio_flush(served->image); });
}

int rbd_trim(void*, uint32_t count, uint64_t offset, uint32_t) {
  return modify([&] { rbd::aio_discard(served->image, offset, count); });
}

int rbd_zero(void*, uint32_t count, uint64_t offset, uint32_t) {
  return modify([&] { rbd::aio_write_zeroes(served->image, offset, count); });
}

int rbd_extents(void*, uint32_t count, uint64_t offset, uint32_t, nbdkit_extents* extents) {
  return guard_void([&] {
    const std::uint64_t cap =
        served->fast_diff ? extents_cap_fast_diff : extents_objects_slow * served->object_size;
    const std::uint64_t len = std::min<std::uint64_t>(count, cap);
    std::uint64_t pos = offset;
    auto add = [&](std::uint64_t off, std::uint64_t n, uint32_t type) {
      if (n > 0 && nbdkit_add_extent(extents, off, n, type) == -1)
        throw Error(errno ? errno : EIO, cat("nbdkit_add_extent: ", config.spec->str()));
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
      "encryption-format=luks1|luks2  Load librbd encryption (rbd encryption format).\n"
      "encryption-passphrase=+FILE|-FD|-  Its passphrase (from a file or fd: every byte,\n"
      "                           as cryptsetup --key-file reads it).";
  p.magic_config_key = "image";
  p.get_ready = rbd_get_ready;
  p.after_fork = rbd_after_fork;
  p.cleanup = rbd_cleanup;
  p.dump_plugin = rbd_dump_plugin;
  p.open = rbd_open;
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
