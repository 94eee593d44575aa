#include "attach/loop.hpp"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.hpp"

namespace rbdgw::attach {

namespace {

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

bool detach_loop_if_backed_by(const std::string& loop, const std::string& backing) {
  if (loop.rfind("/dev/loop", 0) != 0) return false;
  struct stat want {};
  if (::stat(backing.c_str(), &want) != 0) return false;  // nothing of ours can be bound to it
  Fd dev{::open(loop.c_str(), O_RDONLY | O_CLOEXEC)};
  if (dev.fd < 0) {
    if (errno == ENOENT || errno == ENXIO) return false;
    throw Error(errno, cat("open ", loop, ": ", std::strerror(errno)));
  }
  loop_info64 info{};
  if (::ioctl(dev.fd, LOOP_GET_STATUS64, &info) != 0) {
    if (errno == ENXIO) return false;  // not bound
    throw Error(errno, cat(loop, ": LOOP_GET_STATUS64: ", std::strerror(errno)));
  }
  // The kernel reports the backing inode's filesystem device encoded as
  // stat's st_dev is.
  if (info.lo_inode != want.st_ino ||
      major(info.lo_device) != major(want.st_dev) || minor(info.lo_device) != minor(want.st_dev))
    return false;
  if (::ioctl(dev.fd, LOOP_CLR_FD, 0) != 0) {
    if (errno == ENXIO) return false;  // detached meanwhile by someone else
    throw Error(errno, cat(loop, ": detach (LOOP_CLR_FD) from ", backing, ": ", std::strerror(errno)));
  }
  return true;
}

}  // namespace rbdgw::attach
