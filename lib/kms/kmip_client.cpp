#include "kms/kmip_client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "common/error.hpp"
#include "common/log.hpp"
#include "crypto/random.hpp"

namespace rbdgw::kms {
namespace {

using Clock = std::chrono::steady_clock;
using namespace kmip;

constexpr int protocol_major = 1;
constexpr int protocol_minor = 4;

// OpenSSL's queued errors as one string (and clears the queue).
std::string ssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += (out.empty() ? "" : "; ") + std::string(buf);
  }
  return out.empty() ? "no OpenSSL error queued" : out;
}

struct BioDel { void operator()(BIO* b) const { BIO_free(b); } };
struct X509Del { void operator()(X509* x) const { X509_free(x); } };
struct KeyDel { void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); } };
struct SslDel { void operator()(SSL* s) const { SSL_free(s); } };

std::unique_ptr<BIO, BioDel> mem_bio(const void* data, std::size_t n) {
  BIO* b = BIO_new_mem_buf(data, static_cast<int>(n));
  if (!b) throw Error(ENOMEM, "BIO_new_mem_buf failed");
  return std::unique_ptr<BIO, BioDel>(b);
}

std::vector<std::unique_ptr<X509, X509Del>> read_certs(const std::string& pem) {
  std::vector<std::unique_ptr<X509, X509Del>> out;
  auto bio = mem_bio(pem.data(), pem.size());
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the end of the PEM data
  return out;
}

bool is_ip(const std::string& h) {
  unsigned char buf[16];
  return inet_pton(AF_INET, h.c_str(), buf) == 1 || inet_pton(AF_INET6, h.c_str(), buf) == 1;
}

// Blocks SIGPIPE on this thread while OpenSSL writes to a socket the peer
// may have closed, and swallows the SIGPIPE that raised.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old_);
  }
  ~SigpipeGuard() {
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGPIPE);
        const timespec zero{0, 0};
        while (sigtimedwait(&s, nullptr, &zero) < 0 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t old_;
  bool was_pending_ = false;
};

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { if (fd_ >= 0) ::close(fd_); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept { std::swap(fd_, o.fd_); return *this; }
  int get() const { return fd_; }
 private:
  int fd_;
};

// One TLS connection with deadlines.
class Connection {
 public:
  Connection(const KmipClient& c, const std::string& host, const std::string& port,
             ssl_ctx_st* ctx)
      : s_(c.settings()), what_(cat(s_.what, ": KMIP server ", s_.endpoint)) {
    connect_tcp(host, port);
    handshake(host, ctx);
  }
  ~Connection() {
    if (ssl_) {
      SigpipeGuard g;
      SSL_shutdown(ssl_.get());  // best effort, non-blocking socket
    }
  }

  void write_all(const std::vector<std::uint8_t>& buf, const std::string& op) {
    const auto deadline = Clock::now() + std::chrono::seconds(s_.write_timeout_s);
    std::size_t done = 0;
    while (done < buf.size()) {
      SigpipeGuard g;
      std::size_t n = 0;
      int r = SSL_write_ex(ssl_.get(), buf.data() + done, buf.size() - done, &n);
      if (r == 1) { done += n; continue; }
      wait_or_fail(r, deadline, cat(op, ": sending the request"), s_.write_timeout_s);
    }
  }

  // Exactly n bytes; a closed connection before that is EBADMSG.
  void read_exact(std::uint8_t* out, std::size_t n, Clock::time_point deadline, const std::string& op,
                  std::size_t already, std::size_t total) {
    std::size_t done = 0;
    while (done < n) {
      std::size_t got = 0;
      ERR_clear_error();
      int r = SSL_read_ex(ssl_.get(), out + done, n - done, &got);
      if (r == 1) { done += got; continue; }
      const int e = SSL_get_error(ssl_.get(), r);
      if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) ||
          (e == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
        ERR_clear_error();
        throw Error(EBADMSG, cat(what_, ": ", op, ": the server closed the connection after ",
                                 already + done, " of ", total ? cat(total) : std::string("at least 8"),
                                 " reply bytes (truncated reply)"));
      }
      wait_or_fail(r, deadline, cat(op, ": reading the reply"), s_.read_timeout_s);
    }
  }

  const std::string& what() const { return what_; }
  unsigned read_timeout_s() const { return s_.read_timeout_s; }

 private:
  void wait_fd(short events, Clock::time_point deadline, const std::string& doing, unsigned timeout_s) {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0)
        throw Error(ETIMEDOUT, cat(what_, ": ", doing, ": no answer within ", timeout_s, " s"));
      pollfd p{fd_.get(), events, 0};
      int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r > 0) return;
      if (r < 0 && errno != EINTR) throw_errno("poll", what_, errno);
    }
  }

  void wait_or_fail(int r, Clock::time_point deadline, const std::string& doing, unsigned timeout_s) {
    const int e = SSL_get_error(ssl_.get(), r);
    if (e == SSL_ERROR_WANT_READ) return wait_fd(POLLIN, deadline, doing, timeout_s);
    if (e == SSL_ERROR_WANT_WRITE) return wait_fd(POLLOUT, deadline, doing, timeout_s);
    const int err = errno;
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
      throw Error(err ? err : ECONNRESET, cat(what_, ": ", doing, ": ",
                                              err ? std::strerror(err) : "connection closed"));
    std::string detail = ssl_errors();
    const long v = SSL_get_verify_result(ssl_.get());
    if (v != X509_V_OK)
      detail += cat("; server certificate not accepted: ", X509_verify_cert_error_string(v));
    throw Error(EPROTO, cat(what_, ": ", doing, ": TLS error: ", detail));
  }

  void connect_tcp(const std::string& host, const std::string& port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int r = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); r != 0)
      throw Error(EHOSTUNREACH, cat(what_, ": cannot resolve '", host, "': ", gai_strerror(r)));
    std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, freeaddrinfo);
    const auto deadline = Clock::now() + std::chrono::seconds(s_.write_timeout_s);
    int last = ECONNREFUSED;
    for (addrinfo* a = res; a; a = a->ai_next) {
      Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
      if (fd.get() < 0) { last = errno; continue; }
      fd_ = std::move(fd);
      if (::connect(fd_.get(), a->ai_addr, a->ai_addrlen) == 0) return;
      if (errno != EINPROGRESS) { last = errno; continue; }
      wait_fd(POLLOUT, deadline, "connecting", s_.write_timeout_s);
      int soerr = 0;
      socklen_t sl = sizeof soerr;
      getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &soerr, &sl);
      if (soerr == 0) return;
      last = soerr;
    }
    fd_ = Fd();
    throw Error(last, cat(what_, ": connect: ", std::strerror(last)));
  }

  void handshake(const std::string& host, ssl_ctx_st* ctx) {
    ssl_.reset(SSL_new(ctx));
    if (!ssl_) throw Error(ENOMEM, cat(what_, ": SSL_new: ", ssl_errors()));
    SSL_set_fd(ssl_.get(), fd_.get());
    const std::string name = s_.server_name.empty() ? host : s_.server_name;
    if (is_ip(name)) {
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), name.c_str()) != 1)
        throw Error(EINVAL, cat(what_, ": bad server address '", name, "'"));
    } else {
      SSL_set_tlsext_host_name(ssl_.get(), name.c_str());
      if (SSL_set1_host(ssl_.get(), name.c_str()) != 1)
        throw Error(EINVAL, cat(what_, ": bad server name '", name, "'"));
    }
    const auto deadline = Clock::now() + std::chrono::seconds(s_.read_timeout_s);
    for (;;) {
      SigpipeGuard g;
      ERR_clear_error();
      int r = SSL_connect(ssl_.get());
      if (r == 1) return;
      try {
        wait_or_fail(r, deadline, "TLS handshake", s_.read_timeout_s);
      } catch (...) {
        ssl_.reset();  // no shutdown on a failed handshake
        throw;
      }
    }
  }

  const KmipSettings& s_;
  std::string what_;
  Fd fd_;
  std::unique_ptr<SSL, SslDel> ssl_;
};

int errno_for_reason(std::uint32_t reason) {
  switch (reason) {
    case 0x01: return ENOENT;
    case 0x03: case 0x0C: return EACCES;
    case 0x0A: return EPERM;
    case 0x05: case 0x08: return ENOTSUP;
    case 0x04: case 0x06: case 0x07: return EINVAL;
    default: return EIO;
  }
}

Item request_message(std::uint32_t operation, std::span<const std::uint8_t> batch_id, Item payload) {
  payload.tag = tag::request_payload;
  return structure(tag::request_message, {
      structure(tag::request_header, {
          structure(tag::protocol_version, {integer(tag::protocol_version_major, protocol_major),
                                            integer(tag::protocol_version_minor, protocol_minor)}),
          integer(tag::batch_count, 1)}),
      structure(tag::batch_item, {enumeration(tag::operation, operation),
                                  byte_string(tag::unique_batch_item_id, batch_id),
                                  std::move(payload)})});
}

// One request, one reply on an open connection; the successful batch
// item's payload.
Item exchange(Connection& c, std::uint32_t operation, Item payload) {
  const std::string op = cat("KMIP ", operation_name(operation));
  std::uint8_t batch_id[16];
  crypto::random_fill(batch_id);
  std::vector<std::uint8_t> req = encode(request_message(operation, batch_id, std::move(payload)));
  c.write_all(req, op);
  OPENSSL_cleanse(req.data(), req.size());  // may hold a DEK

  const auto deadline = Clock::now() + std::chrono::seconds(c.read_timeout_s());
  std::vector<std::uint8_t> buf(header_size);
  c.read_exact(buf.data(), header_size, deadline, op, 0, 0);
  std::size_t total;
  try {
    total = message_size(buf);
  } catch (const Error& e) {
    throw Error(EBADMSG, cat(c.what(), ": ", op, ": malformed reply: ", e.what()));
  }
  buf.resize(total);
  c.read_exact(buf.data() + header_size, total - header_size, deadline, op, header_size, total);
  Item msg;
  try {
    msg = decode(buf);
  } catch (const Error& e) {
    OPENSSL_cleanse(buf.data(), buf.size());
    throw Error(EBADMSG, cat(c.what(), ": ", op, ": malformed reply: ", e.what()));
  }
  OPENSSL_cleanse(buf.data(), buf.size());  // may hold a DEK

  const std::string where = cat(c.what(), ": ", op, ": reply");
  {
    if (msg.tag != tag::response_message || msg.type != Type::structure)
      throw Error(EBADMSG, cat(where, ": not a Response Message"));
    const Item& header = msg.need(tag::response_header, Type::structure, where);
    const Item& count = header.need(tag::batch_count, Type::integer, where);
    if (count.number != 1)
      throw Error(EBADMSG, cat(where, ": batch count ", count.number, ", expected 1"));
    std::size_t items = 0;
    for (const Item& i : msg.items) items += i.tag == tag::batch_item;
    if (items != 1) throw Error(EBADMSG, cat(where, ": ", items, " batch items, expected 1"));
    const Item& bi = msg.need(tag::batch_item, Type::structure, where);
    if (const Item* id = bi.find(tag::unique_batch_item_id)) {
      if (id->type != Type::byte_string ||
          id->bytes != std::vector<std::uint8_t>(batch_id, batch_id + sizeof batch_id))
        throw Error(EBADMSG, cat(where, ": the batch item ID is not the request's"));
    }
    if (const Item* o = bi.find(tag::operation);
        o && (o->type != Type::enumeration || o->number != operation))
      throw Error(EBADMSG, cat(where, ": answers ", o->type == Type::enumeration
                                                           ? operation_name(o->number)
                                                           : std::string("a malformed operation"),
                               ", not the request's operation"));
    const Item& status = bi.need(tag::result_status, Type::enumeration, where);
    if (status.number != result_status_success) {
      std::uint32_t reason = 0;
      if (const Item* r = bi.find(tag::result_reason); r && r->type == Type::enumeration)
        reason = static_cast<std::uint32_t>(r->number);
      std::string message;
      if (const Item* m = bi.find(tag::result_message); m && m->type == Type::text_string)
        message = std::string(m->text().substr(0, 512));
      throw Error(errno_for_reason(reason),
                  cat(c.what(), ": ", op, " failed: ", result_status_name(status.number),
                      reason ? cat(", ", result_reason_name(reason)) : std::string(),
                      message.empty() ? std::string() : cat(": ", message)));
    }
    if (!bi.find(tag::operation) || !bi.find(tag::unique_batch_item_id))
      throw Error(EBADMSG, cat(where, ": a successful batch item without its operation or ID"));
    return bi.need(tag::response_payload, Type::structure, where);
  }
}

}  // namespace

KmipClient::KmipClient(KmipSettings s)
    : s_(std::move(s)), ctx_(nullptr, [](ssl_ctx_st* c) { SSL_CTX_free(c); }) {
  const std::string& ep = s_.endpoint;
  std::size_t colon;
  if (!ep.empty() && ep[0] == '[') {
    const std::size_t close = ep.find(']');
    if (close == std::string::npos || close + 1 >= ep.size() || ep[close + 1] != ':')
      throw Error(EINVAL, cat(s_.what, ": KMIP_ENDPOINT '", ep, "': expected [ADDRESS]:PORT"));
    host_ = ep.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = ep.rfind(':');
    if (colon == std::string::npos || colon == 0)
      throw Error(EINVAL, cat(s_.what, ": KMIP_ENDPOINT '", ep, "': expected HOST:PORT"));
    host_ = ep.substr(0, colon);
  }
  port_ = ep.substr(colon + 1);
  if (port_.empty() || port_.size() > 5 || port_.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port_) == 0 || std::stoul(port_) > 65535)
    throw Error(EINVAL, cat(s_.what, ": KMIP_ENDPOINT '", ep, "': bad port '", port_, "'"));
  if (s_.read_timeout_s == 0 || s_.write_timeout_s == 0)
    throw Error(EINVAL, cat(s_.what, ": READ_TIMEOUT and WRITE_TIMEOUT must be at least 1 second"));

  ctx_.reset(SSL_CTX_new(TLS_client_method()));
  if (!ctx_) throw Error(ENOMEM, cat(s_.what, ": SSL_CTX_new: ", ssl_errors()));
  SSL_CTX_set_min_proto_version(ctx_.get(), TLS1_2_VERSION);
  // Decrypt replies carry the DEK: OpenSSL wipes its record buffers.
  SSL_CTX_set_options(ctx_.get(), SSL_OP_CLEANSE_PLAINTEXT);
  SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_mode(ctx_.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  auto cas = read_certs(s_.ca_cert_pem);
  if (cas.empty())
    throw Error(EINVAL, cat(s_.what, ": secret 'CA_CERT' holds no PEM certificate"));
  X509_STORE* store = SSL_CTX_get_cert_store(ctx_.get());
  for (auto& c : cas)
    if (X509_STORE_add_cert(store, c.get()) != 1)
      throw Error(EINVAL, cat(s_.what, ": secret 'CA_CERT': ", ssl_errors()));

  auto chain = read_certs(s_.client_cert_pem);
  if (chain.empty())
    throw Error(EINVAL, cat(s_.what, ": secret 'CLIENT_CERT' holds no PEM certificate"));
  if (SSL_CTX_use_certificate(ctx_.get(), chain[0].get()) != 1)
    throw Error(EINVAL, cat(s_.what, ": secret 'CLIENT_CERT': ", ssl_errors()));
  for (std::size_t i = 1; i < chain.size(); ++i)
    if (SSL_CTX_add1_chain_cert(ctx_.get(), chain[i].get()) != 1)
      throw Error(EINVAL, cat(s_.what, ": secret 'CLIENT_CERT' (chain): ", ssl_errors()));

  {
    auto bio = mem_bio(s_.client_key_pem.data(), s_.client_key_pem.size());
    std::unique_ptr<EVP_PKEY, KeyDel> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (!key) {
      ERR_clear_error();  // its text could quote the key's bytes: not shown
      throw Error(EINVAL, cat(s_.what, ": secret 'CLIENT_KEY' is not a PEM private key (or is encrypted)"));
    }
    if (SSL_CTX_use_PrivateKey(ctx_.get(), key.get()) != 1 || SSL_CTX_check_private_key(ctx_.get()) != 1) {
      ERR_clear_error();
      throw Error(EINVAL, cat(s_.what, ": secret 'CLIENT_KEY' does not match 'CLIENT_CERT'"));
    }
  }
}

KmipClient::~KmipClient() = default;

Item KmipClient::call(std::uint32_t operation, Item payload) const {
  Connection c(*this, host_, port_, ctx_.get());
  // DiscoverVersions first, as ceph-csi does: the server must speak 1.4.
  Item versions = exchange(
      c, op::discover_versions,
      structure(tag::request_payload,
                {structure(tag::protocol_version, {integer(tag::protocol_version_major, protocol_major),
                                                   integer(tag::protocol_version_minor, protocol_minor)})}));
  std::size_t n = 0;
  bool ok = false;
  for (const Item& v : versions.items) {
    if (v.tag != tag::protocol_version) continue;
    ++n;
    const Item* ma = v.find(tag::protocol_version_major);
    const Item* mi = v.find(tag::protocol_version_minor);
    ok = ma && mi && ma->number == protocol_major && mi->number == protocol_minor;
  }
  if (n != 1 || !ok)
    throw Error(EPROTONOSUPPORT, cat(c.what(), ": the server does not speak KMIP ", protocol_major, ".",
                                     protocol_minor, " (DiscoverVersions answered ", n, " versions)"));
  return exchange(c, operation, std::move(payload));
}

}  // namespace rbdgw::kms
