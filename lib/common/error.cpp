#include "common/error.hpp"

#include <cstring>

namespace rbdgw {

std::string errno_message(std::string_view call, std::string_view object, int err) {
  if (err < 0) err = -err;
  std::string m(call);
  if (!object.empty()) {
    m += ": ";
    m += object;
  }
  m += ": ";
  m += std::strerror(err);
  return m;
}

void throw_errno(std::string_view call, std::string_view object, int err) {
  throw Error(err, errno_message(call, object, err));
}

}  // namespace rbdgw
