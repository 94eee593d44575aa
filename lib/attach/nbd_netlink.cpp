#include "attach/nbd_netlink.hpp"

#include <endian.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::attach {
namespace {

using namespace std::chrono_literals;

// ---- file descriptors ------------------------------------------------------------

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  ~Fd() { close(); }
  int get() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

 private:
  int fd_;
};

void write_all(int fd, const void* data, std::size_t len, const std::string& what) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("NBD handshake: send", what, errno);
    p += n;
    len -= static_cast<std::size_t>(n);
  }
}

void read_all(int fd, void* data, std::size_t len, const std::string& what) {
  auto* p = static_cast<std::uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = ::recv(fd, p, len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("NBD handshake: recv", what, errno == EAGAIN ? ETIMEDOUT : errno);
    if (n == 0) throw Error(ECONNRESET, cat("NBD handshake: ", what, ": the server closed the connection"));
    p += n;
    len -= static_cast<std::size_t>(n);
  }
}

void set_timeouts(int fd, std::chrono::seconds t, const std::string& what) {
  const timeval tv{static_cast<time_t>(t.count()), 0};
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
    throw_errno("setsockopt SO_RCVTIMEO/SO_SNDTIMEO", what, errno);
}

// ---- NBD handshake (fixed newstyle) ---------------------------------------------------

constexpr std::uint64_t kNbdMagic = 0x4e42444d41474943;      // "NBDMAGIC"
constexpr std::uint64_t kOptMagic = 0x49484156454f5054;      // "IHAVEOPT"
constexpr std::uint64_t kOldstyleMagic = 0x0000420281861253;
constexpr std::uint64_t kReplyMagic = 0x0003e889045565a9;
constexpr std::uint16_t kFlagFixedNewstyle = 1, kFlagNoZeroes = 2;
constexpr std::uint32_t kOptGo = 7;
constexpr std::uint32_t kRepAck = 1, kRepInfo = 3, kRepFlagError = 1u << 31;
constexpr std::uint16_t kInfoExport = 0, kInfoBlockSize = 3;
constexpr std::uint32_t kMaxReplyLength = 64 * 1024;

std::uint16_t get16(const std::uint8_t* p) { std::uint16_t v; std::memcpy(&v, p, 2); return be16toh(v); }
std::uint32_t get32(const std::uint8_t* p) { std::uint32_t v; std::memcpy(&v, p, 4); return be32toh(v); }
std::uint64_t get64(const std::uint8_t* p) { std::uint64_t v; std::memcpy(&v, p, 8); return be64toh(v); }
void put16(std::vector<std::uint8_t>& b, std::uint16_t v) { v = htobe16(v); b.insert(b.end(), reinterpret_cast<std::uint8_t*>(&v), reinterpret_cast<std::uint8_t*>(&v) + 2); }
void put32(std::vector<std::uint8_t>& b, std::uint32_t v) { v = htobe32(v); b.insert(b.end(), reinterpret_cast<std::uint8_t*>(&v), reinterpret_cast<std::uint8_t*>(&v) + 4); }
void put64(std::vector<std::uint8_t>& b, std::uint64_t v) { v = htobe64(v); b.insert(b.end(), reinterpret_cast<std::uint8_t*>(&v), reinterpret_cast<std::uint8_t*>(&v) + 8); }

// Negotiates the default export on fd; afterwards fd is in transmission phase.
NbdExport handshake(int fd, const std::string& what) {
  std::uint8_t greeting[18];
  read_all(fd, greeting, sizeof greeting, what);
  if (get64(greeting) != kNbdMagic) throw Error(EPROTO, cat("NBD handshake: ", what, ": not an NBD server"));
  if (get64(greeting + 8) == kOldstyleMagic)
    throw Error(EPROTONOSUPPORT, cat("NBD handshake: ", what, ": oldstyle server, not supported"));
  const std::uint16_t server_flags = get16(greeting + 16);
  if (get64(greeting + 8) != kOptMagic || !(server_flags & kFlagFixedNewstyle))
    throw Error(EPROTONOSUPPORT, cat("NBD handshake: ", what, ": server does not speak fixed newstyle"));

  std::vector<std::uint8_t> out;
  put32(out, kFlagFixedNewstyle | (server_flags & kFlagNoZeroes));
  put64(out, kOptMagic);
  put32(out, kOptGo);
  put32(out, 4 + 2 + 2 * 2);
  put32(out, 0);  // export name "" (the default export)
  put16(out, 2);
  put16(out, kInfoExport);
  put16(out, kInfoBlockSize);
  write_all(fd, out.data(), out.size(), what);

  NbdExport exp;
  bool have_export = false;
  for (;;) {
    std::uint8_t head[20];
    read_all(fd, head, sizeof head, what);
    const std::uint32_t type = get32(head + 12), len = get32(head + 16);
    if (get64(head) != kReplyMagic || get32(head + 8) != kOptGo || len > kMaxReplyLength)
      throw Error(EPROTO, cat("NBD handshake: ", what, ": bad reply to NBD_OPT_GO"));
    std::vector<std::uint8_t> data(len);
    read_all(fd, data.data(), len, what);
    if (type & kRepFlagError)
      throw Error(EIO, cat("NBD_OPT_GO: ", what, ": server error 0x", std::hex, type, std::dec,
                           len ? cat(": ", std::string(data.begin(), data.end())) : ""));
    if (type == kRepAck) break;
    if (type != kRepInfo || len < 2)
      throw Error(EPROTO, cat("NBD handshake: ", what, ": unexpected reply ", type, " to NBD_OPT_GO"));
    const std::uint16_t info = get16(data.data());
    if (info == kInfoExport && len >= 12) {
      exp.size = get64(data.data() + 2);
      exp.flags = get16(data.data() + 10);
      have_export = true;
    } else if (info == kInfoBlockSize && len >= 14) {
      exp.min_block = get32(data.data() + 2);
      exp.preferred_block = get32(data.data() + 6);
      exp.max_block = get32(data.data() + 10);
    }
  }
  if (!have_export)
    throw Error(EPROTO, cat("NBD handshake: ", what, ": server sent no export size"));
  return exp;
}

// A unix socket connected to the server on path, through the handshake,
// with no socket timeouts left set (the kernel's receiver would take them).
Fd connect_export(const std::string& path, NbdExport& exp) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    throw Error(EINVAL, cat("NBD server socket '", path, "': empty or too long"));
  std::memcpy(addr.sun_path, path.data(), path.size());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) throw_errno("socket", path, errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
    throw_errno("connect to NBD server", path, errno);
  set_timeouts(fd.get(), 30s, path);
  exp = handshake(fd.get(), path);
  set_timeouts(fd.get(), 0s, path);
  return fd;
}

// ---- generic netlink -------------------------------------------------------------------

constexpr std::size_t align4(std::size_t n) { return (n + 3) & ~std::size_t{3}; }

// Netlink attributes, built in place (nested ones with begin/end).
class Attrs {
 public:
  void u32(std::uint16_t type, std::uint32_t v) { put(type, &v, sizeof v); }
  void u64(std::uint16_t type, std::uint64_t v) { put(type, &v, sizeof v); }
  void str(std::uint16_t type, const std::string& s) { put(type, s.c_str(), s.size() + 1); }
  std::size_t begin(std::uint16_t type) { const std::size_t at = buf_.size(); put(type, nullptr, 0); return at; }
  void end(std::size_t at) {
    const auto len = static_cast<std::uint16_t>(buf_.size() - at);
    std::memcpy(buf_.data() + at, &len, sizeof len);
  }
  const std::vector<std::uint8_t>& bytes() const { return buf_; }

 private:
  void put(std::uint16_t type, const void* data, std::size_t len) {
    const nlattr a{static_cast<std::uint16_t>(NLA_HDRLEN + len), type};
    const std::size_t at = buf_.size();
    buf_.resize(at + NLA_HDRLEN + align4(len));
    std::memcpy(buf_.data() + at, &a, sizeof a);
    if (len) std::memcpy(buf_.data() + at + NLA_HDRLEN, data, len);
  }
  std::vector<std::uint8_t> buf_;
};

// Calls fn(type, payload, length) for each attribute in [p, p + len).
template <typename Fn>
void for_each_attr(const std::uint8_t* p, std::size_t len, Fn fn) {
  while (len >= NLA_HDRLEN) {
    nlattr a;
    std::memcpy(&a, p, sizeof a);
    if (a.nla_len < NLA_HDRLEN || a.nla_len > len) break;
    fn(static_cast<std::uint16_t>(a.nla_type & NLA_TYPE_MASK), p + NLA_HDRLEN, a.nla_len - NLA_HDRLEN);
    const std::size_t step = std::min(len, align4(a.nla_len));
    p += step;
    len -= step;
  }
}

template <typename T>
T attr_value(const std::uint8_t* p, std::size_t len) {
  T v{};
  std::memcpy(&v, p, std::min(len, sizeof v));
  return v;
}

class Genl {
 public:
  // A generic netlink socket talking to the "nbd" family.
  static Genl nbd() {
    Fd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC));
    if (fd.get() < 0) throw_errno("socket", "AF_NETLINK NETLINK_GENERIC", errno);
    Genl g(std::move(fd), GENL_ID_CTRL);
    Attrs a;
    a.str(CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME);
    std::uint16_t family = 0;
    try {
      const auto reply = g.request(CTRL_CMD_GETFAMILY, a, "CTRL_CMD_GETFAMILY", "nbd");
      for_each_attr(reply.data(), reply.size(), [&](std::uint16_t t, const std::uint8_t* p, std::size_t n) {
        if (t == CTRL_ATTR_FAMILY_ID) family = attr_value<std::uint16_t>(p, n);
      });
    } catch (const Error& e) {
      if (e.code() != ENOENT) throw;
      throw Error(ENOENT, "nbd netlink family not available: is the nbd module loaded (modprobe nbd)?");
    }
    if (!family) throw Error(EPROTO, "CTRL_CMD_GETFAMILY: nbd: no family id in the reply");
    g.family_ = family;
    return g;
  }

  // Sends cmd with attrs and waits for the kernel's acknowledgement. Returns
  // the attributes of the reply message, if the command sends one. Throws
  // Error "call: object: strerror" on a negative acknowledgement.
  std::vector<std::uint8_t> request(std::uint8_t cmd, const Attrs& attrs, const std::string& call,
                                    const std::string& object) {
    const std::uint32_t seq = ++seq_;
    std::vector<std::uint8_t> msg(NLMSG_HDRLEN + GENL_HDRLEN);
    const nlmsghdr h{static_cast<std::uint32_t>(msg.size() + attrs.bytes().size()), family_,
                     NLM_F_REQUEST | NLM_F_ACK, seq, 0};
    const genlmsghdr g{cmd, NBD_GENL_VERSION, 0};
    std::memcpy(msg.data(), &h, sizeof h);
    std::memcpy(msg.data() + NLMSG_HDRLEN, &g, sizeof g);
    msg.insert(msg.end(), attrs.bytes().begin(), attrs.bytes().end());
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd_.get(), msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0)
      throw_errno(call, object, errno);

    std::vector<std::uint8_t> reply;
    std::vector<std::uint8_t> buf(64 * 1024);
    for (;;) {
      const ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno(call, object, errno);
      auto len = static_cast<std::size_t>(n);
      for (std::size_t off = 0; len - off >= NLMSG_HDRLEN;) {
        nlmsghdr m;
        std::memcpy(&m, buf.data() + off, sizeof m);
        if (m.nlmsg_len < NLMSG_HDRLEN || m.nlmsg_len > len - off) break;
        const std::uint8_t* payload = buf.data() + off + NLMSG_HDRLEN;
        if (m.nlmsg_seq == seq && m.nlmsg_type == NLMSG_ERROR) {
          const int err = attr_value<nlmsgerr>(payload, m.nlmsg_len - NLMSG_HDRLEN).error;
          if (err != 0) throw_errno(call, object, err);
          return reply;
        }
        if (m.nlmsg_seq == seq && m.nlmsg_type == family_ && m.nlmsg_len >= NLMSG_HDRLEN + GENL_HDRLEN)
          reply.assign(payload + GENL_HDRLEN, payload + (m.nlmsg_len - NLMSG_HDRLEN));
        off += NLMSG_ALIGN(m.nlmsg_len);
      }
    }
  }

 private:
  Genl(Fd fd, std::uint16_t family) : fd_(std::move(fd)), family_(family) {}
  Fd fd_;
  std::uint16_t family_;
  std::uint32_t seq_ = 0;
};

// Attributes with the one socket fd to hand over.
void add_socket(Attrs& a, int fd) {
  const std::size_t socks = a.begin(NBD_ATTR_SOCKETS);
  const std::size_t item = a.begin(NBD_SOCK_ITEM);
  a.u32(NBD_SOCK_FD, static_cast<std::uint32_t>(fd));
  a.end(item);
  a.end(socks);
}

std::uint32_t pick_block_size(const NbdOptions& o, const NbdExport& exp, const std::string& what) {
  const std::uint32_t bs = o.block_size ? o.block_size : std::max<std::uint32_t>(512, exp.min_block);
  if (bs < 512 || bs > 4096 || (bs & (bs - 1)))
    throw Error(EINVAL, cat(what, ": block size ", bs, ": expected a power of two in 512..4096"));
  if (bs < exp.min_block)
    throw Error(EINVAL, cat(what, ": block size ", bs, " is below the server's minimum ", exp.min_block));
  if (exp.size % bs)
    throw Error(EINVAL, cat(what, ": export size ", exp.size, " is not a multiple of the block size ", bs));
  return bs;
}

// The device's size in bytes from sysfs, 0 if unknown.
std::uint64_t device_bytes(int index) {
  std::ifstream f(cat("/sys/block/nbd", index, "/size"));
  std::uint64_t sectors = 0;
  f >> sectors;
  return sectors * 512;
}

// The identifier the device was connected with (/sys/block/nbdN/backend):
// NBD_CMD_RECONFIGURE must repeat it.
std::string device_backend(int index) {
  std::ifstream f(cat("/sys/block/nbd", index, "/backend"));
  std::string backend;
  std::getline(f, backend);
  return backend;
}

// ---- sock_diag (unix sockets) -----------------------------------------------------------

constexpr std::uint8_t kTcpEstablished = 1;  // unix stream sockets use the TCP states

struct UnixSocketInfo {
  std::uint32_t ino = 0, peer = 0;
  std::uint8_t state = 0, shutdown = 0;
  std::string name;  // bound path ("" for none; accepted sockets share the listener's)
};

// Sends a SOCK_DIAG_BY_FAMILY request for AF_UNIX (a dump when ino is 0,
// else the socket with that inode) and returns the sockets in the reply.
// Throws Error (ENOENT for an exact lookup of no such socket, or when the
// kernel has no unix_diag).
std::vector<UnixSocketInfo> unix_diag(std::uint32_t ino, std::uint32_t states, const std::string& what) {
  Fd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (fd.get() < 0) throw_errno("socket", "AF_NETLINK NETLINK_SOCK_DIAG", errno);
  struct {
    nlmsghdr h;
    unix_diag_req r;
  } req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | (ino ? 0 : NLM_F_DUMP);
  req.h.nlmsg_seq = 1;
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = states;
  req.r.udiag_ino = ino;
  req.r.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER;
  req.r.udiag_cookie[0] = req.r.udiag_cookie[1] = ~0u;  // INET_DIAG_NOCOOKIE
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd.get(), &req, sizeof req, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0)
    throw_errno("sock_diag request", what, errno);
  std::vector<UnixSocketInfo> out;
  std::vector<std::uint8_t> buf(64 * 1024);
  for (;;) {
    const ssize_t n = ::recv(fd.get(), buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("sock_diag recv", what, errno);
    const auto len = static_cast<std::size_t>(n);
    for (std::size_t off = 0; len - off >= NLMSG_HDRLEN;) {
      nlmsghdr m;
      std::memcpy(&m, buf.data() + off, sizeof m);
      if (m.nlmsg_len < NLMSG_HDRLEN || m.nlmsg_len > len - off) break;
      const std::uint8_t* p = buf.data() + off + NLMSG_HDRLEN;
      const std::size_t plen = m.nlmsg_len - NLMSG_HDRLEN;
      if (m.nlmsg_type == NLMSG_DONE) return out;
      if (m.nlmsg_type == NLMSG_ERROR) {
        const int err = attr_value<nlmsgerr>(p, plen).error;
        if (err != 0) throw_errno("sock_diag", what, err);
        return out;
      }
      if (m.nlmsg_type == SOCK_DIAG_BY_FAMILY && plen >= sizeof(unix_diag_msg)) {
        unix_diag_msg d;
        std::memcpy(&d, p, sizeof d);
        UnixSocketInfo u;
        u.ino = d.udiag_ino;
        u.state = d.udiag_state;
        const std::size_t at = NLMSG_ALIGN(sizeof d);
        if (plen > at) {
          for_each_attr(p + at, plen - at, [&](std::uint16_t t, const std::uint8_t* a, std::size_t an) {
            if (t == UNIX_DIAG_NAME) {  // a path name ends in its NUL
              u.name.assign(reinterpret_cast<const char*>(a), an);
              while (!u.name.empty() && u.name.back() == '\0') u.name.pop_back();
            }
            if (t == UNIX_DIAG_PEER) u.peer = attr_value<std::uint32_t>(a, an);
            if (t == UNIX_DIAG_SHUTDOWN) u.shutdown = attr_value<std::uint8_t>(a, an);
          });
        }
        out.push_back(std::move(u));
        if (ino) return out;  // an exact lookup answers with one message
      }
      off += NLMSG_ALIGN(m.nlmsg_len);
    }
  }
}

std::uint32_t socket_inode(int fd, const std::string& what) {
  struct stat st;
  if (::fstat(fd, &st) < 0) throw_errno("fstat", what, errno);
  return static_cast<std::uint32_t>(st.st_ino);
}

// Whether a unix socket with inode ino still exists. Called after this
// process closed its last descriptor of it: only the kernel's reference
// (the nbd driver took the socket) keeps it alive then.
bool unix_socket_exists(std::uint32_t ino, const std::string& what) {
  try {
    return !unix_diag(ino, ~0u, what).empty();
  } catch (const Error& e) {
    if (e.code() == ENOENT) return false;
    throw;
  }
}

}  // namespace

bool nbd_server_connected(const std::string& socket_path) {
  for (const UnixSocketInfo& u : unix_diag(0, 1u << kTcpEstablished, socket_path))
    if (u.name == socket_path && u.peer != 0 && u.shutdown == 0) return true;
  return false;
}

std::string nbd_backend(int index) { return device_backend(index); }

int nbd_find_backend(const std::string& backend) {
  if (backend.empty()) return -1;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/sys/block", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("nbd", 0) != 0) continue;
    int index;
    try {
      index = nbd_device_index("/dev/" + name);
    } catch (const Error&) {
      continue;
    }
    if (device_backend(index) == backend && nbd_status(index) == NbdState::connected) return index;
  }
  return -1;
}

std::string nbd_device_path(int index) { return cat("/dev/nbd", index); }

int nbd_device_index(const std::string& device) {
  constexpr std::string_view prefix = "/dev/nbd";
  const std::string digits = device.substr(std::min(device.size(), prefix.size()));
  if (device.rfind(prefix, 0) != 0 || digits.empty() || digits.size() > 6 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    throw Error(EINVAL, cat("'", device, "' is not an NBD device (/dev/nbdN)"));
  return std::stoi(digits);
}

NbdExport nbd_probe(const std::string& socket_path) {
  NbdExport exp;
  const Fd fd = connect_export(socket_path, exp);
  // NBD_CMD_DISC ends the transmission phase cleanly.
  nbd_request req{};
  req.magic = htobe32(NBD_REQUEST_MAGIC);
  req.type = htobe32(NBD_CMD_DISC);
  try {
    write_all(fd.get(), &req, sizeof req, socket_path);
  } catch (const Error& e) {
    log::debug("NBD_CMD_DISC: ", e.what());
  }
  return exp;
}

int nbd_connect(const std::string& socket_path, const NbdOptions& o) {
  const std::string what = o.index < 0 ? cat("nbd device (server ", socket_path, ")")
                                       : cat(nbd_device_path(o.index), " (server ", socket_path, ")");
  if (o.io_timeout < 0s) throw Error(EINVAL, cat(what, ": negative I/O timeout"));
  if (o.dead_conn_timeout < 0s) throw Error(EINVAL, cat(what, ": negative dead-connection timeout"));
  Genl genl = Genl::nbd();
  NbdExport exp;
  const Fd sock = connect_export(socket_path, exp);
  Attrs a;
  if (o.index >= 0) a.u32(NBD_ATTR_INDEX, static_cast<std::uint32_t>(o.index));
  a.u64(NBD_ATTR_SIZE_BYTES, exp.size);
  a.u64(NBD_ATTR_BLOCK_SIZE_BYTES, pick_block_size(o, exp, what));
  a.u64(NBD_ATTR_SERVER_FLAGS, exp.flags);
  a.u64(NBD_ATTR_TIMEOUT, static_cast<std::uint64_t>(o.io_timeout.count()));
  a.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, static_cast<std::uint64_t>(o.dead_conn_timeout.count()));
  if (!o.backend.empty()) a.str(NBD_ATTR_BACKEND_IDENTIFIER, o.backend);
  add_socket(a, sock.get());
  const auto reply = genl.request(NBD_CMD_CONNECT, a, "nbd netlink NBD_CMD_CONNECT", what);
  int index = o.index;
  for_each_attr(reply.data(), reply.size(), [&](std::uint16_t t, const std::uint8_t* p, std::size_t n) {
    if (t == NBD_ATTR_INDEX) index = static_cast<int>(attr_value<std::uint32_t>(p, n));
  });
  if (index < 0) throw Error(EPROTO, cat("nbd netlink NBD_CMD_CONNECT: ", what, ": no device index in the reply"));
  log::debug("connected ", nbd_device_path(index), " to ", socket_path, " (", exp.size, " bytes)");
  return index;
}

void nbd_reconnect(int index, const std::string& socket_path, std::chrono::milliseconds wait) {
  const std::string what = cat(nbd_device_path(index), " (server ", socket_path, ")");
  if (nbd_status(index) != NbdState::connected)
    throw Error(ENOTCONN, cat("nbd reconnect: ", what, ": the device is not connected"));
  Genl genl = Genl::nbd();
  const std::string backend = device_backend(index);
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    NbdExport exp;
    Fd sock = connect_export(socket_path, exp);
    const std::uint64_t size = device_bytes(index);
    if (size && exp.size != size)
      throw Error(EINVAL, cat("nbd reconnect: ", what, ": the export has ", exp.size,
                              " bytes, the device ", size, "; refusing a different export"));
    Attrs a;
    a.u32(NBD_ATTR_INDEX, static_cast<std::uint32_t>(index));
    if (!backend.empty()) a.str(NBD_ATTR_BACKEND_IDENTIFIER, backend);
    add_socket(a, sock.get());
    genl.request(NBD_CMD_RECONFIGURE, a, "nbd netlink NBD_CMD_RECONFIGURE", what);
    // NBD_CMD_RECONFIGURE also reports success when it found no dead
    // connection to replace (and dropped the socket). The kernel took it
    // if it outlives this process's descriptor.
    const std::uint32_t ino = socket_inode(sock.get(), what);
    sock.close();
    if (unix_socket_exists(ino, what)) break;
    if (std::chrono::steady_clock::now() >= deadline)
      throw Error(EBUSY, cat("nbd reconnect: ", what, ": the kernel kept its connection "
                             "(no dead connection to replace: is the old server still alive?)"));
    std::this_thread::sleep_for(100ms);
  }
  log::info("reconnected ", nbd_device_path(index), " to ", socket_path);
}

void nbd_disconnect(int index, std::chrono::milliseconds wait) {
  const std::string what = nbd_device_path(index);
  const NbdState st = nbd_status(index);
  if (st == NbdState::absent) throw Error(ENOENT, cat("nbd disconnect: ", what, ": no such device"));
  if (st == NbdState::disconnected) return;
  Genl genl = Genl::nbd();
  Attrs a;
  a.u32(NBD_ATTR_INDEX, static_cast<std::uint32_t>(index));
  genl.request(NBD_CMD_DISCONNECT, a, "nbd netlink NBD_CMD_DISCONNECT", what);
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (nbd_status(index) == NbdState::connected) {
    if (std::chrono::steady_clock::now() >= deadline)
      throw Error(EBUSY, cat("nbd disconnect: ", what, ": still configured after NBD_CMD_DISCONNECT "
                             "(is it still open or mounted?)"));
    std::this_thread::sleep_for(50ms);
  }
}

NbdState nbd_status(int index) {
  if (index < 0) throw Error(EINVAL, cat("nbd status: bad device index ", index));
  Genl genl = Genl::nbd();
  Attrs a;
  a.u32(NBD_ATTR_INDEX, static_cast<std::uint32_t>(index));
  const auto reply = genl.request(NBD_CMD_STATUS, a, "nbd netlink NBD_CMD_STATUS", nbd_device_path(index));
  NbdState st = NbdState::absent;
  for_each_attr(reply.data(), reply.size(), [&](std::uint16_t t, const std::uint8_t* p, std::size_t n) {
    if (t != NBD_ATTR_DEVICE_LIST) return;
    for_each_attr(p, n, [&](std::uint16_t, const std::uint8_t* ip, std::size_t in) {
      int dev = -1;
      bool connected = false;
      for_each_attr(ip, in, [&](std::uint16_t ft, const std::uint8_t* fp, std::size_t fn) {
        if (ft == NBD_DEVICE_INDEX) dev = static_cast<int>(attr_value<std::uint32_t>(fp, fn));
        if (ft == NBD_DEVICE_CONNECTED) connected = attr_value<std::uint8_t>(fp, fn) != 0;
      });
      if (dev == index) st = connected ? NbdState::connected : NbdState::disconnected;
    });
  });
  return st;
}

}  // namespace rbdgw::attach
