// CSI Controller service: checks arguments (INVALID_ARGUMENT first), takes
// the per-volume try-lock (ABORTED), then calls Controller.
//
// Thread safety: handlers may run concurrently.
#pragma once

#include "csi.grpc.pb.h"
#include "csi/controller.hpp"
#include "csi/volume_locks.hpp"

namespace rbdgw::csi {

class ControllerServer final : public ::csi::v1::Controller::Service {
 public:
  ControllerServer(Controller& controller, VolumeLocks& locks)
      : controller_(controller), locks_(locks) {}

  // What ControllerGetCapabilities answers (also rbdgw-csi --list-capabilities).
  static std::vector<::csi::v1::ControllerServiceCapability::RPC::Type> capabilities();

  grpc::Status CreateVolume(grpc::ServerContext*, const ::csi::v1::CreateVolumeRequest*,
                            ::csi::v1::CreateVolumeResponse*) override;
  grpc::Status DeleteVolume(grpc::ServerContext*, const ::csi::v1::DeleteVolumeRequest*,
                            ::csi::v1::DeleteVolumeResponse*) override;
  grpc::Status ControllerPublishVolume(grpc::ServerContext*,
                                       const ::csi::v1::ControllerPublishVolumeRequest*,
                                       ::csi::v1::ControllerPublishVolumeResponse*) override;
  grpc::Status ControllerUnpublishVolume(grpc::ServerContext*,
                                         const ::csi::v1::ControllerUnpublishVolumeRequest*,
                                         ::csi::v1::ControllerUnpublishVolumeResponse*) override;
  grpc::Status ValidateVolumeCapabilities(
      grpc::ServerContext*, const ::csi::v1::ValidateVolumeCapabilitiesRequest*,
      ::csi::v1::ValidateVolumeCapabilitiesResponse*) override;
  grpc::Status ControllerGetCapabilities(grpc::ServerContext*,
                                         const ::csi::v1::ControllerGetCapabilitiesRequest*,
                                         ::csi::v1::ControllerGetCapabilitiesResponse*) override;
  // snapshot_server.cpp
  grpc::Status CreateSnapshot(grpc::ServerContext*, const ::csi::v1::CreateSnapshotRequest*,
                              ::csi::v1::CreateSnapshotResponse*) override;
  grpc::Status DeleteSnapshot(grpc::ServerContext*, const ::csi::v1::DeleteSnapshotRequest*,
                              ::csi::v1::DeleteSnapshotResponse*) override;
  grpc::Status ListSnapshots(grpc::ServerContext*, const ::csi::v1::ListSnapshotsRequest*,
                             ::csi::v1::ListSnapshotsResponse*) override;
  grpc::Status ControllerExpandVolume(grpc::ServerContext*,
                                      const ::csi::v1::ControllerExpandVolumeRequest*,
                                      ::csi::v1::ControllerExpandVolumeResponse*) override;

 private:
  Controller& controller_;
  VolumeLocks& locks_;
};

}  // namespace rbdgw::csi
