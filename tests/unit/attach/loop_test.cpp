// detach_loop_if_backed_by (lib/attach/loop): a loop device name that now
// belongs to another file's loop device is left alone; only the device
// bound to the file meant is detached. Real loop devices on temp files.
#include "attach/loop.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "attach/process.hpp"

namespace {

using rbdgw::attach::detach_loop_if_backed_by;
using rbdgw::attach::run_checked;
using rbdgw::attach::run_command;

std::string make_file(const std::string& name) {
  const std::string path = ::testing::TempDir() + name + "-" + std::to_string(::getpid());
  std::ofstream(path).close();
  if (::truncate(path.c_str(), 4 << 20) != 0) ADD_FAILURE() << "truncate " << path;
  return path;
}

std::string attach(const std::string& file) {
  std::string dev = run_checked({"losetup", "--find", "--show", file});
  return dev.substr(0, dev.find('\n'));
}

std::string backing_of(const std::string& dev) {
  std::ifstream f("/sys/block/" + dev.substr(5) + "/loop/backing_file");
  std::string b;
  std::getline(f, b);
  return b;
}

TEST(LoopDetach, ADeviceNowBoundToAnotherFileIsLeftAlone) {
  const std::string a = make_file("loop-a"), b = make_file("loop-b");
  const std::string dev = attach(b);  // the name a stale record of `a` might hold
  EXPECT_FALSE(detach_loop_if_backed_by(dev, a));
  EXPECT_EQ(backing_of(dev), b) << dev << " was detached from the other file";
  EXPECT_TRUE(detach_loop_if_backed_by(dev, b));
  EXPECT_EQ(backing_of(dev), "");
  EXPECT_FALSE(detach_loop_if_backed_by(dev, b));  // unbound now: nothing to do
  std::remove(a.c_str());
  std::remove(b.c_str());
}

TEST(LoopDetach, NotALoopDeviceOrAMissingFileIsNothingToDo) {
  const std::string a = make_file("loop-c");
  EXPECT_FALSE(detach_loop_if_backed_by("/dev/null", a));
  EXPECT_FALSE(detach_loop_if_backed_by("/dev/loop-does-not-exist", a));
  EXPECT_FALSE(detach_loop_if_backed_by("/dev/loop0", a + ".missing"));
  std::remove(a.c_str());
}

}  // namespace
