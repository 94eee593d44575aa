// CSI Identity service: plugin info, capabilities (controller service,
// online expansion), and Probe, which is ready when at least one monitor of
// every configured cluster accepts a TCP connection (no credentials needed).
//
// Thread safety: handlers may run concurrently; the service is immutable.
#pragma once

#include <string>

#include "csi.grpc.pb.h"
#include "csi/config.hpp"

namespace rbdgw::csi {

// True if a TCP connection to a monitor address ("host:port",
// "v2:host:port", "[v2:h:p,v1:h:p]", "[::1]:6789", bare host = port 6789)
// succeeds within timeout_ms; an address list succeeds if any entry does.
bool monitor_reachable(const std::string& addresses, int timeout_ms);

class IdentityServer final : public ::csi::v1::Identity::Service {
 public:
  IdentityServer(std::string driver_name, const ClusterConfig& clusters)
      : name_(std::move(driver_name)), clusters_(clusters) {}

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
};

}  // namespace rbdgw::csi
