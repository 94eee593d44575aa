// rbdgw-fuse: exposes one NBD export (on a unix socket) as a single regular
// file through FUSE, for a loop device to sit on.
//
//   rbdgw-fuse [--name NAME] [--export NAME] [--readonly] [--no-punch-hole] [--connections N]
//              [--conn-depth N] [--threads N] [--max-background N] [--malloc-arenas N]
//              [--reconnect-timeout SECONDS] [--idle-disconnect SECONDS] [--idle-threads N]
//              [--size-file PATH] SOCKET FILE
//
// FILE (an existing regular file) is covered by a FUSE mount whose root is
// the export. Unlike nbdfuse it survives a restart of the NBD server: a
// request that fails because the connection broke is retried on a new
// connection to the same socket until the server is back (or the reconnect
// timeout passes, then EIO). NBD reads and writes are idempotent, so a
// retried request is safe; fsync maps to NBD FLUSH, so what the filesystem
// above flushed survives a kill -9 of the server. A write is acknowledged
// to the kernel only when the server has answered it, so the FLUSH of an
// fsync is sent after every write the kernel had completed; with several
// connections the server must allow multi-conn (checked; else one is
// used), so that a FLUSH on one covers the writes answered on the others.
//
// Once a request has given up after the reconnect timeout, later requests
// do not each wait it out again: each makes one connect attempt and fails
// with EIO once that fails (at once for a refused connect; a handshake
// that hangs is waited for 5 s, then 10 s, ..., see below), until a
// connect succeeds (then all is as before). Without this, the writeback of a filesystem on a dead gateway
// took one full timeout per request.
//
// SIGUSR2 says "the gateway is gone for good" (for a forced unmap):
// every request waiting to reconnect, every request in flight on a
// connection (each connection's I/O thread shuts its socket down, also
// when the server hangs rather than died: libnbd then completes all of
// that connection's commands with an error) and every later one fails
// with EIO at once, without
// another connect attempt, and fsync fails too; logged once. There is no
// way back: the loop device and the FUSE mount can then be torn down
// (`losetup -d`, `fusermount3 -u`), and the exporter exits on unmount.
// Writes not yet flushed are lost. A connect whose NBD handshake hangs (a
// server that accepts and never answers) ends within 1 s of it too.
//
// Hole punch (FALLOC_FL_PUNCH_HOLE) and FALLOC_FL_ZERO_RANGE both leave
// zeros: they are sent as NBD WRITE_ZEROES (punch: trim allowed; zero
// range: NBD_CMD_FLAG_NO_HOLE), never as NBD TRIM, whose data afterwards is
// unspecified (librbd skips discards of partial objects). The loop driver
// hands discard and write-zeroes-with-unmap (what `fallocate -p` on the
// device and ext4's zeroout issue) to the file as the same hole punch, so
// a discard can never be told from a zeroing: both zero, and a discard on
// an encrypted volume writes encrypted zeros (the luks2 filter never trims
// without allow-discards). On an export that cannot zero both fail with
// EOPNOTSUPP: the loop device then turns discard off, the kernel writes
// zeros itself where it may (BLKZEROOUT, `fallocate -z`, ext4), and
// `fallocate -p` on the device fails with EOPNOTSUPP (seen on Linux 6.18).
//
// SIGUSR1 re-reads the export size (after the image grew) on a new
// connection, without a restart: connections made before are replaced as
// they are next used (the server checks requests against the
// size of their connection), and the new size is written (atomically, as
// decimal text) to the --size-file, telling the sender that the file shows
// it (after at most the 1 s attribute timeout).
//
// Runs in the foreground; SIGTERM/SIGINT unmount and exit. Messages go to
// stderr (the caller's log file).
//
// Requests in flight: FUSE calls come from several threads (--threads);
// each queues its NBD request on one of few connections (--connections,
// default 2; more than 1 only if the server allows multi-conn) with libnbd's aio
// API and waits for the reply, so one connection carries many requests at
// once (and the gateway, which runs its worker threads per connection,
// needs few threads). Each connection has one I/O thread driving its
// socket. When a connection breaks, every request in flight on it fails
// together and each is retried as above; the first of them to get there
// reconnects, the others use its new connection.
//
// --conn-depth N (default 0: take the connections in turn): a request goes
// to the first connection with fewer than N requests in flight (the most
// the server serves at once on one connection: nbdkit's --threads), and to
// the least busy one when all have N; a connection is made when a request
// first needs it. So a volume at queue depth 1 uses one connection, and
// one with 32 in flight on a server of 8 workers per connection gets 4
// (issue 13: a shared gateway's volume had 8 in flight at most). With
// --idle-disconnect the extra connections close again once idle.
//
// A further connection that cannot be made while another one works (the
// server refuses it, hangs up during the handshake, or has not ended the
// handshake within 5 s; with --conn-depth or without) sends its requests
// to the connection that works instead of failing them or waiting out the
// reconnect timeout (logged once), and its slot is not tried again for
// 30 s. The request that made the attempt waits for it (at most 5 s);
// others that pick the slot meanwhile go to the live connection, and the
// requests that found no other one wait for that one attempt and share
// its outcome (they do not each try again), or leave for a connection
// that has come up meanwhile. Every handshake is bounded: 5 s for a
// further connection; else the slot's step, 5 s doubled after each failed
// attempt up to 60 s (within the request's reconnect timeout), and ended
// early once another connection works: a server that hangs one connection
// gets a new one soon, one that is slow to answer still gets through.
// After a give-up the step starts again at 5 s, so a request then waits
// for one attempt of 5 s, 10 s, ... and a slow gateway gets the volume
// back.
//
// Memory: after a burst (1 s with no request in flight) the exporter gives
// the freed buffers back (malloc_trim); --malloc-arenas N (default 1, 0:
// glibc's own) is glibc's M_ARENA_MAX, since malloc_trim gives back only
// the main arena's top.
//
// --idle-disconnect SECONDS (default 0: never): a connection with no
// request in flight for that long is closed (NBD_CMD_DISC, so the server
// lets its per-connection threads go) and its I/O thread ends; the next
// request connects again at once (no backoff, nothing logged). Closing
// waits for no reply and cuts none: it is decided under the lock that
// request submission takes, only when the handle has no command in flight.
// Every write was answered before, so nothing unflushed is left on the
// connection; a FLUSH on the next connection covers those writes only
// where the server keeps one image handle across connections (multi-conn,
// as the rbd plugin does, also in exports-dir mode while the export is
// registered).
#define FUSE_USE_VERSION 312
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <libnbd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <linux/falloc.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <mutex>
#include <string>
#include <thread>
#include <list>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string socket, file, name = "rbdgw", size_file;
  // --export NAME: the NBD export to ask for (a shared gateway serving many
  // volumes, nbdkit rbd exports-dir); empty: the server's default export.
  std::string export_name;
  bool read_only = false;
  // A hole punch (what the loop driver makes of a discard as well as of a
  // write-zeroes with unmap) is refused, so the loop device stops taking
  // discards and the kernel writes zeros itself: for an encrypted export,
  // where zeroing a discarded range would write encrypted zeros over it.
  bool no_punch_hole = false;
  // NBD connections, each carrying many requests at once (aio): the
  // number of FUSE threads, not of connections, caps the requests in
  // flight at the gateway (before aio, one request per connection: 4
  // connections capped a loop device with 32 in flight at 4; issue 12).
  // 2: in bench/attach/levers.sh (load ~7) 2 beat 1 at 1M and 4K randread
  // on the loop device, and nbdkit runs -t threads per connection (1: 33
  // gateway threads, 2: 50, the 16 of before: 288).
  int connections = 2;
  int conn_depth = 0;  // 0: round robin over the connections
  int reconnect_timeout = 300;
  int idle_disconnect = 0;  // seconds; 0: connections stay open
  // FUSE request threads (made on demand up to this many, see
  // request_loop) and the kernel's cap on async (background) requests in
  // flight (the loop device's direct I/O arrives as async direct I/O; the
  // kernel's default is 12; 0 keeps it).
  int threads = 16;
  // --idle-threads N: FUSE threads kept when idle; more exit after
  // kThreadLinger without a request (new ones are made on demand up to
  // --threads); -1: all of them (--threads).
  int idle_threads = -1;
  int max_background = 32;
  // --malloc-arenas N: glibc's M_ARENA_MAX (0: glibc's default, 8 per core).
  int malloc_arenas = 1;
};
// Never destroyed: detached threads (signal_loop) read it until the
// process ends.
Options& opts = *new Options;

void say(const std::string& msg) { std::fprintf(stderr, "rbdgw-fuse: %s\n", msg.c_str()); }

// SIGTERM, SIGINT, SIGHUP: handled (libfuse's handlers end the session)
// only by the main thread, while it waits in request_loop. (SIGQUIT keeps
// its default action, as with libfuse's own loop: libfuse handles only
// these three.)
sigset_t stop_signals() {
  sigset_t s;
  sigemptyset(&s);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&s, sig);
  return s;
}

// While it lives, the calling thread has the stop signals blocked, so a
// thread made meanwhile starts with them blocked (no moment in which it
// could take one: its handler's end of the session would go unseen by the
// main thread asleep in request_loop).
class StopSignalsBlocked {
 public:
  StopSignalsBlocked() {
    const sigset_t s = stop_signals();
    pthread_sigmask(SIG_BLOCK, &s, &old_);
  }
  ~StopSignalsBlocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  StopSignalsBlocked(const StopSignalsBlocked&) = delete;
  StopSignalsBlocked& operator=(const StopSignalsBlocked&) = delete;

 private:
  sigset_t old_;
};


// Export properties, refreshed on every (re)connect.
std::atomic<std::int64_t> export_size{0};
std::atomic<bool> can_flush{false}, can_zero{false};
// The largest read or write the server takes (its NBD maximum block size;
// without one, the spec's 32 MiB): a larger FUSE request is split.
std::atomic<std::uint32_t> max_request{32u << 20};

// Set by SIGUSR2 (never cleared): every request fails with EIO at once.
// Reconnect sleeps wait on gone_cv so that they end when it is set.
std::atomic<bool> gateway_gone{false};
std::mutex gone_m;
std::condition_variable gone_cv;

// Set when a request gave up after the reconnect timeout, cleared by the
// next request that succeeds: meanwhile a request makes one connect attempt
// and then fails with EIO.
std::atomic<bool> gave_up{false};

// Sleeps for d, or less when SIGUSR2 arrives.
void sleep_unless_gone(std::chrono::milliseconds d) {
  std::unique_lock lk(gone_m);
  gone_cv.wait_for(lk, d, [] { return gateway_gone.load(); });
}

// How long a further connection's handshake may take while another
// connection carries the requests (then they stay there).
constexpr auto kSpareHandshake = std::chrono::seconds(5);
// How long a slot whose further connection failed is left alone.
constexpr auto kSparePause = std::chrono::seconds(30);
// The longest wait for one handshake when no other connection works.
constexpr auto kMaxHandshake = std::chrono::seconds(60);

// The poll events a handle's socket waits for (nbd_aio_get_direction).
short poll_events(unsigned dir) {
  return static_cast<short>(((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                            ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0));
}

// Tells libnbd what poll saw on its socket (dir: what it waited for);
// returns nbd_aio_notify_*'s result, 0 when there was nothing to tell.
int notify(nbd_handle* h, unsigned dir, short revents) {
  if ((dir & LIBNBD_AIO_DIRECTION_READ) && (revents & (POLLIN | POLLHUP | POLLERR))) return nbd_aio_notify_read(h);
  if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (revents & (POLLOUT | POLLHUP | POLLERR))) return nbd_aio_notify_write(h);
  return 0;
}

// Connects and runs the NBD handshake until `by`: a server that accepts
// and then never answers (its connection threads stuck, or not started)
// must not hold the caller, and with it its slot, forever.
// `elsewhere` (if set) is asked once a second after kSpareHandshake: true
// ends the wait (another connection works now).
bool connect_by(nbd_handle* h, Clock::time_point by, std::string* why,
                const std::function<bool()>& elsewhere) {
  const auto start = Clock::now();
  if (nbd_aio_connect_unix(h, opts.socket.c_str()) < 0) return false;
  while (nbd_aio_is_connecting(h) == 1) {
    if (gateway_gone) {
      *why = "the gateway is gone (SIGUSR2)";
      return false;
    }
    if (elsewhere && Clock::now() - start >= kSpareHandshake && elsewhere()) {
      *why = "no answer to the NBD handshake within " +
             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start).count()) +
             " s, while another connection works";
      return false;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(by - Clock::now()).count();
    if (left <= 0) {
      const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(by - start).count();
      *why = "no answer to the NBD handshake within " + std::to_string((waited + 500) / 1000) + " s";
      return false;
    }
    const unsigned dir = nbd_aio_get_direction(h);
    pollfd p{nbd_aio_get_fd(h), poll_events(dir), 0};
    if (p.fd < 0 || ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000))) < 0) {
      if (p.fd >= 0 && errno == EINTR) continue;
      return false;
    }
    if (notify(h, dir, p.revents) < 0) return false;
  }
  return nbd_aio_is_ready(h) == 1;
}

// The deadline of a connect made outside a request (the first one, a size
// refresh): the reconnect timeout, at least kSpareHandshake.
Clock::time_point standalone_deadline() {
  return Clock::now() + std::max<std::chrono::seconds>(std::chrono::seconds(opts.reconnect_timeout), kSpareHandshake);
}

// Set by connect_once on this thread: its last failure was a refused or
// missing socket (no server listening: a gateway restarting), not a
// server that hung up or did not answer.
thread_local bool server_down = false;

// A new connection whose handshake ended by `by`, or nullptr (with the
// reason in *why).
nbd_handle* connect_once(std::string* why, Clock::time_point by,
                         const std::function<bool()>& elsewhere = {}) {
  server_down = false;
  nbd_handle* h = nbd_create();
  if (!h) {
    *why = nbd_get_error();
    return nullptr;
  }
  if (!opts.export_name.empty() && nbd_set_export_name(h, opts.export_name.c_str()) < 0) {
    *why = nbd_get_error();
    nbd_close(h);
    return nullptr;
  }
  if (!connect_by(h, by, why, elsewhere)) {
    if (why->empty()) {
      *why = nbd_get_error() ? nbd_get_error() : "connect failed";
      const int e = nbd_get_errno();
      server_down = e == ECONNREFUSED || e == ENOENT;
    }
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
  can_zero = nbd_can_zero(h) == 1;
  const std::int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  max_request = max > 0 ? static_cast<std::uint32_t>(std::min<std::int64_t>(max, 32 << 20)) : 32u << 20;
  return h;
}

// One NBD request waiting for its reply, on its request thread's stack:
// that thread waits for the completion of every command it issued before
// it returns (libnbd calls the completion exactly once for an issued
// command, at the reply or when the handle dies or closes, and the
// handle is closed only once no request holds its Conn), and the
// completion touches the waiter only under its mutex. No allocation per
// request.
struct Waiter {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  int err = 0;
};

int on_complete(void* user_data, int* error) {
  auto& w = *static_cast<Waiter*>(user_data);
  std::lock_guard lk(w.m);
  w.done = true;
  w.err = *error;
  w.cv.notify_one();
  return 1;  // retire the command
}

// Set by every request; cleared by the first connection's I/O thread that
// has seen no request in flight for kTrimAfter, which then gives the
// freed memory of the burst back (malloc_trim). glibc raises its mmap
// threshold to the largest mapped block freed, so after the first 1 MiB
// request the buffers of libfuse's FUSE threads (1 MiB each, freed when an
// idle thread exits) and of its read replies (malloc'd per read) come from
// the threads' malloc arenas, which kept them: an exporter stayed ~3 MiB
// larger after I/O (bench/attach/many-volumes.sh, 100 volumes: 10.7 MiB
// RSS each after I/O, and idle). A fixed threshold (mapped and unmapped
// every read) cost 1M reads a third more CPU; one trim per burst costs
// nothing while requests flow. One malloc arena (main() sets M_ARENA_MAX):
// malloc_trim gives back the top of the main arena's heap only, so the
// 1 MiB left at the top of each thread arena stayed (measured: 16 parallel
// 1 MiB reads, RSS 9 -> 25 -> 25 MiB with the trim alone, 7 -> 23 -> 7
// with both).
std::atomic<bool> trim_pending{false};
constexpr auto kTrimAfter = std::chrono::seconds(1);

class Conn;
// Every live connection, for SIGUSR2.
std::mutex conns_m;
std::vector<Conn*> conns;

// One NBD connection that carries many requests at once (libnbd's aio
// API): request threads queue commands on it, its own I/O thread drives
// the socket (poll on the handle's fd as nbd_aio_get_direction asks, plus
// an eventfd by which a request thread wakes it when a queued command
// waits for the socket to take it) and libnbd's completion callbacks wake
// the requests. Lives while a request uses it (shared_ptr): a replaced
// connection (broken, or made before a size refresh) is closed when its
// last request is done.
class Conn {
 public:
  explicit Conn(nbd_handle* h) : h_(h), size_(nbd_get_size(h)), fd_(nbd_aio_get_fd(h)) {
    efd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    {
      const StopSignalsBlocked quiet;
      io_ = std::thread([this] { run(); });
    }
    std::lock_guard lk(conns_m);
    conns.push_back(this);
  }
  ~Conn() {
    {
      std::lock_guard lk(conns_m);
      std::erase(conns, this);
    }
    stop_ = true;
    wake();
    io_.join();
    nbd_close(h_);
    ::close(efd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  std::int64_t size() const { return size_; }
  bool dead() { return nbd_aio_is_dead(h_) == 1 || nbd_aio_is_closed(h_) == 1; }
  bool broken() { return retired_ || idle_closed_ || dead(); }
  // Closed by --idle-disconnect: a request that finds it so connects anew.
  bool idle_closed() const { return idle_closed_; }
  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(efd_, &one, sizeof one);
  }

  // Runs submit(h, closure) (an nbd_aio_* call) and waits for its reply.
  // Returns 0, the server's error as -errno (the connection still good),
  // or 1: the connection broke (or was shut down by SIGUSR2) under it.
  template <typename Submit>
  int run_request(Submit submit, std::string* why) {
    Waiter w;
    nbd_completion_callback cb{.callback = on_complete, .user_data = &w, .free = nullptr};
    int64_t cookie;
    {
      std::lock_guard lk(m_);  // against the shutdown of SIGUSR2 (see shut_down)
      cookie = submit(h_, cb);
    }
    if (cookie == -1) {
      why->assign(nbd_get_error() ? nbd_get_error() : "request failed");
      // A command not issued is not completed either; a handle that
      // cannot take commands is a broken one.
      const int err = nbd_get_errno();
      if (!broken() && !gateway_gone) return -(err ? err : EIO);
      return 1;
    }
    // The command may wait for the socket: let the I/O thread poll for it.
    if (nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_WRITE) wake();
    std::unique_lock lk(w.m);
    w.cv.wait(lk, [&] { return w.done; });
    if (w.err == 0) return 0;
    why->assign(std::strerror(w.err));
    // libnbd completes the commands of a handle that died with ENOTCONN,
    // possibly before the handle reads as dead. ESHUTDOWN is the server's
    // "shutting down" (a gateway stopped cleanly, SIGTERM): no error of the
    // request; it is retried on a new connection like one that broke.
    // Its other commands may never be answered: the I/O thread shuts the
    // socket down (they fail and are retried too; the server can exit).
    if (w.err == ESHUTDOWN && !retired_.exchange(true)) wake();
    if (w.err != ENOTCONN && !broken() && !gateway_gone) return -w.err;
    return 1;
  }

 private:
  // SIGUSR2: shut the socket down (under the request threads' commands,
  // also when the server hangs rather than died); the next read fails, the
  // handle dies and libnbd completes every command in flight with an error.
  void shut_down() {
    std::lock_guard lk(m_);
    if (!shut_ && !dead() && fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    shut_ = true;
  }

  // --idle-disconnect: closes the connection if no command is in flight
  // (under m_, which every submission holds: none can slip in between).
  void close_if_idle() {
    std::lock_guard lk(m_);
    if (idle_closed_ || dead() || nbd_aio_in_flight(h_) != 0) return;
    idle_closed_ = true;
    if (nbd_aio_disconnect(h_, 0) < 0 && fd_ >= 0) {  // cannot say goodbye: just close
      ::shutdown(fd_, SHUT_RDWR);
      shut_ = true;
    }
  }

  void run() {
    auto last_busy = Clock::now();
    const auto idle = std::chrono::seconds(opts.idle_disconnect);
    auto ms_until = [](Clock::duration d) {
      return static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count() + 1);
    };
    while (!stop_) {
      if ((gateway_gone || retired_) && !shut_) shut_down();
      if (idle_closed_ && dead()) return;  // the thread ends; the Conn waits for its requests
      int timeout = -1;
      const bool alive = !idle_closed_ && !dead();
      const bool busy = alive && nbd_aio_in_flight(h_) > 0;
      const auto now = Clock::now();
      if (busy) last_busy = now;
      if (alive && !busy && trim_pending.load(std::memory_order_relaxed)) {
        if (now - last_busy >= kTrimAfter) {
          if (trim_pending.exchange(false)) ::malloc_trim(0);
        } else {
          timeout = ms_until(kTrimAfter - (now - last_busy));
        }
      }
      if (opts.idle_disconnect > 0 && alive && !busy) {
        if (now - last_busy >= idle) {
          close_if_idle();
          last_busy = now;
          continue;
        }
        const int t = ms_until(idle - (now - last_busy));
        timeout = timeout < 0 ? t : std::min(timeout, t);
      }
      pollfd fds[2] = {{efd_, POLLIN, 0}, {fd_, 0, 0}};
      nfds_t n = 1;
      unsigned dir = 0;
      if (!dead()) {  // a dead handle's socket is closed: wait for stop_
        dir = nbd_aio_get_direction(h_);
        fds[1].events = poll_events(dir);
        n = 2;
      }
      if (::poll(fds, n, timeout) < 0) continue;
      if (fds[0].revents & POLLIN) {
        std::uint64_t v;
        [[maybe_unused]] ssize_t r = ::read(efd_, &v, sizeof v);
      }
      if (n < 2) continue;
      // Errors end in a dead handle (its commands completed with an error).
      notify(h_, dir, fds[1].revents);
    }
  }

  nbd_handle* h_;
  const std::int64_t size_;
  const int fd_;
  int efd_;
  std::mutex m_;
  bool shut_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<bool> retired_{false};  // the server said it shuts down
  std::atomic<bool> idle_closed_{false};  // --idle-disconnect closed it
  std::thread io_;
};

// The connections: a slot holds nullptr until (re)connected. A request
// takes the next slot in turn; the first request to find its connection
// broken (or older than a size refresh) replaces it, holding the slot's
// lock, so the requests that fail with it together reconnect once.
struct Slot {
  std::mutex m;
  std::shared_ptr<Conn> conn;
  // Requests that chose this slot and have not returned (--conn-depth).
  std::atomic<int> in_flight{0};
  // A request is connecting it (without holding m): requests that can go
  // to a live connection do not wait for it, the others wait on cv for
  // that attempt's end (attempts counts them) and take its outcome.
  std::atomic<bool> connecting{false};
  std::condition_variable cv;
  unsigned attempts = 0;  // under m
  std::string last_error;  // under m: why the last attempt failed
  // How long the next handshake may take when no other connection works
  // (under m): kSpareHandshake, doubled after each failed attempt up to
  // kMaxHandshake, back to kSpareHandshake after a success or a give-up. A
  // server that hangs one connection gets a new one soon; one that is slow
  // to answer still gets through.
  std::chrono::seconds step = kSpareHandshake;
  // Until then (steady_clock ticks), a further connection here is not tried
  // again: it failed while another connection carried the requests.
  std::atomic<Clock::rep> paused_until{0};
  bool spare_usable() const {
    return !connecting.load(std::memory_order_relaxed) &&
           Clock::now().time_since_epoch().count() >= paused_until.load(std::memory_order_relaxed);
  }
};
std::vector<Slot>* slots;
std::atomic<unsigned> next_slot{0};

// The slot a request uses, counted in its in_flight until the request
// returns (also while it waits to reconnect).
class SlotUse {
 public:
  SlotUse() : s_(&pick()) {}
  ~SlotUse() { s_->in_flight.fetch_sub(1, std::memory_order_relaxed); }
  SlotUse(const SlotUse&) = delete;
  SlotUse& operator=(const SlotUse&) = delete;
  Slot& slot() { return *s_; }
  // Moves the request to another slot with a live connection (the least
  // busy), if there is one: a spare connection that cannot be made (the
  // server refuses it, or is out of file descriptors or threads) must not
  // fail or hold up a request that a working connection can carry.
  bool move_to_live();

 private:
  static Slot& pick() {
    auto& v = *slots;
    if (opts.conn_depth <= 0 || v.size() == 1) {
      Slot& s = v[next_slot.fetch_add(1, std::memory_order_relaxed) % v.size()];
      s.in_flight.fetch_add(1, std::memory_order_relaxed);
      return s;
    }
    // The first with room (a place taken, then given back if it was full:
    // concurrent requests never push one past N together).
    for (Slot& s : v) {
      if (s.in_flight.fetch_add(1, std::memory_order_relaxed) < opts.conn_depth) return s;
      s.in_flight.fetch_sub(1, std::memory_order_relaxed);
    }
    Slot* best = &v[0];
    for (Slot& s : v)
      if (s.in_flight.load(std::memory_order_relaxed) < best->in_flight.load(std::memory_order_relaxed)) best = &s;
    best->in_flight.fetch_add(1, std::memory_order_relaxed);
    return *best;
  }
  Slot* s_;
};

std::shared_ptr<Conn> current(Slot& s) {
  std::lock_guard lk(s.m);
  return s.conn;
}

// c can take requests: connected, not broken, made after the last size
// refresh.
bool live(const std::shared_ptr<Conn>& c) { return c && !c->broken() && c->size() == export_size; }

bool SlotUse::move_to_live() {
  Slot* best = nullptr;
  for (Slot& s : *slots) {
    if (&s == s_ || s.connecting.load(std::memory_order_relaxed) || !live(current(s))) continue;
    if (!best || s.in_flight.load(std::memory_order_relaxed) < best->in_flight.load(std::memory_order_relaxed))
      best = &s;
  }
  if (!best) return false;
  best->in_flight.fetch_add(1, std::memory_order_relaxed);
  s_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  s_ = best;
  return true;
}

// Logged once: a spare connection could not be made.
std::atomic<bool> spare_failed_said{false};

// Another slot than s has a live connection.
bool other_live(const Slot& s) {
  for (Slot& o : *slots)
    if (&o != &s && !o.connecting.load(std::memory_order_relaxed) && live(current(o))) return true;
  return false;
}

// Replaces `seen` (what the request used: broken, stale, or nullptr) with
// a new connection, unless another request already did; *attempted tells
// whether this request made, or waited for, a connect attempt. While
// another connection is live the handshake gets kSpareHandshake and a
// failure pauses the slot for kSparePause; then, while the slot is paused
// or being connected, no attempt is made (nullptr: the caller moves to the
// live connection). Otherwise the handshake gets the slot's step, within
// `by` (at least kSpareHandshake), and ends early once another connection
// works; requests that come meanwhile wait for that attempt and share its
// outcome, or leave for a connection that has come up.
std::shared_ptr<Conn> replace(Slot& s, const std::shared_ptr<Conn>& seen, Clock::time_point by,
                              bool* attempted, std::string* why) {
  // Before taking s.m: other_live takes the other slots' locks (so it is
  // never called with s.m held).
  const bool spare = slots->size() > 1 && other_live(s);
  std::shared_ptr<Conn> old;  // destroyed (its I/O thread joined) without s.m held
  std::unique_lock lk(s.m);
  if (s.conn != seen && live(s.conn)) return s.conn;
  if (gateway_gone) return nullptr;
  if (s.connecting.load(std::memory_order_relaxed)) {
    if (spare) {
      *why = "another request is connecting it";
      return nullptr;
    }
    // One attempt at a time: wait for it and take its outcome, unless
    // another connection comes up meanwhile.
    const unsigned n = s.attempts;
    while (!s.cv.wait_for(lk, std::chrono::seconds(1), [&] { return s.attempts != n; })) {
      lk.unlock();
      const bool elsewhere = slots->size() > 1 && other_live(s);
      lk.lock();
      if (s.attempts != n) break;
      if (elsewhere || gateway_gone) {
        *why = "another request is connecting it";
        return nullptr;
      }
    }
    *attempted = true;
    if (!s.conn) *why = s.last_error;
    return s.conn;
  }
  if (spare && !s.spare_usable()) {
    *why = "paused after a failed connection";
    return nullptr;
  }
  old = std::move(s.conn);
  s.connecting.store(true, std::memory_order_relaxed);
  const auto step = s.step;
  *attempted = true;
  lk.unlock();
  old.reset();
  const auto now = Clock::now();
  const auto bound = spare ? now + kSpareHandshake : std::max(std::min(by, now + step), now + kSpareHandshake);
  std::function<bool()> elsewhere;
  if (!spare && slots->size() > 1) elsewhere = [&s] { return other_live(s); };
  std::shared_ptr<Conn> made;
  if (nbd_handle* h = connect_once(why, bound, elsewhere)) {
    try {
      made = std::make_shared<Conn>(h);
    } catch (const std::exception& e) {
      *why = std::string("cannot start the connection's I/O thread: ") + e.what();
    }
  }
  // A failure while another connection works pauses the slot; not one
  // where no server listens or the other connection has died meanwhile (a
  // gateway restarting: its other connection's end may not have been seen
  // yet).
  const bool pause = !made && !server_down && slots->size() > 1 && other_live(s);
  lk.lock();
  s.conn = made;
  if (made) {
    s.step = kSpareHandshake;
    s.paused_until.store(0, std::memory_order_relaxed);
  } else {
    s.last_error = *why;
    if (!spare) s.step = std::min(step * 2, std::chrono::seconds(kMaxHandshake));
    if (pause)
      s.paused_until.store((Clock::now() + kSparePause).time_since_epoch().count(), std::memory_order_relaxed);
  }
  ++s.attempts;
  s.connecting.store(false, std::memory_order_relaxed);
  lk.unlock();
  s.cv.notify_all();
  return made;
}

// Runs submit(h, closure) (an nbd_aio_* call) on a connection and waits
// for its reply, reconnecting and retrying while the connection is what
// failed, until the reconnect timeout; after an earlier request gave up,
// one connect attempt only; after SIGUSR2, none. Returns 0 or -errno.
template <typename Submit>
int with_connection(Submit submit) {
  if (gateway_gone) return -EIO;
  if (!trim_pending.load(std::memory_order_relaxed)) trim_pending.store(true, std::memory_order_relaxed);
  const auto deadline = Clock::now() + std::chrono::seconds(opts.reconnect_timeout);
  auto backoff = std::chrono::milliseconds(20);
  bool reported = false, attempted = false;
  SlotUse use;
  std::shared_ptr<Conn> c = current(use.slot());
  for (;;) {
    if (gateway_gone) return -EIO;
    std::string why;
    // A slot being connected, or paused after a failed further connection:
    // a live connection elsewhere takes the request.
    if (!live(c) && !use.slot().spare_usable() && use.move_to_live()) {
      c = current(use.slot());
      continue;
    }
    // After a give-up: no deadline but the slot's step (from 5 s after
    // the give-up), not another full wait.
    bool tried = false;
    if (!live(c)) {
      c = replace(use.slot(), c, gave_up ? Clock::time_point::max() : deadline, &tried, &why);
      attempted = attempted || tried;
    }
    if (!c && use.move_to_live()) {
      if (tried && !spare_failed_said.exchange(true))
        say("a further connection to " + opts.socket + " failed (" + why +
            "); requests stay on the connections there are");
      c = current(use.slot());
      continue;
    }
    if (c) {
      if (reported) say("reconnected to " + opts.socket);
      const int r = c->run_request(submit, &why);
      if (r == 0) {
        if (gave_up.load(std::memory_order_relaxed) && gave_up.exchange(false))
          say("requests to " + opts.socket + " succeed again");
        return 0;
      }
      // The server's error; unless the connection predates a size refresh
      // (its requests are checked against its old size): then retry anew.
      if (r < 0 && c->size() == export_size) return r;
      if (r < 0) continue;
      // Closed as idle just before this request reached it: connect anew.
      if (c->idle_closed() && !gateway_gone) continue;
    }
    if (gateway_gone) return -EIO;
    if (gave_up && attempted) return -EIO;  // no second full wait
    if (Clock::now() > deadline) {
      if (!gave_up.exchange(true)) {
        for (Slot& o : *slots) {
          std::lock_guard lk(o.m);
          o.step = kSpareHandshake;
        }
        say("giving up after " + std::to_string(opts.reconnect_timeout) + " s: " + why +
            "; until a connect succeeds, requests fail with EIO after one connect attempt");
      }
      return -EIO;
    }
    if (!reported) {
      say("connection to " + opts.socket + " lost (" + why + "); reconnecting");
      reported = true;
    }
    sleep_unless_gone(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
}

// SIGUSR2: fails every waiting, running and later request with EIO.
void declare_gone() {
  {
    std::lock_guard lk(gone_m);
    if (gateway_gone.exchange(true)) return;
  }
  gone_cv.notify_all();
  std::size_t n = 0;
  {
    std::lock_guard lk(conns_m);
    for (Conn* c : conns) {
      c->wake();  // its I/O thread shuts the socket down
      ++n;
    }
  }
  say("SIGUSR2: the gateway at " + opts.socket + " is gone for good: every request fails with EIO "
      "from now on, no more reconnects (" + std::to_string(n) + " connection(s) shut down)");
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

// Size refreshes asked for by SIGUSR1 and not yet started (done by
// refresh_loop, so that a connect hanging on a hung gateway never keeps
// signal_loop from serving SIGUSR2). Never destroyed: refresh_loop waits
// on them until the process exits (destroying a waited-on condition
// variable at exit blocks the exit).
std::mutex& refresh_m = *new std::mutex;
std::condition_variable& refresh_cv = *new std::condition_variable;
bool refresh_asked = false;

// Re-reads the size on a new connection (which updates export_size), once
// per burst of SIGUSR1.
void refresh_loop() {
  for (;;) {
    {
      std::unique_lock lk(refresh_m);
      refresh_cv.wait(lk, [] { return refresh_asked; });
      refresh_asked = false;
    }
    if (gateway_gone) {
      say("size refresh: the gateway is gone (SIGUSR2)");
      continue;
    }
    std::string why;
    nbd_handle* h = connect_once(&why, standalone_deadline());
    if (!h) {
      say("size refresh: connect to " + opts.socket + ": " + why);
      continue;
    }
    nbd_close(h);
    say("export size is " + std::to_string(export_size.load()) + " bytes");
    write_size_file();
  }
}

// Serves SIGUSR1 and SIGUSR2 (blocked in every thread): SIGUSR1 asks
// refresh_loop for a size refresh (started at the first one: a volume
// that never grows pays no thread for it), SIGUSR2 declares the gateway
// gone.
void signal_loop(sigset_t set) {
  bool refresher = false;
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGUSR2) {
      declare_gone();
      continue;
    }
    {
      std::lock_guard lk(refresh_m);
      refresh_asked = true;
    }
    refresh_cv.notify_one();
    if (!refresher) {
      std::thread(refresh_loop).detach();
      refresher = true;
    }
  }
}

bool is_root(const char* path) { return std::strcmp(path, "/") == 0; }

void* fs_init(fuse_conn_info* conn, fuse_config* cfg) {
  if (opts.max_background > 0) {
    conn->max_background = static_cast<unsigned>(opts.max_background);
    conn->congestion_threshold = static_cast<unsigned>(opts.max_background * 3 / 4);
  }
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

// Runs one(offset, length) over [off, off+n) in pieces the server takes.
template <typename One>
int in_pieces(std::size_t n, off_t off, One one) {
  for (std::size_t done = 0; done < n;) {
    const std::size_t len = std::min<std::size_t>(n - done, max_request.load());
    if (int r = one(done, static_cast<std::uint64_t>(off) + done, len); r < 0) return r;
    done += len;
  }
  return static_cast<int>(n);
}

int fs_read(const char*, char* buf, std::size_t size, off_t off, fuse_file_info*) {
  const std::size_t n = clamp(size, off);
  if (n == 0) return 0;
  return in_pieces(n, off, [&](std::size_t at, std::uint64_t pos, std::size_t len) {
    return with_connection([&](nbd_handle* h, nbd_completion_callback cb) {
      return nbd_aio_pread(h, buf + at, len, pos, cb, 0);
    });
  });
}

int fs_write(const char*, const char* buf, std::size_t size, off_t off, fuse_file_info*) {
  if (opts.read_only) return -EROFS;
  const std::size_t n = clamp(size, off);
  if (n == 0) return size == 0 ? 0 : -ENOSPC;
  return in_pieces(n, off, [&](std::size_t at, std::uint64_t pos, std::size_t len) {
    return with_connection([&](nbd_handle* h, nbd_completion_callback cb) {
      return nbd_aio_pwrite(h, buf + at, len, pos, cb, 0);
    });
  });
}

int fs_fsync(const char*, int, fuse_file_info*) {
  if (opts.read_only) return 0;
  if (gateway_gone) return -EIO;
  if (!can_flush) return 0;
  return with_connection([](nbd_handle* h, nbd_completion_callback cb) { return nbd_aio_flush(h, cb, 0); });
}

// Punch hole and zero range both leave zeros (see the header comment):
// NBD WRITE_ZEROES, never TRIM; EOPNOTSUPP when the export cannot zero.
int fs_fallocate(const char*, int mode, off_t off, off_t len, fuse_file_info*) {
  if (opts.read_only) return -EROFS;
  const bool punch = mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
  const bool zero_range = (mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE;
  if ((!punch && !zero_range) || !can_zero || (punch && opts.no_punch_hole)) return -EOPNOTSUPP;
  const std::uint32_t flags = punch ? 0 : LIBNBD_CMD_FLAG_NO_HOLE;
  std::uint64_t pos = static_cast<std::uint64_t>(off);
  std::uint64_t left = clamp(static_cast<std::size_t>(len), off);
  while (left > 0) {  // NBD requests carry a 32-bit length
    const std::uint64_t n = std::min<std::uint64_t>(left, 1u << 30);
    if (int r = with_connection([&](nbd_handle* h, nbd_completion_callback cb) {
          return nbd_aio_zero(h, n, pos, cb, flags);
        });
        r < 0)
      return r;
    pos += n;
    left -= n;
  }
  return 0;
}

int fs_truncate(const char*, off_t size, fuse_file_info*) {
  return size == export_size ? 0 : -EPERM;  // the export's size is the server's
}

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "rbdgw-fuse: %s\nusage: rbdgw-fuse [--name NAME] [--export NAME] [--readonly] [--no-punch-hole] [--connections N] "
               "[--conn-depth N] [--threads N] [--max-background N] [--malloc-arenas N] [--reconnect-timeout SECONDS] "
               "[--idle-disconnect SECONDS] [--idle-threads N] [--size-file PATH] "
               "SOCKET FILE\n",
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
    else if (a == "--export") opts.export_name = value();
    else if (a == "--readonly") opts.read_only = true;
    else if (a == "--no-punch-hole") opts.no_punch_hole = true;
    else if (a == "--size-file") opts.size_file = value();
    else if (a == "--connections") opts.connections = parse_int(value(), "--connections", 1, 64);
    else if (a == "--conn-depth") opts.conn_depth = parse_int(value(), "--conn-depth", 0, 65536);
    else if (a == "--threads") opts.threads = parse_int(value(), "--threads", 1, 256);
    else if (a == "--idle-threads") opts.idle_threads = parse_int(value(), "--idle-threads", 1, 256);
    else if (a == "--max-background") opts.max_background = parse_int(value(), "--max-background", 0, 65535);
    else if (a == "--malloc-arenas") opts.malloc_arenas = parse_int(value(), "--malloc-arenas", 0, 1024);
    else if (a == "--reconnect-timeout")
      opts.reconnect_timeout = parse_int(value(), "--reconnect-timeout", 0, 86400 * 365);
    else if (a == "--idle-disconnect")
      opts.idle_disconnect = parse_int(value(), "--idle-disconnect", 0, 86400);
    else if (a.starts_with("-")) usage("unknown option '" + a + "'");
    else pos.push_back(a);
  }
  if (pos.size() != 2) usage("expected SOCKET and FILE");
  opts.socket = pos[0];
  opts.file = pos[1];
  for (char c : opts.name)
    if (c == ',' || c == '\\') usage("--name '" + opts.name + "': ',' and '\\' not allowed");
}

// The FUSE request loop (in place of libfuse's fuse_loop_mt): worker
// threads read requests from /dev/fuse and serve them; when a worker takes
// a request and none is left waiting for the next, another is made (up to
// --threads). libfuse ended a worker as soon as it found more than
// max_idle_threads idle, which under a steady load happens between any two
// requests: the shared gateway's exporter (--idle-threads 2) ended and
// made thousands of threads a second under 16 parallel 4K readers, and
// its reads ran at 0.8x of its own gateway's (docs/benchmarks.md, seventh
// round). Here a worker beyond --idle-threads exits only after
// kThreadLinger without a request: while there are such workers the main
// thread looks every kReapTick (otherwise it sleeps until a worker wakes
// it), tells them to go and interrupts their read with kWakeSignal (a
// no-op handler, no SA_RESTART: the read ends with EINTR). The signal is
// blocked outside the read, so it never interrupts a request being
// served; one that arrives just before the read is sent again at the next
// tick. SIGTERM, SIGINT and SIGHUP are taken only by the main
// thread while it waits (libfuse's handlers end the session; the exit
// status is then 0, libfuse's loop gave 1); on exit every worker is told
// to go and the loop waits for the ones serving a request, as libfuse's
// did.
constexpr auto kThreadLinger = std::chrono::seconds(1);
constexpr auto kReapTick = std::chrono::milliseconds(250);
const int kWakeSignal = SIGRTMIN + 1;

struct Worker {
  pthread_t thread{};
  bool idle = true;  // waiting for a request (or about to)
  bool told = false;  // told to exit (counted in pool.told)
  Clock::time_point idle_since = Clock::now();
};

struct Pool {
  fuse_session* se = nullptr;
  std::mutex m;
  std::list<Worker> workers;  // stable addresses; a worker removes its own
  int idle = 0;  // workers with idle set
  int told = 0;  // workers with told set
  int error = 0;  // a read error that ended the session
  // The main thread waits with no timeout (nothing to reap): a worker
  // that makes something reapable wakes it through wake_fd.
  bool main_asleep = false;
  int wake_fd = -1;  // eventfd
  bool start_failed_said = false;
  Clock::time_point start_failed_at{};
};
Pool pool;

void wake_main() {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(pool.wake_fd, &one, sizeof one);
}

// Waits for wake_main (and takes its wake), kReapTick at most if `tick`;
// `mask` (if set) is the signal mask while waiting (ppoll's).
void wait_for_wake(bool tick, const sigset_t* mask) {
  pollfd p{pool.wake_fd, POLLIN, 0};
  const timespec ts{0, std::chrono::duration_cast<std::chrono::nanoseconds>(kReapTick).count()};
  if (::ppoll(&p, 1, tick ? &ts : nullptr, mask) > 0) {
    std::uint64_t n;
    [[maybe_unused]] const ssize_t r = ::read(pool.wake_fd, &n, sizeof n);
  }
}

// Idle workers beyond --idle-threads (not counting those told to exit).
int reapable() {
  const int keep = opts.idle_threads > 0 ? opts.idle_threads : opts.threads;
  return pool.idle - pool.told - keep;
}

void worker_main(Worker* w);

// A new worker, if --threads allows and thread creation has not failed in
// the last second (then one line is logged, once); pool.m held.
void start_worker() {
  if (static_cast<int>(pool.workers.size()) >= opts.threads) return;
  if (pool.start_failed_at != Clock::time_point{} && Clock::now() - pool.start_failed_at < std::chrono::seconds(1))
    return;
  Worker& w = pool.workers.emplace_back();
  ++pool.idle;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  // Made with the stop signals and kWakeSignal blocked (no moment in which
  // the new thread could take them).
  sigset_t all = stop_signals(), old;
  sigaddset(&all, kWakeSignal);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  const int r = pthread_create(
      &w.thread, &attr, [](void* p) -> void* { worker_main(static_cast<Worker*>(p)); return nullptr; }, &w);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    if (!pool.start_failed_said) {
      say(std::string("cannot start a FUSE thread: ") + std::strerror(r) + " (" +
          std::to_string(pool.workers.size() - 1) + " running; retried at most once a second)");
      pool.start_failed_said = true;
    }
    pool.start_failed_at = Clock::now();
    --pool.idle;
    pool.workers.pop_back();
  } else {
    pool.start_failed_at = {};
  }
}

void worker_main(Worker* w) {
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, kWakeSignal);
  fuse_buf buf{};
  std::unique_lock lk(pool.m);
  while (!w->told && !fuse_session_exited(pool.se)) {
    lk.unlock();
    pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);
    const int res = fuse_session_receive_buf(pool.se, &buf);
    pthread_sigmask(SIG_BLOCK, &wake, nullptr);
    lk.lock();
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0) {  // 0: unmounted (the session has ended)
      if (res < 0) {
        pool.error = res;
        fuse_session_exit(pool.se);
      }
      break;
    }
    w->idle = false;
    --pool.idle;
    if (w->told) {  // told between the read and here: it serves after all
      w->told = false;
      --pool.told;
    }
    // No other worker left reading /dev/fuse (one told to exit does not
    // count): another one.
    if (pool.idle - pool.told == 0) start_worker();
    lk.unlock();
    fuse_session_process_buf(pool.se, &buf);
    lk.lock();
    w->idle = true;
    w->idle_since = Clock::now();
    ++pool.idle;
    if (pool.main_asleep && reapable() > 0) {
      pool.main_asleep = false;
      wake_main();
    }
  }
  if (w->idle) --pool.idle;
  if (w->told) --pool.told;
  pool.workers.remove_if([w](const Worker& x) { return &x == w; });
  wake_main();
  lk.unlock();
  std::free(buf.mem);
}

// Tells workers idle for kThreadLinger to exit while more than
// --idle-threads would stay idle, and signals again the ones told before
// (a signal that came just before their read was missed); pool.m held.
void reap_idle(Clock::time_point now) {
  for (Worker& w : pool.workers)
    if (w.told) pthread_kill(w.thread, kWakeSignal);
  for (Worker& w : pool.workers) {
    if (reapable() <= 0) break;
    if (!w.told && w.idle && now - w.idle_since >= kThreadLinger) {
      w.told = true;
      ++pool.told;
      pthread_kill(w.thread, kWakeSignal);
    }
  }
}

// Serves requests until the session ends (unmount, or a stop signal
// handled by libfuse's handlers while the main thread waits here); 0, or
// the read error that ended it (-EAGAIN: no worker could be started). The
// main thread sleeps with no timeout while nothing can be reaped: an idle
// exporter is woken by nothing (before this loop, libfuse's was not
// either).
int request_loop(fuse_session* se) {
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sigemptyset(&sa.sa_mask);
  sigaction(kWakeSignal, &sa, nullptr);
  pool.se = se;
  pool.wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (pool.wake_fd < 0) {
    const int e = errno;
    say(std::string("eventfd: ") + std::strerror(e));
    return -e;
  }
  // The stop signals are taken only inside ppoll below (a signal that
  // comes meanwhile waits for it), so that their handler's end of the
  // session is always seen.
  const sigset_t stops = stop_signals();
  sigset_t waiting;
  pthread_sigmask(SIG_BLOCK, &stops, &waiting);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigdelset(&waiting, sig);
  std::unique_lock lk(pool.m);
  start_worker();
  if (pool.workers.empty()) {
    say("no FUSE thread could be started");
    return -EAGAIN;
  }
  while (!fuse_session_exited(se) && !pool.workers.empty()) {
    reap_idle(Clock::now());
    const bool tick = reapable() > 0 || pool.told > 0;
    pool.main_asleep = !tick;
    lk.unlock();
    wait_for_wake(tick, &waiting);
    lk.lock();
    pool.main_asleep = false;
  }
  fuse_session_exit(se);
  for (;;) {
    for (Worker& w : pool.workers) {
      if (!w.told) {
        w.told = true;
        ++pool.told;
      }
      pthread_kill(w.thread, kWakeSignal);
    }
    if (pool.workers.empty()) break;
    lk.unlock();
    wait_for_wake(true, nullptr);
    lk.lock();
  }
  fuse_session_reset(se);
  return pool.error;
}

}  // namespace

int main(int argc, char** argv) {
  parse_args(argc, argv);
  // Before any thread starts (see trim_pending).
  if (opts.malloc_arenas > 0) ::mallopt(M_ARENA_MAX, opts.malloc_arenas);
  struct stat st;
  if (::stat(opts.file.c_str(), &st) < 0 || !S_ISREG(st.st_mode)) {
    say(opts.file + ": not an existing regular file");
    return 1;
  }
  // Before any thread starts, so that only signal_loop takes SIGUSR1/2.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGUSR1);
  sigaddset(&sigs, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::string why;
  nbd_handle* first = connect_once(&why, standalone_deadline());
  if (!first) {
    say("connect to " + opts.socket + ": " + why);
    return 1;
  }
  // More than one connection only where the server says that they see one
  // another's writes and a flush on one covers all (NBD multi-conn).
  if (opts.connections > 1 && nbd_can_multi_conn(first) != 1) {
    say("the export does not allow multi-conn: using one connection, not " +
        std::to_string(opts.connections));
    opts.connections = 1;
  }
  std::vector<Slot> connections(static_cast<std::size_t>(opts.connections));
  connections[0].conn = std::make_shared<Conn>(first);
  slots = &connections;
  {
    const StopSignalsBlocked quiet;  // refresh_loop inherits it
    std::thread(signal_loop, sigs).detach();
  }

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
  // From the mount on, a stop signal waits for request_loop's ppoll, where
  // libfuse's handlers (set just after the mount) end the session and the
  // file is unmounted. Unblocked, one that came between fuse_mount and
  // fuse_set_signal_handlers killed the exporter by its default action and
  // left a dead mount behind (test: e2e.fuse.stop-signal-right-after-mount-
  // unmounts). Before the mount its default action is right: nothing to undo.
  const sigset_t stops = stop_signals();
  pthread_sigmask(SIG_BLOCK, &stops, nullptr);
  if (fuse_mount(f, opts.file.c_str()) == 0) {
    if (fuse_set_signal_handlers(fuse_get_session(f)) == 0) {
      say("serving " + opts.socket + " at " + opts.file + " (" + std::to_string(export_size.load()) +
          " bytes)");
      rc = request_loop(fuse_get_session(f)) == 0 ? 0 : 1;
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
