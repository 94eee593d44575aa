// Steps of the kernel path: nbd_device (the kernel NBD client, set up over
// netlink, attach/nbd_netlink.hpp) and dm_crypt (libcryptsetup opens the
// LUKS2 volume as /dev/mapper/luks-<volume-id>).
#include <filesystem>

#include "attach/nbd_netlink.hpp"
#include "attach/steps.hpp"
#include "luks/volume.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach::detail {
namespace {
// How long I/O waits for a restarted gateway (rbdgw reattach) before it fails.
constexpr std::chrono::seconds kNbdDeadConnTimeout{300};
}  // namespace

void nbd_device_run(Context& c) {
  Stash& s = c.s;
  s.nbd_device = find_free_nbd(c.o.root);
  c.save();  // detach disconnects it only if connected
  // I/O waits for `rbdgw reattach` (nbd_reconnect) if the gateway dies.
  nbd_connect(s.socket, {.dead_conn_timeout = kNbdDeadConnTimeout, .backend = "rbdgw:" + s.volume_id,
                         .index = nbd_device_index(s.nbd_device)});
  s.device = s.nbd_device;
  c.save();
}

// A disconnect fails the device's outstanding I/O with EIO, which is what a
// forced detach needs too.
void nbd_device_undo(Context& c) {
  const Stash& s = c.s;
  if (!s.nbd_device.empty() && fs::exists(cat("/sys/block/", fs::path(s.nbd_device).filename().string())))
    nbd_disconnect(nbd_device_index(s.nbd_device));
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
