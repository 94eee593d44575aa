#include "attach/secret_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "attach/attach.hpp"
#include "common/boot_id.hpp"
#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::attach {
namespace {

namespace fs = std::filesystem;

constexpr const char* kBootIdFile = "boot_id";

class Fd {
 public:
  explicit Fd(int fd = -1) noexcept : fd_(fd) {}
  ~Fd() { if (fd_ >= 0) ::close(fd_); }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_;
};

std::string store_name(const std::string& root) { return cat("secret store ", root); }

void check_names(std::string_view volume_id, std::string_view name) {
  validate_volume_id(volume_id);
  bool ok = !name.empty() && name.size() <= 32;
  for (char c : name) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-');
  if (!ok) throw Error(EINVAL, cat("secret name '", name, "' of volume ", volume_id, ": use 1 to 32 of a-z 0-9 _ -"));
}

// "<volume-id>.<name>": the name has no '.', so the split is unambiguous;
// temporary names carry a '+', which neither part can contain.
std::string file_name(std::string_view volume_id, std::string_view name) {
  return cat(volume_id, ".", name);
}

std::string temp_name(const std::string& final_name) {
  static std::atomic<unsigned> counter{0};
  return cat(final_name, "+tmp.", ::getpid(), ".", counter++);
}

std::string resolve(const std::string& root) { return root.empty() ? secret_root() : root; }

// Reads a small non-secret file relative to dir ("" when missing).
std::string read_small(int dir, const char* name, const std::string& object) {
  Fd fd(::openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return {};
    throw_errno("open", object, errno);
  }
  char buf[128];
  ssize_t n = ::read(fd.get(), buf, sizeof buf);
  if (n < 0) throw_errno("read", object, errno);
  std::string s(buf, static_cast<std::size_t>(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void write_all(int fd, const void* data, std::size_t n, const std::string& object) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_errno("write", object, errno);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

// Overwrites name (a regular file) with zeros, then unlinks it. Returns
// false when it does not exist.
bool wipe_file(int dir, const std::string& name, const std::string& object) {
  Fd fd(::openat(dir, name.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (!fd && errno == ENOENT) return false;
  if (fd) {
    struct stat st;
    if (::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
      const std::vector<char> zeros(static_cast<std::size_t>(st.st_size), 0);
      write_all(fd.get(), zeros.data(), zeros.size(), object);
    }
  }
  if (::unlinkat(dir, name.c_str(), 0) < 0 && errno != ENOENT) throw_errno("unlink", object, errno);
  return true;
}

// Creates dir/name atomically (temporary file, then rename) with mode 0600.
void write_file_atomically(int dir, const std::string& name, const void* data, std::size_t n,
                           const std::string& object) {
  const std::string tmp = temp_name(name);
  Fd fd(::openat(dir, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) throw_errno("create", object, errno);
  try {
    if (::fchmod(fd.get(), 0600) < 0) throw_errno("fchmod", object, errno);
    write_all(fd.get(), data, n, object);
    wipe_file(dir, name, object);  // the old content, if any, goes first
    if (::renameat(dir, tmp.c_str(), dir, name.c_str()) < 0) throw_errno("rename", object, errno);
  } catch (...) {
    wipe_file(dir, tmp, object);
    throw;
  }
}

// Opens and checks the store directory. Returns an invalid Fd when it is
// missing and create is false.
bool is_empty_dir(int dir) {
  const int dup = ::fcntl(dir, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return false;
  DIR* d = ::fdopendir(dup);
  if (!d) {
    ::close(dup);
    return false;
  }
  bool empty = true;
  while (const dirent* e = ::readdir(d))
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) empty = false;
  ::closedir(d);
  return empty;
}

// True when path is a mount point: a device other than its parent's.
bool is_mount_point(const std::string& path) {
  struct stat here, up;
  const std::string parent = fs::path(path).parent_path().string();
  return ::stat(path.c_str(), &here) == 0 && ::stat(parent.c_str(), &up) == 0 &&
         here.st_dev != up.st_dev;
}

Fd open_root(const std::string& root, bool create, bool mounted = false) {
  const std::string object = store_name(root);
  if (root.empty() || root[0] != '/') throw Error(EINVAL, cat(object, ": not an absolute path"));
  if (create) {
    std::error_code ec;
    const fs::path parent = fs::path(root).parent_path();
    fs::create_directories(parent, ec);
    if (ec) throw Error(ec.value(), cat(object, ": create ", parent.string(), ": ", ec.message()));
    if (::mkdir(root.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("mkdir", object, errno);
  }
  Fd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    const int e = errno;
    if (e == ENOENT && !create) return Fd();
    struct stat st;
    if (::lstat(root.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
      throw Error(ELOOP, cat(object, ": is a symbolic link; refusing it (it must be a directory of its own)"));
    throw_errno("open", object, e);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) < 0) throw_errno("fstat", object, errno);
  if (st.st_uid != ::geteuid())
    throw Error(EACCES, cat(object, ": owned by uid ", st.st_uid, ", not by this service (uid ",
                            ::geteuid(), "); refusing it"));
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw Error(EACCES, cat(object, ": mode ", mode, ", must be 0700 (readable by this service only); "
                            "refusing it"));
  }
  struct statfs sf;
  if (::fstatfs(fd.get(), &sf) < 0) throw_errno("statfs", object, errno);
  const auto type = static_cast<unsigned long>(sf.f_type);
  // The private tmpfs below, in pages (a secret file takes one): two files
  // for each of 2000 volumes; tmpfs uses only what is written. An earlier
  // rbdgw mounted it with 1 MiB (size=1m: 127 volumes); one still mounted
  // (no reboot since) is enlarged in place, its files kept.
  constexpr unsigned kStorePages = 4096;
  const std::string store_options = cat("mode=0700,nr_blocks=", kStorePages);
  if (type == TMPFS_MAGIC && create && sf.f_blocks * sf.f_bsize == (1u << 20) &&
      is_mount_point(root)) {
    if (::mount("tmpfs", root.c_str(), "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                store_options.c_str()) == 0)
      log::info(object, ": its private tmpfs of 1 MiB (an earlier rbdgw's) enlarged to ",
                kStorePages, " pages");
  }
  if (type != TMPFS_MAGIC && type != RAMFS_MAGIC) {
    // Where /run itself is on disk (some minimal VMs), an empty store gets
    // a tmpfs of its own (kStorePages): it outlives the service like /run
    // would, and is gone after a reboot. A store already holding files is
    // never covered up.
    if (create && !mounted && is_empty_dir(fd.get()) &&
        ::mount("tmpfs", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                store_options.c_str()) == 0) {
      log::info(object, ": not on tmpfs; mounted a private tmpfs (", kStorePages, " pages) on it");
      return open_root(root, create, true);
    }
    char hex[24];
    std::snprintf(hex, sizeof hex, "0x%lx", type);
    throw Error(ENOTSUP, cat(object, ": not on tmpfs or ramfs (filesystem type ", hex,
                             "); secrets must never reach a persistent disk: put the store on "
                             "tmpfs (e.g. /run) or set RBDGW_SECRET_DIR to a directory on tmpfs; mounting a tmpfs on it "
                             "failed or it is not empty"));
  }
  return fd;
}

void lock(const Fd& dir, int how, const std::string& object) {
  while (::flock(dir.get(), how) < 0)
    if (errno != EINTR) throw_errno("flock", object, errno);
}

// Wipes every secret (and leftover temporary file) of the store.
void wipe_all(int dir, const std::string& object) {
  const int dup = ::fcntl(dir, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) throw_errno("dup", object, errno);
  DIR* d = ::fdopendir(dup);
  if (!d) {
    ::close(dup);
    throw_errno("opendir", object, errno);
  }
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != ".." && n != kBootIdFile) names.push_back(n);
  }
  ::closedir(d);
  for (const auto& n : names) wipe_file(dir, n, cat(object, "/", n));
}

}  // namespace

std::string secret_root() {
  const char* v = std::getenv("RBDGW_SECRET_DIR");
  if (!v || !*v) return kSecretRoot;
  if (v[0] != '/') throw Error(EINVAL, cat("RBDGW_SECRET_DIR '", v, "': not an absolute path"));
  return v;
}

void store_secret(std::string_view volume_id, std::string_view name, const SecretBuffer& secret,
                  const std::string& root_in) {
  check_names(volume_id, name);
  const std::string root = resolve(root_in);
  const std::string object = store_name(root);
  if (secret.size() > max_secret_size)
    throw Error(EINVAL, cat(object, ": secret ", name, " of volume ", volume_id, ": larger than ",
                            max_secret_size, " bytes"));
  const Fd dir = open_root(root, true);
  lock(dir, LOCK_EX, object);
  const std::string now = this_boot_id();
  const std::string recorded = read_small(dir.get(), kBootIdFile, cat(object, "/", kBootIdFile));
  if (recorded != now) {
    if (!recorded.empty())
      log::warn(object, ": written in an earlier boot (boot id ", recorded, ", this boot ", now,
                "): wiping its secrets and starting it afresh");
    wipe_all(dir.get(), object);
    const std::string line = now + "\n";
    write_file_atomically(dir.get(), kBootIdFile, line.data(), line.size(), cat(object, "/", kBootIdFile));
  }
  const std::string file = file_name(volume_id, name);
  write_file_atomically(dir.get(), file, secret.data(), secret.size(), cat(object, "/", file));
}

std::optional<SecretBuffer> load_secret(std::string_view volume_id, std::string_view name,
                                        const std::string& root_in) {
  check_names(volume_id, name);
  const std::string root = resolve(root_in);
  const std::string store = store_name(root);
  const Fd dir = open_root(root, false);
  if (!dir) return std::nullopt;
  lock(dir, LOCK_SH, store);
  const std::string file = file_name(volume_id, name);
  const std::string object = cat(store, "/", file);
  Fd fd(::openat(dir.get(), file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    if (errno == ENOENT) return std::nullopt;
    throw_errno("open", object, errno);
  }
  const std::string now = this_boot_id();
  const std::string recorded = read_small(dir.get(), kBootIdFile, cat(store, "/", kBootIdFile));
  if (recorded != now) {
    log::warn(store, ": ", recorded.empty() ? std::string("records no boot id") : cat("written in an earlier boot (boot id ", recorded, ")"),
              ", this boot is ", now, ": not trusting its secrets (", name, " of volume ", volume_id,
              " ignored)");
    return std::nullopt;
  }
  struct stat st;
  if (::fstat(fd.get(), &st) < 0) throw_errno("fstat", object, errno);
  if (!S_ISREG(st.st_mode)) throw Error(EACCES, cat(object, ": not a regular file; refusing it"));
  if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw Error(EACCES, cat(object, ": owner uid ", st.st_uid, " mode ", mode,
                            ", must be this service's (uid ", ::geteuid(), ") and 0600; refusing it"));
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_secret_size)
    throw Error(EFBIG, cat(object, ": larger than ", max_secret_size, " bytes; refusing it"));
  return read_secret_fd(fd.get(), object);
}

void remove_secret(std::string_view volume_id, std::string_view name, const std::string& root_in) {
  check_names(volume_id, name);
  const std::string root = resolve(root_in);
  const std::string store = store_name(root);
  // No checks of owner, mode or filesystem: removing is always safe.
  const Fd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) {
    if (errno == ENOENT || errno == ELOOP || errno == ENOTDIR) return;
    throw_errno("open", store, errno);
  }
  lock(dir, LOCK_EX, store);
  const std::string file = file_name(volume_id, name);
  wipe_file(dir.get(), file, cat(store, "/", file));
}

}  // namespace rbdgw::attach
