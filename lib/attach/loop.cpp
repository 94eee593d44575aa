#include "attach/loop.hpp"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

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
  // Opened first: while this descriptor is open, nobody can detach the
  // device (LOOP_CLR_FD of another opener only marks it autoclear), so the
  // binding checked next is still the one detached below. The backing file
  // is compared by name (sysfs), never stat'ed: it is a FUSE file whose
  // exporter may be dead or busy, and a stat would hang or fail.
  Fd dev{::open(loop.c_str(), O_RDONLY | O_CLOEXEC)};
  if (dev.fd < 0) {
    if (errno == ENOENT || errno == ENXIO) return false;
    throw Error(errno, cat("open ", loop, ": ", std::strerror(errno)));
  }
  std::ifstream f("/sys/block/" + loop.substr(5) + "/loop/backing_file");
  std::string bound;
  if (!std::getline(f, bound) || bound != backing) return false;
  if (::ioctl(dev.fd, LOOP_CLR_FD, 0) != 0) {
    if (errno == ENXIO) return false;  // detached meanwhile by someone else
    throw Error(errno, cat(loop, ": detach (LOOP_CLR_FD) from ", backing, ": ", std::strerror(errno)));
  }
  return true;
}

}  // namespace rbdgw::attach
