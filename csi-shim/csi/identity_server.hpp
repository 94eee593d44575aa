// CSI Identity service: plugin info, capabilities (controller service,
// online expansion), and Probe, which reports the plugin's own health at
// once: it serves (this answer), its configuration loaded (at start, or it
// would not serve), its state dir is a writable directory. No monitor is
// contacted: the livenessprobe sidecar gives Probe 1 s and restarts the
// container after a few failures, and a cluster that is down is not cured
// by a restart of the plugin (a restart used to take the node's gateways
// with it). Cluster trouble shows where it happens: in the failing call.
//
// Thread safety: handlers may run concurrently; the service is immutable.
#pragma once

#include <string>

#include "csi.grpc.pb.h"
#include "csi/config.hpp"

namespace rbdgw::csi {

class IdentityServer final : public ::csi::v1::Identity::Service {
 public:
  // state_dir: the plugin's --state-dir (Probe checks it); empty: not checked.
  IdentityServer(std::string driver_name, const ClusterConfig& clusters, std::string state_dir = {})
      : name_(std::move(driver_name)), clusters_(clusters), state_dir_(std::move(state_dir)) {}

  grpc::Status GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                             ::csi::v1::GetPluginInfoResponse*) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext*,
                                     const ::csi::v1::GetPluginCapabilitiesRequest*,
                                     ::csi::v1::GetPluginCapabilitiesResponse*) override;
  grpc::Status Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                     ::csi::v1::ProbeResponse*) override;

 private:
  std::string name_;
  const ClusterConfig& clusters_;
  std::string state_dir_;
};

}  // namespace rbdgw::csi
