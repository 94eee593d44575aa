#include "luks/volume.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common/error.hpp"
#include "common/log.hpp"
#include "luks/cryptsetup.hpp"

namespace rbdgw::luks {
namespace {

constexpr const char* kControl = "/dev/mapper/control";

// 0 when device-mapper's control device opens, else the errno.
int device_mapper_errno() {
  const int fd = ::open(kControl, O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno;
  ::close(fd);
  return 0;
}

void require_device_mapper(std::string_view call, std::string_view object) {
  if (const int e = device_mapper_errno())
    throw Error(ENOTSUP, cat(call, ": ", object,
                             ": device-mapper is not available on this host (",
                             errno_message("open", kControl, e),
                             "); use the userspace attach path"));
}

// Same path, or the same block device under two names (/dev/disk/by-*).
bool same_device(const std::string& a, const std::string& b) {
  if (a == b) return true;
  struct stat sa {}, sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && S_ISBLK(sa.st_mode) &&
         S_ISBLK(sb.st_mode) && sa.st_rdev == sb.st_rdev;
}

}  // namespace

void LuksFormat(const std::string& device, const SecretBuffer& passphrase,
                const FormatOptions& opts) {
  Header::format(device, passphrase, opts);
}

bool device_mapper_available() { return device_mapper_errno() == 0; }

std::string LuksOpen(const std::string& device, const std::string& name,
                     const SecretBuffer& passphrase, const OpenOptions& opts) {
  require_device_mapper("LuksOpen", device);
  const std::string mapped = "/dev/mapper/" + name;
  const MappingStatus st = LuksStatus(name);
  if (st.active) {
    if (same_device(st.backing_device, device)) return mapped;
    throw Error(EEXIST, cat("LuksOpen: ", device, ": ", name, " is already active on ",
                            st.backing_device));
  }
  auto cd = detail::init_device(device);
  detail::load_luks2(cd.get(), device);
  std::uint32_t flags = 0;
  if (opts.read_only) flags |= CRYPT_ACTIVATE_READONLY;
  if (opts.allow_discards) flags |= CRYPT_ACTIVATE_ALLOW_DISCARDS;
  const int r = crypt_activate_by_passphrase(cd.get(), name.c_str(), CRYPT_ANY_SLOT,
                                             passphrase.chars(), passphrase.size(), flags);
  if (r < 0) detail::throw_passphrase_error(r, "crypt_activate_by_passphrase", device, &passphrase);
  log::info("LuksOpen: ", device, ": mapped at ", mapped, " (keyslot ", r, ")");
  return mapped;
}

bool LuksClose(const std::string& name, bool deferred) {
  require_device_mapper("LuksClose", name);
  const crypt_status_info info = crypt_status(nullptr, name.c_str());
  if (info != CRYPT_ACTIVE && info != CRYPT_BUSY) return false;
  auto cd = detail::init_by_name(name);
  if (!cd) return false;  // went away meanwhile
  check(crypt_deactivate_by_name(cd.get(), name.c_str(), deferred ? CRYPT_DEACTIVATE_DEFERRED : 0),
        "crypt_deactivate", name);
  log::info("LuksClose: ", name, deferred ? ": removed (deferred while in use)" : ": removed");
  return true;
}

MappingStatus LuksStatus(const std::string& name) {
  require_device_mapper("LuksStatus", name);
  MappingStatus s;
  s.name = name;
  const crypt_status_info info = crypt_status(nullptr, name.c_str());
  if (info == CRYPT_INVALID) throw Error(EINVAL, cat("LuksStatus: ", name, ": invalid name"));
  if (info != CRYPT_ACTIVE && info != CRYPT_BUSY) return s;
  auto cd = detail::init_by_name(name);
  if (!cd) return s;  // went away meanwhile
  crypt_active_device ad{};
  check(crypt_get_active_device(cd.get(), name.c_str(), &ad), "crypt_get_active_device", name);
  s.active = true;
  const char* c = crypt_get_cipher(cd.get());
  const char* m = crypt_get_cipher_mode(cd.get());
  s.cipher = cat(c ? c : "?", "-", m ? m : "?");
  s.key_bits = static_cast<std::uint32_t>(crypt_get_volume_key_size(cd.get())) * 8;
  s.sector_size = static_cast<std::uint32_t>(crypt_get_sector_size(cd.get()));
  const char* dev = crypt_get_device_name(cd.get());
  s.backing_device = dev ? dev : "";
  s.offset = ad.offset * 512;
  s.read_only = (ad.flags & CRYPT_ACTIVATE_READONLY) != 0;
  return s;
}

std::string describe(const MappingStatus& s) {
  if (!s.active) return cat(s.name, ": not active");
  return cat(s.name, ": active, ", s.cipher, " ", s.key_bits, "-bit key, ", s.sector_size,
             "-byte sectors, on ", s.backing_device, " at offset ", s.offset,
             s.read_only ? ", read-only" : "");
}

}  // namespace rbdgw::luks
