// rbdgw-csi: the CSI gRPC service. Thin: parse flags, load configuration,
// re-adopt staged volumes, serve until SIGTERM/SIGINT. --check-config and
// --list-parameters answer and exit (for deployment checks).
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <thread>

#include "common/error.hpp"
#include "common/log.hpp"
#include "csi/config.hpp"
#include "csi/controller_server.hpp"
#include "csi/encryption.hpp"
#include "csi/identity_server.hpp"
#include "csi/node_server.hpp"

using namespace rbdgw;
using namespace rbdgw::csi;

static int list_parameters() {
  for (const auto& p : VolumeParams::parameters()) std::printf("%s\t%s\n", p.key, p.help);
  return 0;
}

// The controller's capabilities (ControllerGetCapabilities), one a line, for
// the manifest check (PUBLISH_UNPUBLISH_VOLUME <=> attachRequired).
static int list_capabilities() {
  for (auto t : ControllerServer::capabilities())
    std::printf("%s\n", ::csi::v1::ControllerServiceCapability::RPC::Type_Name(t).c_str());
  return 0;
}

static int run(const Options& opt) {
  ClusterConfig clusters = ClusterConfig::load(opt.cluster_config);
  if (!opt.kms_config.empty()) load_kms_config(opt.kms_config);
  if (opt.check_config) {
    if (!opt.check_parameters.empty()) {
      const VolumeParams p = VolumeParams::parse(opt.check_parameters);
      if (!clusters.find(p.cluster_id))
        throw Error(EINVAL, cat("parameter 'clusterID': '", p.cluster_id,
                                "' is not in the cluster config ", opt.cluster_config));
      if (p.encrypted) check_kms_id(p.kms_id);
      std::printf("parameters OK: %s\n", p.canonical().c_str());
    }
    std::printf("configuration OK: %zu cluster(s)%s\n", clusters.entries().size(),
                opt.kms_config.empty() ? "" : ", KMS config valid");
    return 0;
  }
  std::filesystem::create_directories(opt.state_dir);
  ::chmod(opt.state_dir.c_str(), 0700);

  Controller controller(clusters);
  VolumeLocks locks;
  Node node(controller, locks, opt);
  node.readopt_all();

  IdentityServer identity(opt.driver_name, controller.clusters(), opt.state_dir);
  ControllerServer controller_server(controller, locks);
  NodeServer node_server(node);

  const std::string sock = opt.socket_path();
  struct stat st{};
  if (::lstat(sock.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw Error(EEXIST, cat("--endpoint: '", sock, "' exists and is not a socket"));
    ::unlink(sock.c_str());  // stale socket of a previous run
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + sock, grpc::InsecureServerCredentials());
  builder.RegisterService(&identity);
  builder.RegisterService(&controller_server);
  builder.RegisterService(&node_server);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) throw Error(EADDRINUSE, cat("grpc: cannot listen on '", opt.endpoint, "'"));
  log::info("serving ", opt.driver_name, " on ", opt.endpoint, " (node ", node.node_id(), ")");

  std::thread stopper([&] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    sigwait(&set, &sig);
    log::info("signal ", sig, ": shutting down (attached volumes stay attached)");
    server->Shutdown();
  });
  server->Wait();
  stopper.join();
  ::unlink(sock.c_str());
  return 0;
}

int main(int argc, char** argv) {
  // Block the stop signals in every thread; the stopper thread waits for them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  try {
    bool help = false;
    Options opt = Options::parse(argc, argv, help);
    if (help) {
      std::fputs(usage(), stdout);
      return 0;
    }
    if (opt.list_capabilities) return list_capabilities();
    return opt.list_parameters ? list_parameters() : run(opt);
  } catch (const Error& e) {
    log::error(e.what());
    return e.code() == EINVAL ? 2 : 1;
  } catch (const std::exception& e) {
    log::error(e.what());
    return 1;
  }
}
