#include "csi/controller_server.hpp"

#include <optional>

#include "csi/capability.hpp"
#include "csi/snapshots.hpp"
#include "csi/status.hpp"

namespace rbdgw::csi {

namespace v1 = ::csi::v1;

grpc::Status ControllerServer::CreateVolume(grpc::ServerContext*,
                                            const v1::CreateVolumeRequest* req,
                                            v1::CreateVolumeResponse* resp) {
  return guard("CreateVolume", [&] {
    require(!req->name().empty(), "name", "missing");
    require(req->volume_capabilities_size() > 0, "volume_capabilities", "missing");
    for (int i = 0; i < req->volume_capabilities_size(); ++i)
      parse_capability(req->volume_capabilities(i), cat("volume_capabilities[", i, "]"));
    std::optional<ContentSource> source;  // snapshots.hpp: restore or clone
    if (req->has_volume_content_source()) {
      const auto& cs = req->volume_content_source();
      if (cs.has_snapshot()) {
        require(!cs.snapshot().snapshot_id().empty(), "volume_content_source.snapshot.snapshot_id", "missing");
        source = ContentSource{true, cs.snapshot().snapshot_id()};
      } else if (cs.has_volume()) {
        require(!cs.volume().volume_id().empty(), "volume_content_source.volume.volume_id", "missing");
        source = ContentSource{false, cs.volume().volume_id()};
      } else {
        require(false, "volume_content_source", "neither a snapshot nor a volume");
      }
    }
    const VolumeParams params = VolumeParams::parse(
        StringMap(req->parameters().begin(), req->parameters().end()));
    Secrets secrets(req->secrets());
    auto lock = locks_.try_acquire(req->name());
    std::optional<VolumeLocks::Guard> source_lock;
    if (source) source_lock.emplace(locks_.try_acquire(source->id));  // not deleted meanwhile
    CreatedVolume v =
        source ? Snapshots(controller_).create_volume(req->name(), params,
                                                      req->capacity_range().required_bytes(),
                                                      req->capacity_range().limit_bytes(), *source,
                                                      secrets.map)
               : controller_.create(req->name(), params, req->capacity_range().required_bytes(),
                                    req->capacity_range().limit_bytes(), secrets.map);
    auto* vol = resp->mutable_volume();
    if (req->has_volume_content_source()) *vol->mutable_content_source() = req->volume_content_source();
    vol->set_volume_id(v.id.str());
    vol->set_capacity_bytes(static_cast<std::int64_t>(v.size));
    vol->mutable_volume_context()->insert(v.context.begin(), v.context.end());
  });
}

grpc::Status ControllerServer::DeleteVolume(grpc::ServerContext*,
                                            const v1::DeleteVolumeRequest* req,
                                            v1::DeleteVolumeResponse*) {
  return guard("DeleteVolume", [&] {
    require(!req->volume_id().empty(), "volume_id", "missing");
    std::optional<VolumeId> id;
    try {
      id = VolumeId::parse(req->volume_id());
    } catch (const Error& e) {
      if (e.code() != EINVAL) throw;
      // Not an ID of ours: no such volume, so it is deleted (the spec's OK).
      log::info("DeleteVolume: ", e.what(), ": no such volume, nothing to delete");
      return;
    }
    Secrets secrets(req->secrets());
    auto lock = locks_.try_acquire(req->volume_id());
    controller_.remove(*id, secrets.map);
  });
}

// attachRequired: true. Publish checks that no gateway of another node
// holds the volume for writing (FAILED_PRECONDITION naming it, as the spec
// asks for a volume published elsewhere); the publish context is empty.
grpc::Status ControllerServer::ControllerPublishVolume(grpc::ServerContext*,
                                                       const v1::ControllerPublishVolumeRequest* req,
                                                       v1::ControllerPublishVolumeResponse*) {
  return guard("ControllerPublishVolume", [&] {
    require(!req->volume_id().empty(), "volume_id", "missing");
    require(!req->node_id().empty(), "node_id", "missing");
    require(req->has_volume_capability(), "volume_capability", "missing");
    const Capability cap = parse_capability(req->volume_capability(), "volume_capability");
    const VolumeId id = parse_existing_volume_id(req->volume_id());
    Secrets secrets(req->secrets());
    auto lock = locks_.try_acquire(req->volume_id());
    controller_.publish(id, req->node_id(), cap.read_only || req->readonly(), secrets.map);
  });
}

// Called once NodeUnstageVolume succeeded on the node, or once Kubernetes
// declared the node gone: fences a gateway of that node still holding the
// volume (Controller::unpublish).
grpc::Status ControllerServer::ControllerUnpublishVolume(
    grpc::ServerContext*, const v1::ControllerUnpublishVolumeRequest* req,
    v1::ControllerUnpublishVolumeResponse*) {
  return guard("ControllerUnpublishVolume", [&] {
    require(!req->volume_id().empty(), "volume_id", "missing");
    std::optional<VolumeId> id;
    try {
      id = VolumeId::parse(req->volume_id());
    } catch (const Error& e) {
      if (e.code() != EINVAL) throw;
      // Not an ID of ours: no such volume, so it is not published anywhere.
      log::info("ControllerUnpublishVolume: ", e.what(), ": no such volume, nothing to unpublish");
      return;
    }
    Secrets secrets(req->secrets());
    auto lock = locks_.try_acquire(req->volume_id());
    controller_.unpublish(*id, req->node_id(), secrets.map);
  });
}

grpc::Status ControllerServer::ValidateVolumeCapabilities(
    grpc::ServerContext*, const v1::ValidateVolumeCapabilitiesRequest* req,
    v1::ValidateVolumeCapabilitiesResponse* resp) {
  return guard("ValidateVolumeCapabilities", [&] {
    require(!req->volume_id().empty(), "volume_id", "missing");
    require(req->volume_capabilities_size() > 0, "volume_capabilities", "missing");
    const VolumeId id = parse_existing_volume_id(req->volume_id());
    Secrets secrets(req->secrets());
    controller_.check_exists(id, secrets.map);
    if (std::string why = unsupported_reason(req->volume_capabilities()); !why.empty()) {
      resp->set_message(why);
      return;
    }
    auto* c = resp->mutable_confirmed();
    c->mutable_volume_context()->insert(req->volume_context().begin(), req->volume_context().end());
    *c->mutable_volume_capabilities() = req->volume_capabilities();
    c->mutable_parameters()->insert(req->parameters().begin(), req->parameters().end());
  });
}

std::vector<v1::ControllerServiceCapability::RPC::Type> ControllerServer::capabilities() {
  // PUBLISH_UNPUBLISH_VOLUME goes with attachRequired: true in the CSIDriver
  // and the csi-attacher sidecar (tests/e2e/packaging/check_manifests.py).
  return {v1::ControllerServiceCapability::RPC::CREATE_DELETE_VOLUME,
          v1::ControllerServiceCapability::RPC::PUBLISH_UNPUBLISH_VOLUME,
          v1::ControllerServiceCapability::RPC::EXPAND_VOLUME,
          // snapshot_server.cpp, snapshots.hpp
          v1::ControllerServiceCapability::RPC::CREATE_DELETE_SNAPSHOT,
          v1::ControllerServiceCapability::RPC::LIST_SNAPSHOTS,
          v1::ControllerServiceCapability::RPC::CLONE_VOLUME};
}

grpc::Status ControllerServer::ControllerGetCapabilities(
    grpc::ServerContext*, const v1::ControllerGetCapabilitiesRequest*,
    v1::ControllerGetCapabilitiesResponse* resp) {
  return guard("ControllerGetCapabilities", [&] {
    for (auto t : capabilities())
      resp->add_capabilities()->mutable_rpc()->set_type(t);
  });
}

grpc::Status ControllerServer::ControllerExpandVolume(
    grpc::ServerContext*, const v1::ControllerExpandVolumeRequest* req,
    v1::ControllerExpandVolumeResponse* resp) {
  return guard("ControllerExpandVolume", [&] {
    require(!req->volume_id().empty(), "volume_id", "missing");
    require(req->has_capacity_range(), "capacity_range", "missing");
    const VolumeId id = parse_existing_volume_id(req->volume_id());
    bool block = false;
    if (req->has_volume_capability())
      block = parse_capability(req->volume_capability(), "volume_capability").block;
    Secrets secrets(req->secrets());
    auto lock = locks_.try_acquire(req->volume_id());
    const std::uint64_t size = controller_.expand(id, req->capacity_range().required_bytes(),
                                                  req->capacity_range().limit_bytes(), secrets.map);
    resp->set_capacity_bytes(static_cast<std::int64_t>(size));
    resp->set_node_expansion_required(!block);
  });
}

}  // namespace rbdgw::csi
