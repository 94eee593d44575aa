// rbdgw serve's TLS-terminating NBD front and its per-export nbdkit backends
// (lib/serve/server.hpp). NBD protocol: doc/proto.md of the NBD project
// (fixed newstyle negotiation, option and reply formats).
#include "serve/server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/error.hpp"
#include "common/log.hpp"
#include "common/open_files_limit.hpp"

namespace fs = std::filesystem;

namespace rbdgw::serve {

Tools Tools::from_environment() {
  Tools t;
  auto env = [](const char* name, std::string& out) {
    if (const char* v = std::getenv(name); v && *v) out = v;
  };
  env("NBDKIT", t.nbdkit);
  env("RBDGW_PLUGIN", t.plugin);
  env("RBDGW_FILTER", t.filter);
  return t;
}

namespace {

// ---- NBD protocol constants -------------------------------------------
constexpr std::uint64_t kNbdMagic = 0x4e42444d41474943ULL;  // "NBDMAGIC"
constexpr std::uint64_t kIHaveOpt = 0x49484156454F5054ULL;  // "IHAVEOPT"
constexpr std::uint64_t kReplyMagic = 0x3e889045565a9ULL;
constexpr std::uint16_t kFlagFixedNewstyle = 1, kFlagNoZeroes = 2;
constexpr std::uint32_t kOptExportName = 1, kOptAbort = 2, kOptList = 3, kOptStartTls = 5,
                        kOptInfo = 6, kOptGo = 7, kOptStructuredReply = 8,
                        kOptListMetaContext = 9, kOptSetMetaContext = 10;
constexpr std::uint32_t kRepAck = 1, kRepServer = 2, kRepInfo = 3;
constexpr std::uint16_t kInfoName = 1;
constexpr std::uint32_t kRepErr = 1u << 31;
constexpr std::uint32_t kErrUnsup = kRepErr | 1, kErrPolicy = kRepErr | 2,
                        kErrInvalid = kRepErr | 3, kErrPlatform = kRepErr | 4,
                        kErrTlsReqd = kRepErr | 5, kErrUnknown = kRepErr | 6,
                        kErrTooBig = kRepErr | 9;
constexpr std::uint32_t kMaxOption = 64 * 1024;

std::uint64_t be64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}
std::uint32_t be32(const unsigned char* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | p[3];
}
void put64(std::string& s, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) s.push_back(char((v >> (8 * i)) & 0xff));
}
void put32(std::string& s, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(char((v >> (8 * i)) & 0xff));
}
void put16(std::string& s, std::uint16_t v) {
  s.push_back(char(v >> 8));
  s.push_back(char(v & 0xff));
}

std::string ssl_errors() {
  std::string out;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no detail" : out;
}

// A client-chosen string (export name, PSK identity) as it may appear in a
// log line: control and non-ASCII bytes as \xNN, at most 256 bytes shown, so
// that a client cannot forge log lines or flood the log.
std::string printable(const std::string& s) {
  std::string out;
  static const char* hex = "0123456789abcdef";
  for (std::size_t i = 0; i < s.size() && i < 256; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\') {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    } else {
      out.push_back(char(c));
    }
  }
  if (s.size() > 256) out += cat("...(", s.size(), " bytes)");
  return out;
}

struct ConnectionClosed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- a byte stream: a socket, TLS on it after STARTTLS ------------------
ConnectionClosed timed_out() {
  return ConnectionClosed("negotiation timed out (negotiation_timeout): client too slow or idle");
}

class Stream {
 public:
  explicit Stream(int fd) : fd_(fd) {}
  ~Stream() {
    if (ssl_) {
      SSL_shutdown(ssl_);
      SSL_free(ssl_);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  int fd() const { return fd_; }
  SSL* ssl() const { return ssl_; }
  void set_ssl(SSL* s) { ssl_ = s; }
  bool pending() const { return ssl_ && SSL_pending(ssl_) > 0; }

  // Some bytes (at most n); 0 at end of stream.
  std::size_t read_some(void* buf, std::size_t n) {
    if (ssl_) {
      errno = 0;
      const int r = SSL_read(ssl_, buf, int(std::min<std::size_t>(n, 1 << 30)));
      if (r > 0) return std::size_t(r);
      const int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_ZERO_RETURN) return 0;
      if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno != EAGAIN) return 0;  // EOF, no close_notify
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE || errno == EAGAIN) throw timed_out();
      throw ConnectionClosed(cat("TLS read: ", ssl_errors()));
    }
    for (;;) {
      const ssize_t r = ::read(fd_, buf, n);
      if (r >= 0) return std::size_t(r);
      if (errno == EINTR) continue;
      if (errno == EAGAIN) throw timed_out();
      throw ConnectionClosed(errno_message("read", "", errno));
    }
  }
  void read_exact(void* buf, std::size_t n) {
    auto* p = static_cast<unsigned char*>(buf);
    while (n > 0) {
      const std::size_t r = read_some(p, n);
      if (r == 0) throw ConnectionClosed("peer closed the connection");
      p += r;
      n -= r;
    }
  }
  void write_all(const void* buf, std::size_t n) {
    auto* p = static_cast<const unsigned char*>(buf);
    while (n > 0) {
      if (ssl_) {
        const int r = SSL_write(ssl_, p, int(std::min<std::size_t>(n, 1 << 30)));
        if (r <= 0) throw ConnectionClosed(cat("TLS write: ", ssl_errors()));
        p += r;
        n -= std::size_t(r);
      } else {
        const ssize_t r = ::send(fd_, p, n, MSG_NOSIGNAL);
        if (r < 0) {
          if (errno == EINTR) continue;
          throw ConnectionClosed(errno_message("write", "", errno));
        }
        p += r;
        n -= std::size_t(r);
      }
    }
  }
  void write_all(const std::string& s) { write_all(s.data(), s.size()); }

 private:
  int fd_;
  SSL* ssl_ = nullptr;
};

void send_reply(Stream& s, std::uint32_t opt, std::uint32_t type, const std::string& data = {}) {
  std::string r;
  put64(r, kReplyMagic);
  put32(r, opt);
  put32(r, type);
  put32(r, std::uint32_t(data.size()));
  r += data;
  s.write_all(r);
}

// ---- TLS ---------------------------------------------------------------
struct PskKeys {
  std::map<std::string, std::string> keys;  // identity -> key bytes
  ~PskKeys() {
    for (auto& [id, k] : keys) OPENSSL_cleanse(k.data(), k.size());
  }
};

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// nbdkit's / GnuTLS's psktool format: "identity:hexkey" per line.
void load_psk_file(const std::string& path, PskKeys& out) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw_errno("stat", path, errno);
  if (st.st_mode & 0077)
    throw Error(EPERM, cat("PSK file ", path, ": readable by group or others (mode ",
                           std::oct, (st.st_mode & 0777), "); chmod 0600 it"));
  std::ifstream f(path);
  if (!f) throw_errno("open", path, errno);
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const std::size_t c = line.find(':');
    if (c == std::string::npos || c == 0)
      throw Error(EINVAL, cat("PSK file ", path, ": line ", n, ": expected IDENTITY:HEXKEY"));
    const std::string hex = line.substr(c + 1);
    if (hex.empty() || hex.size() % 2 != 0)
      throw Error(EINVAL, cat("PSK file ", path, ": line ", n, ": key must be an even number of hex digits"));
    std::string key;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
      const int hi = hexval(hex[i]), lo = hexval(hex[i + 1]);
      if (hi < 0 || lo < 0) throw Error(EINVAL, cat("PSK file ", path, ": line ", n, ": key is not hex"));
      key.push_back(char(hi * 16 + lo));
    }
    if (key.size() > PSK_MAX_PSK_LEN)
      throw Error(EINVAL, cat("PSK file ", path, ": line ", n, ": key longer than ", PSK_MAX_PSK_LEN, " bytes"));
    out.keys[line.substr(0, c)] = std::move(key);
    OPENSSL_cleanse(line.data(), line.size());
  }
  if (out.keys.empty()) throw Error(EINVAL, cat("PSK file ", path, ": no keys"));
}

int g_conn_psk_index = -1;  // SSL ex_data: the PSK identity whose key was handed out

unsigned int psk_server_cb(SSL* ssl, const char* identity, unsigned char* psk, unsigned int max_len) {
  auto* keys = static_cast<PskKeys*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (!keys || !identity) return 0;
  auto it = keys->keys.find(identity);
  if (it == keys->keys.end()) {
    log::warn("TLS: unknown PSK identity '", printable(identity), "'");
    return 0;
  }
  if (it->second.size() > max_len) return 0;
  std::memcpy(psk, it->second.data(), it->second.size());
  SSL_set_ex_data(ssl, g_conn_psk_index, const_cast<char*>(it->first.c_str()));
  return unsigned(it->second.size());
}

struct SslCtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};

std::unique_ptr<SSL_CTX, SslCtxDeleter> make_ssl_ctx(const Config& c, PskKeys& keys) {
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) throw Error(ENOMEM, cat("SSL_CTX_new: ", ssl_errors()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                   SSL_OP_IGNORE_UNEXPECTED_EOF);
  // An external TLS 1.3 PSK (GnuTLS clients: libnbd, qemu, nbd-client) is
  // bound to SHA-256: a SHA-384 suite chosen first would make the server
  // ignore the PSK and fall back to certificates, which a PSK client cannot
  // answer. Prefer the SHA-256 suites.
  if (SSL_CTX_set_ciphersuites(ctx.get(), "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:"
                                          "TLS_AES_256_GCM_SHA384") != 1)
    throw Error(EINVAL, cat("TLS 1.3 cipher suites: ", ssl_errors()));
  if (g_conn_psk_index < 0) g_conn_psk_index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  if (!c.psk_file.empty()) {
    load_psk_file(c.psk_file, keys);
    SSL_CTX_set_app_data(ctx.get(), &keys);
    SSL_CTX_set_psk_server_callback(ctx.get(), psk_server_cb);
    if (SSL_CTX_set_cipher_list(ctx.get(), "DEFAULT:PSK") != 1)
      throw Error(EINVAL, cat("TLS cipher list: ", ssl_errors()));
  }
  if (!c.certificates.empty()) {
    const std::string ca = c.certificates + "/ca-cert.pem", cert = c.certificates + "/server-cert.pem",
                      key = c.certificates + "/server-key.pem";
    struct stat st;
    if (::stat(key.c_str(), &st) != 0) throw_errno("stat", key, errno);
    if (st.st_mode & 0077)
      throw Error(EPERM, cat("server key ", key, ": readable by group or others; chmod 0600 it"));
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), cert.c_str()) != 1)
      throw Error(EINVAL, cat("server certificate ", cert, ": ", ssl_errors()));
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1)
      throw Error(EINVAL, cat("server key ", key, ": ", ssl_errors()));
    if (SSL_CTX_check_private_key(ctx.get()) != 1)
      throw Error(EINVAL, cat("server key ", key, " does not match ", cert, ": ", ssl_errors()));
    if (SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr) != 1)
      throw Error(EINVAL, cat("CA certificate ", ca, ": ", ssl_errors()));
    // Client certificates are required and verified against the CA.
    static const unsigned char sid[] = "rbdgw-serve";
    SSL_CTX_set_session_id_context(ctx.get(), sid, sizeof sid - 1);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

// The identity of a TLS connection after the handshake.
std::string tls_identity(SSL* ssl) {
  if (X509* peer = SSL_get0_peer_certificate(ssl)) {
    if (SSL_get_verify_result(ssl) != X509_V_OK) return {};
    X509_NAME* subj = X509_get_subject_name(peer);
    const int i = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    if (i < 0) return {};
    ASN1_STRING* d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i));
    unsigned char* utf8 = nullptr;
    const int n = ASN1_STRING_to_UTF8(&utf8, d);
    if (n < 0) return {};
    std::string cn(reinterpret_cast<char*>(utf8), std::size_t(n));
    OPENSSL_free(utf8);
    return "x509:" + cn;
  }
  if (auto* id = static_cast<const char*>(SSL_get_ex_data(ssl, g_conn_psk_index))) return cat("psk:", id);
  return {};
}

// ---- backends: one nbdkit per export -----------------------------------
rlimit g_nofile{RLIM_INFINITY, RLIM_INFINITY};  // the limits rbdgw serve was started with

class Backend {
 public:
  Backend(const Export& e, const Config& c, const Tools& t, std::string socket)
      : export_(e), config_(c), tools_(t), socket_(std::move(socket)) {}
  ~Backend() { stop(); }

  const Export& exp() const { return export_; }

  // A connected, newstyle-negotiated unix socket to this export's nbdkit
  // (restarted when it has died). Throws Error.
  int connect_once() {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw_errno("socket", socket_, errno);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, socket_.c_str(), sizeof a.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      const int e = errno;
      ::close(fd);
      throw_errno("connect", socket_, e);
    }
    return fd;
  }
  int connect() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!alive_locked()) start_locked();
    }
    try {
      return connect_once();
    } catch (const Error& e) {
      std::lock_guard<std::mutex> l(mu_);
      if (alive_locked()) throw;
      start_locked();
      return connect_once();
    }
  }

  // Connects, reads the greeting and ends the negotiation politely
  // (NBD_OPT_ABORT), so nbdkit logs no error for the probe.
  void probe() {
    Stream s(connect_once());
    unsigned char h[18];
    s.read_exact(h, 18);
    if (be64(h) != kNbdMagic || be64(h + 8) != kIHaveOpt)
      throw Error(EPROTO, cat(socket_, ": not a newstyle NBD server"));
    std::string o;
    put32(o, kFlagFixedNewstyle);
    put64(o, kIHaveOpt);
    put32(o, kOptAbort);
    put32(o, 0);
    s.write_all(o);
    unsigned char r[20];
    try {
      s.read_exact(r, 20);
    } catch (const ConnectionClosed&) {
    }
  }

  void start() {
    std::lock_guard<std::mutex> l(mu_);
    start_locked();
  }

  void stop() {
    std::lock_guard<std::mutex> l(mu_);
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      for (int i = 0; i < 100; ++i) {
        if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
          pid_ = -1;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
      }
    }
    ::unlink(socket_.c_str());
  }

 private:
  bool alive_locked() {
    if (pid_ <= 0) return false;
    int st;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == 0) return true;
    log::warn("export '", export_.name, "': its nbdkit (pid ", pid_, ") ",
              r == pid_ && WIFEXITED(st) ? cat("exited with status ", WEXITSTATUS(st))
              : r == pid_ && WIFSIGNALED(st) ? cat("was killed by signal ", WTERMSIG(st))
                                             : std::string("is gone"),
              "; restarting it");
    pid_ = -1;
    return false;
  }

  std::vector<std::string> argv() const {
    std::vector<std::string> v = {tools_.nbdkit, "--foreground", "--exit-with-parent",
                                  "--log=stderr", "--unix", socket_, "--threads=16"};
    if (export_.encryption == Encryption::decrypted) v.push_back("--filter=" + tools_.filter);
    if (export_.read_only) v.push_back("--readonly");
    v.push_back(tools_.plugin);
    v.push_back("image=" + export_.image);
    v.push_back("durable-writes=true");
    if (!export_.read_only) v.push_back("exclusive=true");
    if (!config_.cluster.conf.empty()) v.push_back("conf=" + config_.cluster.conf);
    if (!config_.cluster.mon_host.empty()) v.push_back("mon_host=" + config_.cluster.mon_host);
    if (!config_.cluster.id.empty()) v.push_back("id=" + config_.cluster.id);
    if (!config_.cluster.keyring.empty()) v.push_back("keyring=" + config_.cluster.keyring);
    // The passphrase file's path, never its content, is on the command line.
    if (export_.encryption == Encryption::decrypted) v.push_back("passphrase=+" + export_.passphrase_file);
    return v;
  }

  void start_locked() {
    ::unlink(socket_.c_str());  // nbdkit 1.32 leaves its socket behind on SIGTERM
    const std::vector<std::string> args = argv();
    std::vector<char*> cargv;
    for (const auto& a : args) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) throw_errno("fork", "nbdkit for export " + export_.name, errno);
    if (pid == 0) {
      const int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      if (g_nofile.rlim_cur != RLIM_INFINITY) ::setrlimit(RLIMIT_NOFILE, &g_nofile);
      ::execvp(cargv[0], cargv.data());
      ::_exit(127);
    }
    pid_ = pid;
    for (int i = 0; i < 600; ++i) {
      int st;
      const pid_t r = ::waitpid(pid, &st, WNOHANG);
      if (r == pid) {
        pid_ = -1;
        throw Error(EIO, cat("export '", export_.name, "': nbdkit for ", export_.image,
                             WIFEXITED(st) ? cat(" exited with status ", WEXITSTATUS(st))
                                           : cat(" was killed by signal ", WTERMSIG(st)),
                             " before serving (see its messages above)"));
      }
      try {
        probe();
        log::info("export '", export_.name, "': ", export_.image, " (",
                  export_.read_only ? "read-only" : "read-write", ", encryption ",
                  to_string(export_.encryption), ") served by nbdkit pid ", pid);
        return;
      } catch (const Error&) {
      } catch (const ConnectionClosed&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    throw Error(ETIMEDOUT, cat("export '", export_.name, "': nbdkit for ", export_.image,
                               " did not open ", socket_, " within 60 s"));
  }

  const Export& export_;
  const Config& config_;
  const Tools& tools_;
  std::string socket_;
  std::mutex mu_;
  pid_t pid_ = -1;
};

// ---- negotiation deadlines ---------------------------------------------
// negotiation_timeout bounds the whole time from accept to the chosen export,
// not each read: SO_RCVTIMEO alone let a client that sends a byte now and then
// (or trickles its TLS handshake) hold a connection and its thread for ever.
// One thread shuts down the socket of every connection past its deadline;
// the session's blocked read then ends.
class Deadlines {
 public:
  Deadlines() : thread_([this] { loop(); }) { thread_.detach(); }
  // Returns a ticket for cancel(); 0 when timeout is 0 (no deadline).
  std::uint64_t arm(int fd, int seconds) {
    if (seconds <= 0) return 0;
    std::lock_guard<std::mutex> l(mu_);
    const std::uint64_t t = ++next_;
    armed_[t] = {std::chrono::steady_clock::now() + std::chrono::seconds(seconds), fd};
    cv_.notify_one();
    return t;
  }
  // After cancel() the fd is never touched again. True when the deadline had
  // passed (the socket was shut down).
  bool cancel(std::uint64_t t) {
    if (t == 0) return false;
    std::lock_guard<std::mutex> l(mu_);
    if (armed_.erase(t)) return false;
    return expired_.erase(t) > 0;
  }

 private:
  struct Entry {
    std::chrono::steady_clock::time_point when;
    int fd;
  };
  void loop() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      auto next = std::chrono::steady_clock::time_point::max();
      const auto now = std::chrono::steady_clock::now();
      for (auto it = armed_.begin(); it != armed_.end();) {
        if (it->second.when <= now) {
          ::shutdown(it->second.fd, SHUT_RDWR);
          expired_.insert(it->first);
          it = armed_.erase(it);
        } else {
          next = std::min(next, it->second.when);
          ++it;
        }
      }
      if (next == std::chrono::steady_clock::time_point::max()) cv_.wait(l);
      else cv_.wait_until(l, next);
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::uint64_t, Entry> armed_;
  std::set<std::uint64_t> expired_;
  std::uint64_t next_ = 0;
  std::thread thread_;
};

// ---- one client connection ------------------------------------------------
class Session {
 public:
  Session(int fd, std::string peer, const Config& c, SSL_CTX* ctx,
          std::map<std::string, std::unique_ptr<Backend>>& backends, Deadlines& deadlines)
      : client_(fd), peer_(std::move(peer)), config_(c), ctx_(ctx), backends_(backends),
        deadlines_(deadlines) {}

  void run() {
    try {
      set_timeout(config_.negotiation_timeout);
      deadline_ = deadlines_.arm(client_.fd(), config_.negotiation_timeout);
      negotiate();
    } catch (const ConnectionClosed& e) {
      if (end_deadline()) log::info(peer_, ": connection ended: ", timed_out().what());
      else log::info(peer_, ": connection ended: ", e.what());
    } catch (const std::exception& e) {
      if (end_deadline()) log::info(peer_, ": connection ended: ", timed_out().what());
      else log::warn(peer_, ": connection dropped: ", e.what());
    }
    end_deadline();
  }

 private:
  // Disarms the negotiation deadline; true when it had already passed.
  bool end_deadline() {
    const bool expired = deadlines_.cancel(deadline_);
    deadline_ = 0;
    return expired;
  }

  void set_timeout(int seconds) {
    timeval tv{seconds, 0};
    ::setsockopt(client_.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(client_.fd(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  std::string who() const { return identity_.empty() ? peer_ : cat(peer_, " (", identity_, ")"); }

  void negotiate() {
    std::string hello;
    put64(hello, kNbdMagic);
    put64(hello, kIHaveOpt);
    put16(hello, kFlagFixedNewstyle | kFlagNoZeroes);
    client_.write_all(hello);
    unsigned char f[4];
    client_.read_exact(f, 4);
    client_flags_ = be32(f);
    if (!(client_flags_ & kFlagFixedNewstyle))
      throw ConnectionClosed("client does not speak fixed newstyle NBD; refused");
    if (!config_.tls()) identity_ = "anonymous";
    for (;;) {
      unsigned char h[16];
      client_.read_exact(h, 16);
      if (be64(h) != kIHaveOpt) throw ConnectionClosed("bad option magic from client");
      const std::uint32_t opt = be32(h + 8), len = be32(h + 12);
      std::string data;
      if (len > kMaxOption) {
        // Skip it, then refuse.
        std::vector<char> skip(4096);
        for (std::uint32_t left = len; left > 0;) {
          const std::uint32_t n = std::min<std::uint32_t>(left, 4096);
          client_.read_exact(skip.data(), n);
          left -= n;
        }
        send_reply(client_, opt, kErrTooBig, "option too long");
        continue;
      }
      data.resize(len);
      if (len) client_.read_exact(data.data(), len);
      if (handle_option(opt, data)) return;
    }
  }

  // Returns true when the connection is done (ended or relayed).
  bool handle_option(std::uint32_t opt, const std::string& data) {
    const bool tls_done = client_.ssl() != nullptr;
    if (opt == kOptAbort) {
      try {
        send_reply(client_, opt, kRepAck);
      } catch (const ConnectionClosed&) {
      }
      return true;
    }
    if (opt == kOptStartTls) {
      if (!config_.tls()) {
        send_reply(client_, opt, kErrPolicy, "this server has no TLS configured (insecure_plain)");
        return false;
      }
      if (tls_done || !data.empty()) {
        send_reply(client_, opt, kErrInvalid, "TLS already negotiated");
        return false;
      }
      send_reply(client_, opt, kRepAck);
      start_tls();
      return false;
    }
    if (config_.tls() && !tls_done) {
      if (opt == kOptExportName)
        throw ConnectionClosed("NBD_OPT_EXPORT_NAME without TLS on a TLS-only server; refused");
      log::warn(peer_, ": refused option ", opt, " before STARTTLS: this server requires TLS");
      send_reply(client_, opt, kErrTlsReqd, "TLS is required: negotiate NBD_OPT_STARTTLS first");
      return false;
    }
    switch (opt) {
      case kOptList: {
        if (!data.empty()) {
          send_reply(client_, opt, kErrInvalid, "NBD_OPT_LIST takes no data");
          return false;
        }
        for (const Export& e : config_.exports) {
          if (!e.allows(identity_)) continue;
          std::string d;
          put32(d, std::uint32_t(e.name.size()));
          d += e.name;
          send_reply(client_, opt, kRepServer, d);
        }
        send_reply(client_, opt, kRepAck);
        return false;
      }
      case kOptStructuredReply:
        if (!data.empty()) {
          send_reply(client_, opt, kErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
          return false;
        }
        structured_ = true;
        if (backend_fd_ >= 0) return forward(opt, data) && false;
        send_reply(client_, opt, kRepAck);
        return false;
      case kOptInfo:
      case kOptGo:
      case kOptListMetaContext:
      case kOptSetMetaContext: {
        if (data.size() < 4) {
          send_reply(client_, opt, kErrInvalid, "option too short");
          return false;
        }
        const std::uint32_t nl = be32(reinterpret_cast<const unsigned char*>(data.data()));
        if (data.size() < 4 + std::size_t(nl)) {
          send_reply(client_, opt, kErrInvalid, "export name longer than the option");
          return false;
        }
        const std::string name = data.substr(4, nl);
        const Backend* b = granted(name);
        if (!b) {
          send_reply(client_, opt, kErrUnknown,
                     cat("export '", name, "' is not available to ", identity_));
          return false;
        }
        std::string rewritten;
        put32(rewritten, 0);  // the backend serves exactly one export: its default
        rewritten += data.substr(4 + nl);
        if (!attach_backend(name, opt)) return false;
        const std::uint32_t final_type = forward_reply_loop(opt, rewritten, name);
        if (opt == kOptGo && final_type == kRepAck) {
          log::info(who(), ": export '", name, "' opened");
          relay();
          return true;
        }
        return false;
      }
      case kOptExportName: {
        const Backend* b = granted(data);
        if (!b) {
          log::warn(who(), ": export '", printable(data), "' refused: not granted (NBD_OPT_EXPORT_NAME)");
          throw ConnectionClosed("export not granted");
        }
        if (!attach_backend(data, opt)) throw ConnectionClosed("backend unavailable");
        std::string o;
        put64(o, kIHaveOpt);
        put32(o, kOptExportName);
        put32(o, 0);
        backend_->write_all(o);
        const std::size_t n = 8 + 2 + ((client_flags_ & kFlagNoZeroes) ? 0 : 124);
        std::string r(n, '\0');
        backend_->read_exact(r.data(), n);
        client_.write_all(r);
        log::info(who(), ": export '", data, "' opened");
        relay();
        return true;
      }
      default:
        send_reply(client_, opt, kErrUnsup, cat("option ", opt, " is not supported"));
        return false;
    }
  }

  const Backend* granted(const std::string& name) {
    const auto it = backends_.find(name);
    if (it == backends_.end() || !it->second->exp().allows(identity_)) {
      log::warn(who(), ": export '", printable(name), "' refused: ",
                it == backends_.end() ? "no such export" : "not granted to this identity");
      return nullptr;
    }
    return it->second.get();
  }

  void start_tls() {
    SSL* ssl = SSL_new(ctx_);
    if (!ssl) throw ConnectionClosed(cat("SSL_new: ", ssl_errors()));
    SSL_set_fd(ssl, client_.fd());
    client_.set_ssl(ssl);
    errno = 0;
    if (SSL_accept(ssl) != 1) {
      const bool slow = errno == EAGAIN;
      const long v = SSL_get_verify_result(ssl);
      std::string why = slow ? std::string("timed out (negotiation_timeout)") : ssl_errors();
      if (v != X509_V_OK) why += cat(" (client certificate: ", X509_verify_cert_error_string(v), ")");
      log::warn(peer_, ": TLS handshake refused: ", why);
      SSL_free(ssl);
      client_.set_ssl(nullptr);
      throw ConnectionClosed("TLS handshake failed");
    }
    identity_ = tls_identity(ssl);
    if (identity_.empty()) {
      log::warn(peer_, ": TLS established but no identity (no PSK, no verified certificate CN); refused");
      throw ConnectionClosed("no identity");
    }
    log::info(peer_, ": TLS ", SSL_get_version(ssl), " as ", identity_);
  }

  // Connects this session to the export's backend (a new connection when it
  // names another export than the current one). On failure tells the client.
  bool attach_backend(const std::string& name, std::uint32_t opt) {
    if (backend_ && backend_name_ == name) return true;
    backend_.reset();
    backend_fd_ = -1;
    try {
      const int fd = backends_.at(name)->connect();
      auto s = std::make_unique<Stream>(fd);
      unsigned char h[18];
      s->read_exact(h, 18);
      if (be64(h) != kNbdMagic || be64(h + 8) != kIHaveOpt)
        throw Error(EPROTO, cat("export '", name, "': backend is not a newstyle NBD server"));
      const std::uint16_t bflags = std::uint16_t((h[16] << 8) | h[17]);
      std::string cf;
      put32(cf, kFlagFixedNewstyle | (client_flags_ & kFlagNoZeroes & bflags));
      s->write_all(cf);
      if ((client_flags_ & kFlagNoZeroes) && !(bflags & kFlagNoZeroes))
        throw Error(EPROTO, cat("export '", name, "': backend lacks NO_ZEROES"));
      backend_ = std::move(s);
      backend_fd_ = fd;
      backend_name_ = name;
      if (structured_) {
        std::string o;
        put64(o, kIHaveOpt);
        put32(o, kOptStructuredReply);
        put32(o, 0);
        backend_->write_all(o);
        unsigned char r[20];
        backend_->read_exact(r, 20);
        const std::uint32_t len = be32(r + 16);
        std::string skip(len, '\0');
        if (len) backend_->read_exact(skip.data(), len);
        if (be32(r + 12) != kRepAck)
          throw Error(EPROTO, cat("export '", name, "': backend refused structured replies"));
      }
      return true;
    } catch (const std::exception& e) {
      log::error(who(), ": export '", name, "': backend unavailable: ", e.what());
      backend_.reset();
      backend_fd_ = -1;
      if (opt != kOptExportName)
        send_reply(client_, opt, kErrPlatform, cat("export '", name, "' is unavailable on the server"));
      return false;
    }
  }

  bool forward(std::uint32_t opt, const std::string& data) {
    forward_reply_loop(opt, data, backend_name_);
    return true;
  }

  // Sends the option to the backend and copies its replies to the client up
  // to the final one (ACK or an error); returns that one's type. The backend
  // knows its export as "": an NBD_INFO_NAME reply is given the client's name.
  std::uint32_t forward_reply_loop(std::uint32_t opt, const std::string& data, const std::string& name) {
    std::string o;
    put64(o, kIHaveOpt);
    put32(o, opt);
    put32(o, std::uint32_t(data.size()));
    o += data;
    backend_->write_all(o);
    for (;;) {
      unsigned char r[20];
      backend_->read_exact(r, 20);
      if (be64(r) != kReplyMagic) throw ConnectionClosed("bad reply magic from backend");
      const std::uint32_t type = be32(r + 12), len = be32(r + 16);
      if (len > 16 * 1024 * 1024) throw ConnectionClosed("oversized reply from backend");
      std::string d(reinterpret_cast<char*>(r), 20);
      d.resize(20 + len);
      if (len) backend_->read_exact(d.data() + 20, len);
      if (type == kRepInfo && len >= 2 && d[20] == 0 && d[21] == kInfoName) {
        std::string info;
        put64(info, kReplyMagic);
        put32(info, opt);
        put32(info, kRepInfo);
        put32(info, std::uint32_t(2 + name.size()));
        put16(info, kInfoName);
        d = info + name;
      }
      client_.write_all(d);
      if (type == kRepAck || (type & kRepErr)) return type;
    }
  }

  // Transmission phase: bytes both ways until either side closes. Both
  // directions move independently (non-blocking sockets, a buffer each way):
  // a client with reads and writes in flight at once must have the backend's
  // replies read while its requests wait to be written, or both ends block
  // on full sockets for ever (nbdkit stops reading requests while its replies
  // cannot be sent).
  void relay() {
    if (end_deadline()) throw timed_out();
    set_timeout(0);
    const int cfd = client_.fd(), bfd = backend_fd_;
    SSL* ssl = client_.ssl();
    for (int fd : {cfd, bfd}) {
      const int fl = ::fcntl(fd, F_GETFL);
      if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        throw ConnectionClosed(errno_message("fcntl O_NONBLOCK", "", errno));
    }
    constexpr std::size_t kBuf = 256 * 1024;
    std::vector<unsigned char> up(kBuf), down(kBuf);  // client->backend, backend->client
    std::size_t up_len = 0, up_off = 0, down_len = 0, down_off = 0;
    bool read_wants_write = false, write_wants_read = false;  // TLS: the other direction's readiness
    auto ssl_fail = [&](const char* what, int r) -> std::ptrdiff_t {
      const int e = SSL_get_error(ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return -1;
      if (e == SSL_ERROR_ZERO_RETURN) return 0;
      if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) return 0;  // EOF, no close_notify
      throw ConnectionClosed(cat(what, ": ", ssl_errors()));
    };
    for (;;) {
      bool progress = false;
      if (up_len == 0) {  // from the client (TLS may hold decrypted bytes poll cannot see)
        std::ptrdiff_t n;
        if (ssl) {
          const int r = SSL_read(ssl, up.data(), int(kBuf));
          n = r > 0 ? r : ssl_fail("TLS read", r);
          read_wants_write = n < 0 && SSL_get_error(ssl, r) == SSL_ERROR_WANT_WRITE;
        } else {
          n = ::read(cfd, up.data(), kBuf);
          if (n < 0 && errno != EAGAIN && errno != EINTR)
            throw ConnectionClosed(errno_message("read", "", errno));
        }
        if (n == 0) {
          log::info(who(), ": client disconnected from '", backend_name_, "'");
          return;
        }
        if (n > 0) {
          up_len = std::size_t(n);
          up_off = 0;
          progress = true;
        }
      }
      if (up_off < up_len) {  // to the backend
        const ssize_t n = ::send(bfd, up.data() + up_off, up_len - up_off, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
          throw ConnectionClosed(errno_message("write to the backend", "", errno));
        if (n > 0) {
          up_off += std::size_t(n);
          if (up_off == up_len) up_len = up_off = 0;
          progress = true;
        }
      }
      if (down_len == 0) {  // from the backend
        const ssize_t n = ::read(bfd, down.data(), kBuf);
        if (n == 0) {
          log::warn(who(), ": backend of '", backend_name_, "' closed the connection");
          return;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
          throw ConnectionClosed(errno_message("read from the backend", "", errno));
        if (n > 0) {
          down_len = std::size_t(n);
          down_off = 0;
          progress = true;
        }
      }
      if (down_off < down_len) {  // to the client (a TLS write is retried with the same bytes)
        std::ptrdiff_t n;
        if (ssl) {
          const int r = SSL_write(ssl, down.data() + down_off, int(down_len - down_off));
          n = r > 0 ? r : ssl_fail("TLS write", r);
          write_wants_read = n < 0 && SSL_get_error(ssl, r) == SSL_ERROR_WANT_READ;
          if (n == 0) throw ConnectionClosed("TLS write: client closed the connection");
        } else {
          n = ::send(cfd, down.data() + down_off, down_len - down_off, MSG_NOSIGNAL);
          if (n < 0 && errno != EAGAIN && errno != EINTR)
            throw ConnectionClosed(errno_message("write", "", errno));
        }
        if (n > 0) {
          down_off += std::size_t(n);
          if (down_off == down_len) down_len = down_off = 0;
          progress = true;
        }
      }
      if (progress) continue;
      short ce = 0, be = 0;
      if (up_len == 0) ce |= read_wants_write ? POLLOUT : POLLIN;
      if (down_off < down_len) ce |= write_wants_read ? POLLIN : POLLOUT;
      if (down_len == 0) be |= POLLIN;
      if (up_off < up_len) be |= POLLOUT;
      // An fd with nothing asked of it is left out (its POLLHUP would spin).
      pollfd p[2] = {{ce ? cfd : -1, ce, 0}, {be ? bfd : -1, be, 0}};
      if (::poll(p, 2, -1) < 0 && errno != EINTR)
        throw ConnectionClosed(errno_message("poll", "", errno));
    }
  }

  Stream client_;
  std::string peer_;
  const Config& config_;
  SSL_CTX* ctx_;
  std::map<std::string, std::unique_ptr<Backend>>& backends_;
  std::uint32_t client_flags_ = 0;
  std::string identity_;
  bool structured_ = false;
  std::unique_ptr<Stream> backend_;
  int backend_fd_ = -1;
  std::string backend_name_;
  Deadlines& deadlines_;
  std::uint64_t deadline_ = 0;
};

// ---- listeners ----------------------------------------------------------
std::string addr_string(const sockaddr* sa, socklen_t len) {
  if (sa->sa_family == AF_UNIX) return "unix";
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (::getnameinfo(sa, len, host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  return sa->sa_family == AF_INET6 ? cat("[", host, "]:", port) : cat(host, ":", port);
}

std::vector<int> open_listener(const Listen& l) {
  std::vector<int> fds;
  if (l.unix_socket) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw_errno("socket", l.text, errno);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (l.path.size() >= sizeof a.sun_path) throw Error(EINVAL, cat("listen ", l.text, ": path too long"));
    std::strncpy(a.sun_path, l.path.c_str(), sizeof a.sun_path - 1);
    struct stat st;
    if (::lstat(l.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(l.path.c_str());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      const int e = errno;
      ::close(fd);
      throw_errno("bind", l.text, e);
    }
    ::chmod(l.path.c_str(), 0660);
    if (::listen(fd, 64) != 0) throw_errno("listen", l.text, errno);
    log::info("listening on unix:", l.path);
    fds.push_back(fd);
    return fds;
  }
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const int g = ::getaddrinfo(l.host.empty() ? nullptr : l.host.c_str(), l.port.c_str(), &hints, &res);
  if (g != 0) throw Error(EINVAL, cat("listen ", l.text, ": ", gai_strerror(g)));
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      const int e = errno;
      ::close(fd);
      ::freeaddrinfo(res);
      throw_errno("bind", l.text, e);
    }
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl);
    log::info("listening on ", addr_string(reinterpret_cast<sockaddr*>(&ss), sl));
    fds.push_back(fd);
  }
  ::freeaddrinfo(res);
  if (fds.empty()) throw Error(EADDRNOTAVAIL, cat("listen ", l.text, ": no usable address"));
  return fds;
}

}  // namespace

void run(const Config& config, const Tools& tools) {
  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  // Every connection costs a descriptor (two once relayed): with the usual
  // soft limit of 1024 (systemd's default too) a thousand idle or slow
  // clients made accept() fail with EMFILE and good clients wait until the
  // negotiation timeouts free some. Raise the soft limit to the hard one (the
  // backends get the original back).
  try {
    g_nofile = raise_open_files_limit();
  } catch (const Error& e) {
    log::warn(e.what());
  }

  for (const Export& e : config.exports)
    if (e.encryption == Encryption::decrypted) {
      struct stat st;
      if (::stat(e.passphrase_file.c_str(), &st) != 0)
        throw_errno("stat", cat("export '", e.name, "': passphrase_file ", e.passphrase_file), errno);
      if (st.st_mode & 0077)
        throw Error(EPERM, cat("export '", e.name, "': passphrase_file ", e.passphrase_file,
                               " is readable by group or others; chmod 0600 it"));
    }
  PskKeys keys;
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx;
  if (config.tls()) {
    ctx = make_ssl_ctx(config, keys);
  } else {
    log::warn("insecure_plain: serving NBD WITHOUT TLS: anyone who can reach the listeners can "
              "read and write the exports granted to 'anonymous', and the data crosses the network "
              "in clear");
  }

  std::error_code ec;
  fs::create_directories(config.run_dir, ec);
  if (ec) throw Error(ec.value(), cat("create ", config.run_dir, ": ", ec.message()));
  ::chmod(config.run_dir.c_str(), 0700);

  std::map<std::string, std::unique_ptr<Backend>> backends;
  int n = 0;
  for (const Export& e : config.exports)
    backends[e.name] = std::make_unique<Backend>(e, config, tools, cat(config.run_dir, "/export-", n++, ".sock"));
  for (auto& [name, b] : backends) b->start();

  std::vector<int> lfds;
  std::vector<std::string> unix_paths;
  for (const Listen& l : config.listen) {
    for (int fd : open_listener(l)) lfds.push_back(fd);
    if (l.unix_socket) unix_paths.push_back(l.path);
  }

  static Deadlines& deadlines = *new Deadlines;  // never destroyed: its thread runs until exit
  std::atomic<bool> stopping{false};
  std::vector<std::thread> acceptors;
  for (int lfd : lfds)
    acceptors.emplace_back([&, lfd] {
      for (;;) {
        sockaddr_storage ss{};
        socklen_t sl = sizeof ss;
        const int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_CLOEXEC);
        if (stopping) {
          if (fd >= 0) ::close(fd);
          return;
        }
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          log::error("accept: ", std::strerror(errno));
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
          continue;
        }
        const std::string peer = addr_string(reinterpret_cast<sockaddr*>(&ss), sl);
        std::thread([fd, peer, &config, &ctx, &backends] {
          Session s(fd, peer, config, ctx.get(), backends, deadlines);
          s.run();
        }).detach();
      }
    });
  log::info("rbdgw serve: ready (", config.exports.size(), " exports, ",
            config.tls() ? "TLS required" : "plain NBD", ")");

  int sig = 0;
  sigwait(&stop, &sig);
  log::info("rbdgw serve: signal ", sig, ", stopping");
  stopping = true;
  for (int fd : lfds) ::shutdown(fd, SHUT_RDWR);
  for (auto& t : acceptors) t.join();
  for (int fd : lfds) ::close(fd);
  for (const auto& p : unix_paths) ::unlink(p.c_str());
  for (auto& [name, b] : backends) b->stop();
  // Sessions still running are cut off by the exit.
  std::_Exit(0);
}

}  // namespace rbdgw::serve
