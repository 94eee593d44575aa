#include "csi/identity_server.hpp"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/error.hpp"
#include "csi/status.hpp"

#ifndef RBDGW_VERSION
#define RBDGW_VERSION "0.2.0"
#endif

namespace rbdgw::csi {

namespace {

// The state dir is a writable directory on a writable filesystem (a
// read-only remount or a vanished hostPath makes every stage fail).
void check_state_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno("Probe: open state dir", dir, errno);
  struct statvfs v{};
  const int r = ::fstatvfs(fd, &v);
  const int e = errno;
  ::close(fd);
  if (r != 0) throw_errno("Probe: statvfs state dir", dir, e);
  if (v.f_flag & ST_RDONLY) throw Error(EROFS, cat("Probe: state dir ", dir, ": on a read-only filesystem"));
  if (::access(dir.c_str(), W_OK) != 0) throw_errno("Probe: state dir not writable", dir, errno);
}

}  // namespace

grpc::Status IdentityServer::GetPluginInfo(grpc::ServerContext*,
                                           const ::csi::v1::GetPluginInfoRequest*,
                                           ::csi::v1::GetPluginInfoResponse* resp) {
  return guard("GetPluginInfo", [&] {
    resp->set_name(name_);
    resp->set_vendor_version(RBDGW_VERSION);
  });
}

grpc::Status IdentityServer::GetPluginCapabilities(
    grpc::ServerContext*, const ::csi::v1::GetPluginCapabilitiesRequest*,
    ::csi::v1::GetPluginCapabilitiesResponse* resp) {
  return guard("GetPluginCapabilities", [&] {
    resp->add_capabilities()->mutable_service()->set_type(
        ::csi::v1::PluginCapability::Service::CONTROLLER_SERVICE);
    resp->add_capabilities()->mutable_volume_expansion()->set_type(
        ::csi::v1::PluginCapability::VolumeExpansion::ONLINE);
  });
}

grpc::Status IdentityServer::Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                                   ::csi::v1::ProbeResponse* resp) {
  return guard("Probe", [&] {
    // The plugin's own health only (see the header): nothing here may wait
    // on the network.
    if (!state_dir_.empty()) check_state_dir(state_dir_);
    resp->mutable_ready()->set_value(true);
  });
}

}  // namespace rbdgw::csi
