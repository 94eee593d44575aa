// rbdgw-csi with a kmip KMS ID against a real KMIP server (pykmip-server,
// started by tests/e2e/kms/kmip-functions.sh's kmip_start): create, stage,
// write, unstage, restage (data intact) and delete of an encrypted volume,
// the wrapped DEK in ceph-csi's format in the image metadata; a KMS whose
// key the server does not know fails CreateVolume without leaving an image
// and NodeStage without mounting anything.
#include "csi_harness.hpp"

namespace {

class CsiKmip : public CsiE2E {
 protected:
  static inline std::string kmip_dir, kmip_pid;

  static std::string sh(const std::string& cmd) {
    std::string out;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return out;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    if (::pclose(p) != 0) ADD_FAILURE() << "failed: " << cmd << "\n" << out;
    return out;
  }

  static void SetUpTestSuite() {
    CsiE2E::SetUpTestSuite();
    if (tmp.empty()) return;
    const char* src = std::getenv("RBDGW_SOURCE_DIR");
    if (!src || ::access("/usr/bin/pykmip-server", X_OK) != 0) return;
    kmip_dir = tmp + "/kmip";
    fs::create_directories(kmip_dir);
    // kmip_start with the test's cleanup hook disabled: TearDownTestSuite stops it.
    const std::string lib = std::string(src) + "/tests/e2e/kms/kmip-functions.sh";
    sh("bash -c 'TEST_NAME=test-csi-kmip; fail() { echo \"$*\" >&2; exit 1; }; "
       "requires() { \"$@\" >/dev/null 2>&1 || exit 1; }; cleanup_fn() { :; }; "
       "RBDGW_SOURCE_DIR=" + std::string(src) + "; source " + lib + " && kmip_start " + kmip_dir +
       " && kmip_tool " + kmip_dir + " create > " + kmip_dir + "/creds/UNIQUE_IDENTIFIER' 2>&1");
    kmip_pid = read_file(kmip_dir + "/pid");
    std::string port = read_file(kmip_dir + "/port");
    while (!port.empty() && !std::isdigit(static_cast<unsigned char>(port.back()))) port.pop_back();
    fs::create_directories(kmip_dir + "/bad");
    for (const char* f : {"CA_CERT", "CLIENT_CERT", "CLIENT_KEY"})
      fs::copy_file(kmip_dir + "/creds/" + f, kmip_dir + "/bad/" + f);
    std::ofstream(kmip_dir + "/bad/UNIQUE_IDENTIFIER") << "424242\n";
    auto entry = [&](const std::string& dir) {
      return R"({"encryptionKMSType":"kmip","KMIP_ENDPOINT":"127.0.0.1:)" + port +
             R"(","TLS_SERVER_NAME":"kmip.test","READ_TIMEOUT":5,"WRITE_TIMEOUT":5,"secretsDir":")" +
             dir + R"("})";
    };
    std::ofstream(tmp + "/kms.json") << R"({"meta1":{"encryptionKMSType":"metadata"},"kmip1":)"
                                     << entry(kmip_dir + "/creds") << R"(,"kmip-unknown-key":)"
                                     << entry(kmip_dir + "/bad") << "}";
    stop_daemon(SIGTERM);
    start_daemon();
  }

  static void TearDownTestSuite() {
    CsiE2E::TearDownTestSuite();
    if (!kmip_pid.empty()) {
      // Its process group (kmip_start runs it under setsid): the server
      // and its multiprocessing manager.
      const pid_t pgid = std::stoi(kmip_pid);
      ::kill(-pgid, SIGTERM);
      for (int i = 0; i < 30 && ::kill(-pgid, 0) == 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ::kill(-pgid, SIGKILL);
    }
  }

  void SetUp() override {
    CsiE2E::SetUp();
    if (kmip_pid.empty()) GTEST_SKIP() << "needs pykmip-server (python3-pykmip)";
    if (!node_path_available() || !std::getenv("RBDGW_FILTER") || !fs::exists(std::getenv("RBDGW_FILTER")))
      GTEST_SKIP() << "needs the rbd plugin, the luks2 filter, rbdgw-fuse and /dev/fuse";
  }

  static std::map<std::string, std::string> kmip_params(const std::string& kms_id) {
    auto p = params(true);
    p["encryptionKMSID"] = kms_id;
    return p;
  }
};

TEST_F(CsiKmip, EncryptedVolumeLifecycleThroughAKmipServer) {
  v1::CreateVolumeResponse a;
  auto st = create(unique("pvc-kmip"), kmip_params("kmip1"), 64 * MiB, &a);
  ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    EXPECT_EQ(image.get_meta("rbd.csi.ceph.com/encrypted").value_or(""), "encryptionPrepared");
    const std::string dek = image.get_meta("rbd.csi.ceph.com/dek").value_or("");
    EXPECT_TRUE(std::regex_match(dek, std::regex(R"(\{"dek":"[A-Za-z0-9+/=]+","nonce":"[A-Za-z0-9+/]{22}=="\})")))
        << dek;
  }
  const std::string staging = staging_dir(unique("kmip"));
  auto s = stage(id, staging);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  const std::string data(200000, 'k');
  write_file(staging + "/f.bin", data);
  ASSERT_TRUE(unstage(id, staging).ok());
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    EXPECT_EQ(image.get_meta("rbd.csi.ceph.com/encrypted").value_or(""), "encrypted");
  }
  s = stage(id, staging);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(read_file(staging + "/f.bin"), data);
  ASSERT_TRUE(unstage(id, staging).ok());
  ASSERT_TRUE(del(id).ok());
  auto io = connect().open_ioctx("rbd");
  EXPECT_THROW(rbd::Image::open(io, img), Error);
}

TEST_F(CsiKmip, UnknownKeyFailsCreateAndStageAndChangesNothing) {
  v1::CreateVolumeResponse a;
  const std::string name = unique("pvc-kmip-bad");
  auto st = create(name, kmip_params("kmip-unknown-key"), 64 * MiB, &a);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.error_message().find("Item Not Found"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("kmip-unknown-key"), std::string::npos) << st.error_message();
  {
    auto io = connect().open_ioctx("rbd");
    for (const auto& n : rbd::list_images(io))
      EXPECT_EQ(n.find(name), std::string::npos) << "a failed CreateVolume left " << n;
  }
  // A good volume staged with the wrong key's KMS: refused, nothing mounted.
  st = create(unique("pvc-kmip-ok"), kmip_params("kmip1"), 64 * MiB, &a);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    image.set_meta("rbdgw.csi/encryptionKMSID", "kmip-unknown-key");  // as if made with it
  }
  const std::string staging = staging_dir(unique("kmip-bad"));
  auto s = stage(id, staging);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error_message().find("Item Not Found"), std::string::npos) << s.error_message();
  EXPECT_TRUE(mounts_under(staging).empty());
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    EXPECT_EQ(image.get_meta("rbd.csi.ceph.com/encrypted").value_or(""), "encryptionPrepared");
  }
  ASSERT_TRUE(del(id).ok());
}

}  // namespace
