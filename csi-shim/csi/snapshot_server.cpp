// The snapshot RPCs of the CSI Controller service (CREATE_DELETE_SNAPSHOT,
// LIST_SNAPSHOTS): argument checks (INVALID_ARGUMENT first), the per-name
// and per-volume try-locks (ABORTED), then Snapshots (snapshots.hpp).
#include "csi/controller_server.hpp"
#include "csi/snapshots.hpp"
#include "csi/status.hpp"

namespace rbdgw::csi {

namespace v1 = ::csi::v1;

namespace {

void fill(const SnapshotInfo& s, v1::Snapshot* out) {
  out->set_snapshot_id(s.snapshot_id);
  out->set_source_volume_id(s.source_volume_id);
  out->set_size_bytes(static_cast<std::int64_t>(s.size_bytes));
  out->set_ready_to_use(s.ready);
  out->mutable_creation_time()->set_seconds(s.created_seconds);
  out->mutable_creation_time()->set_nanos(s.created_nanos);
}

}  // namespace

grpc::Status ControllerServer::CreateSnapshot(grpc::ServerContext*,
                                              const v1::CreateSnapshotRequest* req,
                                              v1::CreateSnapshotResponse* resp) {
  return guard("CreateSnapshot", [&] {
    require(!req->name().empty(), "name", "missing");
    require(!req->source_volume_id().empty(), "source_volume_id", "missing");
    Secrets secrets(req->secrets());
    auto by_name = locks_.try_acquire("snapshot:" + req->name());
    auto source = locks_.try_acquire(req->source_volume_id());
    Snapshots snaps(controller_);
    fill(snaps.create(req->name(), req->source_volume_id(), secrets.map), resp->mutable_snapshot());
  });
}

grpc::Status ControllerServer::DeleteSnapshot(grpc::ServerContext*,
                                              const v1::DeleteSnapshotRequest* req,
                                              v1::DeleteSnapshotResponse*) {
  return guard("DeleteSnapshot", [&] {
    require(!req->snapshot_id().empty(), "snapshot_id", "missing");
    Secrets secrets(req->secrets());
    auto lock = locks_.try_acquire(req->snapshot_id());
    Snapshots snaps(controller_);
    snaps.remove(req->snapshot_id(), secrets.map);
  });
}

grpc::Status ControllerServer::ListSnapshots(grpc::ServerContext*,
                                             const v1::ListSnapshotsRequest* req,
                                             v1::ListSnapshotsResponse* resp) {
  return guard("ListSnapshots", [&] {
    require(req->max_entries() >= 0, "max_entries", "negative");
    Secrets secrets(req->secrets());
    Snapshots snaps(controller_);
    SnapshotPage page = snaps.list(req->snapshot_id(), req->source_volume_id(), req->max_entries(),
                                   req->starting_token(), secrets.map);
    for (const auto& s : page.entries) fill(s, resp->add_entries()->mutable_snapshot());
    resp->set_next_token(page.next_token);
  });
}

}  // namespace rbdgw::csi
