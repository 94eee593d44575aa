#include "csi/paths.hpp"

#include "common/error.hpp"

namespace rbdgw::csi {

namespace {

std::string_view strip_trailing_slash(std::string_view p) {
  while (p.size() > 1 && p.back() == '/') p.remove_suffix(1);
  return p;
}

}  // namespace

std::string check_path(std::string_view field, std::string_view path, std::string_view root) {
  auto bad = [&](std::string_view why) -> Error {
    return Error(EINVAL, cat(field, " '", path, "': ", why));
  };
  if (path.find('\0') != std::string_view::npos)
    throw Error(EINVAL, cat(field, ": contains a NUL byte"));
  if (path.empty()) throw bad("missing");
  if (path.front() != '/') throw bad("not an absolute path");
  std::string_view p = strip_trailing_slash(path);
  // Every component must be a real name.
  for (std::size_t i = 1; i <= p.size();) {
    std::size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    std::string_view comp = p.substr(i, j - i);
    if (comp.empty()) throw bad("contains an empty component (\"//\")");
    if (comp == "." || comp == "..") throw bad("contains a \".\" or \"..\" component");
    i = j + 1;
  }
  std::string_view r = strip_trailing_slash(root);
  const bool under = r == "/" ? p.size() > 1
                              : (p.size() > r.size() && p.substr(0, r.size()) == r && p[r.size()] == '/');
  if (!under) throw bad(cat("not under the allowed root '", r, "'"));
  return std::string(p);
}

}  // namespace rbdgw::csi
