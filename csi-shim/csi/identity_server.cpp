#include "csi/identity_server.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "csi/status.hpp"

#ifndef RBDGW_VERSION
#define RBDGW_VERSION "0.2.0"
#endif

namespace rbdgw::csi {

namespace {

bool tcp_connect(const std::string& host, const std::string& port, int timeout_ms) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return false;
  bool ok = false;
  for (addrinfo* a = res; a && !ok; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof err;
      ok = ::poll(&p, 1, timeout_ms) == 1 &&
           ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    ::close(fd);
  }
  freeaddrinfo(res);
  return ok;
}

}  // namespace

bool monitor_reachable(const std::string& addresses, int timeout_ms) {
  std::string list = addresses;
  if (list.size() > 2 && list.front() == '[' && list.back() == ']' &&
      (list.find("v1:") != std::string::npos || list.find("v2:") != std::string::npos))
    list = list.substr(1, list.size() - 2);  // "[v2:h:p,v1:h:p]"
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    std::string a = list.substr(start, end - start);
    start = end + 1;
    std::string port = "6789";
    if (a.rfind("v2:", 0) == 0) a.erase(0, 3), port = "3300";
    else if (a.rfind("v1:", 0) == 0) a.erase(0, 3);
    if (auto slash = a.find('/'); slash != std::string::npos) a.erase(slash);  // nonce
    std::string host = a;
    if (!a.empty() && a.front() == '[') {  // [ipv6]:port
      auto close = a.find(']');
      if (close == std::string::npos) continue;
      host = a.substr(1, close - 1);
      if (close + 1 < a.size() && a[close + 1] == ':') port = a.substr(close + 2);
    } else if (auto colon = a.rfind(':'); colon != std::string::npos) {
      host = a.substr(0, colon);
      port = a.substr(colon + 1);
    }
    if (!host.empty() && tcp_connect(host, port, timeout_ms)) return true;
  }
  return false;
}

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
    for (const auto& c : clusters_.entries()) {
      bool up = false;
      for (const auto& m : c.monitors) up = up || monitor_reachable(m, 3000);
      if (!up)
        throw Error(ETIMEDOUT, cat("Probe: cluster '", c.cluster_id, "': no monitor of '",
                                   c.mon_host(), "' answers"));
    }
    resp->mutable_ready()->set_value(true);
  });
}

}  // namespace rbdgw::csi
