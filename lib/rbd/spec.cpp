#include "rbd/spec.hpp"

#include <cerrno>
#include <vector>

#include "common/error.hpp"

namespace rbdgw::rbd {
namespace {

[[noreturn]] void bad(std::string_view spec, std::string_view why) {
  throw Error(EINVAL, cat("image spec '", spec, "': ", why,
                          " (expected pool[/namespace]/image[@snap])"));
}

void check_component(std::string_view spec, std::string_view what, std::string_view v) {
  if (v.empty()) bad(spec, cat("empty ", what, " name"));
  for (char c : v) {
    if (c == '@' || c == '/' || static_cast<unsigned char>(c) < 0x20)
      bad(spec, cat("invalid character in ", what, " name"));
  }
}

}  // namespace

ImageSpec ImageSpec::parse(std::string_view spec) {
  if (spec.empty()) bad(spec, "empty");
  ImageSpec s;
  std::string_view head = spec;
  if (auto at = spec.find('@'); at != std::string_view::npos) {
    head = spec.substr(0, at);
    std::string_view snap = spec.substr(at + 1);
    if (snap.empty()) bad(spec, "empty snapshot name after '@'");
    if (snap.find('@') != std::string_view::npos || snap.find('/') != std::string_view::npos)
      bad(spec, "invalid character in snapshot name");
    s.snap = snap;
  }
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  for (;;) {
    auto slash = head.find('/', start);
    parts.push_back(head.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (parts.size() == 1) bad(spec, "no pool given");
  if (parts.size() > 3) bad(spec, "too many '/'");
  check_component(spec, "pool", parts[0]);
  s.pool = parts[0];
  if (parts.size() == 3) {
    check_component(spec, "namespace", parts[1]);
    s.ns = parts[1];
  }
  check_component(spec, "image", parts.back());
  s.image = parts.back();
  return s;
}

std::string ImageSpec::image_str() const {
  std::string r = pool;
  if (!ns.empty()) r += "/" + ns;
  r += "/" + image;
  return r;
}

std::string ImageSpec::str() const {
  std::string r = image_str();
  if (!snap.empty()) r += "@" + snap;
  return r;
}

}  // namespace rbdgw::rbd
