// this_boot_id(): the kernel's boot id, or the test knob's.
#include "common/boot_id.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/error.hpp"

namespace {

std::string kernel_boot_id() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string s;
  std::getline(f, s);
  return s;
}

class BootId : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/rbdgw-boot-id-test.XXXXXX";
    dir_ = ::mkdtemp(t);
    ::unsetenv("RBDGW_BOOT_ID_FILE");
  }
  void TearDown() override {
    ::unsetenv("RBDGW_BOOT_ID_FILE");
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string dir_;
};

TEST_F(BootId, IsTheKernelsBootIdTrimmed) {
  const std::string k = kernel_boot_id();
  ASSERT_EQ(k.size(), 36u);
  EXPECT_EQ(rbdgw::this_boot_id(), k);
}

TEST_F(BootId, TheTestKnobNamesAnotherFileReadEachCall) {
  const std::string f = dir_ + "/id";
  std::ofstream(f) << "first-boot \n";
  ::setenv("RBDGW_BOOT_ID_FILE", f.c_str(), 1);
  EXPECT_EQ(rbdgw::this_boot_id(), "first-boot");
  std::ofstream(f) << "second-boot\n";
  EXPECT_EQ(rbdgw::this_boot_id(), "second-boot");
  ::setenv("RBDGW_BOOT_ID_FILE", "", 1);  // empty: the kernel's
  EXPECT_EQ(rbdgw::this_boot_id(), kernel_boot_id());
}

TEST_F(BootId, MissingOrEmptyFileIsAnErrorNamingIt) {
  const std::string missing = dir_ + "/missing";
  ::setenv("RBDGW_BOOT_ID_FILE", missing.c_str(), 1);
  try {
    rbdgw::this_boot_id();
    FAIL() << "no error for a missing boot id file";
  } catch (const rbdgw::Error& e) {
    EXPECT_EQ(e.code(), ENOENT);
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  const std::string empty = dir_ + "/empty";
  std::ofstream(empty) << "\n";
  ::setenv("RBDGW_BOOT_ID_FILE", empty.c_str(), 1);
  try {
    rbdgw::this_boot_id();
    FAIL() << "no error for an empty boot id file";
  } catch (const rbdgw::Error& e) {
    EXPECT_EQ(e.code(), EIO);
    EXPECT_NE(std::string(e.what()).find(empty), std::string::npos) << e.what();
  }
}

}  // namespace
