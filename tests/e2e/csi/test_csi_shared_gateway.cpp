// rbdgw-csi --shared-gateway: NodeStageVolume of three volumes (two plain,
// one encrypted with the metadata KMS) starts exactly two gateway processes
// (one plain, one decrypting) instead of three; each staged filesystem
// takes and returns data. A kill -9 of the plain shared gateway while the
// daemon is down is repaired at the daemon's start (readopt_all): one new
// gateway for both of its volumes, which read and write again. Unstaging
// every volume stops the shared gateways and leaves no run dir.
#include "csi_harness.hpp"

namespace {

class SharedGatewayCsi : public CsiE2E {
 protected:
  static void SetUpTestSuite() {
    CsiE2E::SetUpTestSuite();
    if (tmp.empty()) return;
    stop_daemon(SIGTERM);
    start_shared_daemon();
  }

  // The fixture's daemon, with --shared-gateway.
  static void start_shared_daemon() {
    ::unlink(sock.c_str());
    daemon = ::fork();
    if (daemon == 0) {
      int fd = ::open((tmp + "/csi.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<std::string> args = {csi_bin, "--endpoint=unix://" + sock,
                                       "--cluster-config=" + tmp + "/clusters.json",
                                       "--kms-config=" + tmp + "/kms.json",
                                       "--node-id=e2e-node", "--attach=userspace", "--shared-gateway",
                                       "--state-dir=" + state, "--allowed-root=" + root};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    for (int i = 0; i < 300 && !fs::exists(sock); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(fs::exists(sock)) << read_file(tmp + "/csi.log");
    channel = grpc::CreateChannel("unix:" + sock, grpc::InsecureChannelCredentials());
  }

  void SetUp() override {
    CsiE2E::SetUp();
    if (IsSkipped()) return;
    if (!node_path_available() || !std::getenv("RBDGW_FILTER") || !fs::exists(std::getenv("RBDGW_FILTER")))
      GTEST_SKIP() << "needs the rbd plugin, the luks2 filter, rbdgw-fuse and /dev/fuse";
  }

  // Live shared gateways (nbdkit ... exports-dir=<run root>/@shared-*), by pid.
  static std::vector<std::pair<pid_t, std::string>> shared_gateways() {
    std::vector<std::pair<pid_t, std::string>> out;
    std::error_code ec;
    for (const auto& p : fs::directory_iterator("/proc", ec)) {
      const std::string n = p.path().filename();
      if (n.find_first_not_of("0123456789") != std::string::npos) continue;
      std::string cmd = read_file(p.path() / "cmdline");
      for (auto& c : cmd) if (c == '\0') c = ' ';
      const std::string stat = read_file(p.path() / "stat");
      if (stat.find(") Z") != std::string::npos) continue;
      if (cmd.find("exports-dir=" + std::string(attach::kRunRoot) + "/@shared-") != std::string::npos &&
          cmd.find(cluster.mon_host) != std::string::npos)
        out.emplace_back(std::stoi(n), cmd);
    }
    return out;
  }
};

TEST_F(SharedGatewayCsi, ThreeVolumesTwoGatewaysSurviveAKillAndADaemonRestart) {
  struct Vol {
    std::string id, staging;
    bool encrypted;
  };
  std::vector<Vol> vols;
  for (int i = 0; i < 3; ++i) {
    const bool enc = i == 2;
    v1::CreateVolumeResponse r;
    auto st = create(unique("pvc-shared"), params(enc), 64 * MiB, &r, secrets(enc));
    ASSERT_TRUE(st.ok()) << st.error_message();
    Vol v{r.volume().volume_id(), staging_dir(unique("shared")), enc};
    st = stage(v.id, v.staging, mount_cap(), enc);
    ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
    write_file(v.staging + "/data", std::string(200000, static_cast<char>('a' + i)));
    vols.push_back(v);
  }
  auto gws = shared_gateways();
  ASSERT_EQ(gws.size(), 2u) << "three staged volumes: one plain and one decrypting shared gateway";
  int decrypting = 0;
  pid_t plain = 0;
  for (const auto& [pid, cmd] : gws) {
    if (cmd.find("--filter=") != std::string::npos) ++decrypting;
    else plain = pid;
  }
  EXPECT_EQ(decrypting, 1);
  for (const auto& v : vols) {
    const attach::Stash s = attach::load_stash(v.staging + ".rbdgw.json");
    EXPECT_FALSE(s.shared_dir.empty()) << v.id;
    EXPECT_EQ(s.encrypted, v.encrypted);
  }
  ::sync();

  // The plain shared gateway dies while the daemon is down; the daemon's
  // start repairs it once for both of its volumes.
  stop_daemon(SIGTERM);
  ASSERT_EQ(::kill(plain, SIGKILL), 0);
  for (int i = 0; i < 100 && ::kill(plain, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  start_shared_daemon();
  gws = shared_gateways();
  ASSERT_EQ(gws.size(), 2u) << read_file(tmp + "/csi.log");
  for (const auto& [pid, cmd] : gws) EXPECT_NE(pid, plain);
  for (std::size_t i = 0; i < vols.size(); ++i) {
    const auto& v = vols[i];
    EXPECT_EQ(read_file(v.staging + "/data"), std::string(200000, static_cast<char>('a' + i))) << v.id;
    write_file(v.staging + "/after", "after the restart");
    EXPECT_EQ(read_file(v.staging + "/after"), "after the restart");
  }

  for (const auto& v : vols) {
    auto st = unstage(v.id, v.staging);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(fs::exists(std::string(attach::kRunRoot) + "/" + v.id)) << v.id;
  }
  EXPECT_TRUE(shared_gateways().empty()) << "a shared gateway outlived its last volume";
  for (const auto& v : vols) EXPECT_TRUE(del(v.id).ok());
}

}  // namespace
