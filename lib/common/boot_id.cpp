#include "common/boot_id.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "common/error.hpp"

namespace rbdgw {

std::string this_boot_id() {
  const char* env = std::getenv("RBDGW_BOOT_ID_FILE");
  const std::string path = (env && *env) ? env : kBootIdSource;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open", cat("boot id file ", path), errno);
  char buf[128];
  ssize_t n;
  do n = ::read(fd, buf, sizeof buf);
  while (n < 0 && errno == EINTR);
  const int e = errno;
  ::close(fd);
  if (n < 0) throw_errno("read", cat("boot id file ", path), e);
  std::string id(buf, static_cast<std::size_t>(n));
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ' || id.back() == '\t' || id.back() == '\r'))
    id.pop_back();
  if (id.empty()) throw Error(EIO, cat("read: boot id file ", path, ": empty"));
  return id;
}

}  // namespace rbdgw
