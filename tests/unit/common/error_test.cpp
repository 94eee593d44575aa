#include <gtest/gtest.h>

#include <cerrno>

#include "common/error.hpp"
#include "common/log.hpp"

using rbdgw::Error;

TEST(Error, MessageNamesCallObjectAndCause) {
  try {
    rbdgw::throw_errno("rbd_open", "rbd/vol1", -ENOENT);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ENOENT);
    EXPECT_STREQ(e.what(), "rbd_open: rbd/vol1: No such file or directory");
  }
}

TEST(Error, CheckPassesNonNegativeResultsThrough) {
  EXPECT_EQ(rbdgw::check(0, "x", "y"), 0);
  EXPECT_EQ(rbdgw::check(42, "x", "y"), 42);
  EXPECT_THROW(rbdgw::check(-EPERM, "crypt_load", "img"), Error);
}

TEST(Error, ZeroErrnoBecomesEio) { EXPECT_EQ(Error(0, "m").code(), EIO); }

TEST(Error, NegativeErrnoIsNormalised) { EXPECT_EQ(Error(-EACCES, "m").code(), EACCES); }

TEST(Log, SinkReceivesMessagesAtOrAboveLevel) {
  std::vector<std::string> got;
  rbdgw::log::set_sink([&](rbdgw::log::Level, std::string_view m) { got.emplace_back(m); });
  rbdgw::log::set_level(rbdgw::log::Level::info);
  rbdgw::log::debug("hidden");
  rbdgw::log::info("shown ", 42);
  rbdgw::log::set_sink(nullptr);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], "shown 42");
}
