// lib/attach: pure parts (choice of path, nbd discovery on a fake /sys and
// /dev, argument vectors, ids) and the stash round trip.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "attach/attach.hpp"
#include "common/error.hpp"

namespace fs = std::filesystem;
using namespace rbdgw;
using namespace rbdgw::attach;

namespace {

// A temporary directory tree, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string t = (fs::temp_directory_path() / "rbdgw-attach-test.XXXXXX").string();
    path_ = ::mkdtemp(t.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  // Creates a file (and its parents) holding `content`.
  void file(const std::string& rel, const std::string& content = "") const {
    fs::create_directories((path_ / rel).parent_path());
    std::ofstream(path_ / rel) << content;
  }

 private:
  fs::path path_;
};

template <typename F>
int error_code(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return 0;
}

template <typename F>
std::string error_message(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

TEST(AttachChoice, ParsesTheThreeChoicesAndRejectsOthers) {
  EXPECT_EQ(parse_attach_choice("auto"), AttachChoice::automatic);
  EXPECT_EQ(parse_attach_choice("kernel"), AttachChoice::kernel);
  EXPECT_EQ(parse_attach_choice("userspace"), AttachChoice::userspace);
  EXPECT_EQ(error_code([] { parse_attach_choice("Kernel"); }), EINVAL);
  EXPECT_NE(error_message([] { parse_attach_choice("fuse"); }).find("'fuse'"), std::string::npos);
  EXPECT_EQ(parse_mode(to_string(Mode::kernel)), Mode::kernel);
  EXPECT_EQ(parse_mode(to_string(Mode::userspace)), Mode::userspace);
  EXPECT_EQ(error_code([] { parse_mode("auto"); }), EINVAL);
}

TEST(ChooseMode, AutoIsUserspaceWithoutNbdOrDeviceMapper) {
  TempDir root;
  EXPECT_EQ(choose_mode(AttachChoice::automatic, root.path()), Mode::userspace);
  root.file("dev/nbd0");  // nbd but no device-mapper
  EXPECT_EQ(choose_mode(AttachChoice::automatic, root.path()), Mode::userspace);
  TempDir root2;
  root2.file("dev/mapper/control");  // device-mapper but no nbd
  EXPECT_EQ(choose_mode(AttachChoice::automatic, root2.path()), Mode::userspace);
}

TEST(ChooseMode, AutoIsKernelWithNbdAndDeviceMapper) {
  TempDir root;
  root.file("dev/nbd0");
  root.file("dev/mapper/control");
  EXPECT_EQ(choose_mode(AttachChoice::automatic, root.path()), Mode::kernel);
  TempDir module;  // the module loaded but no /dev/nbd0 node yet
  module.file("sys/module/nbd/refcnt", "0");
  module.file("dev/mapper/control");
  EXPECT_EQ(choose_mode(AttachChoice::automatic, module.path()), Mode::kernel);
  EXPECT_EQ(choose_mode(AttachChoice::userspace, root.path()), Mode::userspace);
}

TEST(ChooseMode, ExplicitKernelWithoutModulesFailsNamingWhatIsMissing) {
  TempDir root;
  root.file("dev/nbd0");
  EXPECT_EQ(error_code([&] { choose_mode(AttachChoice::kernel, root.path()); }), ENOTSUP);
  const std::string msg = error_message([&] { choose_mode(AttachChoice::kernel, root.path()); });
  EXPECT_NE(msg.find("device-mapper"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("nbd module"), std::string::npos) << msg;
  TempDir empty;
  const std::string both = error_message([&] { choose_mode(AttachChoice::kernel, empty.path()); });
  EXPECT_NE(both.find("nbd module"), std::string::npos) << both;
  EXPECT_NE(both.find("device-mapper"), std::string::npos) << both;
}

TEST(VolumeId, ValidatesCharactersAndLength) {
  EXPECT_EQ(error_code([] { validate_volume_id("0001-0009-rbd-0000000000000001-abc_d.e"); }), 0);
  for (const char* bad : {"", ".", "..", "a/b", "a b", "x\n", "v;rm"})
    EXPECT_EQ(error_code([&] { validate_volume_id(bad); }), EINVAL) << bad;
  EXPECT_EQ(error_code([] { validate_volume_id(std::string(128, 'a')); }), 0);
  EXPECT_EQ(error_code([] { validate_volume_id(std::string(129, 'a')); }), EINVAL);
}

TEST(VolumeId, DerivedFromTheSpecIsValid) {
  EXPECT_EQ(volume_id_for(rbd::ImageSpec::parse("rbd/img1")), "rbd.img1");
  EXPECT_EQ(volume_id_for(rbd::ImageSpec::parse("pool/ns/img@snap")), "pool.ns.img.snap");
  const std::string id = volume_id_for(rbd::ImageSpec::parse("p/im:g+1"));
  EXPECT_EQ(id, "p.im_g_1");
  EXPECT_EQ(error_code([&] { validate_volume_id(id); }), 0);
}

TEST(GatewayArgv, PlainVolumeWithKeyring) {
  Tools t;
  t.plugin = "/x/nbdkit-rbd-plugin.so";
  GatewayArgs a;
  a.socket = "/run/rbdgw/v/nbd.sock";
  a.pidfile = "/run/rbdgw/v/nbdkit.pid";
  a.image = "rbd/ns/img";
  a.conf_file = "/etc/ceph/ceph.conf";
  a.user_id = "csi";
  a.keyring = "/etc/ceph/keyring";
  const auto v = gateway_argv(t, a);
  const std::vector<std::string> want = {
      "nbdkit", "--foreground", "--log=stderr", "--unix", "/run/rbdgw/v/nbd.sock", "--pidfile",
      "/run/rbdgw/v/nbdkit.pid", "/x/nbdkit-rbd-plugin.so", "image=rbd/ns/img",
      "durable-writes=true", "exclusive=true", "conf=/etc/ceph/ceph.conf", "id=csi",
      "keyring=/etc/ceph/keyring"};
  EXPECT_EQ(v, want);
}

TEST(GatewayArgv, ReadWriteHoldsTheLockNamingTheNodeReadOnlyTakesNone) {
  Tools t;
  GatewayArgs a;
  a.socket = "s";
  a.pidfile = "p";
  a.image = "rbd/img";
  a.node = "worker-1";
  auto v = gateway_argv(t, a);
  EXPECT_TRUE(contains(v, "exclusive=true"));
  EXPECT_TRUE(contains(v, "node=worker-1"));
  a.read_only = true;
  v = gateway_argv(t, a);
  EXPECT_FALSE(contains(v, "exclusive=true"));
  EXPECT_FALSE(contains(v, "node=worker-1"));
}

TEST(GatewayArgv, SecretsOnlyAsDescriptorsAndTheFilterBeforeThePlugin) {
  Tools t;
  GatewayArgs a;
  a.socket = "s";
  a.pidfile = "p";
  a.image = "rbd/img";
  a.keyring = "/k";  // ignored when the key comes on a descriptor
  a.mon_host = "127.0.0.1:3300";
  a.key_fd = 3;
  a.passphrase_fd = 4;
  a.read_only = true;
  const auto v = gateway_argv(t, a);
  EXPECT_TRUE(contains(v, "key=-3"));
  EXPECT_TRUE(contains(v, "passphrase=-4"));
  EXPECT_TRUE(contains(v, "mon_host=127.0.0.1:3300"));
  EXPECT_TRUE(contains(v, "--readonly"));
  EXPECT_FALSE(contains(v, "keyring=/k"));
  auto filter = std::find(v.begin(), v.end(), "--filter=luks2");
  auto plugin = std::find(v.begin(), v.end(), "rbd");
  ASSERT_NE(filter, v.end());
  ASSERT_NE(plugin, v.end());
  EXPECT_LT(filter, plugin);
  // No filter for plain volumes.
  a.passphrase_fd = -1;
  EXPECT_FALSE(contains(gateway_argv(t, a), "--filter=luks2"));
}

TEST(OtherArgv, FuseAndMkfs) {
  Tools t;
  t.fuse_exporter = "/bin/rbdgw-fuse";
  EXPECT_EQ(fuse_argv(t, "/r/s.sock", "/r/disk", "rbdgw:v", false, "/r/size"),
            (std::vector<std::string>{"/bin/rbdgw-fuse", "--name", "rbdgw:v", "--size-file",
                                      "/r/size", "/r/s.sock", "/r/disk"}));
  EXPECT_TRUE(contains(fuse_argv(t, "s", "f", "n", true, "z"), "--readonly"));
  EXPECT_TRUE(contains(fuse_argv(t, "s", "f", "n", false, "z", true), "--no-punch-hole"));
  EXPECT_FALSE(contains(fuse_argv(t, "s", "f", "n", false, "z"), "--no-punch-hole"));
  EXPECT_EQ(mkfs_argv("ext4", "/dev/loop1").front(), "mkfs.ext4");
  EXPECT_EQ(mkfs_argv("xfs", "/dev/loop1").front(), "mkfs.xfs");
  EXPECT_EQ(mkfs_argv("xfs", "/dev/loop1").back(), "/dev/loop1");
  EXPECT_EQ(error_code([] { mkfs_argv("btrfs", "/dev/loop1"); }), EINVAL);
}

namespace {
Stash sample_stash() {
  Stash s;
  s.complete = true;
  s.volume_id = "0001-vol";
  s.mode = Mode::kernel;
  s.image = "rbd/ns/img";
  s.conf_file = "/etc/ceph/ceph.conf";
  s.mon_host = "[v2:127.0.0.1:3300]";
  s.user_id = "csi";
  s.keyring = "/etc/ceph/k";
  s.cephx_key_in_keyring = true;
  s.encrypted = true;
  s.read_only = true;
  s.fstype = "xfs";
  s.mount_options = "noatime";
  s.run_dir = "/run/rbdgw/0001-vol";
  s.socket = s.run_dir + "/nbd.sock";
  s.gateway_log = s.run_dir + "/gateway.log";
  s.gateway = {1234, 987654};
  s.gateway_client = "127.0.0.1:0/988358452";
  s.node = "worker-1";
  s.fuse = {1235, 987655};
  s.fuse_file = s.run_dir + "/disk";
  s.loop_device = "/dev/loop7";
  s.nbd_device = "/dev/nbd1";
  s.mapper_name = "luks-0001-vol";
  s.device = "/dev/mapper/luks-0001-vol";
  s.target = "/var/lib/kubelet/staging/x";
  s.mounted = true;
  return s;
}
}  // namespace

TEST(Stash, JsonRoundTripKeepsEveryField) {
  const Stash s = sample_stash();
  EXPECT_EQ(stash_from_json(stash_to_json(s)), s);
  Stash empty;
  empty.volume_id = "v";
  EXPECT_EQ(stash_from_json(stash_to_json(empty)), empty);
}

TEST(Stash, SavedWithMode0600AndLoadedBack) {
  TempDir d;
  const std::string path = (d.path() / "stash.json").string();
  ::umask(022);
  save_stash(sample_stash(), path);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(load_stash(path), sample_stash());
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(Stash, MalformedOrMissingIsAClearError) {
  EXPECT_EQ(error_code([] { load_stash("/nonexistent/stash.json"); }), ENOENT);
  EXPECT_EQ(error_code([] { stash_from_json("{not json"); }), EINVAL);
  std::string j = stash_to_json(sample_stash());
  // A missing field is named.
  std::string no_socket = j;
  no_socket.erase(no_socket.find("\"socket\""), std::string("\"socket\": \"/run/rbdgw/0001-vol/nbd.sock\",").size());
  const std::string msg = error_message([&] { stash_from_json(no_socket, "x.json"); });
  EXPECT_NE(msg.find("x.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("socket"), std::string::npos) << msg;
  // A bad value is rejected.
  std::string bad_mode = j;
  bad_mode.replace(bad_mode.find("\"kernel\""), 8, "\"magic\"");
  EXPECT_EQ(error_code([&] { stash_from_json(bad_mode); }), EINVAL);
  std::string bad_id = j;
  bad_id.replace(bad_id.find("\"0001-vol\""), 10, "\"../etc\"");
  EXPECT_EQ(error_code([&] { stash_from_json(bad_id); }), EINVAL);
}

TEST(Stash, ListFindsTheCliLayoutAndSkipsBrokenOnes) {
  TempDir d;
  Stash a = sample_stash();
  a.volume_id = "b-vol";
  Stash b = sample_stash();
  b.volume_id = "a-vol";
  fs::create_directories(d.path() / "b-vol");
  fs::create_directories(d.path() / "a-vol");
  fs::create_directories(d.path() / "empty");
  save_stash(a, (d.path() / "b-vol/stash.json").string());
  save_stash(b, (d.path() / "a-vol/stash.json").string());
  d.file("broken/stash.json", "{");
  const auto all = list_stashes(d.path().string());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].volume_id, "a-vol");
  EXPECT_EQ(all[1].volume_id, "b-vol");
  EXPECT_TRUE(list_stashes((d.path() / "missing").string()).empty());
}

TEST(VolumeStatus, DeadProcessesAndNoMountAreUnhealthy) {
  Stash s = sample_stash();
  s.mode = Mode::userspace;
  s.gateway = {0, 0};
  s.target = "/nonexistent-target";
  const VolumeStatus st = status(s);
  EXPECT_FALSE(st.gateway_alive);
  EXPECT_FALSE(st.fuse_alive);
  EXPECT_FALSE(st.mounted);
  EXPECT_FALSE(st.healthy());
}

TEST(Detach, MissingStashIsSuccess) {
  EXPECT_EQ(error_code([] { detach("/nonexistent/stash.json"); }), 0);
}
