// current_error(): how exceptions become (errno, message) at an edge
// (nbdkit_set_error + nbdkit_error in the plugin).
#include <gtest/gtest.h>

#include <cerrno>
#include <new>
#include <stdexcept>
#include <system_error>

#include "common/error.hpp"

namespace {

template <typename F>
rbdgw::ErrorReport report_of(F throw_it) {
  try {
    throw_it();
  } catch (...) {
    return rbdgw::current_error();
  }
  ADD_FAILURE() << "nothing thrown";
  return {0, ""};
}

}  // namespace

TEST(ErrorMapping, RbdgwErrorKeepsErrnoAndMessage) {
  const auto r = report_of([] { rbdgw::check(-ENOENT, "rbd_open", "rbd/vol1"); });
  EXPECT_EQ(r.code, ENOENT);
  EXPECT_EQ(r.message, "rbd_open: rbd/vol1: No such file or directory");
}

TEST(ErrorMapping, SystemErrorKeepsErrno) {
  const auto r = report_of([] { throw std::system_error(EACCES, std::generic_category(), "open x"); });
  EXPECT_EQ(r.code, EACCES);
  EXPECT_NE(r.message.find("open x"), std::string::npos);
}

TEST(ErrorMapping, BadAllocIsEnomem) {
  EXPECT_EQ(report_of([] { throw std::bad_alloc(); }).code, ENOMEM);
}

TEST(ErrorMapping, OtherExceptionsAreEio) {
  const auto r = report_of([] { throw std::runtime_error("boom"); });
  EXPECT_EQ(r.code, EIO);
  EXPECT_EQ(r.message, "boom");
  EXPECT_EQ(report_of([] { throw 42; }).code, EIO);
}
