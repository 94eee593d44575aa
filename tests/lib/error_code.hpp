// Test helper: the errno of the rbdgw::Error a call throws (0 when it does
// not throw), optionally with the message, for asserting exact errors.
#pragma once

#include <functional>
#include <string>

#include "common/error.hpp"

namespace rbdgw::test {

inline int error_code(const std::function<void()>& f, std::string* msg = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (msg) *msg = e.what();
    return e.code();
  }
  return 0;
}

}  // namespace rbdgw::test
