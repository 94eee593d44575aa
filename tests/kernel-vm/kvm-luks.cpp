// kvm-luks: drives lib/luks's LUKS2 calls from the kernel-VM tests, so that
// the project's own code (not only cryptsetup) formats, opens, reports and
// closes volumes in a real kernel with dm-crypt.
//
//   kvm-luks format-file FILE SECTOR KEYFILE   userspace format (in-memory
//                                             header, luks::format_volume)
//   kvm-luks format DEVICE SECTOR KEYFILE      luks::LuksFormat
//   kvm-luks open DEVICE NAME KEYFILE          luks::LuksOpen; prints the path
//   kvm-luks status NAME                       luks::LuksStatus; prints it,
//                                             exit 0 if active, 1 if not
//   kvm-luks close NAME                        luks::LuksClose
//
// KEYFILE holds the passphrase (one trailing newline removed, as with the
// luks2 filter's passphrase=+FILE). Formats use pbkdf2 with 1000 iterations
// (test volumes only). Exit status 2 for bad usage, 1 for any error.
#include <fcntl.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "crypto/secret.hpp"
#include "luks/volume.hpp"
#include "luks/volume_format.hpp"

using namespace rbdgw;

namespace {

struct Fd {
  int fd;
  explicit Fd(const std::string& path) : fd(::open(path.c_str(), O_RDWR | O_CLOEXEC)) {
    if (fd < 0) throw_errno("open", path, errno);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { ::close(fd); }
};

luks::FormatOptions test_format(const std::string& sector) {
  luks::FormatOptions o;
  if (sector != "512" && sector != "4096")
    throw Error(EINVAL, cat("sector size '", sector, "': expected 512 or 4096"));
  o.sector_size = static_cast<std::uint32_t>(std::stoul(sector));
  o.pbkdf.type = luks::Pbkdf::Type::pbkdf2;
  o.pbkdf.iterations = 1000;
  return o;
}

void format_file(const std::string& path, const std::string& sector, const SecretBuffer& pass) {
  Fd f(path);
  const off_t size = ::lseek(f.fd, 0, SEEK_END);
  if (size < 0) throw_errno("lseek", path, errno);
  const luks::Reader read = [&](std::span<std::uint8_t> buf, std::uint64_t off) {
    const ssize_t n = ::pread(f.fd, buf.data(), buf.size(), static_cast<off_t>(off));
    if (n < 0) throw_errno("pread", path, errno);
    return static_cast<std::size_t>(n);
  };
  const luks::Writer write = [&](std::span<const std::uint8_t> buf, std::uint64_t off) {
    const ssize_t n = ::pwrite(f.fd, buf.data(), buf.size(), static_cast<off_t>(off));
    if (n < 0) throw_errno("pwrite", path, errno);
    if (static_cast<std::size_t>(n) != buf.size()) throw Error(EIO, cat("pwrite: ", path, ": short write"));
  };
  luks::format_volume(read, write, static_cast<std::uint64_t>(size), path, pass,
                      test_format(sector), false);
  if (::fsync(f.fd) < 0) throw_errno("fsync", path, errno);
}

int run(const std::vector<std::string>& a) {
  const std::string cmd = a.empty() ? "" : a[0];
  if (cmd == "format-file" && a.size() == 4) {
    format_file(a[1], a[2], read_secret_file(a[3]));
  } else if (cmd == "format" && a.size() == 4) {
    luks::LuksFormat(a[1], read_secret_file(a[3]), test_format(a[2]));
  } else if (cmd == "open" && a.size() == 4) {
    std::cout << luks::LuksOpen(a[1], a[2], read_secret_file(a[3])) << "\n";
  } else if (cmd == "status" && a.size() == 2) {
    const luks::MappingStatus s = luks::LuksStatus(a[1]);
    std::cout << luks::describe(s) << "\n";
    return s.active ? 0 : 1;
  } else if (cmd == "close" && a.size() == 2) {
    if (!luks::LuksClose(a[1])) throw Error(ENOENT, cat(a[1], ": not active"));
  } else {
    std::cerr << "usage: kvm-luks format-file FILE 512|4096 KEYFILE | format DEVICE 512|4096 KEYFILE\n"
                 "       | open DEVICE NAME KEYFILE | status NAME | close NAME\n";
    return 2;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run({argv + 1, argv + argc});
  } catch (const std::exception& e) {
    std::cerr << "kvm-luks: " << e.what() << "\n";
    return 1;
  }
}
