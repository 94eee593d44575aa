// lib/attach/mount_options: the split of a mount option list into mount(2)
// flags and the filesystem's data, and what it refuses. (The real mounts
// are tested end to end: e2e.cli.mount-options, test-csi-mount-options.)
#include <gtest/gtest.h>
#include <sys/mount.h>

#include "attach/mount_options.hpp"
#include "common/error.hpp"

using namespace rbdgw;
using namespace rbdgw::attach;

namespace {

std::string refusal(std::string_view list, std::string_view fs, bool ro = false) {
  try {
    parse_mount_options(list, fs, ro);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EINVAL);
    return e.what();
  }
  return "(accepted)";
}

TEST(MountOptions, GenericOptionsAreFlagsTheRestIsData) {
  const MountOptions m =
      parse_mount_options("noatime,nodev,discard,nosuid,data=ordered,noexec,ro", "ext4");
  EXPECT_EQ(m.set, MS_NOATIME | MS_NODEV | MS_NOSUID | MS_NOEXEC | MS_RDONLY);
  EXPECT_EQ(m.data, "discard,data=ordered");
  const MountOptions x = parse_mount_options("nouuid,relatime,nodiratime,lazytime", "xfs");
  EXPECT_EQ(x.set, MS_RELATIME | MS_NODIRATIME | MS_LAZYTIME);
  EXPECT_EQ(x.data, "nouuid");
}

TEST(MountOptions, StagingIsNodevNosuidUnlessAskedOtherwise) {
  EXPECT_EQ(parse_mount_options("", "ext4").stage_flags(false), MS_NODEV | MS_NOSUID);
  EXPECT_EQ(parse_mount_options("", "ext4").stage_flags(true), MS_NODEV | MS_NOSUID | MS_RDONLY);
  EXPECT_EQ(parse_mount_options("dev", "ext4").stage_flags(false), MS_NOSUID);
  EXPECT_EQ(parse_mount_options("suid,dev", "xfs").stage_flags(false), 0u);
  // The last one given wins.
  EXPECT_EQ(parse_mount_options("dev,nodev", "ext4").stage_flags(false), MS_NODEV | MS_NOSUID);
}

TEST(MountOptions, AtimeModesExcludeEachOtherAndTheLastWins) {
  EXPECT_EQ(parse_mount_options("noatime,strictatime", "ext4").set, MS_STRICTATIME);
  EXPECT_EQ(parse_mount_options("relatime,noatime", "ext4").set, MS_NOATIME);
  EXPECT_EQ(parse_mount_options("noatime,atime", "ext4").set, 0u);
  EXPECT_TRUE(parse_mount_options("noatime,atime", "ext4").atime_given());
  EXPECT_FALSE(parse_mount_options("nodev", "ext4").atime_given());
  EXPECT_EQ(parse_mount_options("norelatime", "ext4").set, MS_STRICTATIME);
}

TEST(MountOptions, MountEightOnlyOptionsAreDroppedQuotedCommasKept) {
  const MountOptions m = parse_mount_options("defaults,_netdev,nofail,x-systemd.foo=1", "ext4");
  EXPECT_EQ(m.set, 0u);
  EXPECT_EQ(m.data, "");
  EXPECT_EQ(parse_mount_options(R"(context="system_u:object_r:x_t:s0:c1,c2",noatime)", "ext4").data,
            R"(context="system_u:object_r:x_t:s0:c1,c2")");
}

TEST(MountOptions, UnknownOptionsAreRefusedNamingEachOneAndNotTheKnown) {
  const std::string e = refusal("noatime,bogus_opt,nodev,frob=1", "ext4");
  EXPECT_NE(e.find("'bogus_opt', 'frob=1'"), std::string::npos) << e;
  EXPECT_NE(refusal("nouuid", "ext4").find("'nouuid'"), std::string::npos);        // xfs's
  EXPECT_NE(refusal("data=ordered", "xfs").find("'data=ordered'"), std::string::npos);  // ext4's
  EXPECT_NE(refusal("noatime", "btrfs").find("btrfs"), std::string::npos);
  EXPECT_NE(refusal("noatime,,nodev", "ext4").find("empty option"), std::string::npos);
  EXPECT_NE(refusal("bind", "ext4").find("'bind'"), std::string::npos);
  EXPECT_NE(refusal("user", "ext4").find("'user'"), std::string::npos);
}

TEST(MountOptions, OptionsThatBreakTheGuaranteesAreRefusedSayingWhy) {
  EXPECT_NE(refusal("nobarrier", "ext4").find("fsync"), std::string::npos);
  EXPECT_NE(refusal("barrier=0", "ext4").find("fsync"), std::string::npos);
  EXPECT_EQ(parse_mount_options("barrier=1", "ext4").data, "barrier=1");
  EXPECT_NE(refusal("journal_path=/dev/sda", "ext4").find("device of the host"), std::string::npos);
  EXPECT_NE(refusal("logdev=/dev/sda", "xfs").find("device of the host"), std::string::npos);
  EXPECT_NE(refusal("norecovery", "xfs").find("read-only"), std::string::npos);
  EXPECT_EQ(parse_mount_options("norecovery,ro", "xfs").data, "norecovery");
  EXPECT_EQ(parse_mount_options("noload", "ext4", true).data, "noload");
  EXPECT_EQ(parse_mount_options("data=writeback", "ext4").data, "data=writeback");
  // A volume's contents are not trusted by the node: corruption written into
  // the image must not take the node's kernel down.
  EXPECT_NE(refusal("errors=panic", "ext4").find("panic"), std::string::npos);
  EXPECT_NE(refusal("abort", "ext4").find("abort"), std::string::npos);
  EXPECT_EQ(parse_mount_options("errors=remount-ro", "ext4").data, "errors=remount-ro");
}

// The kernel reads ext4's barrier=N with kstrtouint(base 0): "00", "0x0"
// and "+0" are all 0, that is nobarrier (seen on this kernel: /proc/mounts
// shows nobarrier for each).
TEST(MountOptions, BarrierZeroIsRefusedInEverySpellingTheKernelReadsAsZero) {
  for (const char* o : {"barrier=00", "barrier=0x0", "barrier=0X00", "barrier=+0", "barrier=000"})
    EXPECT_NE(refusal(o, "ext4").find("fsync"), std::string::npos) << o;
  EXPECT_EQ(parse_mount_options("barrier=01", "ext4").data, "barrier=01");
  EXPECT_EQ(parse_mount_options("barrier=0x1", "ext4").data, "barrier=0x1");
}

// mount(2) copies one page of data and cuts it at PAGE_SIZE - 1 bytes: a
// longer list reaches the filesystem cut, so "...,barrier=01" whose last
// byte falls past the cut is read as barrier=0 (seen on this kernel).
TEST(MountOptions, DataLongerThanTheKernelReadsIsRefused) {
  std::string list;
  for (int i = 0; i < 454; ++i) list += "commit=5,";
  list += "barrier=01";  // 4096 bytes, the '1' at offset 4095
  EXPECT_NE(refusal(list, "ext4").find("longer than"), std::string::npos);
  // Options dropped before the data (x-*, generic flags) do not count.
  std::string flags;
  for (int i = 0; i < 600; ++i) flags += "noatime,";
  flags += "discard";
  EXPECT_EQ(parse_mount_options(flags, "ext4").data, "discard");
}

}  // namespace
