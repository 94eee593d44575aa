#include "common/open_files_limit.hpp"

#include <cerrno>

#include "common/error.hpp"

namespace rbdgw {

rlimit raise_open_files_limit() {
  rlimit was{};
  if (::getrlimit(RLIMIT_NOFILE, &was) != 0) throw_errno("getrlimit", "open files limit", errno);
  if (was.rlim_cur >= was.rlim_max) return was;
  rlimit raised = was;
  raised.rlim_cur = raised.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &raised) != 0)
    throw_errno("setrlimit",
                cat("open files limit from ", was.rlim_cur, " to ", raised.rlim_max), errno);
  return was;
}

}  // namespace rbdgw
