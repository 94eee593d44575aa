#include "csi/status.hpp"

#include <cerrno>

namespace rbdgw::csi {

grpc::StatusCode status_code(int err) noexcept {
  using C = grpc::StatusCode;
  switch (err) {
    case EINVAL: return C::INVALID_ARGUMENT;
    case ENOENT: return C::NOT_FOUND;
    case EEXIST: return C::ALREADY_EXISTS;
    case EAGAIN: return C::ABORTED;
    case EBUSY:
    case ENOTEMPTY:
    case EOPNOTSUPP: return C::FAILED_PRECONDITION;
    case ERANGE:
    case EFBIG: return C::OUT_OF_RANGE;
    case EACCES:
    case EPERM: return C::PERMISSION_DENIED;
    case ETIMEDOUT:
    case ECONNREFUSED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ESHUTDOWN: return C::UNAVAILABLE;
    case ENOTRECOVERABLE: return C::DATA_LOSS;  // e.g. a volume unstaged by force
    case ENOSPC:
    case EDQUOT: return C::RESOURCE_EXHAUSTED;
    default: return C::INTERNAL;
  }
}

grpc::Status to_status(const Error& e) { return grpc::Status(status_code(e.code()), e.what()); }

}  // namespace rbdgw::csi
