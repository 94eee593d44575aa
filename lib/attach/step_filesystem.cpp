// Steps on the filesystem: filesystem (the decision whether the volume is
// blank, and mkfs) and mount.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>

#include "attach/mount_options.hpp"
#include "attach/steps.hpp"
#include "luks/probe.hpp"
#include "rbd/allocation.hpp"
#include "rbd/image.hpp"

namespace rbdgw::attach::detail {
namespace {
constexpr std::size_t kProbeBytes = 1 << 20;
}  // namespace

// Set in the image metadata right before mkfs runs on a volume proven
// blank ("<fstype> <token>", the token also in the stash), removed when it
// succeeded: a retry after a crash in between, which finds that token in
// the interrupted attach's stash, knows that the data is a half-made
// filesystem of ours, not the user's. A marker with any other token (left
// by an attach that was not retried, copied into a clone or by `rbd cp`)
// proves nothing: it is ignored, and removed once the volume is shown to
// hold a filesystem or gets one.
constexpr const char* kMkfsMarker = "rbdgw.io/mkfs-started";

std::string new_token() {
  std::ifstream f("/proc/sys/kernel/random/uuid");
  std::string t;
  std::getline(f, t);
  if (t.empty()) throw Error(EIO, "read /proc/sys/kernel/random/uuid: empty");
  return t;
}

// Makes the filesystem when the volume provably holds nothing where it
// would write, else checks that it holds one of the requested type.
// Blank means: no filesystem signature (blkid), and every extent of the
// image ever allocated past data_offset (the parent's included) holds
// nothing: zeros in the raw image (never written) or, for an encrypted
// volume, zeros in its plaintext (rbd::require_blank: bounded in time,
// refusing rather than guessing). The plaintext of never-written ciphertext
// is noise, so an encrypted volume's device is not probed for zeros.
void filesystem_run(Context& c) {
  if (c.s.block) return;  // raw block: the user's to format
  const Stash& s = c.s;
  const Volume& v = *c.v;
  const ImageState& image = c.image;
  const AttachOptions& o = c.o;
  const bool encrypted = image.data_offset > 0;
  auto cluster = rbd::Cluster::connect(v.cluster);
  auto img = rbd::Image::open(cluster, v.image,
                              v.read_only ? rbd::Image::Mode::read_only : rbd::Image::Mode::read_write);
  const std::optional<std::string> marker = img.get_meta(kMkfsMarker);
  const bool half_made = marker && !c.interrupted_mkfs_token.empty() &&
                         *marker == cat(s.fstype, " ", c.interrupted_mkfs_token);
  const auto drop_stale_marker = [&] {
    if (marker && !v.read_only) img.remove_meta(kMkfsMarker);
  };
  if (!half_made) {
    const CommandResult r = run_command({"blkid", "-p", "-s", "TYPE", "-o", "value", s.device});
    const std::string type = r.out.substr(0, r.out.find('\n'));
    if (type == s.fstype) {  // made before: mount it
      drop_stale_marker();
      return;
    }
    if (!type.empty())
      throw Error(EEXIST, cat(s.image, ": holds ", type, " filesystem, not ", s.fstype,
                              "; refusing to format a volume that holds data"));
    int fd = ::open(s.device.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_errno("open", s.device, errno);
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    const rbd::RangeReader on_device = [&](std::span<std::uint8_t> buf, std::uint64_t off) {
      ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
      if (n < 0) throw_errno("read", s.device, errno);
      return static_cast<std::size_t>(n);
    };
    if (!encrypted) {
      std::vector<std::uint8_t> first(kProbeBytes);
      first.resize(on_device(first, 0));
      const auto found = luks::probe(first);
      if (found.content != luks::Content::blank)
        throw Error(EEXIST, cat(s.image, ": holds ", found.signature, ", not ", s.fstype,
                                "; refusing to format a volume that holds data"));
    }
    progress(o, cat("checking that ", s.image, " holds no data"));
    std::vector<rbd::RangeReader> views;
    if (encrypted) views.push_back(rbd::raw_reader(img, image.data_offset));
    views.push_back(on_device);
    rbd::require_blank(img, image.data_offset, img.size(), views, s.image,
                       cat("make an ", s.fstype, " filesystem on it"), encrypted);
  }
  if (s.read_only) throw Error(EROFS, cat(s.image, ": blank, and read-only: cannot make a filesystem"));
  c.s.mkfs_token = new_token();
  c.save();
  img.set_meta(kMkfsMarker, cat(s.fstype, " ", c.s.mkfs_token));
  progress(o, cat("making an ", s.fstype, " filesystem on ", s.device, " (", s.image, ")",
                  half_made ? ", again after an interrupted first attach" : ""));
  run_checked(mkfs_argv(s.fstype, s.device));
  img.remove_meta(kMkfsMarker);
}

void mount_run(Context& c) {
  Stash& s = c.s;
  if (s.block) return;
  // Generic options become mount(2) flags, the rest the filesystem's data;
  // nodev,nosuid unless dev/suid was asked (attach/mount_options.hpp).
  const MountOptions mo = parse_mount_options(s.mount_options, s.fstype, s.read_only);
  progress(c.o, cat("mounting ", s.device, " on ", s.target,
                    s.mount_options.empty() ? "" : cat(" (", s.mount_options, ")")));
  if (::mount(s.device.c_str(), s.target.c_str(), s.fstype.c_str(), mo.stage_flags(s.read_only),
              mo.data.empty() ? nullptr : mo.data.c_str()) < 0) {
    const int err = errno;
    if (err == EINVAL && !mo.data.empty())
      throw Error(EINVAL, cat("mount ", s.device, " on ", s.target, ": ", std::strerror(err),
                              ": the kernel's ", s.fstype, " refused the filesystem options '",
                              mo.data, "' (of '", s.mount_options, "')"));
    throw_errno("mount", cat(s.device, " on ", s.target), err);
  }
  s.mounted = true;
  c.save();
}

// Unmounts (a crash may have left it mounted before `mounted` was saved);
// forced: lazily, the I/O below failing with EIO meanwhile.
void mount_undo(Context& c) {
  Stash& s = c.s;
  if (!s.target.empty() && is_mountpoint(s.target) && (s.mounted || !s.complete)) {
    if (::umount2(s.target.c_str(), c.forced ? MNT_DETACH : 0) < 0 && errno != EINVAL &&
        errno != ENOENT)
      throw_errno("umount", s.target, errno);
  }
  s.mounted = false;
  c.save();
}

}  // namespace rbdgw::attach::detail
