// lib/attach's shared gateway (step_shared_gateway.cpp) without a cluster:
// which volumes share a gateway, the stash field, status of a volume whose
// shared gateway is gone, and the kernel path refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "attach/attach.hpp"
#include "attach/steps.hpp"
#include "common/error.hpp"

namespace fs = std::filesystem;
using namespace rbdgw;
using namespace rbdgw::attach;

namespace {
Stash base() {
  Stash s;
  s.volume_id = "vol-a";
  s.image = "rbd/a";
  s.conf_file = "/etc/ceph/ceph.conf";
  s.user_id = "csi";
  s.node = "worker-1";
  return s;
}
std::string dir_of(const Stash& s, const char* key = "") {
  return detail::shared_gateway_dir("/run/rbdgw", s, SecretBuffer(std::string(key)));
}
}  // namespace

TEST(SharedGateway, OneDirPerClusterIdentityNodeAndKind) {
  const Stash a = base();
  Stash b = base();
  b.volume_id = "vol-b";
  b.image = "rbd/b";
  EXPECT_EQ(dir_of(a), dir_of(b)) << "volumes of one identity and kind share the gateway";
  EXPECT_EQ(dir_of(a).rfind("/run/rbdgw/@shared-", 0), 0u);
  EXPECT_EQ(dir_of(a).size(), std::string("/run/rbdgw/@shared-").size() + 16);
  Stash enc = base();
  enc.encrypted = true;
  EXPECT_NE(dir_of(a), dir_of(enc)) << "plain and decrypting are two gateways";
  Stash other = base();
  other.mon_host = "10.0.0.1";
  EXPECT_NE(dir_of(a), dir_of(other));
  other = base();
  other.user_id = "admin";
  EXPECT_NE(dir_of(a), dir_of(other));
  other = base();
  other.node = "worker-2";
  EXPECT_NE(dir_of(a), dir_of(other));
  other = base();
  other.keyring = "/etc/ceph/other.keyring";
  EXPECT_NE(dir_of(a), dir_of(other));
  EXPECT_NE(dir_of(a, "AQBkey1"), dir_of(a, "AQBkey2")) << "another cephx key, another gateway";
  EXPECT_EQ(dir_of(a).find("AQB"), std::string::npos);
}

TEST(SharedGateway, StashKeepsTheSharedDir) {
  Stash s = base();
  s.shared_dir = "/run/rbdgw/@shared-0123456789abcdef";
  EXPECT_EQ(stash_from_json(stash_to_json(s)).shared_dir, s.shared_dir);
  EXPECT_EQ(stash_to_json(base()).find("shared_dir"), std::string::npos)
      << "a volume with its own gateway writes the stash as before";
}

TEST(SharedGateway, StatusOfAVolumeWhoseSharedGatewayIsGoneIsUnhealthy) {
  const fs::path d = fs::temp_directory_path() / ("rbdgw-shared-status-" + std::to_string(::getpid()));
  fs::create_directories(d / "exports");
  Stash s = base();
  s.mode = Mode::userspace;
  s.shared_dir = d.string();
  s.gateway = {::getpid(), 0};  // recorded, but not the shared gateway's pid file
  std::ofstream(d / "exports" / s.volume_id) << "image=rbd/a\n";
  const VolumeStatus st = status(s);
  EXPECT_FALSE(st.gateway_alive);
  EXPECT_EQ(st.stash.gateway.pid, 0);
  EXPECT_FALSE(detail::gateway_up(s));
  fs::remove_all(d);
}

TEST(SharedGateway, KernelPathIsRefused) {
  const fs::path d = fs::temp_directory_path() / ("rbdgw-shared-kernel-" + std::to_string(::getpid()));
  fs::create_directories(d);
  Volume v;
  v.id = "vol-k";
  v.image = rbd::ImageSpec::parse("rbd/k");
  v.block = true;
  AttachOptions o;
  o.stash_path = (d / "stash.json").string();
  o.run_dir = (d / "run").string();
  o.attach = AttachChoice::kernel;
  o.shared_gateway = true;
  try {
    rbdgw::attach::attach(v, o);
    ADD_FAILURE() << "attach succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ENOTSUP) << e.what();
    EXPECT_NE(std::string(e.what()).find("vol-k"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.run_dir));
  fs::remove_all(d);
}
