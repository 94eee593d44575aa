// Validation of the staging and target paths a CO hands us: absolute,
// normalised (no "." or ".." components, no "//"), and strictly under the
// allowed root (--allowed-root, default /var/lib/kubelet). Checked before
// anything is touched, so a bad path changes nothing.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>

namespace rbdgw::csi {

// Throws Error(EINVAL) "<field> '<path>': <why>" unless path is a valid
// absolute path strictly below root (root itself is refused). A trailing
// "/" is tolerated. Returns the path without a trailing "/".
std::string check_path(std::string_view field, std::string_view path, std::string_view root);

}  // namespace rbdgw::csi
