// Steps on the image itself: inspect (before anything starts) and
// mark_encrypted (when everything else is done).
#include "attach/steps.hpp"
#include "kms/image_meta.hpp"
#include "luks/probe.hpp"
#include "luks/volume_format.hpp"
#include "rbd/allocation.hpp"
#include "rbd/image.hpp"

namespace rbdgw::attach::detail {
namespace {

// Refuses a read-write attach of an image that another client has open
// (a watcher other than this process): another gateway, `rbd map`, rbd-nbd
// or a VM. Two writers would corrupt each other's filesystem. A client that
// died keeps its watch for about 30 s (osd_client_watch_timeout); the
// error says so.
void refuse_other_writers(const rbd::Cluster& cluster, const rbd::Image& img) {
  std::string others;
  for (const auto& addr : other_watchers(cluster, img)) others += cat(others.empty() ? "" : ", ", addr);
  if (!others.empty())
    throw Error(EBUSY, cat(img.spec(), ": in use by another client (", others, "): another gateway, "
                           "rbd map, rbd-nbd or VM has it open; refusing a second writer (a client "
                           "that died lets go within about 30 s)"));
}

}  // namespace

// Checks the image (and an encrypted volume's passphrase, one key
// derivation, so that a wrong one is a clear EPERM rather than a gateway
// that serves nothing) and LUKS2-formats an encrypted volume on its first
// attach, only where the image is provably blank (luks::format_image).
// Whether a filesystem may be made is decided later, on the device
// (filesystem step). Records nothing: there is nothing to undo.
void inspect_run(Context& c) {
  using kms::EncryptionState;
  const Volume& v = *c.v;
  const std::string obj = v.image.str();
  auto cluster = rbd::Cluster::connect(v.cluster);
  auto img = rbd::Image::open(cluster, v.image,
                              v.read_only ? rbd::Image::Mode::read_only : rbd::Image::Mode::read_write);
  if (!v.read_only) refuse_other_writers(cluster, img);
  const EncryptionState state = kms::get_state(img);
  if (!v.encrypted) {
    if (state != EncryptionState::none)
      throw Error(EINVAL, cat(obj, ": the volume is tagged '", kms::state_value(state),
                              "'; attach it as encrypted, with its passphrase"));
    c.image = {};
    return;
  }
  const luks::Reader read = rbd::raw_reader(img);
  const auto check_passphrase = [&] {
    progress(c.o, cat("checking the passphrase of ", obj));
    return luks::unlock(read, obj, v.passphrase).segment.offset;
  };
  if (state == EncryptionState::encrypted) {
    c.image = {check_passphrase(), false};
    return;
  }
  // A LUKS2 header already there: made by `rbdgw format` or an attach that
  // stopped before the filesystem (tagged), or, untagged, a LUKS2 volume
  // made elsewhere that opens as it is.
  const bool tagged = state != EncryptionState::none;
  std::vector<std::uint8_t> first(4096);
  first.resize(read(first, 0));
  if (luks::probe(first).content == luks::Content::luks2) {
    c.image = {check_passphrase(), tagged};
    return;
  }
  if (v.read_only) throw Error(EROFS, cat(obj, ": a new encrypted volume cannot be attached read-only"));
  progress(c.o, cat("formatting ", obj, " as LUKS2 (once it is shown to hold no data)"));
  // Tagged before the header is written: a crash in between leaves a
  // prepared volume (formatted on the next attach), never an untagged
  // LUKS2 volume that later attaches would take as made elsewhere.
  // (A refused format takes the tag away again.)
  if (!tagged) kms::set_state(img, EncryptionState::prepared);
  luks::Segment seg;
  try {
    seg = luks::format_image(img, v.passphrase, c.o.luks_format, tagged);
  } catch (...) {
    if (!tagged) kms::set_state(img, EncryptionState::none);
    throw;
  }
  c.image = {seg.offset, true};
}

// After the first filesystem (or first raw attach) of a formatted volume.
void mark_encrypted_run(Context& c) {
  if (!c.image.first_use) return;
  auto cluster = rbd::Cluster::connect(c.v->cluster);
  auto img = rbd::Image::open(cluster, c.v->image);
  kms::set_state(img, kms::EncryptionState::encrypted);
}

}  // namespace rbdgw::attach::detail
