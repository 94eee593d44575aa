#include "csi/snapshots.hpp"

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include "common/error.hpp"
#include "common/log.hpp"
#include "csi/encryption.hpp"
#include "kms/image_meta.hpp"
#include "rbd/exclusive_lock.hpp"

namespace rbdgw::csi {

namespace {

std::optional<rbd::Image> open_if_exists(const rbd::IoCtx& io, const std::string& name,
                                         const std::string& snap = {},
                                         rbd::Image::Mode mode = rbd::Image::Mode::read_write) {
  try {
    return rbd::Image::open(io, name, snap, mode);
  } catch (const Error& e) {
    if (e.code() == ENOENT) return std::nullopt;
    throw;
  }
}

bool snap_exists(const rbd::Image& img, const std::string& snap) {
  bool exists = false;
  check(rbd_snap_exists(img.handle(), snap.c_str(), &exists), "rbd_snap_exists",
        img.spec() + "@" + snap);
  return exists;
}

void remove_snap_if_exists(rbd::Image& img, const std::string& snap) {
  if (!snap_exists(img, snap)) return;
  const int r = rbd_snap_remove(img.handle(), snap.c_str());
  if (r == -ENOENT) return;
  check(r, "rbd_snap_remove", img.spec() + "@" + snap);
}

// The RBD clone v2 of parent@snap as child_io/child (v2 needs no protected
// snapshot and lets the parent's snapshot be removed while clones live).
void clone_v2(const rbd::IoCtx& parent_io, const std::string& parent, const std::string& snap,
              const rbd::IoCtx& child_io, const std::string& child, std::uint64_t features,
              const std::string& data_pool) {
  rbd_image_options_t o;
  rbd_image_options_create(&o);
  rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_CLONE_FORMAT, 2);
  rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FEATURES, features | RBD_FEATURE_LAYERING);
  if (!data_pool.empty()) rbd_image_options_set_string(o, RBD_IMAGE_OPTION_DATA_POOL, data_pool.c_str());
  const int r = rbd_clone3(parent_io.handle(), parent.c_str(), snap.c_str(), child_io.handle(),
                           child.c_str(), o);
  rbd_image_options_destroy(o);
  check(r, "rbd_clone3", cat(parent_io.str(), "/", parent, "@", snap, " -> ", child_io.str(), "/", child));
}

// The parent image's name of a clone, or "" for an image without one.
std::string parent_name(const rbd::Image& img) {
  rbd_linked_image_spec_t p{};
  rbd_snap_spec_t s{};
  const int r = rbd_get_parent(img.handle(), &p, &s);
  if (r == -ENOENT) return {};
  check(r, "rbd_get_parent", img.spec());
  std::string name = p.image_name ? p.image_name : "";
  rbd_linked_image_spec_cleanup(&p);
  rbd_snap_spec_cleanup(&s);
  return name;
}

// Refuses (EBUSY) when a client holds the exclusive lock without watching
// the image: a snapshot create or remove would then break its lock and
// fence it (see Controller's refuse_if_locked). A watching holder does the
// operation for us (librbd forwards it).
void refuse_if_lock_unwatched(const rbd::Image& img, const std::string& what) {
  std::optional<rbd::LockOwner> o;
  try {
    o = rbd::lock_owner(img);
  } catch (const Error& e) {
    if (e.code() != EINVAL) throw;  // no exclusive-lock feature
    return;
  }
  if (o && !o->watching)
    throw Error(EBUSY, cat(what, ": ", rbd::in_use_message(img, *o),
                           " (its client no longer watches the image: paused, cut off from the "
                           "cluster, or dead; going on would fence it); retry once it is back"));
}

// The plaintext a volume (or snapshot image) offers: the image less the
// LUKS2 header of an encrypted one (Controller's accounting).
std::uint64_t capacity_of(rbd::Image& img) {
  const std::uint64_t size = img.size();
  const std::uint64_t overhead = encryption_overhead(img);
  return size > overhead ? size - overhead : 0;
}

bool is_encrypted(rbd::Image& img) {
  return img.get_meta(kMetaKmsId).has_value() ||
         kms::get_state(img) != kms::EncryptionState::none;
}

StringMap context_for(const VolumeParams& p, const std::string& image) {
  StringMap ctx{{"clusterID", p.cluster_id}, {"pool", p.pool}, {"imageName", image}};
  if (p.encrypted) {
    ctx["encrypted"] = "true";
    if (!p.kms_id.empty()) ctx["encryptionKMSID"] = p.kms_id;
  }
  return ctx;
}

// A parsed ID, or nothing for a malformed one.
std::optional<VolumeId> parse_id(const std::string& id) {
  try {
    return VolumeId::parse(id);
  } catch (const Error&) {
    return std::nullopt;
  }
}

// The snapshot image found by ID (nothing when its cluster, pool or image
// does not exist), opened read-write.
struct Located {
  VolumeLocation loc;
  rbd::Image image;
};

std::optional<Located> locate_snapshot(const Controller& c, const VolumeId& id, const StringMap& secrets) {
  std::optional<VolumeLocation> loc;
  try {
    loc.emplace(c.locate(id, secrets));
  } catch (const Error& e) {
    if (e.code() == ENOENT) return std::nullopt;
    throw;
  }
  auto img = open_if_exists(loc->io, snapshot_image_name(id));
  if (!img) return std::nullopt;
  return Located{std::move(*loc), std::move(*img)};
}

// The snapshot an image is; ready once its "csi-snap" exists.
SnapshotInfo info_of(rbd::Image& img, const VolumeId& id) {
  SnapshotInfo s;
  s.snapshot_id = id.str();
  s.source_volume_id = img.get_meta(kMetaSnapSource).value_or("");
  s.size_bytes = capacity_of(img);
  s.ready = snap_exists(img, kSnapName);
  if (s.ready) {
    std::uint64_t sid = 0;
    check(rbd_snap_get_id(img.handle(), kSnapName, &sid), "rbd_snap_get_id", img.spec());
    timespec ts{};
    check(rbd_snap_get_timestamp(img.handle(), sid, &ts), "rbd_snap_get_timestamp", img.spec());
    s.created_seconds = ts.tv_sec;
    s.created_nanos = static_cast<std::int32_t>(ts.tv_nsec);
  }
  return s;
}

// Flattens every clone of any snapshot of img (wherever its pool, also one
// in the trash), so that none depends on img any more.
void flatten_children(const rbd::IoCtx& img_io, const rbd::Image& img, const std::string& why) {
  std::vector<rbd_linked_image_spec_t> c(16);
  std::size_t n = c.size();
  int r;
  while ((r = rbd_list_children3(img.handle(), c.data(), &n)) == -ERANGE) c.resize(n);
  check(r, "rbd_list_children3", img.spec());
  struct Child {
    std::int64_t pool;
    std::string ns, id, name;
  };
  std::vector<Child> kids;
  for (std::size_t i = 0; i < n; ++i)
    kids.push_back({c[i].pool_id, c[i].pool_namespace ? c[i].pool_namespace : "", c[i].image_id,
                    cat(c[i].pool_name, "/", c[i].image_name)});
  rbd_linked_image_spec_list_cleanup(c.data(), n);
  rados_t cluster = rados_ioctx_get_cluster(img_io.handle());
  for (const auto& k : kids) {
    rados_ioctx_t io = nullptr;
    check(rados_ioctx_create2(cluster, k.pool, &io), "rados_ioctx_create2", k.name);
    rados_ioctx_set_namespace(io, k.ns.c_str());
    rbd_image_t child = nullptr;
    r = rbd_open_by_id(io, k.id.c_str(), &child, nullptr);
    if (r == 0) {
      log::info(why, ": flattening ", k.name, ", an unfinished restore from ", img.spec());
      r = rbd_flatten(child);
      rbd_close(child);
    }
    rados_ioctx_destroy(io);
    if (r == -ENOENT) continue;  // removed meanwhile
    check(r, "rbd_flatten", k.name);
  }
}

}  // namespace

std::vector<std::string> image_children(const rbd::Image& img) {
  std::vector<rbd_linked_image_spec_t> c(16);
  std::size_t n = c.size();
  int r;
  while ((r = rbd_list_children3(img.handle(), c.data(), &n)) == -ERANGE) c.resize(n);
  check(r, "rbd_list_children3", img.spec());
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) {
    std::string ns = c[i].pool_namespace && *c[i].pool_namespace ? cat(c[i].pool_namespace, "/") : "";
    out.push_back(cat(c[i].pool_name, "/", ns, c[i].image_name, c[i].trash ? " (in the trash)" : ""));
  }
  rbd_linked_image_spec_list_cleanup(c.data(), n);
  return out;
}

SnapshotInfo Snapshots::create(const std::string& name, const std::string& source_volume_id,
                               const StringMap& secrets) {
  const auto src_id = parse_id(source_volume_id);
  if (!src_id) throw Error(ENOENT, cat("source volume '", source_volume_id, "' does not exist (not a volume ID of ours)"));
  VolumeLocation loc = controller_.locate(*src_id, secrets);
  auto src = open_if_exists(loc.io, loc.image);
  if (!src) throw Error(ENOENT, cat("source volume '", source_volume_id, "' (image ", loc.io.str(), "/", loc.image, ") does not exist"));
  // The snapshot gets the key re-wrapped under its own ID by the source's
  // KMS; an encrypted image that does not name its KMS (ceph-csi keeps the
  // KMS ID in its own journal, not in the image) would give a snapshot
  // whose restores cannot open. Refused before anything is made.
  if (!src->get_meta(kMetaKmsId) && kms::get_state(*src) != kms::EncryptionState::none)
    throw Error(EOPNOTSUPP, cat("source volume '", source_volume_id, "' (image ", src->spec(),
                                ") is encrypted but its image names no KMS (metadata '", kMetaKmsId,
                                "', i.e. encryptionKMSID; a volume made by ceph-csi?): its key cannot be "
                                "re-wrapped for a snapshot; nothing was created"));

  const VolumeId id{src_id->cluster_id, src_id->pool_id, uuid_from_name(name)};
  const std::string image_name = snapshot_image_name(id);
  const std::string tmp_snap = cat("csi-snap-tmp-", id.uuid);

  auto img = open_if_exists(loc.io, image_name);
  if (img) {
    const auto have = img->get_meta(kMetaSnapSource);
    if (have && *have != source_volume_id)
      throw Error(EEXIST, cat("snapshot name '", name, "' is taken by a snapshot of volume '", *have,
                              "', not '", source_volume_id, "'"));
    if (!have && parent_name(*img) != loc.image)
      throw Error(EEXIST, cat("image ", img->spec(), " exists and is not a snapshot of volume '",
                              source_volume_id, "'"));
    if (have && snap_exists(*img, kSnapName)) {
      remove_snap_if_exists(*src, tmp_snap);  // an interrupted create left it
      log::info("CreateSnapshot: '", name, "' exists as ", img->spec());
      return info_of(*img, id);
    }
    log::info("CreateSnapshot: finishing the half-done create of ", img->spec());
  } else {
    refuse_if_lock_unwatched(*src, cat("snapshot of volume '", source_volume_id, "' not taken"));
    if (!snap_exists(*src, tmp_snap)) src->create_snap(tmp_snap);
    clone_v2(loc.io, loc.image, tmp_snap, loc.io, image_name, src->info().features, {});
    img = rbd::Image::open(loc.io, image_name);
    log::info("CreateSnapshot: ", src->spec(), "@", tmp_snap, " cloned to ", img->spec(), " for '", name, "'");
  }
  img->set_meta(kMetaSnapName, name);
  img->set_meta(kMetaSnapSource, source_volume_id);
  // The clone copied the source's metadata: it is not that volume.
  img->remove_meta(kMetaName);
  img->remove_meta(kMetaParams);
  img->remove_meta(kMetaContentSource);
  if (auto kms_id = src->get_meta(kMetaKmsId)) {
    img->set_meta(kMetaKmsId, *kms_id);
    copy_encryption(*src, *src_id, *kms_id, *img, id, *kms_id, secrets);
  }
  remove_snap_if_exists(*src, tmp_snap);  // to the source's trash namespace while the clone lives
  img->create_snap(kSnapName);            // last: marks the snapshot complete
  log::info("CreateSnapshot: ", img->spec(), " is snapshot '", name, "' of ", source_volume_id);
  return info_of(*img, id);
}

void Snapshots::remove(const std::string& snapshot_id, const StringMap& secrets) {
  const auto id = parse_id(snapshot_id);
  if (!id) {
    log::info("DeleteSnapshot: '", snapshot_id, "' is not a snapshot ID of ours: nothing to delete");
    return;
  }
  auto s = locate_snapshot(controller_, *id, secrets);
  if (!s) {
    log::info("DeleteSnapshot: '", snapshot_id, "' does not exist");
    return;
  }
  rbd::Image& img = s->image;
  // Its clones are restores not finished: no CreateVolume from this
  // snapshot runs here (it holds this ID's lock), so each was interrupted,
  // and maybe abandoned for good (its PVC deleted while it was made: the
  // CO never learnt its ID). Refusing would keep the snapshot, and so its
  // source volume, forever; made independent (flattened: what its
  // CreateVolume does next), each keeps its data and the snapshot can go.
  flatten_children(s->loc.io, img, cat("DeleteSnapshot '", snapshot_id, "'"));
  if (auto kms_id = img.get_meta(kMetaKmsId)) remove_encryption(img, *id, *kms_id, secrets);
  remove_snap_if_exists(img, kSnapName);
  img.close();
  rbd::remove_image(s->loc.io, snapshot_image_name(*id));
  log::info("DeleteSnapshot: removed ", s->loc.io.str(), "/", snapshot_image_name(*id));
}

SnapshotPage Snapshots::list(const std::string& snapshot_id, const std::string& source_volume_id,
                             std::int32_t max_entries, const std::string& starting_token,
                             const StringMap& secrets) {
  std::size_t start = 0;
  if (!starting_token.empty()) {
    auto [p, ec] = std::from_chars(starting_token.data(), starting_token.data() + starting_token.size(), start);
    if (ec != std::errc() || p != starting_token.data() + starting_token.size())
      throw Error(EAGAIN, cat("starting_token '", starting_token, "' is not a token ListSnapshots handed out"));
  }
  if (max_entries < 0) throw Error(EINVAL, "max_entries: negative");

  std::vector<SnapshotInfo> all;
  auto add_if_snapshot = [&](const rbd::IoCtx& io, const std::string& image, const std::string& cluster_id) {
    if (image.rfind(kSnapImagePrefix, 0) != 0) return;
    const std::string uuid = image.substr(std::strlen(kSnapImagePrefix));
    if (!is_uuid(uuid)) return;
    auto img = open_if_exists(io, image, {}, rbd::Image::Mode::read_only);
    if (!img || !img->get_meta(kMetaSnapSource)) return;
    SnapshotInfo s = info_of(*img, VolumeId{cluster_id, rados_ioctx_get_id(io.handle()), uuid});
    if (!s.ready) return;  // a half-done create
    if (!source_volume_id.empty() && s.source_volume_id != source_volume_id) return;
    all.push_back(std::move(s));
  };

  if (!snapshot_id.empty()) {
    if (auto id = parse_id(snapshot_id)) {
      if (auto s = locate_snapshot(controller_, *id, secrets)) {
        SnapshotInfo i = info_of(s->image, *id);
        if (i.ready && (source_volume_id.empty() || i.source_volume_id == source_volume_id))
          all.push_back(std::move(i));
      }
    }
  } else if (!source_volume_id.empty()) {
    // The snapshot images are the clones of the source's (trashed) snapshots.
    if (auto src_id = parse_id(source_volume_id)) {
      std::optional<VolumeLocation> loc;
      try {
        loc.emplace(controller_.locate(*src_id, secrets));
      } catch (const Error& e) {
        if (e.code() != ENOENT) throw;
      }
      if (loc)
        if (auto src = open_if_exists(loc->io, loc->image, {}, rbd::Image::Mode::read_only)) {
          for (const auto& child : image_children(*src)) {
            // "pool/[ns/]image": children in the source's pool only (ours are).
            const std::string image = child.substr(child.rfind('/') + 1);
            if (child.find(" (in the trash)") != std::string::npos) continue;
            add_if_snapshot(loc->io, image, src_id->cluster_id);
          }
        }
    }
  } else {
    for (const auto& entry : controller_.clusters().entries()) {
      auto cluster = rbd::Cluster::connect(cluster_options(entry, secrets));
      for (const auto& pool : cluster.pools()) {
        std::optional<rbd::IoCtx> io;
        try {
          io.emplace(cluster.open_ioctx(pool, entry.rados_namespace));
          for (const auto& image : rbd::list_images(*io)) add_if_snapshot(*io, image, entry.cluster_id);
        } catch (const Error& e) {
          log::debug("ListSnapshots: pool ", pool, ": ", e.what());  // not an RBD pool, say
        }
      }
    }
  }
  std::sort(all.begin(), all.end(),
            [](const SnapshotInfo& a, const SnapshotInfo& b) { return a.snapshot_id < b.snapshot_id; });
  if (start > all.size())
    throw Error(EAGAIN, cat("starting_token '", starting_token, "' is past the end of the list (",
                            all.size(), " snapshots)"));
  SnapshotPage page;
  const std::size_t end =
      max_entries > 0 ? std::min(all.size(), start + static_cast<std::size_t>(max_entries)) : all.size();
  page.entries.assign(std::make_move_iterator(all.begin() + start), std::make_move_iterator(all.begin() + end));
  if (end < all.size()) page.next_token = std::to_string(end);
  return page;
}

CreatedVolume Snapshots::create_volume(const std::string& name, const VolumeParams& params,
                                       std::int64_t required_bytes, std::int64_t limit_bytes,
                                       const ContentSource& source, const StringMap& secrets) {
  const std::string what = cat(source.snapshot ? "snapshot '" : "volume '", source.id, "'");
  const auto src_id = parse_id(source.id);
  if (!src_id) throw Error(ENOENT, cat("source ", what, " does not exist (not an ID of ours)"));
  if (src_id->cluster_id != params.cluster_id)
    throw Error(EINVAL, cat("source ", what, " is in cluster '", src_id->cluster_id,
                            "', the StorageClass's clusterID is '", params.cluster_id, "'"));
  const ClusterEntry* entry = controller_.clusters().find(params.cluster_id);
  if (!entry) throw Error(EINVAL, cat("clusterID '", params.cluster_id, "' is not in the cluster config"));
  const std::uint64_t size = size_for_range(required_bytes, limit_bytes);
  if (params.encrypted) check_kms(params.kms_id, secrets);

  // The source: a snapshot image at its "csi-snap", or a volume.
  VolumeLocation sloc = controller_.locate(*src_id, secrets);
  const std::string src_image = source.snapshot ? snapshot_image_name(*src_id) : sloc.image;
  auto src = open_if_exists(sloc.io, src_image);
  if (!src || (source.snapshot && (!src->get_meta(kMetaSnapSource) || !snap_exists(*src, kSnapName))))
    throw Error(ENOENT, cat("source ", what, " does not exist (image ", sloc.io.str(), "/", src_image, ")"));
  const bool src_encrypted = is_encrypted(*src);
  if (src_encrypted != params.encrypted)
    throw Error(EINVAL, cat("source ", what, (src_encrypted ? " is encrypted" : " is not encrypted"),
                            ", the StorageClass asks for ",
                            params.encrypted ? "an encrypted volume" : "a volume without encryption",
                            src_encrypted ? " (the new volume would hand out ciphertext)"
                                          : " (the new volume would hold plaintext under the name of an encrypted one)",
                            "; use a StorageClass with the same encryption as the source"));
  // Sizes in plaintext: an encrypted copy's image carries the source's
  // LUKS2 header (the clone copies it) on top of its capacity.
  const std::uint64_t src_size = capacity_of(*src);
  const std::uint64_t overhead = encryption_overhead(*src);
  if (size < src_size)
    throw Error(ERANGE, cat("requested ", size, " bytes, less than the ", src_size, " bytes of the source ", what));
  if (limit_bytes > 0 && src_size > static_cast<std::uint64_t>(limit_bytes))
    throw Error(ERANGE, cat("source ", what, " has ", src_size, " bytes, more than limit_bytes ", limit_bytes));

  auto cluster = rbd::Cluster::connect(cluster_options(*entry, secrets));
  rbd::IoCtx io = cluster.open_ioctx(params.pool, entry->rados_namespace);
  const VolumeId id{params.cluster_id, rados_ioctx_get_id(io.handle()), uuid_from_name(name)};
  const std::string image_name = id.image_name();
  const std::string canonical = params.canonical();
  const std::string tmp_snap = cat("csi-clone-tmp-", id.uuid);
  const std::string parent_snap = source.snapshot ? std::string(kSnapName) : tmp_snap;

  auto image = open_if_exists(io, image_name);
  if (image) {
    const auto n = image->get_meta(kMetaName);
    const bool ours = n && *n == name;
    if (!ours && parent_name(*image) != src_image)
      throw Error(EEXIST, cat("image '", image->spec(), "' belongs to volume name '", n.value_or("?"),
                              "', not '", name, "'"));
    if (ours && !image->get_meta(kMetaContentSource) && image->get_meta(kMetaParams))
      throw Error(EEXIST, cat("volume '", name, "' already exists, made without a content source"));
    if (ours) {
      if (auto cs = image->get_meta(kMetaContentSource)) {
        if (*cs != source.str())
          throw Error(EEXIST, cat("volume '", name, "' already exists from another source (", *cs, ")"));
        if (image->get_meta(kMetaParams).value_or("") != canonical)
          throw Error(EEXIST, cat("volume '", name, "' already exists with other parameters"));
        const std::uint64_t have = capacity_of(*image);
        if (have < size || (limit_bytes > 0 && have > static_cast<std::uint64_t>(limit_bytes)))
          throw Error(EEXIST, cat("volume '", name, "' already exists with size ", have,
                                  ", which does not fit the requested capacity range"));
        if (!source.snapshot) remove_snap_if_exists(*src, tmp_snap);
        log::info("CreateVolume: '", name, "' exists as ", image->spec(), " (from ", what, ")");
        return {id, have, context_for(params, image_name)};
      }
    }
    log::info("CreateVolume: finishing the half-done create of ", image->spec(), " from ", what);
  } else {
    if (!source.snapshot) {
      refuse_if_lock_unwatched(*src, cat("volume '", source.id, "' not cloned"));
      if (!snap_exists(*src, tmp_snap)) src->create_snap(tmp_snap);
    }
    const std::uint64_t features = params.image_features.empty() ? src->info().features
                                                                 : rbd::parse_features(params.image_features);
    clone_v2(sloc.io, src_image, parent_snap, io, image_name, features, params.data_pool);
    image = rbd::Image::open(io, image_name);
    log::info("CreateVolume: cloned ", sloc.io.str(), "/", src_image, "@", parent_snap, " to ",
              image->spec(), " for '", name, "'");
  }
  // The clone copied the source's metadata: make it this volume's (the
  // copied markers go before the name is ours, so that a retry never takes
  // them for this volume's).
  image->remove_meta(kMetaParams);
  image->remove_meta(kMetaContentSource);
  image->set_meta(kMetaName, name);
  image->remove_meta(kMetaSnapName);
  image->remove_meta(kMetaSnapSource);
  if (params.encrypted) {
    // A source that names no KMS (made by ceph-csi, whose journal keeps it)
    // was made by the same StorageClass as its clone, as a rule.
    const std::string src_kms = src->get_meta(kMetaKmsId).value_or(params.kms_id);
    image->set_meta(kMetaKmsId, params.kms_id);
    copy_encryption(*src, *src_id, src_kms, *image, id, params.kms_id, secrets);
  }
  // Independent of its source from here on (resumed by a retry).
  if (!parent_name(*image).empty()) {
    check(rbd_flatten(image->handle()), "rbd_flatten", image->spec());
    log::info("CreateVolume: flattened ", image->spec());
  }
  if (!source.snapshot) remove_snap_if_exists(*src, tmp_snap);
  if (image->size() < size + overhead) image->resize(size + overhead);
  if (params.encrypted) image->set_meta(kMetaHeaderOnTop, std::to_string(overhead));
  image->set_meta(kMetaParams, canonical);
  image->set_meta(kMetaContentSource, source.str());  // last: marks the create complete
  return {id, capacity_of(*image), context_for(params, image_name)};
}

}  // namespace rbdgw::csi
