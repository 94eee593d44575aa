// rbdgw-fuse: exposes one NBD export (on a unix socket) as a single regular
// file through FUSE, for a loop device to sit on.
//
//   rbdgw-fuse [--name NAME] [--readonly] [--connections N]
//              [--reconnect-timeout SECONDS] [--size-file PATH] SOCKET FILE
//
// FILE (an existing regular file) is covered by a FUSE mount whose root is
// the export. Unlike nbdfuse it survives a restart of the NBD server: a
// request that fails because the connection broke is retried on a new
// connection to the same socket until the server is back (or the reconnect
// timeout passes, then EIO). NBD reads and writes are idempotent, so a
// retried request is safe; fsync maps to NBD FLUSH, so what the filesystem
// above flushed survives a kill -9 of the server.
//
// SIGUSR1 re-reads the export size (after the image grew) on a new
// connection, without a restart: pooled connections made before are
// replaced as they are next used (the server checks requests against the
// size of their connection), and the new size is written (atomically, as
// decimal text) to the --size-file, telling the sender that the file shows
// it (after at most the 1 s attribute timeout).
//
// Runs in the foreground; SIGTERM/SIGINT unmount and exit. Messages go to
// stderr (the caller's log file).
//
// Thread safety: FUSE calls come from several threads; each borrows one
// connection of the pool for the duration of one NBD request.
#define FUSE_USE_VERSION 312
#include <fuse.h>
#include <libnbd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string socket, file, name = "rbdgw", size_file;
  bool read_only = false;
  int connections = 4;
  int reconnect_timeout = 300;
};
Options opts;

void say(const std::string& msg) { std::fprintf(stderr, "rbdgw-fuse: %s\n", msg.c_str()); }

// Export properties, refreshed on every (re)connect.
std::atomic<std::int64_t> export_size{0};
std::atomic<bool> can_flush{false}, can_trim{false}, can_zero{false};

// A pool of connections; a slot holds nullptr until (re)connected.
class Pool {
 public:
  // n slots: `first` and n - 1 that connect on first use.
  Pool(int n, nbd_handle* first) : free_(static_cast<std::size_t>(n - 1), nullptr) {
    free_.push_back(first);
  }
  ~Pool() {
    for (nbd_handle* h : free_)
      if (h) nbd_close(h);
  }
  nbd_handle* borrow() {
    std::unique_lock lk(m_);
    cv_.wait(lk, [&] { return !free_.empty(); });
    nbd_handle* h = free_.back();
    free_.pop_back();
    return h;
  }
  void give_back(nbd_handle* h) {
    {
      std::lock_guard lk(m_);
      free_.push_back(h);
    }
    cv_.notify_one();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<nbd_handle*> free_;
};
Pool* pool;

// A new connection, or nullptr (with the reason in *why).
nbd_handle* connect_once(std::string* why) {
  nbd_handle* h = nbd_create();
  if (!h) {
    *why = nbd_get_error();
    return nullptr;
  }
  if (nbd_connect_unix(h, opts.socket.c_str()) < 0) {
    *why = nbd_get_error() ? nbd_get_error() : "connect failed";
    nbd_close(h);
    return nullptr;
  }
  std::int64_t size = nbd_get_size(h);
  if (size < 0) {
    *why = nbd_get_error();
    nbd_close(h);
    return nullptr;
  }
  std::int64_t old = export_size.exchange(size);
  if (old != 0 && old != size) say("export size changed from " + std::to_string(old) + " to " + std::to_string(size));
  can_flush = nbd_can_flush(h) == 1;
  can_trim = nbd_can_trim(h) == 1;
  can_zero = nbd_can_zero(h) == 1;
  return h;
}

// Runs op(h) (an NBD call returning -1 on failure) on a pooled connection,
// reconnecting and retrying while the connection is what failed. Returns 0
// or -errno.
template <typename Op>
int with_connection(Op op) {
  const auto deadline = Clock::now() + std::chrono::seconds(opts.reconnect_timeout);
  auto backoff = std::chrono::milliseconds(20);
  bool reported = false;
  nbd_handle* h = pool->borrow();
  if (h && nbd_get_size(h) != export_size) {  // made before a size refresh
    nbd_close(h);
    h = nullptr;
  }
  for (;;) {
    std::string why;
    if (!h) h = connect_once(&why);
    if (h) {
      if (reported) say("reconnected to " + opts.socket);
      if (op(h) != -1) {
        pool->give_back(h);
        return 0;
      }
      int err = nbd_get_errno();
      why = nbd_get_error() ? nbd_get_error() : "request failed";
      if (nbd_aio_is_ready(h) == 1) {  // the server answered with an error
        pool->give_back(h);
        return -(err ? err : EIO);
      }
      nbd_close(h);
      h = nullptr;
    }
    if (!reported) {
      say("connection to " + opts.socket + " lost (" + why + "); reconnecting");
      reported = true;
    }
    if (Clock::now() > deadline) {
      say("giving up after " + std::to_string(opts.reconnect_timeout) + " s: " + why);
      pool->give_back(nullptr);
      return -EIO;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
}

// Writes the export size to --size-file (temp file + rename).
void write_size_file() {
  if (opts.size_file.empty()) return;
  const std::string tmp = opts.size_file + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) {
    say(tmp + ": " + std::strerror(errno));
    return;
  }
  std::fprintf(f, "%lld\n", static_cast<long long>(export_size.load()));
  if (std::fclose(f) != 0 || std::rename(tmp.c_str(), opts.size_file.c_str()) != 0)
    say(opts.size_file + ": " + std::strerror(errno));
}

// Serves SIGUSR1 (blocked in every thread): re-reads the size on a new
// connection (which updates export_size).
void refresh_loop(sigset_t set) {
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    std::string why;
    nbd_handle* h = connect_once(&why);
    if (!h) {
      say("size refresh: connect to " + opts.socket + ": " + why);
      continue;
    }
    nbd_close(h);
    say("export size is " + std::to_string(export_size.load()) + " bytes");
    write_size_file();
  }
}

bool is_root(const char* path) { return std::strcmp(path, "/") == 0; }

void* fs_init(fuse_conn_info* conn, fuse_config* cfg) {
  cfg->direct_io = 1;
  cfg->attr_timeout = 1;
  cfg->entry_timeout = 1;
  return nullptr;
}

int fs_getattr(const char* path, struct stat* st, fuse_file_info*) {
  if (!is_root(path)) return -ENOENT;
  std::memset(st, 0, sizeof *st);
  st->st_mode = S_IFREG | (opts.read_only ? 0400 : 0600);
  st->st_nlink = 1;
  st->st_uid = ::getuid();
  st->st_gid = ::getgid();
  st->st_size = export_size;
  st->st_blksize = 4096;
  st->st_blocks = (export_size + 511) / 512;
  return 0;
}

int fs_open(const char* path, fuse_file_info* fi) {
  if (!is_root(path)) return -ENOENT;
  if (opts.read_only && (fi->flags & O_ACCMODE) != O_RDONLY) return -EROFS;
  fi->direct_io = 1;
  return 0;
}

// Clamps [off, off+size) to the export; returns the byte count.
std::size_t clamp(std::size_t size, off_t off) {
  const std::int64_t end = export_size;
  if (off >= end) return 0;
  return static_cast<std::size_t>(std::min<std::int64_t>(static_cast<std::int64_t>(size), end - off));
}

int fs_read(const char*, char* buf, std::size_t size, off_t off, fuse_file_info*) {
  const std::size_t n = clamp(size, off);
  if (n == 0) return 0;
  int r = with_connection([&](nbd_handle* h) { return nbd_pread(h, buf, n, static_cast<uint64_t>(off), 0); });
  return r < 0 ? r : static_cast<int>(n);
}

int fs_write(const char*, const char* buf, std::size_t size, off_t off, fuse_file_info*) {
  if (opts.read_only) return -EROFS;
  const std::size_t n = clamp(size, off);
  if (n == 0) return size == 0 ? 0 : -ENOSPC;
  int r = with_connection([&](nbd_handle* h) { return nbd_pwrite(h, buf, n, static_cast<uint64_t>(off), 0); });
  return r < 0 ? r : static_cast<int>(n);
}

int fs_fsync(const char*, int, fuse_file_info*) {
  if (opts.read_only || !can_flush) return 0;
  return with_connection([](nbd_handle* h) { return nbd_flush(h, 0); });
}

int fs_fallocate(const char*, int mode, off_t off, off_t len, fuse_file_info*) {
  if (opts.read_only) return -EROFS;
  const std::size_t n = clamp(static_cast<std::size_t>(len), off);
  if (n == 0) return 0;
  if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) && can_trim)
    return with_connection([&](nbd_handle* h) { return nbd_trim(h, n, static_cast<uint64_t>(off), 0); });
  if ((mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE && can_zero)
    return with_connection([&](nbd_handle* h) { return nbd_zero(h, n, static_cast<uint64_t>(off), 0); });
  return -EOPNOTSUPP;
}

int fs_truncate(const char*, off_t size, fuse_file_info*) {
  return size == export_size ? 0 : -EPERM;  // the export's size is the server's
}

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "rbdgw-fuse: %s\nusage: rbdgw-fuse [--name NAME] [--readonly] [--connections N] "
               "[--reconnect-timeout SECONDS] [--size-file PATH] SOCKET FILE\n",
               msg.c_str());
  std::exit(2);
}

int parse_int(const char* s, const char* what, int lo, int hi) {
  char* end;
  long v = std::strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < lo || v > hi)
    usage(std::string(what) + " '" + s + "': expected a number from " + std::to_string(lo) +
          " to " + std::to_string(hi));
  return static_cast<int>(v);
}

void parse_args(int argc, char** argv) {
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(a + ": missing value");
      return argv[++i];
    };
    if (a == "--name") opts.name = value();
    else if (a == "--readonly") opts.read_only = true;
    else if (a == "--size-file") opts.size_file = value();
    else if (a == "--connections") opts.connections = parse_int(value(), "--connections", 1, 64);
    else if (a == "--reconnect-timeout")
      opts.reconnect_timeout = parse_int(value(), "--reconnect-timeout", 0, 86400 * 365);
    else if (a.starts_with("-")) usage("unknown option '" + a + "'");
    else pos.push_back(a);
  }
  if (pos.size() != 2) usage("expected SOCKET and FILE");
  opts.socket = pos[0];
  opts.file = pos[1];
  for (char c : opts.name)
    if (c == ',' || c == '\\') usage("--name '" + opts.name + "': ',' and '\\' not allowed");
}

}  // namespace

int main(int argc, char** argv) {
  parse_args(argc, argv);
  struct stat st;
  if (::stat(opts.file.c_str(), &st) < 0 || !S_ISREG(st.st_mode)) {
    say(opts.file + ": not an existing regular file");
    return 1;
  }
  // Before any thread starts, so that only refresh_loop takes SIGUSR1.
  sigset_t refresh;
  sigemptyset(&refresh);
  sigaddset(&refresh, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &refresh, nullptr);
  std::string why;
  nbd_handle* first = connect_once(&why);
  if (!first) {
    say("connect to " + opts.socket + ": " + why);
    return 1;
  }
  Pool connections(opts.connections, first);
  pool = &connections;
  std::thread(refresh_loop, refresh).detach();

  fuse_operations ops{};
  ops.init = fs_init;
  ops.getattr = fs_getattr;
  ops.open = fs_open;
  ops.read = fs_read;
  ops.write = fs_write;
  ops.fsync = fs_fsync;
  ops.fallocate = fs_fallocate;
  ops.truncate = fs_truncate;

  const std::string mount_opts = "fsname=" + opts.name + ",subtype=rbdgw" +
                                 (opts.read_only ? ",ro" : "");
  std::vector<char*> fargv = {argv[0], const_cast<char*>("-o"), const_cast<char*>(mount_opts.c_str())};
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(fargv.size()), fargv.data());
  fuse* f = fuse_new(&args, &ops, sizeof ops, nullptr);
  if (!f) {
    say("fuse_new failed");
    return 1;
  }
  int rc = 1;
  if (fuse_mount(f, opts.file.c_str()) == 0) {
    if (fuse_set_signal_handlers(fuse_get_session(f)) == 0) {
      say("serving " + opts.socket + " at " + opts.file + " (" + std::to_string(export_size.load()) +
          " bytes)");
      fuse_loop_config* cfg = fuse_loop_cfg_create();
      fuse_loop_cfg_set_max_threads(cfg, 16);
      rc = fuse_loop_mt(f, cfg) == 0 ? 0 : 1;
      fuse_loop_cfg_destroy(cfg);
      fuse_remove_signal_handlers(fuse_get_session(f));
    }
    fuse_unmount(f);
  } else {
    say("fuse_mount " + opts.file + " failed");
  }
  fuse_destroy(f);
  fuse_opt_free_args(&args);
  return rc;
}
