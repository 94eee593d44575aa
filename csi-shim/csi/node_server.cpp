#include "csi/node_server.hpp"

#include "csi/paths.hpp"
#include "csi/status.hpp"

namespace rbdgw::csi {

namespace v1 = ::csi::v1;

namespace {

VolumeId volume_id(const std::string& id) {
  require(!id.empty(), "volume_id", "missing");
  return VolumeId::parse(id);
}

}  // namespace

grpc::Status NodeServer::NodeStageVolume(grpc::ServerContext*,
                                         const v1::NodeStageVolumeRequest* req,
                                         v1::NodeStageVolumeResponse*) {
  return guard("NodeStageVolume", [&] {
    const VolumeId id = volume_id(req->volume_id());
    const std::string staging =
        check_path("staging_target_path", req->staging_target_path(), node_.allowed_root());
    require(req->has_volume_capability(), "volume_capability", "missing");
    const Capability cap = parse_capability(req->volume_capability(), "volume_capability");
    Secrets secrets(req->secrets());
    auto lock = node_.locks().try_acquire(req->volume_id());
    node_.stage(id, staging, cap, secrets.map,
                StringMap(req->volume_context().begin(), req->volume_context().end()));
  });
}

grpc::Status NodeServer::NodeUnstageVolume(grpc::ServerContext*,
                                           const v1::NodeUnstageVolumeRequest* req,
                                           v1::NodeUnstageVolumeResponse*) {
  return guard("NodeUnstageVolume", [&] {
    const VolumeId id = volume_id(req->volume_id());
    const std::string staging =
        check_path("staging_target_path", req->staging_target_path(), node_.allowed_root());
    auto lock = node_.locks().try_acquire(req->volume_id());
    node_.unstage(id, staging);
  });
}

grpc::Status NodeServer::NodePublishVolume(grpc::ServerContext*,
                                           const v1::NodePublishVolumeRequest* req,
                                           v1::NodePublishVolumeResponse*) {
  return guard("NodePublishVolume", [&] {
    const VolumeId id = volume_id(req->volume_id());
    const std::string staging =
        check_path("staging_target_path", req->staging_target_path(), node_.allowed_root());
    const std::string target = check_path("target_path", req->target_path(), node_.allowed_root());
    require(req->has_volume_capability(), "volume_capability", "missing");
    const Capability cap = parse_capability(req->volume_capability(), "volume_capability");
    auto lock = node_.locks().try_acquire(req->volume_id());
    node_.publish(id, staging, target, cap, req->readonly());
  });
}

grpc::Status NodeServer::NodeUnpublishVolume(grpc::ServerContext*,
                                             const v1::NodeUnpublishVolumeRequest* req,
                                             v1::NodeUnpublishVolumeResponse*) {
  return guard("NodeUnpublishVolume", [&] {
    const VolumeId id = volume_id(req->volume_id());
    const std::string target = check_path("target_path", req->target_path(), node_.allowed_root());
    auto lock = node_.locks().try_acquire(req->volume_id());
    node_.unpublish(id, target);
  });
}

grpc::Status NodeServer::NodeGetVolumeStats(grpc::ServerContext*,
                                            const v1::NodeGetVolumeStatsRequest* req,
                                            v1::NodeGetVolumeStatsResponse* resp) {
  return guard("NodeGetVolumeStats", [&] {
    require(!req->volume_id().empty(), "volume_id", "missing");
    require(!req->volume_path().empty(), "volume_path", "missing");
    const VolumeId id = parse_existing_volume_id(req->volume_id());
    std::string path;
    try {
      path = check_path("volume_path", req->volume_path(), node_.allowed_root());
    } catch (const Error& e) {
      if (e.code() != EINVAL) throw;
      // No volume is staged or published there.
      throw Error(ENOENT, cat("volume '", id.str(), "' is not at ", e.what()));
    }
    const VolumeStats s = node_.stats(id, path);
    auto* bytes = resp->add_usage();
    bytes->set_unit(v1::VolumeUsage::BYTES);
    bytes->set_total(s.total_bytes);
    if (!s.block) {
      bytes->set_used(s.used_bytes);
      bytes->set_available(s.available_bytes);
      auto* inodes = resp->add_usage();
      inodes->set_unit(v1::VolumeUsage::INODES);
      inodes->set_total(s.total_inodes);
      inodes->set_used(s.used_inodes);
      inodes->set_available(s.available_inodes);
    }
    resp->mutable_volume_condition()->set_abnormal(s.abnormal);
    resp->mutable_volume_condition()->set_message(s.condition);
  });
}

grpc::Status NodeServer::NodeExpandVolume(grpc::ServerContext*,
                                          const v1::NodeExpandVolumeRequest* req,
                                          v1::NodeExpandVolumeResponse* resp) {
  return guard("NodeExpandVolume", [&] {
    require(!req->volume_id().empty(), "volume_id", "missing");
    require(!req->volume_path().empty(), "volume_path", "missing");
    const VolumeId id = parse_existing_volume_id(req->volume_id());
    std::string path;
    try {
      path = check_path("volume_path", req->volume_path(), node_.allowed_root());
    } catch (const Error& e) {
      if (e.code() != EINVAL || node_.staged_here(id)) throw;
      throw Error(ENOENT, cat("volume '", id.str(), "' is not staged on this node (and ", e.what(), ")"));
    }
    if (req->has_volume_capability())
      parse_capability(req->volume_capability(), "volume_capability");
    auto lock = node_.locks().try_acquire(req->volume_id());
    require(req->capacity_range().required_bytes() >= 0, "capacity_range", "negative required_bytes");
    const std::uint64_t size =
        node_.expand(id, path, static_cast<std::uint64_t>(req->capacity_range().required_bytes()));
    if (req->capacity_range().required_bytes() > 0 &&
        size < static_cast<std::uint64_t>(req->capacity_range().required_bytes()))
      throw Error(ERANGE, cat("NodeExpandVolume: the device of '", id.str(), "' has ", size,
                              " bytes, less than the required ",
                              req->capacity_range().required_bytes()));
    resp->set_capacity_bytes(static_cast<std::int64_t>(size));
  });
}

grpc::Status NodeServer::NodeGetCapabilities(grpc::ServerContext*,
                                             const v1::NodeGetCapabilitiesRequest*,
                                             v1::NodeGetCapabilitiesResponse* resp) {
  return guard("NodeGetCapabilities", [&] {
    for (auto t : {v1::NodeServiceCapability::RPC::STAGE_UNSTAGE_VOLUME,
                   v1::NodeServiceCapability::RPC::GET_VOLUME_STATS,
                   v1::NodeServiceCapability::RPC::EXPAND_VOLUME,
                   v1::NodeServiceCapability::RPC::VOLUME_CONDITION})
      resp->add_capabilities()->mutable_rpc()->set_type(t);
  });
}

grpc::Status NodeServer::NodeGetInfo(grpc::ServerContext*, const v1::NodeGetInfoRequest*,
                                     v1::NodeGetInfoResponse* resp) {
  return guard("NodeGetInfo", [&] { resp->set_node_id(node_.node_id()); });
}

}  // namespace rbdgw::csi
