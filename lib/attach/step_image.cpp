// Steps on the image itself: inspect (before anything starts) and
// mark_encrypted (when everything else is done).
#include <random>

#include "attach/steps.hpp"
#include "kms/image_meta.hpp"
#include "luks/probe.hpp"
#include "luks/volume_format.hpp"
#include "rbd/allocation.hpp"
#include "rbd/exclusive_lock.hpp"
#include "rbd/image.hpp"

namespace rbdgw::attach::detail {
namespace {

// Refuses a read-write attach of an image that another writer holds (its
// exclusive lock: EBUSY naming the holder's node from its record, unless it
// is this node's provably dead gateway, which the new gateway takes over)
// or that another client has open (a watcher other than this process):
// a reader, rbd map, rbd-nbd, a VM. A client that died keeps its watch for
// about 30 s (osd_client_watch_timeout); the error says so. Watchers seen
// without a lock owner are looked at again a few times, with this handle
// closed in between, so that two stages of one volume at the same moment do
// not refuse each other: one goes on (its gateway takes the lock), the other
// then sees that lock and is refused naming it. The gateway's lock is the
// guarantee; this check only makes the refusal early and clear.
void refuse_other_writers(const Volume& v) {
  const std::string node = node_name(v);
  std::mt19937 rng{std::random_device{}()};  // two stages must not wait in step
  std::uniform_int_distribution<int> pause_ms(150, 600);
  std::vector<std::string> others;
  auto cluster = rbd::Cluster::connect(v.cluster);
  for (int round = 0; round < 8; ++round) {
    if (round > 0) std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
    auto img = rbd::Image::open(cluster, v.image);  // its watch ends with the round
    const auto owner = rbd::check_available(img, node);  // throws EBUSY for a live writer
    others = other_watchers(cluster, img);
    if (owner) std::erase(others, owner->client);  // a dead gateway's watch, about to go
    if (others.empty()) return;
  }
  std::string list;
  for (const auto& addr : others) list += cat(list.empty() ? "" : ", ", addr);
  throw Error(EBUSY, cat(v.image.str(), ": in use by another client (", list, "): another gateway, a "
                         "reader, rbd map, rbd-nbd or VM has it open; refusing a second writer (a client "
                         "that died lets go within about 30 s)"));
}

// Refuses a read-only attach of an image head that a writer holds: a
// filesystem read while another node writes it changes under the reader
// (ext4 and xfs read-only mounts cache metadata and fail or read garbage).
// A snapshot never changes and is always allowed.
void refuse_while_written(const Volume& v, const rbd::Image& img) {
  if (v.image.is_snapshot()) return;
  const auto owner = rbd::lock_owner(img);
  if (!owner || rbd::provably_dead(*owner, node_name(v))) return;
  throw Error(EBUSY, cat(rbd::in_use_message(img, *owner), ". A read-only attach of an image "
                         "another client writes would read data changing under it: attach a "
                         "snapshot of it instead (rbd snap create)"));
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
  if (!v.read_only) refuse_other_writers(v);
  auto cluster = rbd::Cluster::connect(v.cluster);
  auto img = rbd::Image::open(cluster, v.image,
                              v.read_only ? rbd::Image::Mode::read_only : rbd::Image::Mode::read_write);
  if (v.read_only) refuse_while_written(v, img);
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
