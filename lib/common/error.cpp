#include "common/error.hpp"

#include <cstring>
#include <exception>
#include <new>
#include <system_error>

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

ErrorReport current_error() noexcept {
  try {
    throw;
  } catch (const Error& e) {
    return {e.code(), e.what()};
  } catch (const std::system_error& e) {
    const int c = e.code().category() == std::generic_category() ||
                          e.code().category() == std::system_category()
                      ? e.code().value()
                      : EIO;
    return {c > 0 ? c : EIO, e.what()};
  } catch (const std::bad_alloc&) {
    return {ENOMEM, "out of memory"};
  } catch (const std::exception& e) {
    return {EIO, e.what()};
  } catch (...) {
    return {EIO, "unknown error"};
  }
}

}  // namespace rbdgw
