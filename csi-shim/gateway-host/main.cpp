// rbdgw-gateway-host: starts the daemons of staged volumes (nbdkit
// gateways, rbdgw-fuse exporters) for rbdgw-csi and rbdgw, so that they do
// not live in the caller's container or cgroup (rbdgw-gateway-host(8),
// lib/attach/gateway_host.hpp, docs/attach-paths.md "Where gateways live").
//
// Two processes: this supervisor, which does nothing but restart the
// worker that serves the socket, and the worker. A crash of the worker
// (the only one that parses requests) is survived by everything: what it
// started is no child of it, and the supervisor starts another worker.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "attach/gateway_host.hpp"
#include "common/error.hpp"
#include "common/log.hpp"

using namespace rbdgw;

namespace {

volatile int g_stop = 0;
volatile pid_t g_worker = 0;

void on_signal(int) {
  g_stop = 1;
  if (g_worker > 0) ::kill(g_worker, SIGTERM);
}

int usage(FILE* to, int status) {
  std::fprintf(to,
               "usage: rbdgw-gateway-host [--socket PATH]\n"
               "  --socket PATH  the unix socket to serve (default %s)\n",
               attach::kDefaultGatewayHostSocket);
  return status;
}

int worker(const std::string& socket) {
  try {
    attach::serve_gateway_host(socket, g_stop);
    return 0;
  } catch (const std::exception& e) {
    log::error(e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket = attach::kDefaultGatewayHostSocket;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return usage(stdout, 0);
    if (a == "--socket" && i + 1 < argc) {
      socket = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      socket = a.substr(9);
    } else {
      std::fprintf(stderr, "rbdgw-gateway-host: unknown argument '%s'\n", a.c_str());
      return usage(stderr, 2);
    }
  }
  log::set_sink([](log::Level l, std::string_view m) {
    std::fprintf(stderr, "rbdgw-gateway-host[%d]: %s: %.*s\n", static_cast<int>(::getpid()),
                 log::level_name(l), static_cast<int>(m.size()), m.data());
  });
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);

  while (!g_stop) {
    const pid_t w = ::fork();
    if (w < 0) {
      log::error("fork: ", std::strerror(errno));
      ::sleep(1);
      continue;
    }
    if (w == 0) {
      struct sigaction dfl{};
      dfl.sa_handler = [](int) { g_stop = 1; };
      ::sigaction(SIGTERM, &dfl, nullptr);
      ::sigaction(SIGINT, &dfl, nullptr);
      g_worker = 0;
      ::_exit(worker(socket));
    }
    g_worker = w;
    if (g_stop) ::kill(w, SIGTERM);
    int st = 0;
    while (::waitpid(w, &st, 0) < 0 && errno == EINTR) {}
    g_worker = 0;
    if (g_stop) break;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 1) {
      // It could not bind: another host serves the socket, or a bad path.
      return 1;
    }
    log::warn("worker pid ", w,
              WIFSIGNALED(st) ? cat(" killed by signal ", WTERMSIG(st)) : cat(" exited with status ", WEXITSTATUS(st)),
              "; starting another");
    ::sleep(1);
  }
  return 0;
}
