#include "csi/mounts.hpp"

#include <sys/mount.h>
#include <sys/statvfs.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "attach/loop.hpp"
#include "attach/process.hpp"
#include "common/error.hpp"

namespace rbdgw::csi {

namespace {

// Undoes mountinfo's octal escapes ("\040" for a space).
std::string unescape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

bool is_mount_point(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt;
    ls >> id >> parent >> devno >> root >> mnt;
    if (unescape(mnt) == path) return true;
  }
  return false;
}

bool is_read_only_mount(const std::string& path) {
  struct statvfs s{};
  if (::statvfs(path.c_str(), &s) != 0) throw_errno("statvfs", path, errno);
  return (s.f_flag & ST_RDONLY) != 0;
}

void bind_mount(const std::string& source, const std::string& target, bool read_only) {
  if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0)
    throw Error(errno, cat("mount --bind ", source, " ", target, ": ", std::strerror(errno)));
  if (read_only &&
      ::mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
    int err = errno;
    ::umount2(target.c_str(), 0);
    throw Error(err, cat("remount read-only ", target, ": ", std::strerror(err)));
  }
}

void bind_mount(const std::string& source, const std::string& target,
                const attach::MountOptions& o, bool read_only) {
  constexpr unsigned long kAtime = MS_NOATIME | MS_RELATIME | MS_STRICTATIME;
  unsigned long flags = (attach::mount_flags_of(source) | o.per_mount_set()) & ~o.per_mount_cleared();
  if (o.atime_given() && !(flags & kAtime)) flags |= MS_RELATIME;  // "atime": the kernel's default
  if (read_only) flags |= MS_RDONLY;
  if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0)
    throw Error(errno, cat("mount --bind ", source, " ", target, ": ", std::strerror(errno)));
  if (::mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | flags, nullptr) != 0) {
    int err = errno;
    ::umount2(target.c_str(), 0);
    throw Error(err, cat("remount ", target, " with its mount flags: ", std::strerror(err)));
  }
}

std::string read_only_loop(const std::string& device) {
  const attach::CommandResult r =
      attach::run_command({"losetup", "--find", "--show", "--read-only", device});
  std::string loop = r.out.substr(0, r.out.find('\n'));
  if (r.status != 0 || loop.rfind("/dev/loop", 0) != 0) {
    std::string why = r.err;
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    throw Error(EIO, cat("read-only block publish: losetup --read-only ", device, ": ",
                         why.empty() ? "failed" : why, "; refusing a read-only publish that could write"));
  }
  std::ifstream ro("/sys/block/" + loop.substr(5) + "/ro");
  int flag = 0;
  if (!(ro >> flag) || flag != 1) {
    attach::run_command({"losetup", "--detach", loop});
    throw Error(EIO, cat("read-only block publish: ", loop, " on ", device, " is not read-only; "
                         "refusing a read-only publish that could write"));
  }
  return loop;
}

bool detach_loop_if(const std::string& loop, const std::string& backing) {
  return attach::detach_loop_if_backed_by(loop, backing);
}

bool device_node_mounted(const std::string& dev) {
  if (dev.rfind("/dev/", 0) != 0) return false;
  const std::string node = dev.substr(4);  // "/loopN", its path in devtmpfs
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root;
    ls >> id >> parent >> devno >> root;
    if (unescape(root) == node) return true;
  }
  return false;
}

void unmount(const std::string& target) {
  if (::umount2(target.c_str(), 0) != 0)
    throw Error(errno, cat("umount ", target, ": ", std::strerror(errno)));
}

}  // namespace rbdgw::csi
