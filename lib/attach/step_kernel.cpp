// Steps of the kernel path: nbd_device (the kernel NBD client, set up over
// netlink, attach/nbd_netlink.hpp) and dm_crypt (libcryptsetup opens the
// LUKS2 volume as /dev/mapper/luks-<volume-id>).
#include <filesystem>

#include "attach/nbd_netlink.hpp"
#include "attach/steps.hpp"
#include "common/log.hpp"
#include "luks/volume.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach::detail {
namespace {
using namespace std::chrono_literals;
// How long new I/O waits for a restarted gateway (rbdgw reattach) before it
// fails with EIO, once the gateway's connection is gone.
constexpr std::chrono::seconds kNbdDeadConnTimeout{300};

// The identifier the volume's device is connected with
// (/sys/block/nbdN/backend): which device is this volume's.
std::string nbd_backend_id(const Stash& s) { return "rbdgw:" + s.volume_id; }
}  // namespace

// The kernel picks the device (two maps at once never share one), and the
// stash names it only once it is this volume's. A Ceph stall delays I/O
// instead of failing it: no I/O timeout (rbd-nbd's --io-timeout=0), so the
// kernel never drops a live gateway's connection; a dead gateway's device
// waits kNbdDeadConnTimeout for `rbdgw reattach` (nbd_reconnect).
void nbd_device_run(Context& c) {
  Stash& s = c.s;
  const int index = nbd_connect(s.socket, {.io_timeout = 0s, .dead_conn_timeout = kNbdDeadConnTimeout,
                                           .backend = nbd_backend_id(s)});
  s.nbd_device = nbd_device_path(index);
  s.device = s.nbd_device;
  c.save();
}

// Disconnects only a device connected for this volume (its backend
// identifier says so), also one the stash does not name yet (the attach
// stopped between the connect and the save). A disconnect fails the
// device's outstanding I/O with EIO, which is what a forced detach needs too.
void nbd_device_undo(Context& c) {
  const Stash& s = c.s;
  const std::string ours = nbd_backend_id(s);
  if (s.nbd_device.empty()) {
    const int index = nbd_find_backend(ours);
    if (index >= 0) nbd_disconnect(index);
    return;
  }
  if (!fs::exists(cat("/sys/block/", fs::path(s.nbd_device).filename().string()))) return;
  const int index = nbd_device_index(s.nbd_device);
  if (nbd_status(index) != NbdState::connected) return;
  const std::string backend = nbd_backend(index);
  if (backend != ours) {
    log::warn(s.nbd_device, " is connected for '", backend, "', not for volume ", s.volume_id,
              " ('", ours, "'): left alone");
    return;
  }
  nbd_disconnect(index);
}

void dm_crypt_run(Context& c) {
  Stash& s = c.s;
  if (!s.encrypted) return;
  s.mapper_name = "luks-" + s.volume_id;
  c.save();
  progress(c.o, cat("opening ", s.nbd_device, " with dm-crypt as ", s.mapper_name));
  s.device = luks::LuksOpen(s.nbd_device, s.mapper_name, c.v->passphrase,
                            {.read_only = s.read_only, .allow_discards = true});
  c.save();
}

// Forced: the filesystem above may not have let go yet (lazy unmount), so
// the removal is deferred to its last close.
void dm_crypt_undo(Context& c) {
  if (!c.s.mapper_name.empty() && luks::device_mapper_available())
    luks::LuksClose(c.s.mapper_name, c.forced);
}

}  // namespace rbdgw::attach::detail
