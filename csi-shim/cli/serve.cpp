// rbdgw serve --config FILE: NBD exports of RBD images for remote clients
// (nbd-client, qemu, libnbd), TLS required by default. See docs/serve.md and
// lib/serve/server.hpp.
#include <iostream>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "serve/config.hpp"
#include "serve/server.hpp"

namespace rbdgw::cli {

int cmd_serve(const std::vector<std::string>& argv) {
  std::string config_path;
  bool check_only = false;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--config" && i + 1 < argv.size()) {
      config_path = argv[++i];
    } else if (a.starts_with("--config=")) {
      config_path = a.substr(9);
    } else if (a == "--check") {
      check_only = true;
    } else {
      throw Error(EINVAL, cat("serve: unexpected argument '", a,
                              "' (usage: rbdgw serve --config FILE [--check])"));
    }
  }
  if (config_path.empty()) throw Error(EINVAL, "serve: --config FILE is required");
  const serve::Config config = serve::load_config(config_path);
  if (check_only) {
    std::cout << config_path << ": " << config.exports.size() << " exports, "
              << (config.tls() ? "TLS required" : "plain NBD (insecure_plain)") << "\n";
    return 0;
  }
  serve::run(config, serve::Tools::from_environment());
  return 0;
}

}  // namespace rbdgw::cli
