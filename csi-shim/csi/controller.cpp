#include "csi/controller.hpp"

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <cstring>

#include "common/error.hpp"
#include "common/log.hpp"
#include "csi/encryption.hpp"
#include "csi/snapshots.hpp"
#include "kms/image_meta.hpp"
#include "luks/layout.hpp"
#include "luks/probe.hpp"
#include "rbd/allocation.hpp"
#include "rbd/exclusive_lock.hpp"

namespace rbdgw::csi {

namespace {

const ClusterEntry& cluster_for(const ClusterConfig& cfg, const std::string& cluster_id) {
  const ClusterEntry* c = cfg.find(cluster_id);
  if (!c) throw Error(EINVAL, cat("clusterID '", cluster_id, "' is not in the cluster config"));
  return *c;
}

std::string pool_name(const rbd::Cluster& c, std::int64_t pool_id) {
  char buf[512] = {0};
  int r = rados_pool_reverse_lookup(c.handle(), pool_id, buf, sizeof buf - 1);
  if (r == -ENOENT) throw Error(ENOENT, cat("pool id ", pool_id, " does not exist"));
  check(r, "rados_pool_reverse_lookup", std::to_string(pool_id));
  return buf;
}

// The image if it exists, else nothing.
std::optional<rbd::Image> open_if_exists(const rbd::IoCtx& io, const std::string& name,
                                         rbd::Image::Mode mode = rbd::Image::Mode::read_write) {
  try {
    return rbd::Image::open(io, name, {}, mode);
  } catch (const Error& e) {
    if (e.code() == ENOENT) return std::nullopt;
    throw;
  }
}

// Addresses of the clients other than this one watching the image (a
// gateway on any node, rbd map, rbd-nbd, a VM).
std::vector<std::string> other_watchers(const rbd::IoCtx& io, const rbd::Image& img) {
  const auto self =
      static_cast<std::int64_t>(rados_get_instance_id(rados_ioctx_get_cluster(io.handle())));
  std::vector<std::string> others;
  for (const auto& w : img.watchers())
    if (w.id != self) others.push_back(w.addr);
  return others;
}

// "; image rbd/x is in use: its exclusive lock is held by ... on node N ..."
// when someone holds the exclusive lock, else "".
std::string lock_note(const rbd::Image& img) {
  try {
    if (auto o = rbd::lock_owner(img)) return cat("; ", rbd::in_use_message(img, *o));
  } catch (const Error&) {
    // No exclusive-lock feature: the watchers say enough.
  }
  return {};
}

// Throws Error(EBUSY) naming the watchers (and the lock's holder and its
// node) when another client has the image open.
void refuse_if_watched(const rbd::IoCtx& io, const rbd::Image& img, const VolumeId& id,
                       const std::string& outcome) {
  const std::vector<std::string> w = other_watchers(io, img);
  if (w.empty()) return;
  std::string list;
  for (const auto& a : w) list += (list.empty() ? "" : ", ") + a;
  throw Error(EBUSY, cat("volume '", id.str(), "' (image ", img.spec(), ") is in use: watched by ",
                         list, lock_note(img), "; unstage it on its node first (", outcome, ")"));
}

// Throws Error(EBUSY) naming the holder when a client holds the image's
// exclusive lock, watching it or not. A writer paused or cut off from the
// cluster for longer than the OSDs' watch timeout (~30 s) keeps its lock
// but loses its watch; an operation that needs the lock from here (a move
// to the trash, a resize) would then have librbd break that lock and
// blocklist the writer, which neither librbd nor we can tell from a dead
// one. Fencing is ControllerUnpublishVolume's decision (or an operator's),
// never a side effect.
void refuse_if_locked(const rbd::Image& img, const VolumeId& id, const std::string& outcome) {
  std::optional<rbd::LockOwner> o;
  try {
    o = rbd::lock_owner(img);
  } catch (const Error& e) {
    if (e.code() != EINVAL) throw;  // no exclusive-lock feature: no lock to break
    return;
  }
  if (!o) return;
  throw Error(EBUSY, cat("volume '", id.str(), "': ", rbd::in_use_message(img, *o),
                         o->watching ? "" : " (its client no longer watches the image: paused, cut off "
                                            "from the cluster, or dead; going on would fence it)",
                         "; ", outcome));
}

// Trash entries (ids) moved there by a user (us) under the image's name.
std::vector<std::string> trashed_ids(const rbd::IoCtx& io, const std::string& name) {
  std::vector<rbd_trash_image_info_t> e(32);
  std::size_t n = e.size();
  int r;
  while ((r = rbd_trash_list(io.handle(), e.data(), &n)) == -ERANGE) e.resize(n);
  check(r, "rbd_trash_list", io.str());
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i)
    if (name == e[i].name && e[i].source == RBD_TRASH_IMAGE_SOURCE_USER) out.emplace_back(e[i].id);
  rbd_trash_list_cleanup(e.data(), n);
  return out;
}

// Puts a trashed image back under its name (a delete that must not happen).
void restore_from_trash(const rbd::IoCtx& io, const std::string& trash_id, const std::string& name) {
  const int r = rbd_trash_restore(io.handle(), trash_id.c_str(), name.c_str());
  if (r < 0)
    log::error("DeleteVolume: cannot restore ", io.str(), "/", name, " (trash id ", trash_id,
               ") from the trash: ", std::strerror(-r), "; restore it by hand: rbd trash restore ",
               io.str(), "/", trash_id);
  else
    log::info("DeleteVolume: restored ", io.str(), "/", name, " from the trash");
}

// Steps 3 and 4 of remove() for one trash entry of the volume.
void finish_trashed(const rbd::IoCtx& io, const std::string& trash_id, const std::string& name,
                    const VolumeId& id, const StringMap& secrets) {
  const std::string what = cat(io.str(), "/", name, " (in the trash)");
  std::optional<rbd::Image> img;
  try {
    img.emplace(rbd::Image::open_by_id(io, trash_id, what, rbd::Image::Mode::read_only));
  } catch (const Error& e) {
    if (e.code() == ENOENT) return;  // removed meanwhile
    throw;
  }
  try {
    refuse_if_watched(io, *img, id, "it was put back; nothing was deleted");
  } catch (const Error&) {
    img->close();
    restore_from_trash(io, trash_id, name);
    throw;
  }
  // The key, where it lives outside the image (never the image's own
  // metadata: a restore must find the volume as it was).
  if (auto kms = img->get_meta(kMetaKmsId)) remove_encryption(*img, id, *kms, secrets);
  img->close();
  const int r = rbd_trash_remove(io.handle(), trash_id.c_str(), false);
  if (r == -ENOENT) return;
  if (r == -EBUSY || r == -ENOTEMPTY) {
    restore_from_trash(io, trash_id, name);
    throw Error(r == -EBUSY ? EBUSY : ENOTEMPTY,
                cat("volume '", id.str(), "' (image ", io.str(), "/", name, "): rbd_trash_remove: ",
                    r == -EBUSY ? "the image is in use" : "the image has snapshots",
                    "; it was put back"));
  }
  check(r, "rbd_trash_remove", what);
  log::info("DeleteVolume: removed ", io.str(), "/", name, " (trash id ", trash_id, ")");
}

StringMap volume_context(const VolumeParams& p, const std::string& image) {
  StringMap ctx{{"clusterID", p.cluster_id}, {"pool", p.pool}, {"imageName", image}};
  if (p.encrypted) {
    ctx["encrypted"] = "true";
    if (!p.kms_id.empty()) ctx["encryptionKMSID"] = p.kms_id;
  }
  return ctx;
}

bool is_encrypted(rbd::Image& img) {
  return img.get_meta(kMetaKmsId).has_value() || kms::get_state(img) != kms::EncryptionState::none;
}

// What the volume offers: the image less the LUKS2 header of an encrypted one.
std::uint64_t capacity_of(rbd::Image& img) {
  const std::uint64_t size = img.size();
  const std::uint64_t overhead = encryption_overhead(img);
  return size > overhead ? size - overhead : 0;
}

// The names of the image's snapshots in the user namespace (RBD's own in
// the trash namespace, kept while clones of them live, are not listed).
std::vector<std::string> user_snaps(const rbd::Image& img) {
  std::vector<rbd_snap_info_t> snaps(16);
  int max = static_cast<int>(snaps.size());
  int r;
  while ((r = rbd_snap_list(img.handle(), snaps.data(), &max)) == -ERANGE) snaps.resize(max);
  check(r, "rbd_snap_list", img.spec());
  std::vector<std::string> out;
  for (int i = 0; i < r; i++) {
    rbd_snap_namespace_type_t t = RBD_SNAP_NAMESPACE_TYPE_USER;
    if (rbd_snap_get_namespace_type(img.handle(), snaps[i].id, &t) == 0 &&
        t != RBD_SNAP_NAMESPACE_TYPE_USER)
      continue;
    out.emplace_back(snaps[i].name);
  }
  rbd_snap_list_end(snaps.data());
  return out;
}

// A temporary snapshot of Snapshots::create / create_volume (snapshots.cpp).
bool is_temporary_snap(const std::string& s) {
  for (const std::string p : {"csi-snap-tmp-", "csi-clone-tmp-"})
    if (s.rfind(p, 0) == 0 && is_uuid(std::string_view(s).substr(p.size()))) return true;
  return false;
}

}  // namespace

VolumeId parse_existing_volume_id(std::string_view id) {
  try {
    return VolumeId::parse(id);
  } catch (const Error& e) {
    if (e.code() != EINVAL) throw;
    throw Error(ENOENT, cat(e.what(), ": no such volume"));
  }
}

std::uint64_t encryption_overhead(rbd::Image& img) {
  if (!is_encrypted(img)) return 0;
  std::vector<std::uint8_t> first(4096);
  const std::uint64_t size = img.size();
  first.resize(static_cast<std::size_t>(std::min<std::uint64_t>(first.size(), size)));
  img.read(0, first.data(), first.size());
  if (luks::probe(first).content != luks::Content::luks2) return kLuksHeaderRoom;  // not formatted yet
  try {
    return luks::inspect_header(rbd::raw_reader(img), img.spec()).data_offset;
  } catch (const Error& e) {
    log::warn(img.spec(), ": its LUKS2 header does not parse (", e.what(), "); counting ",
              kLuksHeaderRoom, " bytes for it");
    return kLuksHeaderRoom;
  }
}

VolumeLocation Controller::locate(const VolumeId& id, const StringMap& secrets) const {
  const ClusterEntry* entry = clusters_.find(id.cluster_id);
  if (!entry)
    throw Error(ENOENT, cat("volume '", id.str(), "': clusterID '", id.cluster_id,
                            "' is not in the cluster config"));
  auto cluster = rbd::Cluster::connect(cluster_options(*entry, secrets));
  const std::string pool = pool_name(cluster, id.pool_id);
  return {cluster.open_ioctx(pool, entry->rados_namespace), id.image_name()};
}

CreatedVolume Controller::create(const std::string& name, const VolumeParams& params,
                                 std::int64_t required_bytes, std::int64_t limit_bytes,
                                 const StringMap& secrets) {
  const ClusterEntry& entry = cluster_for(clusters_, params.cluster_id);
  const std::uint64_t size = size_for_range(required_bytes, limit_bytes);  // the capacity
  // An encrypted volume's LUKS2 header goes on top: its plaintext is size.
  const std::uint64_t image_size = params.encrypted ? size + kLuksHeaderRoom : size;
  if (params.encrypted) check_kms(params.kms_id, secrets);
  auto cluster = rbd::Cluster::connect(cluster_options(entry, secrets));
  rbd::IoCtx io = cluster.open_ioctx(params.pool, entry.rados_namespace);

  VolumeId id{params.cluster_id, rados_ioctx_get_id(io.handle()), uuid_from_name(name)};
  const std::string image_name = id.image_name();
  const std::string canonical = params.canonical();

  auto image = open_if_exists(io, image_name);
  if (image) {
    if (auto n = image->get_meta(kMetaName); n && *n != name)
      throw Error(EEXIST, cat("image '", image->spec(), "' belongs to volume name '", *n,
                              "', not '", name, "'"));
    if (auto cs = image->get_meta(kMetaContentSource))  // snapshots.hpp
      throw Error(EEXIST, cat("volume '", name, "' already exists, made from ", *cs,
                              "; this request has no content source"));
    if (auto p = image->get_meta(kMetaParams)) {
      if (*p != canonical)
        throw Error(EEXIST, cat("volume '", name, "' already exists with other parameters (", *p,
                                ")"));
      // The capacity it offers; a volume made the old way (header inside,
      // no kMetaHeaderOnTop) was made for its image size.
      const std::uint64_t offers = capacity_of(*image);
      const bool old_style = params.encrypted && !image->get_meta(kMetaHeaderOnTop);
      const std::uint64_t have = old_style ? image->size() : offers;
      if (have < size || (limit_bytes > 0 && have > static_cast<std::uint64_t>(limit_bytes)))
        throw Error(EEXIST, cat("volume '", name, "' already exists with size ", have,
                                ", which does not fit the requested capacity range"));
      log::info("CreateVolume: '", name, "' exists as ", image->spec(),
                old_style ? cat(" (made with its LUKS2 header inside: it offers ", offers,
                                " bytes; an expand grows it to capacity + header)")
                          : std::string());
      return {id, offers, volume_context(params, image_name)};
    }
    log::info("CreateVolume: finishing the half-done create of ", image->spec());
    if (image->size() < image_size) image->resize(image_size);  // made before the header went on top
  } else {
    rbd::CreateOptions co;
    co.size = image_size;
    co.features = params.image_features;
    co.data_pool = params.data_pool;
    rbd::create_image(io, image_name, co);
    image = rbd::Image::open(io, image_name);
    log::info("CreateVolume: created ", image->spec(), " (", image_size, " bytes",
              params.encrypted ? cat(": ", size, " of plaintext and the LUKS2 header") : std::string(),
              ") for '", name, "'");
  }
  image->set_meta(kMetaName, name);
  if (params.encrypted) {
    image->set_meta(kMetaHeaderOnTop, std::to_string(kLuksHeaderRoom));
    image->set_meta(kMetaKmsId, params.kms_id);
    prepare_encryption(*image, id, params.kms_id, secrets);
  }
  image->set_meta(kMetaParams, canonical);  // last: marks the create complete
  return {id, capacity_of(*image), volume_context(params, image_name)};
}

void Controller::remove(const VolumeId& id, const StringMap& secrets) {
  std::optional<VolumeLocation> loc;
  try {
    loc.emplace(locate(id, secrets));
  } catch (const Error& e) {
    if (e.code() != ENOENT) throw;
    log::info("DeleteVolume: ", e.what(), ": nothing to delete");
    return;
  }
  // 1. Use first: nothing is touched while anyone has it open.
  if (auto image = open_if_exists(loc->io, loc->image, rbd::Image::Mode::read_only)) {
    refuse_if_watched(loc->io, *image, id, "nothing was deleted");
    refuse_if_locked(*image, id, "nothing was deleted");
    // CSI snapshots of it (csi-snap-* images) and clones still being made
    // depend on its data (RBD clones): removing it is refused by RBD, and
    // said here before anything is touched.
    if (auto kids = image_children(*image); !kids.empty()) {
      std::string list;
      for (const auto& k : kids) list += (list.empty() ? "" : ", ") + k;
      throw Error(ENOTEMPTY, cat("volume '", id.str(), "' (image ", image->spec(),
                                 ") is the source of snapshots or clones that depend on it: ", list,
                                 "; delete those snapshots first; nothing was deleted"));
    }
    // Our own temporary snapshots (csi-snap-tmp-<uuid>, csi-clone-tmp-<uuid>)
    // with no clone of them (none, checked above) are what an interrupted
    // CreateSnapshot or clone left when it was never retried (the CO gave
    // up without learning an ID): nothing depends on them, the retry would
    // have removed them. Any other snapshot is the user's: refused, named.
    std::vector<std::string> leftovers, theirs;
    for (const auto& s : user_snaps(*image))
      (is_temporary_snap(s) ? leftovers : theirs).push_back(s);
    if (!theirs.empty()) {
      std::string list;
      for (const auto& s : theirs) list += (list.empty() ? "" : ", ") + s;
      throw Error(ENOTEMPTY, cat("volume '", id.str(), "' (image ", image->spec(),
                                 ") has snapshots not made by rbdgw-csi: ", list,
                                 "; nothing was deleted"));
    }
    image->close();
    if (!leftovers.empty()) {
      rbd::Image rw = rbd::Image::open(loc->io, loc->image);
      for (const auto& s : leftovers) {
        const int r = rbd_snap_remove(rw.handle(), s.c_str());
        if (r != -ENOENT) check(r, "rbd_snap_remove", rw.spec() + "@" + s);
        log::info("DeleteVolume: removed ", rw.spec(), "@", s, ", left by an interrupted create");
      }
    }
    // 2. Out of reach by name, data and key still there.
    const int r = rbd_trash_move(loc->io.handle(), loc->image.c_str(), 0);
    if (r == -EBUSY)
      throw Error(EBUSY, cat("volume '", id.str(), "' (image ", loc->io.str(), "/", loc->image,
                             "): rbd_trash_move: the image is in use; nothing was deleted"));
    if (r != -ENOENT) check(r, "rbd_trash_move", cat(loc->io.str(), "/", loc->image));
  }
  // 3 and 4, also for what an interrupted delete left in the trash.
  for (const auto& trash_id : trashed_ids(loc->io, loc->image))
    finish_trashed(loc->io, trash_id, loc->image, id, secrets);
}

namespace {
// A PersistentVolume provisioned before attachRequired was true, or from a
// StorageClass without csi.storage.k8s.io/controller-publish-secret-*,
// reaches ControllerPublish/Unpublish without cephx credentials.
bool has_credentials(const StringMap& secrets) {
  auto id = secrets.find("userID");
  auto key = secrets.find("userKey");
  return id != secrets.end() && !id->second.empty() && key != secrets.end() && !key->second.empty();
}
}  // namespace

void Controller::publish(const VolumeId& id, const std::string& node, bool read_only,
                         const StringMap& secrets) {
  if (!clusters_.find(id.cluster_id))  // known without credentials: the volume cannot exist
    throw Error(ENOENT, cat("volume '", id.str(), "': clusterID '", id.cluster_id,
                            "' is not in the cluster config"));
  if (!has_credentials(secrets)) {
    // Not a reason to keep the volume from its pod: the gateway's exclusive
    // lock still refuses a second writer at NodeStageVolume.
    log::warn("ControllerPublishVolume: volume '", id.str(), "' to node '", node,
              "': no cephx credentials in the controller-publish secret (userID, userKey), so "
              "another node's writer was not looked for here; NodeStageVolume still refuses one");
    return;
  }
  VolumeLocation loc = locate(id, secrets);
  rbd::Image image = rbd::Image::open(loc.io, loc.image, {}, rbd::Image::Mode::read_only);
  if (read_only) return;  // readers take no lock
  std::optional<rbd::LockOwner> owner;
  try {
    owner = rbd::lock_owner(image);
  } catch (const Error& e) {
    if (e.code() != EINVAL) throw;
    log::warn("ControllerPublishVolume: ", e.what(), ": cannot check for another writer");
    return;
  }
  if (!owner || (owner->holder && owner->holder->node == node)) return;
  throw Error(EBUSY, cat("volume '", id.str(), "' cannot be published read-write to node '", node,
                         "': ", rbd::in_use_message(image, *owner)));
}

void Controller::unpublish(const VolumeId& id, const std::string& node, const StringMap& secrets) {
  if (!has_credentials(secrets)) {
    log::warn("ControllerUnpublishVolume: volume '", id.str(), "' from node '", node,
              "': no cephx credentials in the controller-publish secret (userID, userKey), so a "
              "gateway of that node still holding the volume cannot be fenced; another node's "
              "stage stays refused until its lock is released (rbd lock ls / rbd lock rm)");
    return;
  }
  std::optional<VolumeLocation> loc;
  try {
    loc.emplace(locate(id, secrets));
  } catch (const Error& e) {
    if (e.code() != ENOENT) throw;
    log::info("ControllerUnpublishVolume: ", e.what(), ": nothing to unpublish");
    return;
  }
  auto image = open_if_exists(loc->io, loc->image);
  if (!image) return;
  std::optional<rbd::LockOwner> owner;
  try {
    owner = rbd::lock_owner(*image);
  } catch (const Error& e) {
    if (e.code() != EINVAL) throw;
    return;  // no exclusive lock, nothing we could fence
  }
  if (!owner) return;
  if (!owner->holder) {
    log::warn("ControllerUnpublishVolume: ", id.str(), ": ", rbd::in_use_message(*image, *owner),
              "; not ours to fence");
    return;
  }
  if (!node.empty() && owner->holder->node != node) return;  // another node's writer
  log::warn("ControllerUnpublishVolume: ", id.str(), " detached from node '",
            owner->holder->node, "': fencing its gateway ", owner->client, " (pid ",
            owner->holder->pid, " since ", owner->holder->since,
            "): breaking its exclusive lock, librbd blocklists it");
  rbd::break_lock(*image, owner->client);
}

std::uint64_t Controller::expand(const VolumeId& id, std::int64_t required_bytes,
                                 std::int64_t limit_bytes, const StringMap& secrets) {
  const std::uint64_t size = size_for_range(required_bytes, limit_bytes, 0);
  if (size == 0) throw Error(EINVAL, "capacity range: required_bytes is missing");
  VolumeLocation loc = locate(id, secrets);
  std::optional<rbd::Image> opened = open_if_exists(loc.io, loc.image);
  if (!opened)
    throw Error(ENOENT, cat("volume '", id.str(), "': image ", loc.io.str(), "/", loc.image,
                            " does not exist"));
  rbd::Image& image = *opened;
  // An encrypted volume's image carries its LUKS2 header on top of the
  // capacity (an old-style one, header inside, gets it on top now).
  const bool encrypted = is_encrypted(image);
  const std::uint64_t overhead = encryption_overhead(image);
  const std::uint64_t target = size + overhead;
  const std::uint64_t have = image.size();
  const auto mark_header_on_top = [&] {
    if (encrypted && !image.get_meta(kMetaHeaderOnTop))
      image.set_meta(kMetaHeaderOnTop, std::to_string(overhead));
  };
  if (have >= target) {
    mark_header_on_top();
    return have - overhead;
  }
  // A lock owner that watches the image does the resize for us (librbd
  // forwards it); one that does not would be fenced by it (refuse_if_locked).
  std::optional<rbd::LockOwner> owner;
  try {
    owner = rbd::lock_owner(image);
  } catch (const Error& e) {
    if (e.code() != EINVAL) throw;  // no exclusive-lock feature
  }
  if (owner && !owner->watching)
    throw Error(EBUSY, cat("volume '", id.str(), "' not resized: ", rbd::in_use_message(image, *owner),
                           " (its client no longer watches the image: paused, cut off from the cluster, "
                           "or dead; a resize now would fence it); retry once it is back"));
  image.resize(target);
  mark_header_on_top();
  log::info("ControllerExpandVolume: ", image.spec(), " ", have, " -> ", target, " bytes",
            encrypted ? cat(" (", size, " of plaintext and the LUKS2 header of ", overhead, ")")
                      : std::string());
  return image.size() - overhead;
}

void Controller::check_exists(const VolumeId& id, const StringMap& secrets) {
  VolumeLocation loc = locate(id, secrets);
  try {
    rbd::Image::open(loc.io, loc.image, {}, rbd::Image::Mode::read_only);
  } catch (const Error& e) {
    if (e.code() != ENOENT) throw;
    throw Error(ENOENT, cat("volume '", id.str(), "': ", e.what()));  // names the volume too
  }
}

}  // namespace rbdgw::csi
