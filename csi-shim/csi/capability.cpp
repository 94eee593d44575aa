#include "csi/capability.hpp"

#include "common/error.hpp"

namespace rbdgw::csi {

using Mode = ::csi::v1::VolumeCapability::AccessMode;

std::string Capability::mount_options() const {
  std::string s;
  for (const auto& f : mount_flags) s += (s.empty() ? "" : ",") + f;
  return s;
}

Capability parse_capability(const ::csi::v1::VolumeCapability& c, std::string_view field) {
  Capability cap;
  if (c.has_block()) {
    cap.block = true;
    cap.fs_type.clear();
  } else if (c.has_mount()) {
    if (!c.mount().fs_type().empty()) cap.fs_type = c.mount().fs_type();
    if (cap.fs_type != "ext4" && cap.fs_type != "xfs")
      throw Error(EINVAL, cat(field, ": unsupported fs_type '", cap.fs_type, "' (ext4 or xfs)"));
    cap.mount_flags.assign(c.mount().mount_flags().begin(), c.mount().mount_flags().end());
    for (const auto& f : cap.mount_flags)
      if (f.empty() || f.find_first_of(",\n") != std::string::npos)
        throw Error(EINVAL, cat(field, ": malformed mount flag"));
  } else {
    throw Error(EINVAL, cat(field, ": access_type (block or mount) is missing"));
  }
  if (!c.has_access_mode()) throw Error(EINVAL, cat(field, ": access_mode is missing"));
  switch (c.access_mode().mode()) {
    case Mode::SINGLE_NODE_WRITER:
    case Mode::SINGLE_NODE_SINGLE_WRITER:
    case Mode::SINGLE_NODE_MULTI_WRITER: break;
    case Mode::SINGLE_NODE_READER_ONLY: cap.read_only = true; break;
    case Mode::UNKNOWN: throw Error(EINVAL, cat(field, ": access_mode is UNKNOWN"));
    default:
      throw Error(EINVAL, cat(field, ": access mode ", Mode::Mode_Name(c.access_mode().mode()),
                              " is not supported (single-node modes only)"));
  }
  return cap;
}

std::string unsupported_reason(
    const google::protobuf::RepeatedPtrField<::csi::v1::VolumeCapability>& caps) {
  for (int i = 0; i < caps.size(); ++i) {
    try {
      parse_capability(caps[i], cat("volume_capabilities[", i, "]"));
    } catch (const Error& e) {
      return e.what();
    }
  }
  return {};
}

}  // namespace rbdgw::csi
