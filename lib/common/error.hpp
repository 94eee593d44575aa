// rbdgw::Error: the one error type of the project.
//
// Carries a positive errno value and a message that names the failing call
// and the object, e.g. "rbd_open: rbd/vol1: No such file or directory".
// Thrown by the library; mapped once at each edge (nbdkit_set_error in the
// plugins, grpc::Status in the CSI shim, an exit status in the CLI).
//
// Thread safety: all functions are thread-safe.
#pragma once

#include <cerrno>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace rbdgw {

class Error : public std::runtime_error {
 public:
  Error(int err, const std::string& message)
      : std::runtime_error(message), errno_(err > 0 ? err : (err < 0 ? -err : EIO)) {}
  // Positive errno value (never 0).
  int code() const noexcept { return errno_; }

 private:
  int errno_;
};

// Concatenates its arguments with operator<< (GCC 12 has no std::format).
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// "call: object: strerror(err)" (object omitted when empty); err may be +/-.
std::string errno_message(std::string_view call, std::string_view object, int err);

// Throws Error(err, "call: object: strerror(err)").
[[noreturn]] void throw_errno(std::string_view call, std::string_view object, int err);

// For C calls that return a negative errno on failure (librbd, librados,
// libcryptsetup): returns r when r >= 0, throws otherwise.
inline int check(int r, std::string_view call, std::string_view object) {
  if (r < 0) throw_errno(call, object, r);
  return r;
}

// The errno and message of the exception being handled, for mapping errors
// at an edge. Call only inside a catch block. rbdgw::Error keeps its code,
// std::system_error its errno, std::bad_alloc is ENOMEM, anything else EIO.
struct ErrorReport {
  int code;
  std::string message;
};
ErrorReport current_error() noexcept;

}  // namespace rbdgw
