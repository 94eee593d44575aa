#include "crypto/secret.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "common/error.hpp"

namespace rbdgw {

SecretBuffer::SecretBuffer(std::size_t n) {
  if (n == 0) return;
  data_ = static_cast<std::uint8_t*>(std::calloc(1, n));
  if (!data_) throw std::bad_alloc();
  size_ = n;
  (void)::mlock(data_, size_);
}

SecretBuffer::SecretBuffer(const void* data, std::size_t n) : SecretBuffer(n) {
  if (n) std::memcpy(data_, data, n);
}

SecretBuffer::~SecretBuffer() { clear(); }

SecretBuffer::SecretBuffer(SecretBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

SecretBuffer& SecretBuffer::operator=(SecretBuffer&& o) noexcept {
  if (this != &o) {
    clear();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

bool SecretBuffer::equals(const SecretBuffer& o) const noexcept {
  if (size_ != o.size_) return false;
  if (size_ == 0) return true;
  return CRYPTO_memcmp(data_, o.data_, size_) == 0;
}

void SecretBuffer::clear() noexcept {
  if (data_) {
    OPENSSL_cleanse(data_, size_);
    (void)::munlock(data_, size_);
    std::free(data_);
  }
  data_ = nullptr;
  size_ = 0;
}

void wipe_string(std::string& s) noexcept {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
  s.shrink_to_fit();
}

SecretBuffer read_secret_fd(int fd, const std::string& what) {
  // One byte more than allowed tells a file of exactly the limit from a
  // larger one.
  SecretBuffer buf(max_secret_size + 1);
  std::size_t len = 0;
  while (len < buf.size()) {
    const ssize_t r = ::read(fd, buf.data() + len, buf.size() - len);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("read secret", what, errno);
    }
    if (r == 0) break;
    len += static_cast<std::size_t>(r);
  }
  if (len > max_secret_size)
    throw Error(EFBIG, cat("read secret: ", what, ": larger than ", max_secret_size,
                           " bytes (the limit for a passphrase or key)"));
  return SecretBuffer(buf.data(), len);
}

SecretBuffer read_secret_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open secret file", path, errno);
  try {
    SecretBuffer s = read_secret_fd(fd, path);
    ::close(fd);
    return s;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

std::optional<SecretBuffer> read_secret_parameter(std::string_view value, std::string_view key) {
  if (value == "-") return std::nullopt;
  if (value.size() > 1 && value[0] == '+') {
    try {
      return read_secret_file(std::string(value.substr(1)));
    } catch (const Error& e) {
      throw Error(e.code(), cat("parameter '", key, "': ", e.what()));
    }
  }
  if (value.size() > 1 && value[0] == '-') {
    int fd = -1;
    const auto digits = value.substr(1);
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), fd);
    if (ec != std::errc() || p != digits.data() + digits.size() || fd < 0)
      throw Error(EINVAL, cat("parameter '", key, "': '-", digits,
                              "' is not a file descriptor number"));
    if (fd <= 2)
      throw Error(EINVAL, cat("parameter '", key, "': -", fd,
                              ": stdin, stdout and stderr cannot carry a secret (use fd 3 or above)"));
    try {
      SecretBuffer s = read_secret_fd(fd, cat("parameter '", key, "' (fd ", fd, ")"));
      ::close(fd);
      return s;
    } catch (const Error& e) {
      ::close(fd);
      if (e.code() == EBADF)
        throw Error(EBADF, cat("parameter '", key, "': fd ", fd, " is not open"));
      throw;
    }
  }
  throw Error(EINVAL, cat("parameter '", key, "': give the secret as +FILE or -FD (or - to "
                          "type it), never on the command line"));
}

SecretBuffer trim_whitespace(const SecretBuffer& s) {
  const auto space = [](std::uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  std::size_t b = 0, e = s.size();
  while (b < e && space(s.data()[b])) ++b;
  while (e > b && space(s.data()[e - 1])) --e;
  return SecretBuffer(s.data() + b, e - b);
}

std::string trailing_newline_hint(const SecretBuffer& passphrase) {
  if (passphrase.empty() || passphrase.data()[passphrase.size() - 1] != '\n') return {};
  return "; note: the passphrase ends in a newline, which counts, as with cryptsetup --key-file "
         "(rbdgw 0.1.0 and earlier removed one trailing newline from passphrase files: a volume "
         "they formatted opens with the file minus that newline, e.g. `head -c -1 FILE`)";
}

}  // namespace rbdgw
