// rbdgw-csi end to end, issue 11 "Mount options": a VolumeCapability's
// mount_flags reach NodeStageVolume's mount split into mount(2) flags (the
// per-mount field of /proc/self/mountinfo) and the filesystem's data (its
// super options field); the staging mount is nodev,nosuid unless dev/suid
// is asked; NodePublishVolume's bind mount shows the flags asked for (a
// bind mount needs a remount for them); an unknown or refused option is
// INVALID_ARGUMENT naming it, with nothing left mounted, looped or running.
#include "csi_harness.hpp"

namespace {

struct MountInfo {
  bool found = false;
  std::set<std::string> per_mount, super;
};

std::set<std::string> split_commas(const std::string& s) {
  std::set<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.insert(item);
  return out;
}

MountInfo mount_info(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  MountInfo m;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt, opts, f;
    ls >> id >> parent >> devno >> root >> mnt >> opts;
    if (mnt != path) continue;
    while (ls >> f && f != "-") {
    }
    std::string type, source, super;
    ls >> type >> source >> super;
    m = {true, split_commas(opts), split_commas(super)};
  }
  return m;
}

std::string join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : ",") + x;
  return out;
}

#define EXPECT_HAS(set, opt) EXPECT_TRUE((set).count(opt)) << #set " '" << join(set) << "' lacks " << (opt)
#define EXPECT_HASNT(set, opt) EXPECT_FALSE((set).count(opt)) << #set " '" << join(set) << "' shows " << (opt)

v1::VolumeCapability cap_with(const std::string& fs, std::initializer_list<const char*> flags) {
  v1::VolumeCapability c;
  c.mutable_mount()->set_fs_type(fs);
  for (const char* f : flags) c.mutable_mount()->add_mount_flags(f);
  c.mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  return c;
}

// errno of creating a file under dir (0: it worked).
int create_errno(const std::string& dir) {
  int fd = ::open((dir + "/new-file").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  ::close(fd);
  ::unlink((dir + "/new-file").c_str());
  return 0;
}

// True if an executable script under dir runs.
bool script_runs(const std::string& dir) {
  const std::string p = dir + "/s.sh";
  if (!fs::exists(p)) {
    std::ofstream(p) << "#!/bin/sh\nexit 0\n";
    fs::permissions(p, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
  }
  try {
    return attach::run_command({p}).status == 0;
  } catch (const Error& e) {  // the exec itself refused: EACCES on a noexec mount
    EXPECT_EQ(e.code(), EACCES) << e.what();
    return false;
  }
}

// Nothing of volume id is left: no mount, loop device, process or run dir.
void expect_nothing_left_of(const std::string& id, const std::string& staging) {
  EXPECT_FALSE(mount_info(staging).found) << staging << " is still a mount point";
  EXPECT_FALSE(fs::exists(staging + ".rbdgw.json")) << "a stash was left";
  const std::string run = std::string(attach::kRunRoot) + "/" + id;
  EXPECT_TRUE(mounts_under(run).empty()) << "a mount under " << run << " was left";
  const std::string loops = attach::run_command({"losetup", "-a"}).out;
  EXPECT_EQ(loops.find(run), std::string::npos) << "a loop device was left: " << loops;
  std::error_code ec;
  for (const auto& p : fs::directory_iterator("/proc", ec)) {
    const std::string cmd = read_file(p.path() / "cmdline");
    EXPECT_EQ(cmd.find(run + "/"), std::string::npos) << "a process was left: " << p.path();
  }
}

class CsiMountOptions : public CsiE2E {};

TEST_F(CsiMountOptions, Ext4StageAndPublishApplyTheMountFlags) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-mo"), params(), 64 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  const std::string staging = staging_dir(unique("mo"));
  const auto cap = cap_with("ext4", {"noatime", "nodiratime", "noexec", "discard", "data=ordered"});

  auto s = stage(id, staging, cap);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  MountInfo m = mount_info(staging);
  ASSERT_TRUE(m.found);
  for (const char* f : {"rw", "noatime", "nodiratime", "noexec", "nodev", "nosuid"}) EXPECT_HAS(m.per_mount, f);
  EXPECT_HAS(m.super, "discard");
  EXPECT_HAS(m.super, "data=ordered");
  EXPECT_HASNT(m.super, "noatime");  // a flag, not data
  EXPECT_FALSE(script_runs(staging)) << "noexec staging mount ran a script";
  ASSERT_TRUE(stage(id, staging, cap).ok());  // idempotent

  // Publish with the same flags: the bind mount shows them.
  const std::string t1 = root + "/pods/p1/volumes/" + unique("t") + "/mount";
  ASSERT_TRUE(publish(id, staging, t1, false, cap).ok()) << read_file(tmp + "/csi.log");
  m = mount_info(t1);
  ASSERT_TRUE(m.found);
  for (const char* f : {"rw", "noatime", "nodiratime", "noexec", "nodev", "nosuid"}) EXPECT_HAS(m.per_mount, f);
  EXPECT_FALSE(script_runs(t1));
  EXPECT_EQ(create_errno(t1), 0);
  ASSERT_TRUE(publish(id, staging, t1, false, cap).ok());  // idempotent

  // Read-only publish (readonly, and "ro" among the flags): EROFS.
  const std::string t2 = root + "/pods/p2/volumes/" + unique("t") + "/mount";
  ASSERT_TRUE(publish(id, staging, t2, true, cap_with("ext4", {"noatime"})).ok());
  m = mount_info(t2);
  for (const char* f : {"ro", "noatime", "nodev", "nosuid"}) EXPECT_HAS(m.per_mount, f);
  EXPECT_EQ(create_errno(t2), EROFS);
  const std::string t3 = root + "/pods/p3/volumes/" + unique("t") + "/mount";
  ASSERT_TRUE(publish(id, staging, t3, false, cap_with("ext4", {"ro"})).ok());
  EXPECT_HAS(mount_info(t3).per_mount, "ro");
  EXPECT_EQ(create_errno(t3), EROFS);
  EXPECT_EQ(create_errno(staging), 0) << "a read-only publish made the staging mount read-only";

  // A publish asking exec and relatime gets them on its bind mount only.
  const std::string t4 = root + "/pods/p4/volumes/" + unique("t") + "/mount";
  ASSERT_TRUE(publish(id, staging, t4, false, cap_with("ext4", {"exec", "relatime"})).ok());
  m = mount_info(t4);
  EXPECT_HASNT(m.per_mount, "noexec");
  EXPECT_HAS(m.per_mount, "relatime");
  EXPECT_HAS(m.per_mount, "nodev");  // kept from the staging mount
  EXPECT_TRUE(script_runs(t4));
  EXPECT_HAS(mount_info(staging).per_mount, "noexec");

  for (const auto& t : {t1, t2, t3, t4}) ASSERT_TRUE(unpublish(id, t).ok());
  ASSERT_TRUE(unstage(id, staging).ok());
  EXPECT_TRUE(mounts_under(root).empty());
  EXPECT_TRUE(del(id).ok());
}

TEST_F(CsiMountOptions, UnknownOrRefusedFlagIsInvalidArgumentNamingItAndLeavesNothing) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-mo-bad"), params(), 64 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  const std::string staging = staging_dir(unique("mo-bad"));

  auto s = stage(id, staging, cap_with("ext4", {"noatime", "bogus_opt", "nodev"}));
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("bogus_opt"), std::string::npos) << s.error_message();
  expect_nothing_left_of(id, staging);
  s = stage(id, staging, cap_with("ext4", {"nobarrier"}));
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("nobarrier"), std::string::npos) << s.error_message();
  s = stage(id, staging, cap_with("ext4", {"nouuid"}));  // xfs's, not ext4's
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("nouuid"), std::string::npos) << s.error_message();
  expect_nothing_left_of(id, staging);

  ASSERT_TRUE(stage(id, staging).ok()) << read_file(tmp + "/csi.log");
  const std::string t = root + "/pods/p1/volumes/" + unique("t") + "/mount";
  s = publish(id, staging, t, false, cap_with("ext4", {"noexec", "bogus_opt"}));
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("bogus_opt"), std::string::npos) << s.error_message();
  EXPECT_FALSE(mount_info(t).found) << "a refused publish left a mount";
  ASSERT_TRUE(unstage(id, staging).ok());
  expect_nothing_left_of(id, staging);
  EXPECT_TRUE(del(id).ok());
}

TEST_F(CsiMountOptions, XfsNouuidDiscardAndFlagsOnStageAndPublish) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-mo-xfs"), params(), 320 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  const std::string staging = staging_dir(unique("mo-xfs"));
  const auto cap = cap_with("xfs", {"nouuid", "noatime", "discard", "nosuid"});
  auto s = stage(id, staging, cap);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  MountInfo m = mount_info(staging);
  ASSERT_TRUE(m.found);
  EXPECT_HAS(m.super, "nouuid");
  EXPECT_HAS(m.super, "discard");
  for (const char* f : {"rw", "noatime", "nodev", "nosuid"}) EXPECT_HAS(m.per_mount, f);
  const std::string t = root + "/pods/p1/volumes/" + unique("t") + "/mount";
  ASSERT_TRUE(publish(id, staging, t, true, cap).ok());
  m = mount_info(t);
  for (const char* f : {"ro", "noatime", "nodev", "nosuid"}) EXPECT_HAS(m.per_mount, f);
  EXPECT_EQ(create_errno(t), EROFS);
  ASSERT_TRUE(unpublish(id, t).ok());
  ASSERT_TRUE(unstage(id, staging).ok());
  s = stage(id, staging, cap_with("xfs", {"data=ordered"}));  // ext4's, not xfs's
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("data=ordered"), std::string::npos) << s.error_message();
  expect_nothing_left_of(id, staging);
  EXPECT_TRUE(del(id).ok());
}

}  // namespace
