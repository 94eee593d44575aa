// bench-aio-nbd-server: an experiment, not a product part. A minimal NBD
// server on librbd's aio API, to measure what the NBD hop costs when no
// thread waits per request: one reader thread per connection submits each
// request to librbd and goes on reading; librbd's completion callback sends
// the reply. nbdkit (the product's gateway) holds one worker thread per
// request in flight instead (its plugin API is synchronous), which is what
// bench/rbd-fio/run.sh compares this against.
//
//   bench-aio-nbd-server --socket PATH POOL/IMAGE      (CEPH_CONF, client.admin)
//
// Serves one image read-write on a unix socket, fixed newstyle handshake,
// simple replies only; READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES, DISC;
// advertises multi-conn. librbd's cache is off, so a completed write is on
// the OSDs (FUA needs nothing more). No TLS, no exclusive lock, no resize,
// no extents: everything else the rbd plugin does is missing. Stops on
// SIGTERM or SIGINT.
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/error.hpp"
#include "rbd/cluster.hpp"
#include "rbd/image.hpp"
#include "rbd/spec.hpp"

namespace {

using rbdgw::rbd::Cluster;
using rbdgw::rbd::Image;
using rbdgw::rbd::ImageSpec;

// NBD protocol constants (the NBD protocol document, doc/proto.md).
constexpr std::uint64_t kNbdMagic = 0x4e42444d41474943ULL;  // "NBDMAGIC"
constexpr std::uint64_t kOptMagic = 0x49484156454F5054ULL;  // "IHAVEOPT"
constexpr std::uint64_t kRepMagic = 0x0003e889045565a9ULL;
constexpr std::uint32_t kRequestMagic = 0x25609513;
constexpr std::uint32_t kSimpleReplyMagic = 0x67446698;
constexpr std::uint16_t kFlagFixedNewstyle = 1, kFlagNoZeroes = 2;
constexpr std::uint32_t kOptExportName = 1, kOptAbort = 2, kOptInfo = 6, kOptGo = 7;
constexpr std::uint32_t kRepAck = 1, kRepInfo = 3, kRepErrUnsup = 0x80000001;
constexpr std::uint16_t kInfoExport = 0;
constexpr std::uint16_t kTxHasFlags = 1, kTxSendFlush = 4, kTxSendFua = 8, kTxSendTrim = 32,
                        kTxSendWriteZeroes = 64, kTxCanMultiConn = 256;
constexpr std::uint16_t kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2, kCmdFlush = 3, kCmdTrim = 4,
                        kCmdWriteZeroes = 6;
constexpr std::uint32_t kMaxRequest = 32 << 20;

std::uint64_t be64(std::uint64_t v) { return __builtin_bswap64(v); }
std::uint32_t be32(std::uint32_t v) { return __builtin_bswap32(v); }
std::uint16_t be16(std::uint16_t v) { return __builtin_bswap16(v); }

bool read_full(int fd, void* buf, std::size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

bool write_iov(int fd, iovec* iov, int cnt) {
  while (cnt > 0) {
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = static_cast<std::size_t>(cnt);
    const ssize_t r = ::sendmsg(fd, &m, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    auto left = static_cast<std::size_t>(r);
    while (cnt > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --cnt;
    }
    if (cnt > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return true;
}

bool write_full(int fd, const void* buf, std::size_t n) {
  iovec v{const_cast<void*>(buf), n};
  return write_iov(fd, &v, 1);
}

struct [[gnu::packed]] RequestHeader {
  std::uint32_t magic;
  std::uint16_t flags;
  std::uint16_t type;
  std::uint64_t cookie;
  std::uint64_t offset;
  std::uint32_t length;
};

struct [[gnu::packed]] SimpleReply {
  std::uint32_t magic;
  std::uint32_t error;
  std::uint64_t cookie;
};

// One connection: its fd is closed once the reader and every request in
// flight are done (each request holds a reference).
struct Connection {
  explicit Connection(int f) : fd(f) {}
  ~Connection() { ::close(fd); }
  int fd;
  std::mutex send_lock;  // one reply at a time on the socket
  std::atomic<bool> broken{false};
};

struct Request {
  std::shared_ptr<Connection> conn;
  std::uint64_t cookie;  // as received (big-endian), echoed back
  std::uint16_t type;
  std::uint32_t length;
  std::vector<char> buf;  // read data, or the write's payload
};

int nbd_errno(ssize_t r) {
  switch (-r) {
    case EPERM: case EIO: case ENOMEM: case EINVAL: case ENOSPC: case EOVERFLOW:
      return static_cast<int>(-r);
    case EROFS: case EACCES: return EPERM;
    case EOPNOTSUPP: return EOPNOTSUPP;
    default: return EIO;
  }
}

void reply(Request& q, ssize_t r) {
  SimpleReply h{be32(kSimpleReplyMagic), be32(r < 0 ? nbd_errno(r) : 0), q.cookie};
  iovec v[2] = {{&h, sizeof h}, {q.buf.data(), q.buf.size()}};
  const int cnt = (q.type == kCmdRead && r >= 0) ? 2 : 1;
  std::lock_guard g(q.conn->send_lock);
  if (!q.conn->broken && !write_iov(q.conn->fd, v, cnt)) q.conn->broken = true;
}

// librbd's completion callback, on a librbd thread.
void on_complete(rbd_completion_t c, void* arg) noexcept {
  std::unique_ptr<Request> q(static_cast<Request*>(arg));
  ssize_t r = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  if (q->type == kCmdRead && r >= 0 && static_cast<std::size_t>(r) < q->buf.size())
    std::memset(q->buf.data() + r, 0, q->buf.size() - static_cast<std::size_t>(r));
  reply(*q, r);
}

void submit(rbd_image_t img, std::unique_ptr<Request> q, std::uint64_t off) {
  rbd_completion_t c = nullptr;
  if (int r = rbd_aio_create_completion(q.get(), on_complete, &c); r < 0) {
    reply(*q, r);
    return;
  }
  int r = 0;
  Request* p = q.get();
  switch (p->type) {
    case kCmdRead: r = rbd_aio_read(img, off, p->length, p->buf.data(), c); break;
    case kCmdWrite: r = rbd_aio_write(img, off, p->length, p->buf.data(), c); break;
    case kCmdFlush: r = rbd_aio_flush(img, c); break;
    case kCmdTrim: r = rbd_aio_discard(img, off, p->length, c); break;
    case kCmdWriteZeroes: r = rbd_aio_write_zeroes(img, off, p->length, c, 0, 0); break;
  }
  if (r < 0) {
    rbd_aio_release(c);
    reply(*p, r);
    return;
  }
  q.release();  // on_complete owns it now
}

bool option_reply(int fd, std::uint32_t opt, std::uint32_t type, const void* data,
                  std::uint32_t len) {
  struct [[gnu::packed]] {
    std::uint64_t magic;
    std::uint32_t opt, type, len;
  } h{be64(kRepMagic), be32(opt), be32(type), be32(len)};
  iovec v[2] = {{&h, sizeof h}, {const_cast<void*>(data), len}};
  return write_iov(fd, v, len ? 2 : 1);
}

// The fixed newstyle handshake; true once in transmission.
bool handshake(int fd, std::uint64_t size, std::uint16_t tx_flags) {
  struct [[gnu::packed]] {
    std::uint64_t magic, opt_magic;
    std::uint16_t flags;
  } hello{be64(kNbdMagic), be64(kOptMagic), be16(kFlagFixedNewstyle | kFlagNoZeroes)};
  std::uint32_t client_flags = 0;
  if (!write_full(fd, &hello, sizeof hello) || !read_full(fd, &client_flags, 4)) return false;
  const bool no_zeroes = be32(client_flags) & kFlagNoZeroes;
  for (;;) {
    struct [[gnu::packed]] {
      std::uint64_t magic;
      std::uint32_t opt, len;
    } o{};
    if (!read_full(fd, &o, sizeof o) || be64(o.magic) != kOptMagic) return false;
    const std::uint32_t opt = be32(o.opt), len = be32(o.len);
    if (len > 65536) return false;
    std::vector<char> data(len);
    if (!read_full(fd, data.data(), len)) return false;
    if (opt == kOptExportName) {
      struct [[gnu::packed]] {
        std::uint64_t size;
        std::uint16_t flags;
        char zeroes[124];
      } r{be64(size), be16(tx_flags), {}};
      return write_full(fd, &r, no_zeroes ? 10 : sizeof r);
    }
    if (opt == kOptAbort) {
      option_reply(fd, opt, kRepAck, nullptr, 0);
      return false;
    }
    if (opt == kOptInfo || opt == kOptGo) {
      struct [[gnu::packed]] {
        std::uint16_t type;
        std::uint64_t size;
        std::uint16_t flags;
      } info{be16(kInfoExport), be64(size), be16(tx_flags)};
      if (!option_reply(fd, opt, kRepInfo, &info, sizeof info) ||
          !option_reply(fd, opt, kRepAck, nullptr, 0))
        return false;
      if (opt == kOptGo) return true;
      continue;
    }
    if (!option_reply(fd, opt, kRepErrUnsup, nullptr, 0)) return false;  // incl. structured replies
  }
}

void serve(int fd, rbd_image_t img, std::uint64_t size) {
  auto conn = std::make_shared<Connection>(fd);
  const std::uint16_t tx = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim |
                           kTxSendWriteZeroes | kTxCanMultiConn;
  if (!handshake(fd, size, tx)) return;
  for (;;) {
    RequestHeader h{};
    if (!read_full(fd, &h, sizeof h) || be32(h.magic) != kRequestMagic) break;
    auto q = std::make_unique<Request>();
    q->conn = conn;
    q->cookie = h.cookie;
    q->type = be16(h.type);
    q->length = be32(h.length);
    const std::uint64_t off = be64(h.offset);
    if (q->type == kCmdDisc) break;
    const bool bad_range = off > size || q->length > size - off;
    if (q->type == kCmdWrite) {
      if (q->length > kMaxRequest) break;  // cannot skip the payload safely
      q->buf.resize(q->length);
      if (!read_full(fd, q->buf.data(), q->length)) break;
    }
    if (q->type == kCmdRead) {
      if (q->length > kMaxRequest) { reply(*q, -EINVAL); continue; }
      q->buf.resize(q->length);
    }
    const bool known = q->type == kCmdRead || q->type == kCmdWrite || q->type == kCmdFlush ||
                       q->type == kCmdTrim || q->type == kCmdWriteZeroes;
    if (!known || (bad_range && q->type != kCmdFlush)) { reply(*q, -EINVAL); continue; }
    submit(img, std::move(q), off);
    if (conn->broken) break;
  }
  // Requests still in flight keep the connection (and its fd) until they
  // have replied; the image outlives every connection (main never closes it
  // before exit).
}

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

}  // namespace

int main(int argc, char** argv) {
  std::string sock, spec;
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--socket") == 0 && i + 1 < argc) sock = argv[++i];
    else spec = argv[i];
  }
  if (sock.empty() || spec.empty()) {
    std::fprintf(stderr, "usage: bench-aio-nbd-server --socket PATH POOL/IMAGE\n");
    return 2;
  }
  try {
    rbdgw::rbd::ClusterOptions co;
    if (const char* c = std::getenv("CEPH_CONF")) co.conf_file = c;
    co.config.push_back({"rbd_cache", "false"});
    const Cluster cluster = Cluster::connect(co);
    const Image image = Image::open(cluster, ImageSpec::parse(spec));
    std::uint64_t size = 0;
    rbdgw::check(rbd_get_size(image.handle(), &size), "rbd_get_size", spec);

    const int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (lfd < 0 || sock.size() >= sizeof a.sun_path) throw std::runtime_error("socket: " + sock);
    std::memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
    ::unlink(sock.c_str());
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || ::listen(lfd, 16) < 0)
      throw std::runtime_error("bind/listen " + sock + ": " + std::strerror(errno));
    struct sigaction sa{};
    sa.sa_handler = on_signal;  // no SA_RESTART: accept returns EINTR
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    while (!g_stop) {
      const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      std::thread([fd, &image, size] { serve(fd, image.handle(), size); }).detach();
    }
    ::unlink(sock.c_str());
    // Exits without closing the image under connections still being served.
    std::fflush(nullptr);
    ::_exit(0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-aio-nbd-server: %s\n", e.what());
    return 1;
  }
}
