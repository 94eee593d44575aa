// The one mapping from rbdgw::Error (errno) to grpc::Status, and the guard
// every RPC handler runs its body in.
//
// Errno conventions inside the shim (so that the CSI codes come out right):
//   EINVAL            INVALID_ARGUMENT   bad or missing argument
//   ENOENT            NOT_FOUND          unknown volume, pool or image
//   EEXIST            ALREADY_EXISTS     same name, other parameters
//   EAGAIN            ABORTED            another call on the volume runs
//   EBUSY, ENOTEMPTY,
//   EOPNOTSUPP        FAILED_PRECONDITION
//   ERANGE, EFBIG     OUT_OF_RANGE       capacity
//   EACCES, EPERM     PERMISSION_DENIED  wrong cephx secret
//   ETIMEDOUT, ...    UNAVAILABLE        cluster unreachable
//   ENOSPC, EDQUOT    RESOURCE_EXHAUSTED
//   anything else     INTERNAL
//
// Thread safety: stateless, callable from any thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string_view>
#include <utility>

#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::csi {

// The gRPC code for a positive errno value.
grpc::StatusCode status_code(int err) noexcept;

// Status for an error (code from its errno, message from what()).
grpc::Status to_status(const Error& e);

// Throws Error(EINVAL, "<what>: <why>") unless cond holds.
inline void require(bool cond, std::string_view what, std::string_view why) {
  if (!cond) throw Error(EINVAL, cat(what, ": ", why));
}

// Runs body() (which returns void and fills the response) and turns any
// exception into a Status, logging failures with the RPC name. The
// exception boundary of every handler.
template <typename Body>
grpc::Status guard(std::string_view rpc, Body&& body) noexcept {
  try {
    std::forward<Body>(body)();
    log::debug(rpc, ": ok");
    return grpc::Status::OK;
  } catch (const Error& e) {
    log::warn(rpc, ": ", e.what());
    return to_status(e);
  } catch (const std::exception& e) {
    log::error(rpc, ": unexpected: ", e.what());
    return grpc::Status(grpc::StatusCode::INTERNAL, e.what());
  } catch (...) {
    log::error(rpc, ": unexpected exception");
    return grpc::Status(grpc::StatusCode::INTERNAL, "unexpected exception");
  }
}

}  // namespace rbdgw::csi
