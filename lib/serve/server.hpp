// rbdgw serve: NBD exports of RBD images for remote clients, TLS required.
//
// One front process terminates TLS itself (OpenSSL) so that it knows each
// client's identity (PSK identity or verified x509 common name; nbdkit 1.32
// cannot tell its plugins). It speaks the NBD fixed-newstyle handshake up to
// and through STARTTLS, answers NBD_OPT_LIST with the exports granted to that
// identity, refuses INFO/GO/EXPORT_NAME/META_CONTEXT on any other export, and
// then relays the connection to that export's own nbdkit (rbd plugin [+ luks2
// filter], read-only with --readonly when the export is) on a private unix
// socket in run_dir. The backend sees only the chosen export; from GO on the
// front copies bytes both ways.
//
// Thread safety: Server::run() is called once; connections are served on
// their own threads.
#pragma once

#include <string>

#include "serve/config.hpp"

namespace rbdgw::serve {

struct Tools {
  std::string nbdkit = "nbdkit";
  std::string plugin = "rbd";
  std::string filter = "luks2";
  // $NBDKIT, $RBDGW_PLUGIN, $RBDGW_FILTER override the defaults.
  static Tools from_environment();
};

// Starts the backends and listeners and serves until SIGTERM or SIGINT; then
// stops the backends, removes the sockets it made and exits the process with
// status 0 (connections still open are cut). Throws Error when it cannot
// start (bad TLS material, a listener that cannot bind, a backend that does
// not come up).
void run(const Config& config, const Tools& tools);

}  // namespace rbdgw::serve
