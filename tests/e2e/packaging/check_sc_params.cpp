// check-sc-params: runs StorageClass parameters through rbdgw-csi's own
// parser (rbdgw::csi::VolumeParams::parse, as CreateVolume does), so the
// manifest test asks the code rather than a copy of its key list.
//
//   check-sc-params KEY=VALUE...
//
// Prints the canonical form and exits 0 when rbdgw-csi would accept the
// parameters; prints the error and exits 2 otherwise.
#include <cstdio>
#include <string>

#include "common/error.hpp"
#include "csi/config.hpp"

int main(int argc, char** argv) {
  rbdgw::csi::StringMap params;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto eq = a.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "check-sc-params: '%s' is not KEY=VALUE\n", argv[i]);
      return 2;
    }
    params[a.substr(0, eq)] = a.substr(eq + 1);
  }
  try {
    std::printf("%s\n", rbdgw::csi::VolumeParams::parse(params).canonical().c_str());
    return 0;
  } catch (const rbdgw::Error& e) {
    std::fprintf(stderr, "check-sc-params: %s\n", e.what());
    return 2;
  }
}
