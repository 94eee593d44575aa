#include "csi/controller.hpp"

#include <rados/librados.h>

#include "common/error.hpp"
#include "common/log.hpp"
#include "csi/encryption.hpp"

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
std::optional<rbd::Image> open_if_exists(const rbd::IoCtx& io, const std::string& name) {
  try {
    return rbd::Image::open(io, name);
  } catch (const Error& e) {
    if (e.code() == ENOENT) return std::nullopt;
    throw;
  }
}

StringMap volume_context(const VolumeParams& p, const std::string& image) {
  StringMap ctx{{"clusterID", p.cluster_id}, {"pool", p.pool}, {"imageName", image}};
  if (p.encrypted) {
    ctx["encrypted"] = "true";
    if (!p.kms_id.empty()) ctx["encryptionKMSID"] = p.kms_id;
  }
  return ctx;
}

}  // namespace

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
  const std::uint64_t size = size_for_range(required_bytes, limit_bytes);
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
    if (auto p = image->get_meta(kMetaParams)) {
      if (*p != canonical)
        throw Error(EEXIST, cat("volume '", name, "' already exists with other parameters (", *p,
                                ")"));
      const std::uint64_t have = image->size();
      if (have < size || (limit_bytes > 0 && have > static_cast<std::uint64_t>(limit_bytes)))
        throw Error(EEXIST, cat("volume '", name, "' already exists with size ", have,
                                ", which does not fit the requested capacity range"));
      log::info("CreateVolume: '", name, "' exists as ", image->spec());
      return {id, have, volume_context(params, image_name)};
    }
    log::info("CreateVolume: finishing the half-done create of ", image->spec());
  } else {
    rbd::CreateOptions co;
    co.size = size;
    co.features = params.image_features;
    co.data_pool = params.data_pool;
    rbd::create_image(io, image_name, co);
    image = rbd::Image::open(io, image_name);
    log::info("CreateVolume: created ", image->spec(), " (", size, " bytes) for '", name, "'");
  }
  image->set_meta(kMetaName, name);
  if (params.encrypted) {
    image->set_meta(kMetaKmsId, params.kms_id);
    prepare_encryption(*image, id, params.kms_id, secrets);
  }
  image->set_meta(kMetaParams, canonical);  // last: marks the create complete
  return {id, image->size(), volume_context(params, image_name)};
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
  if (auto image = open_if_exists(loc->io, loc->image)) {
    if (auto kms = image->get_meta(kMetaKmsId)) remove_encryption(*image, id, *kms, secrets);
    image->close();
  }
  if (rbd::remove_image(loc->io, loc->image))
    log::info("DeleteVolume: removed ", loc->io.str(), "/", loc->image);
}

std::uint64_t Controller::expand(const VolumeId& id, std::int64_t required_bytes,
                                 std::int64_t limit_bytes, const StringMap& secrets) {
  const std::uint64_t size = size_for_range(required_bytes, limit_bytes, 0);
  if (size == 0) throw Error(EINVAL, "capacity range: required_bytes is missing");
  VolumeLocation loc = locate(id, secrets);
  rbd::Image image = rbd::Image::open(loc.io, loc.image);
  const std::uint64_t have = image.size();
  if (have >= size) return have;
  image.resize(size);
  log::info("ControllerExpandVolume: ", image.spec(), " ", have, " -> ", size, " bytes");
  return image.size();
}

void Controller::check_exists(const VolumeId& id, const StringMap& secrets) {
  VolumeLocation loc = locate(id, secrets);
  rbd::Image::open(loc.io, loc.image);  // throws ENOENT when missing
}

}  // namespace rbdgw::csi
