#include "crypto/secret.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
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

SecretBuffer read_secret_file(const std::string& path, bool strip_newline) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open secret file", path, errno);
  SecretBuffer buf(4096);
  std::size_t len = 0;
  for (;;) {
    if (len == buf.size()) {
      if (buf.size() >= (1u << 20)) {
        ::close(fd);
        throw Error(EFBIG, cat("read secret file: ", path, ": larger than 1 MiB"));
      }
      SecretBuffer bigger(buf.size() * 2);
      std::memcpy(bigger.data(), buf.data(), len);
      buf = std::move(bigger);
    }
    ssize_t r = ::read(fd, buf.data() + len, buf.size() - len);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw_errno("read secret file", path, e);
    }
    if (r == 0) break;
    len += static_cast<std::size_t>(r);
  }
  ::close(fd);
  if (strip_newline && len > 0 && buf.data()[len - 1] == '\n') {
    --len;
    if (len > 0 && buf.data()[len - 1] == '\r') --len;
  }
  return SecretBuffer(buf.data(), len);
}

}  // namespace rbdgw
