// VolumeCapability checks shared by the controller and node services.
//
// Supported: mount (ext4, xfs; default ext4) or raw block, with a single
// node access mode (SINGLE_NODE_WRITER, SINGLE_NODE_SINGLE_WRITER,
// SINGLE_NODE_MULTI_WRITER, SINGLE_NODE_READER_ONLY). Multi-node modes are
// refused: the userspace gateway holds the RBD exclusive lock on one node.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "csi.pb.h"

namespace rbdgw::csi {

struct Capability {
  bool block = false;
  std::string fs_type = "ext4";
  std::vector<std::string> mount_flags;
  bool read_only = false;  // a *_READER_ONLY access mode

  // Mount flags joined with ",".
  std::string mount_options() const;
};

// Throws Error(EINVAL) "<field>: <why>" for a missing access type or mode,
// an unsupported mode or filesystem.
Capability parse_capability(const ::csi::v1::VolumeCapability& c, std::string_view field);

// Empty if every capability is supported, else why the first is not.
std::string unsupported_reason(
    const google::protobuf::RepeatedPtrField<::csi::v1::VolumeCapability>& caps);

}  // namespace rbdgw::csi
