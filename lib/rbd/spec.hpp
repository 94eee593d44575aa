// Image specs: "pool[/namespace]/image[@snap]".
//
// Thread safety: plain value types.
#pragma once

#include <string>
#include <string_view>

namespace rbdgw::rbd {

struct ImageSpec {
  std::string pool;
  std::string ns;    // RADOS namespace; empty for the default namespace
  std::string image;
  std::string snap;  // empty for the image head

  // Parses "pool/image", "pool/ns/image", optionally followed by "@snap".
  // Throws rbdgw::Error(EINVAL) naming the spec and what is wrong with it.
  static ImageSpec parse(std::string_view spec);

  // The canonical "pool[/ns]/image[@snap]" form.
  std::string str() const;
  // Without the snapshot part.
  std::string image_str() const;
  bool is_snapshot() const { return !snap.empty(); }

  bool operator==(const ImageSpec&) const = default;
};

}  // namespace rbdgw::rbd
