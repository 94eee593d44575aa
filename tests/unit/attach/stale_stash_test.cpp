// A stash from another boot is stale (issue 10 item 2): the boot id is
// recorded and read back, stale_reason() tells, status() and readopt() do
// not act on what a stale stash names.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "attach/attach.hpp"
#include "common/boot_id.hpp"
#include "common/error.hpp"

namespace {

using namespace rbdgw;

class StaleStash : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/rbdgw-stale-stash-test.XXXXXX";
    dir_ = ::mkdtemp(t);
    id_file_ = dir_ + "/boot_id";
    std::ofstream(id_file_) << "boot-one\n";
    ::setenv("RBDGW_BOOT_ID_FILE", id_file_.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("RBDGW_BOOT_ID_FILE");
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  attach::Stash stash() const {
    attach::Stash s;
    s.complete = true;
    s.volume_id = "vol1";
    s.boot_id = "boot-one";
    s.image = "rbd/img";
    s.run_dir = dir_ + "/run";
    s.gateway = {::getpid(), 1};  // a live pid: status must not look at it when stale
    s.loop_device = s.device = "/dev/loop0";
    s.block = true;
    return s;
  }
  std::string dir_, id_file_;
};

TEST_F(StaleStash, BootIdRoundTripsThroughTheStashFile) {
  const attach::Stash s = stash();
  const std::string p = dir_ + "/stash.json";
  attach::save_stash(s, p);
  EXPECT_EQ(attach::load_stash(p).boot_id, "boot-one");
  EXPECT_EQ(attach::load_stash(p), s);
}

TEST_F(StaleStash, FromThisBootIsNotStaleFromAnotherIs) {
  attach::Stash s = stash();
  EXPECT_EQ(attach::stale_reason(s), "");
  std::ofstream(id_file_) << "boot-two\n";  // the reboot
  const std::string why = attach::stale_reason(s);
  EXPECT_NE(why.find("stale: from an earlier boot"), std::string::npos) << why;
  EXPECT_NE(why.find("boot-one"), std::string::npos) << why;
  EXPECT_NE(why.find("boot-two"), std::string::npos) << why;
  s.boot_id.clear();  // cannot be told
  EXPECT_EQ(attach::stale_reason(s), "");
}

TEST_F(StaleStash, StatusAndReadoptDoNotActOnAStaleStash) {
  const attach::Stash s = stash();
  const std::string p = dir_ + "/stash.json";
  attach::save_stash(s, p);
  std::ofstream(id_file_) << "boot-two\n";
  const attach::VolumeStatus st = attach::status(s);
  EXPECT_FALSE(st.stale.empty());
  EXPECT_FALSE(st.gateway_alive) << "status looked at a stale stash's pid";
  EXPECT_FALSE(st.healthy());
  try {
    attach::readopt(p, {});
    FAIL() << "readopt of a stale stash did not refuse";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ESTALE);
    EXPECT_NE(std::string(e.what()).find("stale: from an earlier boot"), std::string::npos) << e.what();
  }
}

TEST_F(StaleStash, DetachOfAStaleStashOnlyForgetsIt) {
  attach::Stash s = stash();
  ::mkdir(s.run_dir.c_str(), 0700);
  std::ofstream(s.run_dir + "/gateway.log") << "old\n";
  std::ofstream(s.run_dir + "/gateway.pid") << ::getpid() << "\n";  // a live pid, not ours to kill
  const std::string p = s.run_dir + "/stash.json";  // the CLI's layout
  attach::save_stash(s, p);
  std::ofstream(id_file_) << "boot-two\n";
  const attach::DetachResult r = attach::detach(p);
  EXPECT_FALSE(r.forced);
  EXPECT_NE(::access(p.c_str(), F_OK), 0);
  EXPECT_NE(::access(s.run_dir.c_str(), F_OK), 0);
  EXPECT_EQ(::kill(::getpid(), 0), 0);  // still here
}

}  // namespace
